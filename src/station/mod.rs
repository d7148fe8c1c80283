//! The station: camera → tool → decision → reject tracking → outputs, with counters.
//!
//! Three kinds of thread work on one [`Tracker`](crate::core::reject::Tracker) (the shift
//! register), which the actuator thread owns; the others reach it through single-producer
//! queues, so no thread on the way to a reject pulse takes a lock:
//! - the frame loop (the calling thread) begins an item at each capture and hands it its
//!   decision;
//! - the actuator thread owns the outputs, polls the tracker and sleeps until its next edge or
//!   heartbeat — it, not the frame loop, applies deadlines, so a model that hangs still gets
//!   its items the fail-safe outcome on time;
//! - with an encoder or a part-present sensor, an input thread feeds kernel-timestamped edges.
//!
//! The camera never stops the station. A frame that is corrupt or of the wrong size gives its
//! item the fail-safe. Frames the driver dropped (a gap in its sequence numbers) and the
//! frames a lost or silent camera did not deliver become items too, one per frame period
//! (free-run) or one per trigger edge, each with the fail-safe outcome: the belt that passed a
//! blind camera is treated as the configured fail-safe says. Meanwhile the camera is reopened
//! with backoff ([`Supervised`](crate::camera::supervisor::Supervised)) until it returns.
//!
//! Every error on the frame path is a decision (the fail-safe), a fault counter and a log
//! line; only start-up errors stop the station.
//!
//! The rooms a frame passes through, each a module with its guarantees:
//! [`capture`] (the camera, and the items a frame or a missing frame stands for) →
//! [`inspect`] (the tool and its decision) → [`tracking`] (the shift register shared with the
//! other threads) → [`actuate`] (the actuator thread and the outputs), fed by [`inputs`]
//! (encoder and trigger threads); [`report`] hands every item to the log, the records and the
//! screen, and [`summary`] is what a run returns. [`lifecycle`] is how a running station is
//! stopped and reloaded and how it reports to a service manager; [`realtime`] gives the
//! actuator and input threads their `[realtime]` priorities. [`config`] reads a profile, [`board`] its
//! `[board]` section, [`check`] opens its devices without running; [`timing`] measures the
//! actuator on this machine. This file is the assembly: start-up, the frame loop, shutdown.

pub mod actuate;
pub mod board;
pub mod capture;
pub mod check;
pub mod config;
pub mod control_socket;
pub mod coprocessor;
pub mod inputs;
pub mod inspect;
pub mod lifecycle;
pub mod realtime;
pub mod recipes;
pub mod report;
pub mod summary;
pub mod timing;
pub mod tracking;

use anyhow::{anyhow, Result};

use crate::core::reject::DecideError;
use crate::core::screen::fault as screen_fault;
use crate::core::time::Instant;
use crate::drivers::v4l2::TriggerMode;
use crate::hal::{CaptureError, Clock};
use crate::sim::clock::MonotonicClock;
use capture::{CameraSetup, Capture};
use config::StationConfig;
use inspect::Inspect;
use lifecycle::Notifier;
use report::{Item, Report};
use tracking::{Queues, Signals, Tracking};

pub use actuate::output_lines;
pub use capture::MAX_BLIND_ITEMS_PER_CAPTURE;
pub use lifecycle::{Control, NotifyTarget, StopReport};
pub use summary::{EncoderStats, FaultCounts, ItemReport, Summary};
pub use timing::{timing_bench, TimingReport};
pub use tracking::{RejectAudit, LATE_PULSE_US, MAX_AUDIT_ITEMS, MAX_PENDING_TRIGGERS};

/// Run the station described by `cfg` until the replay ends; `on_item` sees every item.
pub fn run(cfg: &StationConfig, on_item: impl FnMut(&ItemReport<'_>)) -> Result<Summary> {
    run_until(cfg, &Control::new(), on_item)
}

/// Run the station until the replay ends or `control` asks it to stop (a live camera runs
/// until then), taking the decision rules of each reload `control` accepts; see
/// [`lifecycle`] for what a stop and a reload promise.
pub fn run_until(cfg: &StationConfig, control: &Control, mut on_item: impl FnMut(&ItemReport<'_>)) -> Result<Summary> {
    let clock = MonotonicClock::default();
    if let Some(b) = &cfg.board {
        b.apply_cpu_hints()?;
    }
    let rt_report = std::sync::Arc::new(realtime::RealtimeReport::default());
    // Before any thread starts: they inherit the frame loop's CPUs (the pulse threads then
    // move to theirs).
    let _frame_cpus = realtime::pin_frame_loop(&cfg.realtime, &rt_report);
    // The PLC's server first: a client connected during start-up reads "starting" and then
    // every item.
    let plc = match (cfg.modbus_listen()?, &cfg.opcua) {
        (None, None) => None,
        (modbus, _) => {
            let state = std::sync::Arc::new(crate::plc::PlcState::new(clock, cfg.plc_trigger()));
            state.set_recipe_count(cfg.recipe_names().len() as u16);
            let field = format!("{}: field `modbus.listen`", cfg.path.display());
            let server = match modbus {
                Some(addr) => Some(crate::plc::modbus::ModbusServer::start(addr, state.clone(), &field)?),
                None => None,
            };
            Some((state, server))
        }
    };
    // Start-up, in the order a frame passes: any error here stops the station. Every recipe
    // is checked first; recipe 0's model is loaded (its classes are the station's first).
    // The recipe the line ran before a restart (kept in the records folder), else recipe 0.
    let book = recipes::RecipeBook::open(cfg)?;
    let with_recipes = !cfg.recipes.is_empty();
    let persist = match with_recipes {
        true => cfg.record_sections().0.map(|r| r.dir.join(recipes::ACTIVE_RECIPE_FILE)),
        false => None,
    };
    let start_recipe = persist
        .as_deref()
        .and_then(|f| recipes::read_active(f, &book))
        .unwrap_or(0);
    let start_cfg = &book.entries[start_recipe].cfg;
    let (mut inspect, _) = Inspect::load(start_cfg)?;
    inspect.class_map = book.entries[start_recipe].class_map;
    let classes = book.classes.clone();
    let ejectors = book.ejectors(start_recipe, &start_cfg.ejectors(inspect.tool.manifest())?);
    let CameraSetup {
        camera,
        frame_bytes,
        largest_size,
        period_us,
        expected_items,
    } = capture::open_camera(cfg, clock)?;
    let frame_buf = vec![0u8; frame_bytes.max(1)];
    if let Some((w, h)) = largest_size {
        inspect.tool.prepare(w, h);
    }
    let (tracker, speed) = tracking::open_tracker(cfg, &ejectors, clock)?;
    let (recipe_names, recipe_models) = (book.names(), book.model_lines());
    let switcher = std::sync::Arc::new(recipes::Switcher::new(book, start_recipe, largest_size, persist));
    let socket = match with_recipes {
        true => {
            let path = control_socket::socket_path(cfg);
            let field = format!("{}: field `station.control_socket`", cfg.path.display());
            Some(control_socket::ControlSocket::bind(&path, &field)?)
        }
        false => None,
    };
    let socket_stop = std::sync::atomic::AtomicBool::new(false);
    // The OPC UA server: the vision system's state, results and recipes.
    let opcua = match (cfg.opcua_setup(&classes)?, &plc) {
        (Some(setup), Some((state, _))) => {
            let field = format!("{}: field `opcua.listen`", cfg.path.display());
            let commands = with_recipes.then(|| switcher.clone() as std::sync::Arc<dyn crate::records::RecipeCommands>);
            Some(crate::plc::opcua::OpcuaServer::start(
                setup,
                state.clone(),
                commands,
                &field,
            )?)
        }
        _ => None,
    };
    let mut recipe0_rules: Option<lifecycle::NewRules> = None;
    let audit_cap = tracking::audit_capacity(expected_items);
    let steal_before = realtime::cpu_steal_us();
    realtime::lock_memory(&cfg.realtime, &rt_report);
    let _cpu_latency = realtime::hold_cpu_latency(&cfg.realtime, &rt_report);
    let out = actuate::open_outputs(cfg, clock)?;
    let timing = actuate::timing_of(cfg, &ejectors, speed);
    let (link_tx, link_rx) = match cfg.outputs.backend.as_str() {
        "coprocessor" => {
            let (tx, rx) = coprocessor::open(cfg, &ejectors, speed, clock, crate::sim::recording::MAX_TIMELINE_EVENTS)?;
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let signals = Signals::default();
    let mut queues = Queues::new();
    let mut ends = queues.split();
    ends.actuator.standstill = cfg
        .inputs
        .encoder
        .as_ref()
        .and_then(|e| e.standstill_ms)
        .map(|ms| ((ms as f64 * 1000.0) as u64, clock.now()));
    ends.actuator.link = link_tx;
    let frame_thread = std::thread::current();

    let (end, loop_end, act_end, mut report, capture, link_end) = std::thread::scope(|scope| -> Result<_> {
        let parts = actuate::ActuatorParts {
            tracker,
            fired_capacity: audit_cap,
            ends: ends.actuator,
            signals: &signals,
            frame: frame_thread.clone(),
        };
        let act = actuate::spawn(scope, cfg, parts, out, timing, clock, &rt_report)?;
        // The co-processor's link: kept alive from now on; ends after the actuator.
        let link = match link_rx {
            Some(rx) => {
                let signals = &signals;
                let spawned = std::thread::Builder::new()
                    .name("coprocessor-link".into())
                    .spawn_scoped(scope, move || rx.run(signals, &signals.inputs_stop, clock));
                match spawned {
                    Ok(h) => Some(h),
                    Err(e) => {
                        signals.stop.store(true, std::sync::atomic::Ordering::Release);
                        signals.inputs_stop.store(true, std::sync::atomic::Ordering::Release);
                        act.thread().unpark();
                        return Err(anyhow!("cannot start the co-processor's link thread: {e}"));
                    }
                }
            }
            None => None,
        };
        let wake = inputs::Wake {
            actuator: act.thread().clone(),
            frame: frame_thread.clone(),
        };
        let tracking = Tracking::new(ends.frame, &signals, act.thread().clone(), clock);
        let started = inputs::spawn(
            scope,
            cfg,
            &signals,
            ends.encoder,
            ends.trigger,
            wake,
            clock,
            &rt_report,
            plc.as_ref().map(|(state, _)| state),
        )
        .and_then(|inputs| {
            let report = Report::start(
                cfg,
                classes,
                (
                    &recipe_names,
                    &recipe_models,
                    with_recipes.then(|| switcher.clone() as std::sync::Arc<dyn crate::records::RecipeCommands>),
                ),
                frame_bytes,
                audit_cap,
                rt_report.clone(),
                clock,
            )?;
            Ok((inputs, report))
        });
        let (inputs, mut report) = match started {
            Ok(s) => s,
            Err(e) => {
                // Start-up failed after the actuator started: let it end before the error.
                tracking.stop();
                signals.inputs_stop.store(true, std::sync::atomic::Ordering::Release);
                return Err(e);
            }
        };
        let mut capture = Capture::new(camera, frame_buf, cfg.trigger_mode(), period_us, report.run_start);
        if let Some((state, _)) = &plc {
            report.attach_plc(state.clone());
        }
        report.set_recipe(start_recipe);
        if with_recipes {
            let started = switcher.spawn(scope).and_then(|_| {
                let Some(sock) = socket else { return Ok(()) };
                let (sw, stop) = (&*switcher, &socket_stop);
                std::thread::Builder::new()
                    .name("control-socket".into())
                    .spawn_scoped(scope, move || sock.serve(sw, stop))
                    .map(|_| ())
                    .map_err(|e| anyhow!("cannot start the control socket thread: {e}"))
            });
            if let Err(e) = started {
                switcher.close();
                tracking.stop();
                signals.inputs_stop.store(true, std::sync::atomic::Ordering::Release);
                return Err(e);
            }
            control.attach_recipes(Some(switcher.clone()));
        }

        let mut notifier = Notifier::open(control.notify_target(), clock.now());
        frame_loop(
            control,
            &mut capture,
            &mut inspect,
            &tracking,
            &mut report,
            clock,
            &mut notifier,
            &mut on_item,
            (&switcher, &mut recipe0_rules),
        );
        let loop_end = clock.now();
        control.attach_recipes(None);
        switcher.close();
        socket_stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(n) = &notifier {
            n.stopping();
        }

        // Shutdown: the screen and records first, then the threads: the actuator drains the
        // belt (the encoder counts on until it has), and the inputs stop last.
        report.close();
        tracking.stop();
        let end = act.join().map_err(|_| anyhow!("actuator thread panicked"))?;
        let act_end = clock.now();
        signals.inputs_stop.store(true, std::sync::atomic::Ordering::Release);
        for i in inputs {
            let _ = i.join();
        }
        let link_end = match link {
            Some(h) => Some(h.join().map_err(|_| anyhow!("co-processor link thread panicked"))?),
            None => None,
        };
        Ok((end, loop_end, act_end, report, capture, link_end))
    })?;
    let m = inspect.tool.manifest();
    let model = format!("{} {} ({})", m.model.name, m.model.version, inspect.precision.name());
    // With the co-processor, the pulses it drove are the timeline; the station's own plan is
    // compared with them.
    let (timeline, coprocessor_json) = match link_end {
        Some(l) => {
            let mut j = l.json;
            let cmp = coprocessor::compare(end.out.events(), &l.timeline);
            let station_fired: Vec<(u32, u8)> = end.fired.iter().map(|f| (f.id, f.ejector)).collect();
            let cmp_fired = coprocessor::compare_fired(&station_fired, &l.fired);
            let cmp_stats = coprocessor::compare_stats(end.tracker.stats(), l.mcu_stats.as_ref());
            if let (Some(a), Some(b), Some(c), Some(d)) = (
                j.as_object_mut(),
                cmp.as_object(),
                cmp_fired.as_object(),
                cmp_stats.as_object(),
            ) {
                a.extend(b.clone());
                a.extend(c.clone());
                a.extend(d.clone());
            }
            (l.timeline, Some(j))
        }
        None => (end.out.events().to_vec(), None),
    };
    let audit_on = speed.map(|v| (v, ejectors.as_slice()));
    let drain_timed_out = signals.drain_timed_out.load(std::sync::atomic::Ordering::Relaxed);
    {
        use std::sync::atomic::Ordering::Relaxed;
        let f = &mut report.faults;
        f.queue_overflow = signals.queue_overflows.load(Relaxed);
        f.encoder_lost_events = signals.encoder_lost.load(Relaxed);
        f.encoder_standstill = signals.encoder_standstill.load(Relaxed);
        report.counters.faults += f.queue_overflow + f.encoder_lost_events + f.encoder_standstill;
    }
    let totals = tracking::totals(&signals, &end.tracker, end.fired);
    let mut summary = report.summary(Some(totals), timeline, audit_on, &capture.camera, model);
    let last_pulse_end = summary
        .timeline
        .iter()
        .filter(|e| matches!(e.line, crate::hal::OutputLine::Reject(_)) && !e.active)
        .map(|e| e.actual)
        .max()
        .filter(|t| *t > loop_end)
        .unwrap_or(loop_end);
    summary.stop = StopReport {
        cause: control.stop_cause().unwrap_or("end of input"),
        drain_ms: act_end.us_since(loop_end) as f64 / 1000.0,
        end_after_last_pulse_ms: act_end.us_since(last_pulse_end) as f64 / 1000.0,
        drain_timed_out,
    };
    (summary.reloads, summary.reloads_refused) = control.reload_counts();
    if cfg.inputs.encoder.is_some() {
        use std::sync::atomic::Ordering::Relaxed;
        summary.encoder = Some(EncoderStats {
            events: signals.encoder_events.load(Relaxed),
            count: signals.encoder_count.load(Relaxed),
            missing_events: signals.encoder_missing.load(Relaxed),
        });
    }
    summary.realtime = rt_report.lines();
    if with_recipes {
        use std::sync::atomic::Ordering::Relaxed;
        summary.recipes = Some(serde_json::json!({
            "names": recipe_names,
            "active": recipe_names.get(switcher.active()),
            "switches": switcher.applied.load(Relaxed),
            "refused": switcher.refused.load(Relaxed),
        }));
    }
    summary.modbus = plc.and_then(|(state, server)| server.map(|s| s.stats_json(&state)));
    summary.coprocessor = coprocessor_json;
    drop(opcua);
    summary.cpu_steal_ms = steal_before
        .zip(realtime::cpu_steal_us())
        .map(|(a, b)| b.saturating_sub(a) as f64 / 1000.0);
    Ok(summary)
}

/// Put the loaded recipe in place between two items: the routing first (through the command
/// queue, ahead of the next decision), then the tool and rules; the old tool goes back to the
/// loader. Allocates nothing.
fn switch_recipe(
    loaded: recipes::Loaded,
    switcher: &recipes::Switcher,
    inspect: &mut Inspect,
    tracking: &Tracking<'_>,
    report: &mut Report<'_>,
    recipe0_rules: Option<&lifecycle::NewRules>,
) {
    let recipes::Loaded {
        index,
        inspect: mut new,
        reply,
    } = loaded;
    let routes = switcher.book().entries[index].routes;
    if !tracking.set_routes(routes) {
        switcher.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = reply {
            let _ = r.try_send(recipes::Answer::Refused(
                "the actuator did not take the recipe's routing; the running recipe stays".into(),
            ));
        }
        switcher.applied_none(new);
        return;
    }
    if let (0, Some(r)) = (index, recipe0_rules) {
        new.rules = r.rules.clone();
        new.deadline_us = r.deadline_us;
    }
    std::mem::swap(inspect, &mut *new);
    report.set_recipe(index);
    switcher.applied(index, new, reply, report.counters.inspected);
}

/// One item per capture until the replay ends or `stop` is set: capture → inspect → decide
/// (the tracker) → report. Every error here is a decision (the fail-safe) and a fault.
/// Between two items: new decision rules from a reload, and the service notifications.
#[allow(clippy::too_many_arguments)]
fn frame_loop(
    control: &Control,
    capture: &mut Capture,
    inspect: &mut Inspect,
    tracking: &Tracking<'_>,
    report: &mut Report<'_>,
    clock: MonotonicClock,
    notifier: &mut Option<Notifier>,
    on_item: &mut impl FnMut(&ItemReport<'_>),
    (switcher, recipe0_rules): (&recipes::Switcher, &mut Option<lifecycle::NewRules>),
) {
    let mut recipes_refused_seen = 0;
    loop {
        if control.stop_requested() {
            break;
        }
        if let Some(new) = control.take_rules() {
            // A reload's rules are recipe 0's: they decide now if it runs, else when it
            // comes back.
            if switcher.active() == 0 {
                inspect.rules = new.rules.clone();
                inspect.deadline_us = new.deadline_us;
            }
            *recipe0_rules = Some(new);
        }
        if let Some(index) = report.plc_recipe_request() {
            switcher.request(index, None);
        }
        if let Some(loaded) = switcher.take() {
            switch_recipe(loaded, switcher, inspect, tracking, report, recipe0_rules.as_ref());
        }
        let refused = switcher.refused.load(std::sync::atomic::Ordering::Relaxed);
        if refused > recipes_refused_seen {
            recipes_refused_seen = refused;
            report.note(screen_fault::RECIPE_REFUSED, clock.now());
        }
        if let Some(n) = notifier.as_mut() {
            n.tick(clock.now(), &report.counters, control.reload_counts());
        }
        if tracking.new_encoder_fault() {
            report.note(screen_fault::ENCODER_FAULT, clock.now());
        }
        report.plc_tick();
        // Software trigger: wait for an edge, then take the first frame exposed after it.
        let mut trigger: Option<(u32, Instant)> = None;
        if capture.mode == TriggerMode::Software {
            let Some(edge) = tracking.wait_trigger() else { break };
            trigger = edge;
            if trigger.is_none() {
                continue;
            }
        }
        let captured_guess = clock.now();
        let result = capture.capture(trigger.map(|t| t.1));
        let (seq, captured) = match &result {
            Err(CaptureError::EndOfStream) => break,
            Err(e @ (CaptureError::Timeout | CaptureError::Disconnected)) => {
                let why = if *e == CaptureError::Timeout {
                    "camera timeout"
                } else {
                    "camera lost"
                };
                report.faults.camera += 1;
                report.counters.fault();
                let now = clock.now();
                tracking.note_fault(now);
                capture.blind_spell(now, trigger, tracking, |id, at, begin| {
                    let d = inspect.rules.fail_safe();
                    report.blind_item(tracking, d, (id, at), begin, why, &inspect.tool, &mut *on_item);
                });
                continue;
            }
            Err(CaptureError::Corrupt { sequence }) | Err(CaptureError::WrongSize { sequence, .. }) => {
                (*sequence, clock.now().max(captured_guess))
            }
            Ok(info) => (info.sequence, info.captured),
        };
        // Triggers off (the PLC's coil 0): a free-running camera's frames are not items.
        if trigger.is_none() && report.plc_ignores_frames() {
            continue;
        }
        let gap = capture.camera.last_gap() as u64;
        if gap > 0 {
            report.faults.dropped_frame += gap;
            report.counters.fault();
            tracking.note_fault(clock.now());
            report.note(screen_fault::BAD_FRAMES, clock.now());
            capture.dropped(gap, captured, |id, at| {
                let d = inspect.rules.fail_safe();
                report.blind_item(
                    tracking,
                    d,
                    (id, at),
                    true,
                    "dropped frame",
                    &inspect.tool,
                    &mut *on_item,
                );
            });
        }
        // The item enters the register before inference: if the model is slow or hangs, the
        // actuator thread still gives it the fail-safe at its deadline.
        let Some(item) = capture.item_for(captured, trigger, tracking) else {
            report.faults.untriggered_frame += 1;
            report.counters.fault();
            tracking.note_fault(clock.now());
            continue;
        };
        let mut fault: Option<&'static str> = None;
        if item.overflowed {
            report.faults.tracking_overflow += 1;
            fault = Some("tracking overflow");
        }
        report.plc_busy();
        let mut decision = inspect.decide(&result, &capture.frame_buf, &mut report.faults, &mut fault);
        let now = clock.now();
        let late = now.us_since(captured);
        if late > inspect.deadline_us && fault.is_none() {
            report.faults.decision_overrun += 1;
            decision = inspect.rules.fail_safe();
            fault = Some("decision overrun");
        }
        let decided = tracking.decide(item.id, &decision, now, fault.is_some());
        match decided.result {
            Ok(()) => {}
            Err(DecideError::UnknownItem) if item.overflowed => decision = inspect.rules.fail_safe(),
            Err(_) => {
                // The item reached its deadline first: the fail-safe already applied.
                if fault.is_none() {
                    report.faults.decision_overrun += 1;
                    fault = Some("decision overrun");
                }
                decision = inspect.rules.fail_safe();
                tracking.note_fault(now);
            }
        }
        let it = Item {
            id: item.id,
            sequence: seq,
            at: item.at,
            decision,
            fault,
            latency_us: late,
            source: capture.camera.last_source(),
            frame: result.as_ref().ok().map(|info| (&capture.frame_buf[..], *info)),
            scores: inspect.scores(),
        };
        report.item(&it, &decided, &inspect.tool, on_item);
        if let (Some(n), true) = (notifier.as_mut(), it.frame.is_some()) {
            n.decided_frame();
        }
    }
}
