//! A counting global allocator: proves the frame path allocates nothing in our code, and
//! counts tract's allocations separately.
//!
//! Each thread has a scope tag; allocations are counted per scope. Code that calls into tract
//! wraps the call in [`scoped`] with [`Scope::Tract`]; everything else counts as ours.
//! The binary and the allocation tests install it with `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Who is allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Our code (the default).
    Ours = 0,
    /// Inside tract's run.
    Tract = 1,
    /// Inside image decoding (the `image` crate, for file replay).
    Decode = 2,
}

const SCOPES: usize = 3;

static COUNTS: [AtomicU64; SCOPES] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static BYTES: [AtomicU64; SCOPES] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

thread_local! {
    static CURRENT: Cell<u8> = const { Cell::new(0) };
    static LOCAL: [Cell<u64>; SCOPES] = const { [Cell::new(0), Cell::new(0), Cell::new(0)] };
}

/// Wraps the system allocator and counts allocations per [`Scope`].
pub struct CountingAlloc;

fn tally(size: usize) {
    let s = CURRENT.try_with(|c| c.get()).unwrap_or(0) as usize % SCOPES;
    COUNTS[s].fetch_add(1, Ordering::Relaxed);
    BYTES[s].fetch_add(size as u64, Ordering::Relaxed);
    let _ = LOCAL.try_with(|l| l[s].set(l[s].get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting has no effect on memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        tally(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        tally(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        tally(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Run `f` with allocations on this thread counted under `scope`.
pub fn scoped<R>(scope: Scope, f: impl FnOnce() -> R) -> R {
    let prev = CURRENT.with(|c| c.replace(scope as u8));
    let r = f();
    CURRENT.with(|c| c.set(prev));
    r
}

/// Allocation counts so far, per scope, in [`Scope`] order: all threads ([`Snapshot::take`])
/// or the calling thread ([`Snapshot::take_thread`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Allocation calls per scope.
    pub count: [u64; SCOPES],
    /// Bytes requested per scope.
    pub bytes: [u64; SCOPES],
}

impl Snapshot {
    /// Read the counters now.
    pub fn take() -> Snapshot {
        let mut s = Snapshot::default();
        for i in 0..SCOPES {
            s.count[i] = COUNTS[i].load(Ordering::Relaxed);
            s.bytes[i] = BYTES[i].load(Ordering::Relaxed);
        }
        s
    }

    /// Allocation calls made by the calling thread only, per scope (bytes are not tracked).
    pub fn take_thread() -> Snapshot {
        let mut s = Snapshot::default();
        let _ = LOCAL.try_with(|l| {
            for (c, v) in s.count.iter_mut().zip(l) {
                *c = v.get();
            }
        });
        s
    }

    /// Allocations in `scope` between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot, scope: Scope) -> u64 {
        self.count[scope as usize] - earlier.count[scope as usize]
    }
}

/// Peak resident set size of this process in KiB (VmHWM), if the kernel reports it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
