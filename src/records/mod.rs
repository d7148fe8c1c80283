//! What outlives the process: counters and the decision log that survive power loss
//! ([`log`], [`store`]), the reject archive ([`archive`]) and events to an MQTT broker
//! ([`mqtt`]).
//!
//! The frame path hands each decided item to a [`Recorder`], which never waits and never
//! allocates: records, archive frames and events go through bounded queues to their own
//! threads. A full queue drops the entry and counts it.
//!
//! Why one file of ~700 lines: the `[records]`, `[archive]` and `[mqtt]` sections, the
//! [`Recorder`] that owns their queues and threads, and the shared [`Health`] counters are one
//! start-up and shutdown order; the formats on disk and on the wire are in the submodules.

pub mod archive;
mod flush;
pub mod log;
pub mod mqtt;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use self::archive::{ArchiveJob, ArchiveSetup, MAX_ARCHIVE_BOXES};
use self::log::{LogRecord, LogWriter};
use self::store::{now_unix_ms, Store};
use crate::core::decision::Action;
use crate::core::screen::fault as screen_fault;
use crate::core::MAX_CLASSES;

/// Records waiting for the records thread.
pub const RECORD_QUEUE: usize = 4096;
/// Records written in one batch at most (a batch is written at least every flush interval).
pub const RECORD_BATCH: usize = 4096;

/// `[records]`: counters and the decision log.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSection {
    /// Folder (relative paths resolve against the config file's folder).
    pub dir: PathBuf,
    /// Records are written at least this often, and synced right after; a crash loses at
    /// most this interval, a power cut this interval and one sync.
    #[serde(default = "flush_ms")]
    pub flush_interval_ms: u32,
    /// Local shift start times, `"HH:MM"`, ascending; the first starts the production day.
    #[serde(default = "shifts")]
    pub shift_starts: Vec<String>,
    /// Production days kept in the per-day and per-shift counters.
    #[serde(default = "keep_days")]
    pub keep_days: u32,
    /// Decision log segments kept (65 536 records each, 4 MiB).
    #[serde(default = "segments")]
    pub max_log_segments: u32,
}

/// `[archive]`: images of rejected (and sampled accepted) items.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSection {
    /// Folder.
    pub dir: PathBuf,
    /// Size cap, MiB; the oldest entries are deleted beyond it.
    #[serde(default = "max_mb")]
    pub max_mb: f64,
    /// Share of accepted items archived too (0 = none, 1 = all).
    #[serde(default)]
    pub accepted_sample: f64,
    /// Frames waiting to be written at most (a fixed pool of frame buffers).
    #[serde(default = "archive_queue")]
    pub queue: u32,
}

/// `[mqtt]`: events to a broker.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host.
    pub host: String,
    /// Broker port (1883; 8883 is usual with TLS).
    #[serde(default = "mqtt_port")]
    pub port: u16,
    /// Client id (default `ferroscope-<station>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the password (first line), instead of `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM): connect with TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), with `client_key_file`, for brokers that require one.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Client key (PEM).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Item messages: "all", "rejects" or "none".
    #[serde(default = "all")]
    pub items: String,
    /// Counters and health every this many seconds.
    #[serde(default = "ten")]
    pub counters_interval_s: f32,
    /// On-board queue of item messages while the broker is away.
    #[serde(default = "mqtt_queue")]
    pub queue: u32,
    /// Keep-alive, seconds.
    #[serde(default = "keep_alive")]
    pub keep_alive_s: u32,
    /// Take product changes from the broker: a recipe name published to
    /// `ferroscope/<station>/recipe/set` (default off). Needs `[[recipes]]` and an
    /// authenticated connection (`username`, or a client certificate): the broker's access
    /// rules then decide who may change the product.
    #[serde(default)]
    pub recipe_commands: bool,
}

/// The station's recipes as the MQTT thread reaches them (`mqtt.recipe_commands`).
pub trait RecipeCommands: Send + Sync + std::fmt::Debug {
    /// Ask for the recipe called `name` (loaded off the frame path, applied between two
    /// items); an error names what is wrong with the request.
    fn request_by_name(&self, name: &str) -> std::result::Result<(), String>;
    /// The recipe deciding now: its index.
    fn active_index(&self) -> usize;
}

fn flush_ms() -> u32 {
    1000
}
fn shifts() -> Vec<String> {
    vec!["00:00".into()]
}
fn keep_days() -> u32 {
    31
}
fn segments() -> u32 {
    16
}
fn max_mb() -> f64 {
    512.0
}
fn archive_queue() -> u32 {
    8
}
fn mqtt_port() -> u16 {
    1883
}
fn all() -> String {
    "all".into()
}
fn ten() -> f32 {
    10.0
}
fn mqtt_queue() -> u32 {
    10_000
}
fn keep_alive() -> u32 {
    30
}

/// Parse `"HH:MM"` shift starts into minutes after midnight.
pub fn parse_shift_starts(v: &[String], file: &Path) -> Result<Vec<u16>> {
    let mut out = Vec::new();
    for s in v {
        let m = s
            .split_once(':')
            .and_then(|(h, m)| Some((h.trim().parse::<u16>().ok()?, m.trim().parse::<u16>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60)
            .map(|(h, m)| h * 60 + m);
        match m {
            Some(m) => out.push(m),
            None => bail!(
                "{}: field `records.shift_starts`: \"{s}\" is not a time of day (\"HH:MM\")",
                file.display()
            ),
        }
    }
    if out.is_empty() {
        out.push(0);
    }
    if out.windows(2).any(|w| w[0] >= w[1]) {
        bail!(
            "{}: field `records.shift_starts`: times must be in ascending order",
            file.display()
        );
    }
    Ok(out)
}

/// Shared state of the record threads, read by the station, the screen and the health message.
#[derive(Debug, Default)]
pub struct Health {
    /// Records dropped because the records queue was full.
    pub records_dropped: AtomicU64,
    /// Record batches that failed to write (disk full, read-only, I/O error).
    pub records_errors: AtomicU64,
    /// Records lost with those batches.
    pub records_lost: AtomicU64,
    /// The last records write failed.
    pub records_fault: AtomicBool,
    /// Archive entries written.
    pub archive_written: AtomicU64,
    /// Archive entries dropped at the frame path (queue or buffer pool empty).
    pub archive_dropped: AtomicU64,
    /// Archive entries that failed to write.
    pub archive_errors: AtomicU64,
    /// Archive entries deleted to stay under the size cap.
    pub archive_evicted: AtomicU64,
    /// Archive size now, bytes.
    pub archive_bytes: AtomicU64,
    /// The last archive write failed.
    pub archive_fault: AtomicBool,
    /// Connected to the broker now.
    pub mqtt_connected: AtomicBool,
    /// Connections made.
    pub mqtt_connects: AtomicU64,
    /// Connections lost.
    pub mqtt_disconnects: AtomicU64,
    /// Item messages acknowledged by the broker.
    pub mqtt_delivered: AtomicU64,
    /// Item messages dropped because the on-board queue was full.
    pub mqtt_dropped: AtomicU64,
    /// Item messages queued or unacknowledged now.
    pub mqtt_queued: AtomicU64,
    /// Item messages still undelivered when the station stopped.
    pub mqtt_lost_at_exit: AtomicU64,
}

impl Health {
    /// The `health` message and the summary's `records` object.
    pub fn to_json(&self, uptime_s: u64) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let b = |a: &AtomicBool| a.load(Ordering::Relaxed);
        serde_json::json!({
            "uptime_s": uptime_s,
            "records_dropped": g(&self.records_dropped),
            "records_errors": g(&self.records_errors),
            "records_lost": g(&self.records_lost),
            "records_fault": b(&self.records_fault),
            "archive_written": g(&self.archive_written),
            "archive_dropped": g(&self.archive_dropped),
            "archive_errors": g(&self.archive_errors),
            "archive_evicted": g(&self.archive_evicted),
            "archive_bytes": g(&self.archive_bytes),
            "archive_fault": b(&self.archive_fault),
            "mqtt_connected": b(&self.mqtt_connected),
            "mqtt_connects": g(&self.mqtt_connects),
            "mqtt_disconnects": g(&self.mqtt_disconnects),
            "mqtt_delivered": g(&self.mqtt_delivered),
            "mqtt_dropped": g(&self.mqtt_dropped),
            "mqtt_queued": g(&self.mqtt_queued),
            "mqtt_lost_at_exit": g(&self.mqtt_lost_at_exit),
        })
    }
}

/// What start-up recovered from the records folder.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// The records folder.
    pub dir: PathBuf,
    /// `counters.json` was there.
    pub had_counters: bool,
    /// Log position `counters.json` covered.
    pub counters_seq: u64,
    /// Log records replayed on top of it.
    pub replayed: u64,
    /// Bytes of a torn tail cut from the log.
    pub torn_bytes: u64,
    /// Items counted in all.
    pub inspected: u64,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "records {}: ", self.dir.display())?;
        if !self.had_counters && self.replayed == 0 {
            return write!(f, "new (nothing to recover)");
        }
        write!(
            f,
            "recovered {} items: counters file at log record {}, {} later log records replayed",
            self.inspected, self.counters_seq, self.replayed
        )?;
        if self.torn_bytes > 0 {
            write!(f, ", a torn tail of {} bytes cut from the log", self.torn_bytes)?;
        }
        Ok(())
    }
}

/// Open the records folder: cut a torn tail, load the counters and replay the log after them.
pub fn recover(
    dir: &Path,
    station: &str,
    classes: &[String],
    sec: &RecordsSection,
) -> Result<(LogWriter, Store, Recovery)> {
    let (writer, lr) = LogWriter::open(dir, sec.max_log_segments as usize)?;
    let loaded = Store::load(dir)?;
    let had = loaded.is_some();
    let mut st = loaded.unwrap_or_else(|| Store::new(station, classes));
    let counters_seq = st.next_seq;
    if st.classes != classes {
        // A new model with other classes: keep the totals, index new per-class counts by name.
        st.classes = classes.to_vec();
        st.total.rejected_per_class.clear();
    }
    let mut replayed = 0;
    for r in log::read_from(dir, st.next_seq)? {
        st.apply(&r, sec.keep_days as usize);
        replayed += 1;
    }
    if st.next_seq < writer.next_seq() && replayed == 0 && counters_seq < writer.next_seq() {
        // The log was trimmed past the counters file: what is left cannot be replayed.
        st.next_seq = writer.next_seq();
    }
    let rec = Recovery {
        dir: dir.to_path_buf(),
        had_counters: had,
        counters_seq,
        replayed,
        torn_bytes: lr.torn_bytes,
        inspected: st.total.inspected,
    };
    Ok((writer, st, rec))
}

/// One decided item as the frame path reports it.
pub struct ItemRecord<'a> {
    /// The decision record (time, ids, outcome…; `seq`, `day` and `shift` are filled in later).
    pub record: LogRecord,
    /// The tool's scores.
    pub scores: &'a [f32],
    /// The frame (grey, width, height, stride), if the camera saw the item.
    pub frame: Option<(&'a [u8], usize, usize, usize)>,
}

/// The frame path's handle; see the module documentation.
pub struct Recorder {
    records: SyncSender<LogRecord>,
    archive: Option<(SyncSender<ArchiveJob>, Receiver<Vec<u8>>)>,
    sample: f64,
    sample_acc: f64,
    mqtt: Option<(SyncSender<LogRecord>, bool)>,
    mqtt_on: bool,
    health: Arc<Health>,
    threads: Vec<JoinHandle<()>>,
    /// What start-up recovered (`None` without `[records]`).
    pub recovery: Option<Recovery>,
}

/// Settings for [`Recorder::start`].
pub struct RecorderSetup<'a> {
    /// The station config file (for messages and relative paths).
    pub config_path: &'a Path,
    /// Station name.
    pub station: &'a str,
    /// Class names.
    pub classes: &'a [String],
    /// Model name, version and precision (of recipe 0).
    pub model: &'a str,
    /// Recipe names, by the index records carry.
    pub recipes: &'a [String],
    /// Each recipe's model name, version and precision.
    pub recipe_models: &'a [String],
    /// The recipes, for `mqtt.recipe_commands` (`None`: a profile without `[[recipes]]`).
    pub recipe_commands: Option<Arc<dyn RecipeCommands>>,
    /// `[records]`, with its folder resolved.
    pub records: Option<&'a RecordsSection>,
    /// `[archive]`, with its folder resolved.
    pub archive: Option<&'a ArchiveSection>,
    /// `[mqtt]`, with its files resolved.
    pub mqtt: Option<&'a MqttSection>,
    /// Bytes of the largest frame (archive buffers are this big).
    pub frame_bytes: usize,
}

impl Recorder {
    /// Recover the records and start the threads. `None` when nothing is configured.
    pub fn start(s: &RecorderSetup<'_>) -> Result<Option<Recorder>> {
        if s.records.is_none() && s.archive.is_none() && s.mqtt.is_none() {
            return Ok(None);
        }
        let p = s.config_path;
        let health = Arc::new(Health::default());
        let mut threads = Vec::new();
        let (store, writer, recovery, flush, shift_starts, keep_days, dir) = match s.records {
            Some(sec) => {
                let shift_starts = parse_shift_starts(&sec.shift_starts, p)?;
                let (w, st, rec) = recover(&sec.dir, s.station, s.classes, sec)
                    .with_context(|| format!("{}: `[records]`: the records folder cannot be used", p.display()))?;
                (
                    st,
                    Some(w),
                    Some(rec),
                    Duration::from_millis(sec.flush_interval_ms.max(1) as u64),
                    shift_starts,
                    sec.keep_days as usize,
                    Some(sec.dir.clone()),
                )
            }
            None => (
                Store::new(s.station, s.classes),
                None,
                None,
                Duration::from_secs(1),
                vec![0],
                31,
                None,
            ),
        };
        let mut store = store;
        store.recipes = s.recipes.to_vec();
        let store = Arc::new(Mutex::new(store));
        let (mqtt_tx, mqtt_rx) = match s.mqtt {
            Some(m) => {
                if !matches!(m.items.as_str(), "all" | "rejects" | "none") {
                    bail!(
                        "{}: field `mqtt.items` is \"{}\"; allowed: \"all\", \"rejects\", \"none\"",
                        p.display(),
                        m.items
                    );
                }
                let (tx, rx) = sync_channel::<LogRecord>((m.queue as usize).clamp(1, RECORD_QUEUE));
                if m.items == "none" {
                    (None, Some(rx))
                } else {
                    (Some((tx, m.items == "all")), Some(rx))
                }
            }
            None => (None, None),
        };
        let (rec_tx, rec_rx) = sync_channel::<LogRecord>(RECORD_QUEUE);
        {
            let store = store.clone();
            let health = health.clone();
            threads.push(std::thread::Builder::new().name("records".into()).spawn(move || {
                flush::run(
                    rec_rx,
                    flush::Setup {
                        writer,
                        dir,
                        store,
                        health,
                        flush,
                        shift_starts,
                        keep_days,
                    },
                )
            })?);
        }
        let archive = match s.archive {
            Some(a) => {
                std::fs::create_dir_all(&a.dir).with_context(|| {
                    format!(
                        "{}: field `archive.dir`: cannot create {}",
                        p.display(),
                        a.dir.display()
                    )
                })?;
                let n = a.queue.clamp(1, 64) as usize;
                let (job_tx, job_rx) = sync_channel::<ArchiveJob>(n);
                let (free_tx, free_rx) = sync_channel::<Vec<u8>>(n);
                for _ in 0..n {
                    let _ = free_tx.try_send(Vec::with_capacity(s.frame_bytes.max(1)));
                }
                let setup = ArchiveSetup {
                    dir: a.dir.clone(),
                    max_bytes: (a.max_mb.max(0.0) * 1024.0 * 1024.0) as u64,
                    classes: s.classes.to_vec(),
                    model: s.model.to_string(),
                    station: s.station.to_string(),
                    recipes: s.recipes.to_vec(),
                    recipe_models: s.recipe_models.to_vec(),
                };
                let health = health.clone();
                threads.push(
                    std::thread::Builder::new()
                        .name("archive".into())
                        .spawn(move || archive::run(setup, job_rx, free_tx, health))?,
                );
                Some((job_tx, free_rx))
            }
            None => None,
        };
        if let (Some(m), Some(rx)) = (s.mqtt, mqtt_rx) {
            let read = |f: &Path, what: &str| {
                std::fs::read(f)
                    .with_context(|| format!("{}: field `mqtt.{what}`: cannot read {}", p.display(), f.display()))
            };
            let password = match (&m.password, &m.password_file) {
                (Some(pw), _) => Some(pw.clone()),
                (None, Some(f)) => Some(
                    String::from_utf8_lossy(&read(f, "password_file")?)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                ),
                (None, None) => None,
            };
            let tls = match &m.ca_file {
                Some(ca) => {
                    let client = match (&m.client_cert_file, &m.client_key_file) {
                        (Some(c), Some(k)) => Some((read(c, "client_cert_file")?, read(k, "client_key_file")?)),
                        (None, None) => None,
                        _ => bail!(
                            "{}: `[mqtt]`: `client_cert_file` and `client_key_file` go together",
                            p.display()
                        ),
                    };
                    Some((read(ca, "ca_file")?, client))
                }
                None => None,
            };
            if m.recipe_commands {
                if s.recipe_commands.is_none() {
                    bail!(
                        "{}: field `mqtt.recipe_commands` needs `[[recipes]]` to switch between",
                        p.display()
                    );
                }
                if m.username.is_none() && m.client_cert_file.is_none() {
                    bail!(
                        "{}: field `mqtt.recipe_commands` needs an authenticated connection (`mqtt.username`, or `mqtt.client_cert_file`): anyone who may publish to the broker could change the product",
                        p.display()
                    );
                }
            }
            let setup = mqtt::MqttSetup {
                host: m.host.clone(),
                port: m.port,
                client_id: m
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("ferroscope-{}", s.station)),
                credentials: m.username.clone().map(|u| (u, password.unwrap_or_default())),
                tls,
                keep_alive: Duration::from_secs(m.keep_alive_s as u64),
                counters_every: Duration::from_secs_f32(m.counters_interval_s.max(0.1)),
                queue: (m.queue as usize).max(1),
                drain: Duration::from_secs(5),
                station: s.station.to_string(),
                classes: s.classes.to_vec(),
                model: s.model.to_string(),
                recipes: s.recipes.to_vec(),
                recipe_models: s.recipe_models.to_vec(),
                recipe_commands: s.recipe_commands.clone().filter(|_| m.recipe_commands),
                boot: now_unix_ms(),
            };
            let health = health.clone();
            let store = store.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("mqtt".into())
                    .spawn(move || mqtt::run(setup, rx, store, health))?,
            );
        }
        Ok(Some(Recorder {
            records: rec_tx,
            archive,
            sample: s.archive.map(|a| a.accepted_sample.clamp(0.0, 1.0)).unwrap_or(0.0),
            sample_acc: 0.0,
            mqtt: mqtt_tx,
            mqtt_on: s.mqtt.is_some(),
            health,
            threads,
            recovery,
        }))
    }

    /// Hand over one decided item. Never waits, never allocates.
    pub fn item(&mut self, it: &ItemRecord<'_>, boxes: impl Iterator<Item = (u32, u32, u32, u32)>) {
        let r = it.record;
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.records.try_send(r) {
            self.health.records_dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((tx, all)) = &self.mqtt {
            if (*all || r.action == Action::Reject) && tx.try_send(r).is_err() {
                self.health.mqtt_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let sampled = r.action == Action::Accept && {
            self.sample_acc += self.sample;
            if self.sample_acc >= 1.0 {
                self.sample_acc -= 1.0;
                true
            } else {
                false
            }
        };
        if r.action != Action::Reject && !sampled {
            return;
        }
        let (Some((tx, free)), Some((px, w, h, stride))) = (&self.archive, it.frame) else {
            return;
        };
        let Ok(mut buf) = free.try_recv() else {
            self.health.archive_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let need = stride * (h.max(1) - 1) + w;
        if px.len() < need || buf.capacity() < need {
            let _ = buf;
            self.health.archive_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buf.clear();
        buf.extend_from_slice(&px[..need]);
        let mut scores = [0.0; MAX_CLASSES];
        let n = it.scores.len().min(MAX_CLASSES);
        scores[..n].copy_from_slice(&it.scores[..n]);
        let mut b: heapless::Vec<(u32, u32, u32, u32), MAX_ARCHIVE_BOXES> = heapless::Vec::new();
        for x in boxes {
            if b.push(x).is_err() {
                break;
            }
        }
        let job = ArchiveJob {
            record: r,
            scores,
            n_scores: n,
            boxes: b,
            frame: buf,
            width: w,
            height: h,
            stride,
            sampled,
        };
        if tx.try_send(job).is_err() {
            self.health.archive_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Screen fault bits raised by the records threads now.
    pub fn faults(&self) -> u16 {
        let h = &self.health;
        let mut f = 0;
        if h.archive_fault.load(Ordering::Relaxed) || h.records_fault.load(Ordering::Relaxed) {
            f |= screen_fault::DISK_FULL;
        }
        if self.mqtt_on && !h.mqtt_connected.load(Ordering::Relaxed) {
            f |= screen_fault::BROKER_OFFLINE;
        }
        f
    }

    /// The shared counters of the records threads.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Close the queues, let the threads write what they hold, and wait for them.
    pub fn finish(self) -> Arc<Health> {
        let Recorder {
            records,
            archive,
            mqtt,
            health,
            threads,
            ..
        } = self;
        drop(records);
        drop(archive);
        drop(mqtt);
        for t in threads {
            let _ = t.join();
        }
        health
    }
}
