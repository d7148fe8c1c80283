//! A priority-inheriting mutex and its condition variable, for the state the actuator shares
//! with the frame loop and the inputs.
//!
//! The actuator runs at a real-time priority; the frame loop does not. With an ordinary
//! mutex, a frame loop preempted (by any busy thread) while it holds the lock for a few
//! microseconds keeps the actuator waiting for the lock for a whole scheduling period —
//! milliseconds, a pulse off by millimetres. This lock uses `PTHREAD_PRIO_INHERIT`: while a
//! higher-priority thread waits, the holder runs at that priority, so it finishes its few
//! microseconds at once.
//!
//! Guarantees:
//! - the same shape as `std::sync::{Mutex, Condvar}` where the station uses them (`lock`
//!   returns a `Result`, `wait_timeout`, `wait_timeout_while`, `notify_all`), but it never
//!   poisons: a panic while holding it leaves the data as it was;
//! - timed waits run on `CLOCK_MONOTONIC` to an absolute deadline (a changed wall clock
//!   changes nothing);
//! - nothing here allocates after construction.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// Never returned: this lock does not poison. It keeps `lock()`'s `Result` shape.
#[derive(Debug)]
pub(super) struct Poisoned;

/// A mutex whose holder inherits the priority of its highest waiter.
pub(super) struct PiMutex<T> {
    // Boxed: a pthread mutex must not move once initialised.
    raw: Box<UnsafeCell<libc::pthread_mutex_t>>,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by the pthread mutex.
unsafe impl<T: Send> Send for PiMutex<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for PiMutex<T> {}

impl<T> PiMutex<T> {
    pub(super) fn new(data: T) -> PiMutex<T> {
        // SAFETY: zeroed storage is what pthread_mutex_init expects to initialise; the
        // attribute object lives on the stack for the duration of the init.
        let raw = unsafe {
            let raw: Box<UnsafeCell<libc::pthread_mutex_t>> = Box::new(UnsafeCell::new(std::mem::zeroed()));
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            // Where the C library lacks priority inheritance, the mutex stays a plain one.
            libc::pthread_mutexattr_setprotocol(&mut attr, libc::PTHREAD_PRIO_INHERIT);
            libc::pthread_mutex_init(raw.get(), &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
            raw
        };
        PiMutex {
            raw,
            data: UnsafeCell::new(data),
        }
    }

    /// Lock; never fails (the `Result` keeps `std::sync::Mutex`'s shape).
    pub(super) fn lock(&self) -> Result<PiGuard<'_, T>, Poisoned> {
        // SAFETY: an initialised mutex that outlives the guard.
        unsafe { libc::pthread_mutex_lock(self.raw.get()) };
        Ok(PiGuard {
            m: self,
            _not_send: PhantomData,
        })
    }
}

impl<T> Drop for PiMutex<T> {
    fn drop(&mut self) {
        // SAFETY: no guard can be alive (they borrow self).
        unsafe { libc::pthread_mutex_destroy(self.raw.get()) };
    }
}

/// The lock held; unlocks when dropped.
pub(super) struct PiGuard<'a, T> {
    m: &'a PiMutex<T>,
    // A pthread mutex is unlocked by the thread that locked it.
    _not_send: PhantomData<*const ()>,
}

impl<T> Deref for PiGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held.
        unsafe { &*self.m.data.get() }
    }
}

impl<T> DerefMut for PiGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held, and exclusively through this guard.
        unsafe { &mut *self.m.data.get() }
    }
}

impl<T> Drop for PiGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: locked by this thread.
        unsafe { libc::pthread_mutex_unlock(self.m.raw.get()) };
    }
}

/// A condition variable for [`PiMutex`], timed on `CLOCK_MONOTONIC`.
pub(super) struct PiCondvar {
    raw: Box<UnsafeCell<libc::pthread_cond_t>>,
}

// SAFETY: pthread condition variables are made to be shared between threads.
unsafe impl Send for PiCondvar {}
// SAFETY: as above.
unsafe impl Sync for PiCondvar {}

fn monotonic_after(d: Duration) -> libc::timespec {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let ns = now.tv_nsec as u64 + d.subsec_nanos() as u64;
    libc::timespec {
        tv_sec: now.tv_sec + d.as_secs() as libc::time_t + (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

impl PiCondvar {
    pub(super) fn new() -> PiCondvar {
        // SAFETY: as for the mutex: zeroed storage initialised in place, a stack attribute.
        let raw = unsafe {
            let raw: Box<UnsafeCell<libc::pthread_cond_t>> = Box::new(UnsafeCell::new(std::mem::zeroed()));
            let mut attr: libc::pthread_condattr_t = std::mem::zeroed();
            libc::pthread_condattr_init(&mut attr);
            libc::pthread_condattr_setclock(&mut attr, libc::CLOCK_MONOTONIC);
            libc::pthread_cond_init(raw.get(), &attr);
            libc::pthread_condattr_destroy(&mut attr);
            raw
        };
        PiCondvar { raw }
    }

    /// Wake every waiter.
    pub(super) fn notify_all(&self) {
        // SAFETY: an initialised condition variable.
        unsafe { libc::pthread_cond_broadcast(self.raw.get()) };
    }

    /// Wait until woken or `d` has passed; `true` in the pair: timed out.
    pub(super) fn wait_timeout<'a, T>(
        &self,
        g: PiGuard<'a, T>,
        d: Duration,
    ) -> Result<(PiGuard<'a, T>, bool), Poisoned> {
        let until = monotonic_after(d);
        // SAFETY: `g` holds the mutex on this thread; the wait releases and retakes it.
        let rc = unsafe { libc::pthread_cond_timedwait(self.raw.get(), g.m.raw.get(), &until) };
        Ok((g, rc == libc::ETIMEDOUT))
    }

    /// Wait while `condition` holds, at most `d` in all; `true` in the pair: timed out.
    pub(super) fn wait_timeout_while<'a, T>(
        &self,
        mut g: PiGuard<'a, T>,
        d: Duration,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> Result<(PiGuard<'a, T>, bool), Poisoned> {
        let until = monotonic_after(d);
        while condition(&mut g) {
            // SAFETY: as in wait_timeout.
            let rc = unsafe { libc::pthread_cond_timedwait(self.raw.get(), g.m.raw.get(), &until) };
            if rc == libc::ETIMEDOUT {
                return Ok((g, true));
            }
        }
        Ok((g, false))
    }
}

impl Drop for PiCondvar {
    fn drop(&mut self) {
        // SAFETY: no waiter can be alive (they borrow self).
        unsafe { libc::pthread_cond_destroy(self.raw.get()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_lock_serialises_and_the_condvar_wakes_and_times_out() {
        let shared = Arc::new((PiMutex::new(0u64), PiCondvar::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = shared.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *s.0.lock().unwrap() += 1;
                    }
                    s.1.notify_all();
                })
            })
            .collect();
        {
            let (m, c) = &*shared;
            let (g, timed_out) = c
                .wait_timeout_while(m.lock().unwrap(), Duration::from_secs(60), |n| *n < 40_000)
                .unwrap();
            assert!(!timed_out);
            assert_eq!(*g, 40_000);
        }
        for t in threads {
            t.join().unwrap();
        }
        let (m, c) = &*shared;
        let (g, timed_out) = c.wait_timeout(m.lock().unwrap(), Duration::from_millis(1)).unwrap();
        assert!(timed_out, "nobody notified");
        assert_eq!(*g, 40_000);
    }
}
