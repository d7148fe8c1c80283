//! Recipes: the products a running station switches between, each a model, its decision
//! rules, its calibration and which rejects each ejector takes (`[[recipes]]`; recipe 0 is
//! the profile's own `[tool]` and `[decision]`).
//!
//! Guarantees:
//! - every recipe is checked at start-up against its manifest (classes, rules, routing): a
//!   profile with a broken recipe does not start, and the error names the recipe and field;
//! - a switch loads the new model on the `recipe-loader` thread, never on the frame path: the
//!   model file (its sha256), the tool, its buffers for the largest frame and one warm-up
//!   inference. A recipe that fails there (a missing file, a sha256 mismatch, a model that
//!   does not load) is refused with the loader's error, counted, shown on the screen, and
//!   the running recipe keeps deciding;
//! - the frame loop takes a loaded recipe between two items, never within one, and only when
//!   it is ready (`try_lock`): every item is decided by one whole recipe, and the switch
//!   costs the frame loop a swap and a queue push. The recipe it replaces is handed back to
//!   the loader to be freed there;
//! - items already on the belt keep the ejector their own recipe routed them to: the new
//!   routing reaches the actuator through the command queue, in order, before the first
//!   item the new recipe decides;
//! - class indices in records, counters and events are the station's (every recipe's
//!   classes, in order of first appearance, at most [`MAX_CLASSES`]), so a class keeps its
//!   name whichever recipe decided it; each record names its recipe by index.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::config::StationConfig;
use super::inspect::Inspect;
use crate::core::frame::GrayFrame;
use crate::core::reject::{EjectorConfig, OutcomeSet, MAX_EJECTORS};
use crate::core::MAX_CLASSES;
use crate::model::manifest::Manifest;

/// Requests waiting for the loader: a switch takes a second or so; a PLC or an operator
/// asking more often than this is refused ("busy") rather than queued without end.
pub const MAX_PENDING_SWITCHES: usize = 4;

/// The file in the records folder naming the active recipe, so that a restart (or a power
/// cut) comes back with the product the line was running.
pub const ACTIVE_RECIPE_FILE: &str = "active-recipe";

/// The recipe `file` names, if it names one of `book`'s (a name the profile no longer has is
/// said on stderr and ignored).
pub fn read_active(file: &std::path::Path, book: &RecipeBook) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let name = text.trim();
    match book.find(name) {
        Some(i) => Some(i),
        None => {
            eprintln!(
                "{}: recipe \"{name}\" was active before the restart but the profile has no such recipe; starting with \"{}\"",
                file.display(),
                book.entries[0].name
            );
            None
        }
    }
}

/// Write `name` to `file` so that it survives a power cut: a temporary file, synced, renamed.
fn write_active(file: &std::path::Path, name: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{name}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Routing of one recipe: what each ejector takes, in station class indices.
pub type Routes = [OutcomeSet; MAX_EJECTORS];

/// One recipe as checked at start-up.
#[derive(Clone, Debug)]
pub struct RecipeEntry {
    /// Its name.
    pub name: String,
    /// The profile with the recipe in place.
    pub cfg: StationConfig,
    /// Model name, version and precision.
    pub model_line: String,
    /// Its class `i` is the station's class `class_map[i]`.
    pub class_map: [u8; MAX_CLASSES],
    /// What each ejector takes.
    pub routes: Routes,
}

/// Every recipe of a profile, checked.
#[derive(Clone, Debug)]
pub struct RecipeBook {
    /// The station's classes: every recipe's, in order of first appearance.
    pub classes: Vec<String>,
    /// The recipes, by index.
    pub entries: Vec<RecipeEntry>,
}

impl RecipeBook {
    /// Check every recipe of `cfg` against its manifest (models are not loaded).
    pub fn open(cfg: &StationConfig) -> Result<RecipeBook> {
        let names = cfg.recipe_names();
        let mut classes: Vec<String> = Vec::new();
        let mut entries = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let at = || match i {
                0 => format!("{}: recipe \"{name}\" (the profile's own)", cfg.path.display()),
                _ => format!("{}: `recipes[{}]` (\"{name}\")", cfg.path.display(), i - 1),
            };
            let rc = cfg.recipe_config(i)?;
            let manifest_path = rc.resolve(&rc.tool.manifest);
            let manifest =
                Manifest::load(&manifest_path).with_context(|| format!("{}: field `tool.manifest`", at()))?;
            if manifest.model.tool != rc.tool.kind {
                bail!(
                    "{}: field `tool.kind` is \"{}\", but {} is a \"{}\" model",
                    at(),
                    rc.tool.kind,
                    manifest_path.display(),
                    manifest.model.tool
                );
            }
            rc.rules(&manifest).with_context(at)?;
            let ejectors = rc.ejectors(&manifest).with_context(at)?;
            let mut class_map = [0u8; MAX_CLASSES];
            for (k, c) in manifest.class_names().iter().enumerate().take(MAX_CLASSES) {
                let idx = match classes.iter().position(|n| n == c) {
                    Some(p) => p,
                    None => {
                        if classes.len() == MAX_CLASSES {
                            bail!(
                                "{}: the recipes have more than {MAX_CLASSES} classes together; the station keeps at most {MAX_CLASSES}",
                                at()
                            );
                        }
                        classes.push(c.to_string());
                        classes.len() - 1
                    }
                };
                class_map[k] = idx as u8;
            }
            let precision = rc.precision()?;
            entries.push(RecipeEntry {
                name: name.clone(),
                model_line: format!(
                    "{} {} {}",
                    manifest.model.name,
                    manifest.model.version,
                    precision.name()
                ),
                routes: routes_of(&ejectors, &class_map),
                class_map,
                cfg: rc,
            });
        }
        Ok(RecipeBook { classes, entries })
    }

    /// The recipes' names, by index.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// The recipes' model lines, by index.
    pub fn model_lines(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.model_line.clone()).collect()
    }

    /// The index of the recipe called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }

    /// The index of the recipe called `name`, or the error its asker is given.
    pub fn index_of(&self, name: &str) -> std::result::Result<usize, String> {
        self.find(name)
            .ok_or_else(|| format!("no recipe \"{name}\" (recipes: {})", self.names().join(", ")))
    }

    /// Recipe `index`'s ejectors: the profile's, with the recipe's routing in station class
    /// indices.
    pub fn ejectors(&self, index: usize, base: &[EjectorConfig]) -> Vec<EjectorConfig> {
        let routes = self.entries.get(index).map(|e| e.routes).unwrap_or_default();
        base.iter()
            .zip(routes.iter())
            .map(|(e, r)| EjectorConfig { takes: *r, ..*e })
            .collect()
    }
}

/// `ejectors`' routing with class bits moved from the model's order to the station's.
fn routes_of(ejectors: &[EjectorConfig], class_map: &[u8; MAX_CLASSES]) -> Routes {
    let mut routes = [OutcomeSet::default(); MAX_EJECTORS];
    for (r, e) in routes.iter_mut().zip(ejectors) {
        let mut bits = 0u16;
        for (k, station) in class_map.iter().enumerate() {
            if e.takes.classes & (1 << k) != 0 {
                bits |= 1 << *station;
            }
        }
        *r = OutcomeSet {
            classes: bits,
            ..e.takes
        };
    }
    routes
}

/// How a switch ended, for whoever asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// The recipe decides from the item after `after_items` items (the run's count then).
    Applied {
        /// The recipe's name.
        recipe: String,
        /// Items inspected by the run before the first one this recipe decided.
        after_items: u64,
    },
    /// Refused: the running recipe keeps deciding.
    Refused(String),
}

/// What the loader and the frame loop answer a requester: built without allocating on the
/// frame path (a recipe by index, a refusal the frame loop gives in fixed words).
pub(super) enum Answer {
    Applied { index: usize, after_items: u64 },
    Refused(std::borrow::Cow<'static, str>),
}

/// Where an answer goes.
pub(super) type Reply = SyncSender<Answer>;

/// A request to the loader.
pub(super) enum Job {
    Load {
        index: usize,
        reply: Option<Reply>,
    },
    /// A recipe the frame loop replaced: freed here, off the frame path.
    Retire(Box<Inspect>),
}

/// A recipe ready for the frame loop.
pub(super) struct Loaded {
    pub(super) index: usize,
    pub(super) inspect: Box<Inspect>,
    pub(super) reply: Option<Reply>,
}

/// What the loader, the frame loop and the requesters share.
pub struct Switcher {
    book: RecipeBook,
    jobs: Mutex<Option<SyncSender<Job>>>,
    ready: Mutex<Option<Loaded>>,
    ready_flag: AtomicBool,
    active: AtomicUsize,
    /// Loads queued or under way.
    loads_pending: AtomicUsize,
    /// Switches applied, and refused (by the loader, or because too many were waiting).
    pub(super) applied: AtomicU64,
    pub(super) refused: AtomicU64,
    largest: Option<(usize, usize)>,
    /// Where the active recipe is kept across restarts (`[records]`), by the loader thread.
    persist: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Switcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switcher")
            .field("recipes", &self.book.names())
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

impl Switcher {
    /// A switcher over `book`, with recipe `active` running; new tools are sized for
    /// `largest` frames.
    pub(super) fn new(
        book: RecipeBook,
        active: usize,
        largest: Option<(usize, usize)>,
        persist: Option<std::path::PathBuf>,
    ) -> Switcher {
        Switcher {
            book,
            jobs: Mutex::new(None),
            ready: Mutex::new(None),
            ready_flag: AtomicBool::new(false),
            active: AtomicUsize::new(active),
            loads_pending: AtomicUsize::new(0),
            applied: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            largest,
            persist,
        }
    }

    /// The recipes.
    pub fn book(&self) -> &RecipeBook {
        &self.book
    }

    /// The recipe deciding now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Ask for recipe `index`; `reply` hears how it ended. Never waits: a request that
    /// finds the loader's queue full is refused at once.
    pub(super) fn request(&self, index: usize, reply: Option<Reply>) {
        let refuse = |reply: Option<Reply>, why: String| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = reply {
                let _ = r.try_send(Answer::Refused(why.into()));
            }
        };
        if index >= self.book.entries.len() {
            return refuse(
                reply,
                format!("no recipe {index} (there are {})", self.book.entries.len()),
            );
        }
        let idle = self.loads_pending.load(Ordering::Acquire) == 0 && !self.ready_flag.load(Ordering::Acquire);
        if index == self.active() && idle {
            // Already deciding: nothing to load.
            if let Some(r) = reply {
                let _ = r.try_send(Answer::Applied { index, after_items: 0 });
            }
            return;
        }
        let Ok(jobs) = self.jobs.try_lock() else {
            return refuse(reply, "the station is busy; ask again".into());
        };
        let Some(tx) = jobs.as_ref() else {
            return refuse(reply, "the station is not running".into());
        };
        self.loads_pending.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(Job::Load { index, reply }) {
            Ok(()) => return,
            Err(TrySendError::Full(Job::Load { reply, .. })) => refuse(
                reply,
                format!("{MAX_PENDING_SWITCHES} switches are waiting already; ask again"),
            ),
            Err(TrySendError::Disconnected(Job::Load { reply, .. })) => refuse(reply, "the station is stopping".into()),
            Err(_) => {}
        }
        self.loads_pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Ask for the recipe called `name` and wait (at most `timeout`) for the outcome.
    pub fn select(&self, name: &str, timeout: Duration) -> SwitchOutcome {
        // An unknown name is not a switch that failed: a name to correct (not counted).
        let index = match self.book.index_of(name) {
            Ok(i) => i,
            Err(why) => return SwitchOutcome::Refused(why),
        };
        let (tx, rx) = sync_channel(1);
        self.request(index, Some(tx));
        match rx.recv_timeout(timeout) {
            Ok(Answer::Applied { index, after_items }) => SwitchOutcome::Applied {
                recipe: self.book.entries[index].name.clone(),
                after_items,
            },
            Ok(Answer::Refused(why)) => SwitchOutcome::Refused(why.into_owned()),
            Err(_) => SwitchOutcome::Refused(format!(
                "recipe \"{name}\" was not applied within {} s (a model still loading, or no frames)",
                timeout.as_secs()
            )),
        }
    }

    /// The frame loop: the loaded recipe, when one is ready and the lock is free.
    pub(super) fn take(&self) -> Option<Loaded> {
        if !self.ready_flag.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = self.ready.try_lock().ok()?;
        let l = slot.take()?;
        self.ready_flag.store(false, Ordering::Release);
        Some(l)
    }

    /// The frame loop applied recipe `index`; `old` goes back to the loader to be freed.
    pub(super) fn applied(&self, index: usize, old: Box<Inspect>, reply: Option<Reply>, after_items: u64) {
        self.active.store(index, Ordering::Release);
        self.applied.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = reply {
            let _ = r.try_send(Answer::Applied { index, after_items });
        }
        self.applied_none(old);
    }

    /// The frame loop is done with `old` (replaced, or loaded but not taken): the loader
    /// frees it.
    pub(super) fn applied_none(&self, old: Box<Inspect>) {
        if let Ok(jobs) = self.jobs.try_lock() {
            if let Some(tx) = jobs.as_ref() {
                // A full queue: `old` comes back in the error and is freed here, rarely.
                let _ = tx.try_send(Job::Retire(old));
            }
        }
    }

    /// Start the loader thread in `scope`; it ends when [`Switcher::close`] is called.
    pub(super) fn spawn<'s, 'e>(&'s self, scope: &'s std::thread::Scope<'s, 'e>) -> Result<()> {
        let (tx, rx) = sync_channel::<Job>(MAX_PENDING_SWITCHES);
        *self.jobs.lock().map_err(|_| anyhow!("recipe switcher poisoned"))? = Some(tx);
        std::thread::Builder::new()
            .name("recipe-loader".into())
            .spawn_scoped(scope, move || self.loader(rx))
            .context("cannot start the recipe loader thread")?;
        Ok(())
    }

    /// No more switches: the loader ends once its queue is empty.
    pub(super) fn close(&self) {
        if let Ok(mut j) = self.jobs.lock() {
            *j = None;
        }
    }

    fn loader(&self, rx: Receiver<Job>) {
        let mut persisted = self.active();
        loop {
            let active = self.active();
            if let (Some(file), true) = (&self.persist, active != persisted) {
                match write_active(file, &self.book.entries[active].name) {
                    Ok(()) => persisted = active,
                    Err(e) => eprintln!("{}: cannot keep the active recipe: {e}", file.display()),
                }
            }
            let job = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let (index, reply) = match job {
                Job::Retire(old) => {
                    drop(old);
                    continue;
                }
                Job::Load { index, reply } => (index, reply),
            };
            let entry = &self.book.entries[index];
            match self.load(entry) {
                Ok(inspect) => {
                    let Ok(mut slot) = self.ready.lock() else { break };
                    if let Some(superseded) = slot.take() {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        if let Some(r) = superseded.reply {
                            let _ = r.try_send(Answer::Refused(
                                format!("superseded by recipe \"{}\" before it was applied", entry.name).into(),
                            ));
                        }
                    }
                    *slot = Some(Loaded {
                        index,
                        inspect: Box::new(inspect),
                        reply,
                    });
                    self.ready_flag.store(true, Ordering::Release);
                }
                Err(e) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    let why = format!("recipe \"{}\" refused, the running one stays: {e:#}", entry.name);
                    eprintln!("{why}");
                    if let Some(r) = reply {
                        let _ = r.try_send(Answer::Refused(why.into()));
                    }
                }
            }
            self.loads_pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Load, size and warm up recipe `entry`'s tool.
    fn load(&self, entry: &RecipeEntry) -> Result<Inspect> {
        let (mut inspect, _) = Inspect::load(&entry.cfg)?;
        inspect.class_map = entry.class_map;
        if let Some((w, h)) = self.largest {
            inspect.tool.prepare(w, h);
            // One inference before the first item: the first run of a model is the slow one.
            let px = vec![0u8; w * h];
            let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow!("warm-up frame: {e:?}"))?;
            inspect
                .tool
                .scores(&frame)
                .map_err(|e| anyhow!("the model failed its warm-up inference: {e:?}"))?;
        }
        Ok(inspect)
    }
}

impl crate::records::RecipeCommands for Switcher {
    fn request_by_name(&self, name: &str) -> std::result::Result<(), String> {
        self.request(self.book.index_of(name)?, None);
        Ok(())
    }

    fn active_index(&self) -> usize {
        self.active()
    }
}

/// The shared handle the station's controls reach the switcher through.
pub type SharedSwitcher = Arc<Switcher>;
