//! Events to an MQTT broker (rumqttc): per-item results, periodic counters and health, and the
//! station's online/offline status through the last will.
//!
//! Topics, under `ferroscope/<station>/`:
//! - `status`: `online` / `offline` (retained; `offline` is also the last will);
//! - `item/reject`, `item/accept`: one JSON message per item (`items = "all"`, or only
//!   rejects with `items = "rejects"`);
//! - `counters`: the persisted counters, total, this production day and this shift (retained);
//! - `health`: connection, queue, archive and records state.
//!
//! Delivery is at least once: item messages go out with QoS 1 and stay in the on-board queue
//! until the broker acknowledges them; a connection lost with messages unacknowledged sends
//! them again after reconnecting (a consumer may see a message twice and can tell by
//! `boot` + `item`). The queue holds `queue` items; beyond that the newest are dropped and
//! counted. The frame path never waits for the broker.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport};

use super::log::{LogRecord, FAULT_NAMES};
use super::store::{now_unix_ms, Store};
use super::Health;
use crate::core::decision::Action;

/// Most QoS 1 messages on the wire unacknowledged.
pub const MQTT_INFLIGHT: u16 = 64;
/// Requests handed to the client ahead of the network.
const CLIENT_CAP: usize = 16;

/// TLS material, PEM: the CA certificate, and the client certificate and key if the broker
/// asks for one.
pub type Tls = (Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

/// How the broker is reached.
#[derive(Clone, Debug)]
pub struct MqttSetup {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id.
    pub client_id: String,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// TLS: CA certificate (PEM) and optional client certificate + key (PEM).
    pub tls: Option<Tls>,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Counters and health period.
    pub counters_every: Duration,
    /// On-board queue, items.
    pub queue: usize,
    /// Longest wait at shutdown for the queue to drain.
    pub drain: Duration,
    /// Station name (topic prefix `ferroscope/<station>/`).
    pub station: String,
    /// Class names.
    pub classes: Vec<String>,
    /// Model name, version and precision (recipe 0's).
    pub model: String,
    /// Recipe names, by the index records carry.
    pub recipes: Vec<String>,
    /// Each recipe's model name, version and precision.
    pub recipe_models: Vec<String>,
    /// Where product changes from the broker go (`mqtt.recipe_commands`).
    pub recipe_commands: Option<std::sync::Arc<dyn super::RecipeCommands>>,
    /// This run's id (ms since 1970 at start-up), to tell runs apart.
    pub boot: u64,
}

/// The topic prefix of a station.
pub fn topic_prefix(station: &str) -> String {
    format!("ferroscope/{station}")
}

fn item_payload(s: &MqttSetup, r: &LogRecord) -> Vec<u8> {
    serde_json::json!({
        "station": s.station,
        "boot": s.boot,
        "item": r.item,
        "frame_sequence": r.frame_seq,
        "unix_ms": r.unix_ms,
        "action": if r.action == Action::Reject { "reject" } else { "accept" },
        "outcome": r.outcome.name(),
        "class": r.class.and_then(|c| s.classes.get(c as usize)),
        "score": r.score,
        "fault": (r.fault != 0).then(|| FAULT_NAMES[r.fault as usize]),
        "latency_ms": r.latency_us as f64 / 1000.0,
        "model": s.recipe_models.get(r.recipe as usize).unwrap_or(&s.model),
        "recipe": s.recipes.get(r.recipe as usize),
    })
    .to_string()
    .into_bytes()
}

fn options(s: &MqttSetup) -> MqttOptions {
    let mut o = MqttOptions::new(&s.client_id, &s.host, s.port);
    o.set_keep_alive(s.keep_alive.max(Duration::from_secs(5)));
    o.set_clean_session(true);
    o.set_inflight(MQTT_INFLIGHT);
    o.set_last_will(LastWill::new(
        format!("{}/status", topic_prefix(&s.station)),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some((u, p)) = &s.credentials {
        o.set_credentials(u, p);
    }
    if let Some((ca, client_auth)) = &s.tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: ca.clone(),
            alpn: None,
            client_auth: client_auth.clone(),
        }));
    }
    o
}

/// A message on the wire: an item (sent again if the connection drops before its
/// acknowledgement) or a status/counters message (not).
struct Sent {
    item: Option<LogRecord>,
    pkid: Option<u16>,
}

/// The MQTT thread. Ends when `events` is closed and the queue is drained (or `drain` passed).
pub fn run(s: MqttSetup, events: Receiver<LogRecord>, store: Arc<Mutex<Store>>, health: Arc<Health>) {
    let prefix = topic_prefix(&s.station);
    let (client, mut conn) = Client::new(options(&s), CLIENT_CAP);
    let mut outbox: VecDeque<LogRecord> = VecDeque::with_capacity(s.queue);
    let mut sent: VecDeque<Sent> = VecDeque::with_capacity(MQTT_INFLIGHT as usize + CLIENT_CAP);
    let mut connected = false;
    let mut closed = false;
    let mut closing_since: Option<Instant> = None;
    let mut said_offline = false;
    let mut next_counters = Instant::now();
    let mut retry_at: Option<Instant> = None;
    let started = Instant::now();
    // Recipe commands: the topic taken, and the active recipe last announced (retained).
    let recipe_set = format!("{prefix}/recipe/set");
    let mut announced: Option<usize> = None;

    let take = |outbox: &mut VecDeque<LogRecord>, r: LogRecord, health: &Health| {
        if outbox.len() >= s.queue {
            health.mqtt_dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            outbox.push_back(r);
        }
    };

    loop {
        // New items from the frame path.
        if !closed {
            loop {
                match events.try_recv() {
                    Ok(r) => take(&mut outbox, r, &health),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        closing_since = Some(Instant::now());
                        break;
                    }
                }
            }
        }
        health
            .mqtt_queued
            .store(outbox.len() as u64 + sent.len() as u64, Ordering::Relaxed);
        if let Some(t) = closing_since {
            let drained = outbox.is_empty() && sent.iter().all(|m| m.item.is_none());
            if !said_offline && (drained || t.elapsed() > s.drain || !connected) {
                said_offline = true;
                if connected {
                    // The final counters (retained), then the status.
                    if let Some(c) = store.lock().ok().map(|st| counters_json(&st)) {
                        let _ = client.try_publish(format!("{prefix}/counters"), QoS::AtLeastOnce, true, c.to_string());
                    }
                    let _ = client.try_publish(format!("{prefix}/status"), QoS::AtLeastOnce, true, "offline");
                    let _ = client.try_disconnect();
                }
            }
            if said_offline && (!connected || t.elapsed() > s.drain + Duration::from_secs(2)) {
                break;
            }
        }
        if connected && !said_offline {
            while sent.len() < MQTT_INFLIGHT as usize {
                let Some(r) = outbox.front().copied() else { break };
                let topic = format!(
                    "{prefix}/item/{}",
                    if r.action == Action::Reject { "reject" } else { "accept" }
                );
                if client
                    .try_publish(topic, QoS::AtLeastOnce, false, item_payload(&s, &r))
                    .is_err()
                {
                    break;
                }
                outbox.pop_front();
                sent.push_back(Sent {
                    item: Some(r),
                    pkid: None,
                });
            }
            if let Some(cmd) = &s.recipe_commands {
                let active = cmd.active_index();
                if announced != Some(active) {
                    let name = s.recipes.get(active).cloned().unwrap_or_default();
                    if client
                        .try_publish(format!("{prefix}/recipe"), QoS::AtLeastOnce, true, name)
                        .is_ok()
                    {
                        sent.push_back(Sent { item: None, pkid: None });
                        announced = Some(active);
                    }
                }
            }
            if Instant::now() >= next_counters {
                next_counters = Instant::now() + s.counters_every;
                let counters = store.lock().ok().map(|st| counters_json(&st));
                let health_json = health.to_json(started.elapsed().as_secs());
                for (t, payload, retain) in [("counters", counters, true), ("health", Some(health_json), false)] {
                    let Some(p) = payload else { continue };
                    if client
                        .try_publish(format!("{prefix}/{t}"), QoS::AtLeastOnce, retain, p.to_string())
                        .is_ok()
                    {
                        sent.push_back(Sent { item: None, pkid: None });
                    }
                }
            }
        }
        if let Some(t) = retry_at {
            // Waiting before the next connection attempt; items keep coming into the queue.
            let now = Instant::now();
            if now < t {
                if closed {
                    std::thread::sleep((t - now).min(Duration::from_millis(50)));
                } else {
                    match events.recv_timeout((t - now).min(Duration::from_millis(50))) {
                        Ok(r) => take(&mut outbox, r, &health),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => {
                            closed = true;
                            closing_since = Some(Instant::now());
                        }
                    }
                }
                continue;
            }
            retry_at = None;
        }
        let wait = if connected {
            Duration::from_millis(10)
        } else {
            Duration::from_secs(3)
        };
        match conn.recv_timeout(wait) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                connected = true;
                health.mqtt_connected.store(true, Ordering::Relaxed);
                health.mqtt_connects.fetch_add(1, Ordering::Relaxed);
                if client
                    .try_publish(format!("{prefix}/status"), QoS::AtLeastOnce, true, "online")
                    .is_ok()
                {
                    sent.push_back(Sent { item: None, pkid: None });
                }
                next_counters = Instant::now();
                if s.recipe_commands.is_some() {
                    // A clean session: the subscription is made again on every connection.
                    let _ = client.try_subscribe(recipe_set.clone(), QoS::AtLeastOnce);
                    announced = None;
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == recipe_set => {
                if let Some(cmd) = &s.recipe_commands {
                    let name = String::from_utf8_lossy(&p.payload).trim().to_string();
                    let answer = match cmd.request_by_name(&name) {
                        Ok(()) => serde_json::json!({"asked": name, "ok": true}),
                        Err(e) => serde_json::json!({"asked": name, "ok": false, "error": e}),
                    };
                    if client
                        .try_publish(
                            format!("{prefix}/recipe/answer"),
                            QoS::AtLeastOnce,
                            false,
                            answer.to_string(),
                        )
                        .is_ok()
                    {
                        sent.push_back(Sent { item: None, pkid: None });
                    }
                }
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                if let Some(m) = sent.iter_mut().find(|m| m.pkid.is_none()) {
                    m.pkid = Some(pkid);
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                if let Some(i) = sent.iter().position(|m| m.pkid == Some(ack.pkid)) {
                    if let Some(m) = sent.remove(i) {
                        if m.item.is_some() {
                            health.mqtt_delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => {
                connected = false;
                health.mqtt_connected.store(false, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                if connected {
                    health.mqtt_disconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected = false;
                health.mqtt_connected.store(false, Ordering::Relaxed);
                // Unacknowledged items go back to the front of the queue, in order.
                for m in sent.drain(..).rev() {
                    if let Some(r) = m.item {
                        outbox.push_front(r);
                    }
                }
                while outbox.len() > s.queue {
                    outbox.pop_back();
                    health.mqtt_dropped.fetch_add(1, Ordering::Relaxed);
                }
                if said_offline {
                    break;
                }
                retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
            Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        }
    }
    health.mqtt_connected.store(false, Ordering::Relaxed);
    health.mqtt_lost_at_exit.store(
        outbox.len() as u64 + sent.iter().filter(|m| m.item.is_some()).count() as u64,
        Ordering::Relaxed,
    );
}

/// The `counters` message: totals, this production day and this shift.
pub fn counters_json(st: &Store) -> serde_json::Value {
    serde_json::json!({
        "station": st.station,
        "unix_ms": now_unix_ms(),
        "total": st.counts_json(&st.total),
        "day": st.days.last().map(|p| serde_json::json!({"day": p.day, "counts": st.counts_json(&p.counts)})),
        "shift": st.shifts.last().map(|p| serde_json::json!({"day": p.day, "shift": p.shift, "counts": st.counts_json(&p.counts)})),
    })
}
