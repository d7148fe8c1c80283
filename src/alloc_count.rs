//! A counting global allocator: proves the frame path allocates nothing in our code, and
//! counts tract's allocations separately.
//!
//! Each thread has a scope tag; allocations are counted per scope. Code that calls into tract
//! wraps the call in [`scoped`] with [`Scope::Tract`]; everything else counts as ours.
//! The binary and the allocation tests install it with `#[global_allocator]`.
//!
//! **tract's pool.** tract allocates each node's output afresh on every run. Inside
//! [`Scope::Tract`] a block tract frees is kept in a per-thread pool keyed by its size and
//! alignment instead of going back to the system, and the next request of that layout inside
//! the scope takes it back: after the first runs have sized it, a run asks the system
//! allocator for nothing. Guarantees: the pool holds only system blocks of exactly the layout
//! it serves (a block may leave it by any path and is freed normally); it holds at most
//! [`POOL_CLASSES`] layouts, [`POOL_BLOCKS_PER_CLASS`] blocks each, [`POOL_SMALL_BLOCKS`]
//! blocks shorter than a pointer besides, and [`POOL_MAX_BYTES`] in all, beyond which blocks
//! go back to the system; any alignment is served; system calls and pool hits are counted
//! apart ([`Snapshot::count`] and [`Snapshot::pool_hits`]), so a pool that keeps growing after
//! warm-up shows as system calls.

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
static POOL_HITS: AtomicU64 = AtomicU64::new(0);

/// Layouts the pool tells apart: a model's distinct intermediate tensor sizes (the largest
/// shipped model has a few dozen).
pub const POOL_CLASSES: usize = 96;
/// Blocks kept per layout: as many same-sized tensors as one run frees before it asks again.
pub const POOL_BLOCKS_PER_CLASS: u32 = 64;
/// Bytes the pool may hold per thread: a few times the largest model's live intermediates.
pub const POOL_MAX_BYTES: usize = 256 << 20;

/// Blocks shorter than a pointer (no room for a link) the pool keeps aside, whatever their
/// layout: tract frees a few scalars' worth per run (a segmentation run: eight of 4 bytes).
pub const POOL_SMALL_BLOCKS: usize = 32;

/// A block shorter than a pointer, kept aside; `ptr` null: a free slot.
#[derive(Clone, Copy)]
struct Small {
    ptr: *mut u8,
    size: usize,
    align: usize,
}

const NO_SMALL: Small = Small {
    ptr: std::ptr::null_mut(),
    size: 0,
    align: 0,
};

/// One layout's free list: blocks linked through their first word (written unaligned: a
/// block aligned to less than a pointer holds one as well).
#[derive(Clone, Copy)]
struct Class {
    size: usize,
    align: usize,
    head: *mut u8,
    len: u32,
}

const EMPTY: Class = Class {
    size: 0,
    align: 0,
    head: std::ptr::null_mut(),
    len: 0,
};

static BYTES: [AtomicU64; SCOPES] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

thread_local! {
    static CURRENT: Cell<u8> = const { Cell::new(0) };
    static LOCAL: [Cell<u64>; SCOPES] = const { [Cell::new(0), Cell::new(0), Cell::new(0)] };
    static POOL: Cell<[Class; POOL_CLASSES]> = const { Cell::new([EMPTY; POOL_CLASSES]) };
    static SMALL: Cell<[Small; POOL_SMALL_BLOCKS]> = const { Cell::new([NO_SMALL; POOL_SMALL_BLOCKS]) };
    static POOL_BYTES: Cell<usize> = const { Cell::new(0) };
    static LOCAL_POOL_HITS: Cell<u64> = const { Cell::new(0) };
}

/// Count one request served by the pool (all threads, and this thread's own).
fn pool_hit() {
    POOL_HITS.fetch_add(1, Ordering::Relaxed);
    let _ = LOCAL_POOL_HITS.try_with(|h| h.set(h.get() + 1));
}

fn in_tract() -> bool {
    CURRENT.try_with(|c| c.get() == Scope::Tract as u8).unwrap_or(false)
}

/// Take a block of `layout` from this thread's pool.
fn pool_take(layout: Layout) -> Option<*mut u8> {
    if layout.size() < std::mem::size_of::<*mut u8>() {
        return SMALL
            .try_with(|cell| {
                // SAFETY: as below, this thread's own table, not re-entered.
                let small = unsafe { &mut *cell.as_ptr() };
                let slot = small
                    .iter_mut()
                    .find(|b| !b.ptr.is_null() && b.size == layout.size() && b.align == layout.align())?;
                let block = std::mem::replace(slot, NO_SMALL).ptr;
                let _ = POOL_BYTES.try_with(|b| b.set(b.get() - layout.size()));
                Some(block)
            })
            .ok()
            .flatten();
    }
    POOL.try_with(|cell| {
        // SAFETY: the pool is this thread's own and is not re-entered: nothing here allocates.
        let pool = unsafe { &mut *cell.as_ptr() };
        let class = pool
            .iter_mut()
            .find(|c| c.size == layout.size() && c.align == layout.align() && c.len > 0)?;
        let block = class.head;
        // SAFETY: a pooled block starts with the link written by `pool_put`.
        class.head = unsafe { (block as *mut *mut u8).read_unaligned() };
        class.len -= 1;
        let _ = POOL_BYTES.try_with(|b| b.set(b.get() - layout.size()));
        Some(block)
    })
    .ok()
    .flatten()
}

/// Keep `block` in this thread's pool; false when the pool is full for it.
fn pool_put(block: *mut u8, layout: Layout) -> bool {
    let held = POOL_BYTES.try_with(|b| b.get()).unwrap_or(usize::MAX);
    if held.saturating_add(layout.size()) > POOL_MAX_BYTES || layout.size() == 0 {
        return false;
    }
    if layout.size() < std::mem::size_of::<*mut u8>() {
        return SMALL
            .try_with(|cell| {
                // SAFETY: as in `pool_take`.
                let small = unsafe { &mut *cell.as_ptr() };
                let slot = small.iter_mut().find(|b| b.ptr.is_null())?;
                *slot = Small {
                    ptr: block,
                    size: layout.size(),
                    align: layout.align(),
                };
                let _ = POOL_BYTES.try_with(|b| b.set(b.get() + layout.size()));
                Some(())
            })
            .ok()
            .flatten()
            .is_some();
    }
    POOL.try_with(|cell| {
        // SAFETY: as in `pool_take`.
        let pool = unsafe { &mut *cell.as_ptr() };
        let at = pool
            .iter()
            .position(|c| c.size == layout.size() && c.align == layout.align())
            .or_else(|| pool.iter().position(|c| c.size == 0))?;
        let class = &mut pool[at];
        if class.len >= POOL_BLOCKS_PER_CLASS {
            return None;
        }
        class.size = layout.size();
        class.align = layout.align();
        // SAFETY: the block is at least one pointer long (checked above), written unaligned.
        unsafe { (block as *mut *mut u8).write_unaligned(class.head) };
        class.head = block;
        class.len += 1;
        let _ = POOL_BYTES.try_with(|b| b.set(b.get() + layout.size()));
        Some(())
    })
    .ok()
    .flatten()
    .is_some()
}

/// Give every block this thread's pool holds back to the system (an engine calls it when it
/// is dropped).
pub fn pool_release() {
    let _ = POOL.try_with(|cell| {
        // SAFETY: as in `pool_take`.
        let pool = unsafe { &mut *cell.as_ptr() };
        for class in pool.iter_mut() {
            let layout = Layout::from_size_align(class.size.max(1), class.align.max(1));
            while class.len > 0 {
                let block = class.head;
                // SAFETY: a pooled block starts with its link and came from `System` with
                // this layout.
                unsafe {
                    class.head = (block as *mut *mut u8).read_unaligned();
                    if let Ok(layout) = layout {
                        System.dealloc(block, layout);
                    }
                }
                class.len -= 1;
            }
            *class = EMPTY;
        }
    });
    let _ = SMALL.try_with(|cell| {
        // SAFETY: as in `pool_take`.
        let small = unsafe { &mut *cell.as_ptr() };
        for b in small.iter_mut().filter(|b| !b.ptr.is_null()) {
            if let Ok(layout) = Layout::from_size_align(b.size, b.align) {
                // SAFETY: the block came from `System` with this layout.
                unsafe { System.dealloc(b.ptr, layout) };
            }
            *b = NO_SMALL;
        }
    });
    let _ = POOL_BYTES.try_with(|b| b.set(0));
}

/// Bytes this thread's pool holds now.
pub fn pool_bytes() -> usize {
    POOL_BYTES.try_with(|b| b.get()).unwrap_or(0)
}

/// Wraps the system allocator and counts allocations per [`Scope`].
pub struct CountingAlloc;

fn tally(size: usize) {
    let s = CURRENT.try_with(|c| c.get()).unwrap_or(0) as usize % SCOPES;
    COUNTS[s].fetch_add(1, Ordering::Relaxed);
    BYTES[s].fetch_add(size as u64, Ordering::Relaxed);
    let _ = LOCAL.try_with(|l| l[s].set(l[s].get() + 1));
}

// SAFETY: every block comes from `System` with the layout it is used and freed with: either
// directly, or from the pool, which holds only `System` blocks of exactly that layout.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if in_tract() {
            if let Some(block) = pool_take(layout) {
                pool_hit();
                return block;
            }
        }
        tally(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if in_tract() {
            if let Some(block) = pool_take(layout) {
                pool_hit();
                // SAFETY: the block is `layout.size()` bytes, ours until freed.
                unsafe { std::ptr::write_bytes(block, 0, layout.size()) };
                return block;
            }
        }
        tally(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_tract() && pool_put(ptr, layout) {
            return;
        }
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if in_tract() {
            // A growing vector inside tract: a new block (from the pool when it has one), the
            // contents moved, the old block kept for the next request of its layout.
            // SAFETY: `new_size` with the old alignment is a valid layout (the caller's
            // contract for `realloc`).
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            let block = match pool_take(new_layout) {
                Some(block) => {
                    pool_hit();
                    block
                }
                None => {
                    tally(new_size);
                    unsafe { System.alloc(new_layout) }
                }
            };
            if !block.is_null() {
                // SAFETY: both blocks are live, distinct and at least this long.
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, block, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            return block;
        }
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
    /// Requests inside [`Scope::Tract`] served by the pool (not in `count`; all threads, or the
    /// calling thread's for [`Snapshot::take_thread`]).
    pub pool_hits: u64,
}

impl Snapshot {
    /// Read the counters now.
    pub fn take() -> Snapshot {
        let mut s = Snapshot::default();
        for i in 0..SCOPES {
            s.count[i] = COUNTS[i].load(Ordering::Relaxed);
            s.bytes[i] = BYTES[i].load(Ordering::Relaxed);
        }
        s.pool_hits = POOL_HITS.load(Ordering::Relaxed);
        s
    }

    /// Allocation calls and pool hits of the calling thread only, per scope (bytes are not
    /// tracked).
    pub fn take_thread() -> Snapshot {
        let mut s = Snapshot::default();
        let _ = LOCAL.try_with(|l| {
            for (c, v) in s.count.iter_mut().zip(l) {
                *c = v.get();
            }
        });
        s.pool_hits = LOCAL_POOL_HITS.try_with(|h| h.get()).unwrap_or(0);
        s
    }

    /// Requests tract made between `earlier` and `self`: system-allocator calls in
    /// [`Scope::Tract`] and pool hits.
    pub fn tract_requests_since(&self, earlier: &Snapshot) -> u64 {
        self.since(earlier, Scope::Tract) + (self.pool_hits - earlier.pool_hits)
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
