//! Background load for `ferroscope bench-timing --load`: what a busy board does beside the
//! station, made by threads of this process at normal priority.
//!
//! - `cpu`: one busy thread per CPU (as `yes > /dev/null` or `stress-ng --cpu N`);
//! - `memory`: one thread per CPU writing and reading a buffer of [`MEMORY_BUFFER_BYTES`]
//!   (as `stress-ng --vm N`): caches evicted, memory bandwidth taken;
//! - `io`: one thread writing a file in [`IO_CHUNK_BYTES`] chunks and syncing it to disk (as
//!   `stress-ng --hdd 1`), in the system's temporary folder, removed at the end;
//! - `all`: all three at once.
//!
//! The load stops and its threads are joined when [`Load::stop`] is called (or the value is
//! dropped).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use clap::ValueEnum;

/// Per memory thread: 64 MiB, far larger than any board's last-level cache, so every pass
/// goes to memory.
pub const MEMORY_BUFFER_BYTES: usize = 64 << 20;

/// What the io thread writes between two syncs: 4 MiB, enough for the sync to reach the disk
/// and not only the page cache's bookkeeping.
pub const IO_CHUNK_BYTES: usize = 4 << 20;

/// The file the io thread writes stays below this size (it starts over): 64 MiB.
const IO_FILE_BYTES: usize = 64 << 20;

/// `--load`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LoadKind {
    /// One busy thread per CPU.
    Cpu,
    /// One thread per CPU streaming through 64 MiB.
    Memory,
    /// Writes synced to disk.
    Io,
    /// All three.
    All,
}

impl LoadKind {
    /// The name `--load` takes.
    pub fn name(self) -> &'static str {
        match self {
            LoadKind::Cpu => "cpu",
            LoadKind::Memory => "memory",
            LoadKind::Io => "io",
            LoadKind::All => "all",
        }
    }
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    file: Option<PathBuf>,
}

impl Load {
    /// Start `kind` on every CPU of this machine.
    pub fn start(kind: LoadKind) -> Result<Load> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Load {
            stop: stop.clone(),
            threads: Vec::new(),
            file: None,
        };
        let cpu = matches!(kind, LoadKind::Cpu | LoadKind::All);
        let memory = matches!(kind, LoadKind::Memory | LoadKind::All);
        let io = matches!(kind, LoadKind::Io | LoadKind::All);
        for i in 0..cpus {
            if cpu {
                let stop = stop.clone();
                load.spawn(format!("load-cpu-{i}"), move || busy(&stop))?;
            }
            if memory {
                let stop = stop.clone();
                load.spawn(format!("load-memory-{i}"), move || stream(&stop))?;
            }
        }
        if io {
            let path = std::env::temp_dir().join(format!("ferroscope-load-{}.bin", std::process::id()));
            let mut file = std::fs::File::create(&path)
                .with_context(|| format!("{}: cannot create the io load's file", path.display()))?;
            load.file = Some(path);
            let stop = stop.clone();
            load.spawn("load-io".into(), move || write_sync(&stop, &mut file))?;
        }
        Ok(load)
    }

    fn spawn(&mut self, name: String, f: impl FnOnce() + Send + 'static) -> Result<()> {
        let h = std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .context("cannot start a load thread")?;
        self.threads.push(h);
        Ok(())
    }

    /// Stop the load and wait for its threads.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(p) = self.file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.end();
    }
}

fn busy(stop: &AtomicBool) {
    let mut x: u64 = 1;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..10_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        }
        std::hint::black_box(x);
    }
}

fn stream(stop: &AtomicBool) {
    let mut buf = vec![0u8; MEMORY_BUFFER_BYTES];
    let mut pass: u8 = 0;
    while !stop.load(Ordering::Relaxed) {
        pass = pass.wrapping_add(1);
        // One write per cache line, then one read: every line goes out to memory and back.
        for i in (0..buf.len()).step_by(64) {
            buf[i] = pass;
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        let sum: u64 = buf.iter().step_by(64).map(|b| *b as u64).sum();
        std::hint::black_box(sum);
    }
}

fn write_sync(stop: &AtomicBool, file: &mut std::fs::File) {
    let chunk = vec![0x5au8; IO_CHUNK_BYTES];
    let mut written = 0;
    while !stop.load(Ordering::Relaxed) {
        if written + IO_CHUNK_BYTES > IO_FILE_BYTES {
            let _ = file.set_len(0);
            let _ = std::io::Seek::rewind(file);
            written = 0;
        }
        if file.write_all(&chunk).is_err() || file.sync_data().is_err() {
            // A full or read-only disk: the load goes on as CPU time only.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        written += IO_CHUNK_BYTES;
    }
}
