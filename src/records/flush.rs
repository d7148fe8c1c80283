//! The two threads behind `[records]`: one writes the decision log, the other makes it
//! durable and saves the counters that cover it.
//!
//! Guarantees:
//! - **A crash loses at most one flush interval.** The `records` thread writes every record
//!   to the log within `flush_interval_ms` of receiving it, whatever the disk's sync takes:
//!   a written record is in the kernel's page cache and outlives `kill -9`. At each interval
//!   it takes everything queued, not one record per wake-up, so a slow disk never makes it
//!   fall behind the frame path.
//! - **A power cut loses at most one interval plus two syncs of the log.** The `records-sync`
//!   thread syncs the log (a sync under way finishes first), then applies the synced records
//!   to the counters; it saves the counters file as a checkpoint at most once a second
//!   ([`counters_every`]), so that file never covers a record the log does not hold and its
//!   own syncs never stand between a record and the disk. Start-up replays the log after the
//!   checkpoint.
//! - **Bounded.** Records written but not yet synced wait in one buffer of
//!   [`SYNC_BACKLOG`] records; when a sync takes so long that it fills, the `records` thread
//!   waits for it (the frame path does not: its queue drops and counts).
//! - No allocation per record after start-up: both threads work in buffers made at start.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::log::{LogRecord, LogWriter};
use super::store::{day_and_shift, now_unix_ms, Store};
use super::{Health, RECORD_BATCH};

/// Records written but not yet synced, at most: eight full batches (seconds of records at
/// the fastest line), so that one slow sync never holds up writing.
pub const SYNC_BACKLOG: usize = 8 * RECORD_BATCH;

/// What the `records` thread hands to the `records-sync` thread.
struct Handoff {
    /// Written to the log, not yet synced, in sequence.
    written: Vec<LogRecord>,
    /// A handle on the segment written last, when it changed since the sync thread took one.
    segment: Option<File>,
    /// The `records` thread has written its last record.
    closed: bool,
}

struct Shared {
    handoff: Mutex<Handoff>,
    /// Signalled when records are handed over, and when the sync thread took them.
    changed: Condvar,
}

/// What both threads need to know of the records.
pub(super) struct Setup {
    pub writer: Option<LogWriter>,
    pub dir: Option<PathBuf>,
    pub store: Arc<Mutex<Store>>,
    pub health: Arc<Health>,
    pub flush: Duration,
    pub shift_starts: Vec<u16>,
    pub keep_days: usize,
}

/// The `records` thread: receives decided items, writes them to the log at least every
/// `flush` interval and hands them to the `records-sync` thread it starts; returns once `rx`
/// is closed and everything is written, synced and counted.
pub(super) fn run(rx: Receiver<LogRecord>, s: Setup) {
    let Setup {
        mut writer,
        dir,
        store,
        health,
        flush,
        shift_starts,
        keep_days,
    } = s;
    let shared = Arc::new(Shared {
        handoff: Mutex::new(Handoff {
            written: Vec::with_capacity(SYNC_BACKLOG),
            segment: writer.as_ref().and_then(|w| w.sync_handle().ok()),
            closed: false,
        }),
        changed: Condvar::new(),
    });
    let syncer = {
        let shared = shared.clone();
        let health = health.clone();
        let synced = writer.is_some();
        std::thread::Builder::new()
            .name("records-sync".into())
            .spawn(move || sync_thread(&shared, synced, dir, store, health, flush, keep_days))
    };
    let syncer = match syncer {
        Ok(t) => Some(t),
        Err(_) => {
            health.records_fault.store(true, Ordering::Relaxed);
            None
        }
    };

    let mut batch: Vec<LogRecord> = Vec::with_capacity(RECORD_BATCH);
    let mut segment = writer.as_ref().map(|w| w.segment_first_seq());
    let mut next_seq = writer.as_ref().map(|w| w.next_seq()).unwrap_or(0);
    let mut next_flush = Instant::now() + flush;
    let mut closed = false;
    let stamp = |mut r: LogRecord| {
        let (day, shift) = day_and_shift(r.unix_ms, &shift_starts);
        r.day = day;
        r.shift = shift;
        r
    };
    while !closed {
        match rx.recv_timeout(next_flush.saturating_duration_since(Instant::now())) {
            Ok(r) => batch.push(stamp(r)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }
        if batch.len() < RECORD_BATCH && Instant::now() < next_flush && !closed {
            continue;
        }
        // Everything queued goes in this write.
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(stamp(r)),
                Err(_) => break,
            }
        }
        next_flush = Instant::now() + flush;
        let written = match writer.as_mut() {
            Some(w) => match w.append(&mut batch) {
                Ok(()) => true,
                Err(_) => {
                    health.records_errors.fetch_add(1, Ordering::Relaxed);
                    health.records_lost.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    health.records_fault.store(true, Ordering::Relaxed);
                    false
                }
            },
            None => {
                for r in &mut batch {
                    r.seq = next_seq;
                    next_seq += 1;
                }
                true
            }
        };
        let new_segment = match writer.as_ref() {
            Some(w) if segment != Some(w.segment_first_seq()) => {
                segment = Some(w.segment_first_seq());
                w.sync_handle().ok()
            }
            _ => None,
        };
        if !written {
            batch.clear();
        }
        if batch.is_empty() && new_segment.is_none() && !closed {
            continue;
        }
        let mut h = shared.handoff.lock().unwrap_or_else(|e| e.into_inner());
        while h.written.len() + batch.len() > SYNC_BACKLOG && syncer.is_some() {
            h = shared.changed.wait(h).unwrap_or_else(|e| e.into_inner());
        }
        if syncer.is_some() {
            h.written.extend_from_slice(&batch);
        }
        if new_segment.is_some() {
            h.segment = new_segment;
        }
        h.closed = closed;
        drop(h);
        shared.changed.notify_all();
        batch.clear();
    }
    if let Some(t) = syncer {
        let _ = t.join();
    }
}

/// The `records-sync` thread: syncs what was written (when `synced`: a log is kept) and counts
/// it; saves the counters at most every [`counters_every`] (and at the end), retrying a
/// failed save as often.
fn sync_thread(
    shared: &Shared,
    synced: bool,
    dir: Option<PathBuf>,
    store: Arc<Mutex<Store>>,
    health: Arc<Health>,
    flush: Duration,
    keep_days: usize,
) {
    let save_every = counters_every(flush);
    let mut work: Vec<LogRecord> = Vec::with_capacity(SYNC_BACKLOG);
    let mut file: Option<File> = None;
    // Records counted that the counters file does not cover yet; the last save failed.
    let (mut unsaved, mut save_failed) = (false, false);
    let mut last_save = Instant::now();
    loop {
        let closed;
        {
            let mut h = shared.handoff.lock().unwrap_or_else(|e| e.into_inner());
            while h.written.is_empty() && !h.closed {
                if !(unsaved || save_failed) {
                    h = shared.changed.wait(h).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                let left = (last_save + save_every).saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                h = shared
                    .changed
                    .wait_timeout(h, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut work, &mut h.written);
            if let Some(f) = h.segment.take() {
                file = Some(f);
            }
            closed = h.closed;
        }
        shared.changed.notify_all();
        if !work.is_empty() {
            let durable = !synced || file.as_ref().is_some_and(|f| f.sync_data().is_ok());
            if !durable {
                health.records_errors.fetch_add(1, Ordering::Relaxed);
                health.records_lost.fetch_add(work.len() as u64, Ordering::Relaxed);
                health.records_fault.store(true, Ordering::Relaxed);
            } else if let Ok(mut st) = store.lock() {
                for r in &work {
                    st.apply(r, keep_days);
                }
                unsaved = true;
                if !save_failed {
                    health.records_fault.store(false, Ordering::Relaxed);
                }
            }
            work.clear();
        }
        if (unsaved || save_failed) && (closed || last_save.elapsed() >= save_every) {
            last_save = Instant::now();
            match (&dir, store.lock()) {
                (Some(d), Ok(mut st)) => match st.save(d, now_unix_ms()) {
                    Ok(()) => {
                        health.records_fault.store(false, Ordering::Relaxed);
                        (unsaved, save_failed) = (false, false);
                    }
                    Err(_) => {
                        health.records_errors.fetch_add(1, Ordering::Relaxed);
                        health.records_fault.store(true, Ordering::Relaxed);
                        save_failed = true;
                    }
                },
                _ => (unsaved, save_failed) = (false, false),
            }
        }
        if closed {
            // The last handoff is taken: nothing more comes.
            let h = shared.handoff.lock().unwrap_or_else(|e| e.into_inner());
            if h.written.is_empty() {
                return;
            }
        }
    }
}

/// How often the counters file is replaced: once a second, or every flush interval when that
/// is longer. The log is what makes a decision durable; the counters file is a checkpoint of
/// it (start-up replays the log records after its position), so its three syncs never delay
/// the log's.
pub fn counters_every(flush: Duration) -> Duration {
    flush.max(Duration::from_secs(1))
}
