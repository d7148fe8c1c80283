//! MQTT brokers and consumers for the records tests, all on 127.0.0.1:
//! - [`Embedded`]: a real broker (rumqttd) inside the test process, on an ephemeral port, with
//!   optional TLS and user names; it needs nothing installed;
//! - [`Outage`]: a TCP relay in front of a broker that drops every connection at once and
//!   refuses new ones for a while: the broker going away, as the station sees it;
//! - [`Mosquitto`]: the Mosquitto broker as a child process, for the interoperability tests,
//!   which run where Mosquitto is installed ([`mosquitto_installed`]) and say so when skipped;
//! - [`Consumer`]: the plant's consumer (rumqttc, QoS 1), collecting what the station sends;
//! - [`Pki`]: a CA and a broker certificate for 127.0.0.1, made in the test (rcgen).
//!
//! An embedded broker lives until the test process ends (rumqttd has no shutdown).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for a broker to accept connections, or a consumer to be subscribed.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A port nobody listens on now (the OS's choice), never one this process was given before:
/// tests that start brokers at once cannot be handed the same port.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn wait_listening(port: u16, what: &str) {
    assert!(
        listening_within(port, READY_WITHIN),
        "{what} never listened on 127.0.0.1:{port}"
    );
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` within `within`.
fn listening_within(port: u16, within: Duration) -> bool {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() >= within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// How many embedded brokers [`Embedded::start_with`] tries before it gives up.
const EMBEDDED_TRIES: usize = 3;

/// Longest wait for an embedded broker's first CONNACK.
const CONNACK_WITHIN: Duration = Duration::from_secs(10);

/// A broker certificate and key for 127.0.0.1 and the CA that signed it, as PEM files in a
/// folder.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn make(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "ferroscope-test-ca");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let cert = server.signed_by(&key, &*ca).unwrap();
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }
}

/// rumqttd in this process, MQTT 3.1.1 on 127.0.0.1.
pub struct Embedded {
    pub port: u16,
}

impl Embedded {
    /// Plain TCP, anonymous clients.
    pub fn start() -> Embedded {
        Embedded::start_with(None, &[])
    }

    /// With TLS (the broker's certificate and key) and, if `users` is not empty, only those
    /// user names and passwords.
    ///
    /// The broker counts as started once an MQTT client got its CONNACK (a port that merely
    /// accepts connections may belong to someone else, or to a broker whose server thread never
    /// answers); one that does not answer is left behind and another started on a new port.
    pub fn start_with(tls: Option<&Pki>, users: &[(&str, &str)]) -> Embedded {
        let mut seen = Vec::new();
        for _ in 0..EMBEDDED_TRIES {
            let port = Embedded::launch(tls, users);
            let probe = if listening_within(port, READY_WITHIN) {
                connack_from(
                    port,
                    tls.map(|p| p.ca.as_path()),
                    users.first().copied(),
                    CONNACK_WITHIN,
                )
            } else {
                Err("never listened".to_string())
            };
            match probe {
                Ok(()) => return Embedded { port },
                Err(e) => {
                    eprintln!("embedded broker on 127.0.0.1:{port}: {e}; starting another");
                    seen.push(format!("{port}: {e}"));
                }
            }
        }
        panic!("no embedded broker answered MQTT in {EMBEDDED_TRIES} tries: {seen:?}");
    }

    /// A broker thread on a fresh port; the port.
    fn launch(tls: Option<&Pki>, users: &[(&str, &str)]) -> u16 {
        use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};
        let port = free_port();
        let server = ServerSettings {
            name: format!("test-{port}"),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: tls.map(|p| TlsConfig::Rustls {
                capath: None,
                certpath: p.cert.display().to_string(),
                keypath: p.key.display().to_string(),
            }),
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 1 << 20,
                max_inflight_count: 1000,
                auth: (!users.is_empty()).then(|| users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect()),
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            router: RouterConfig {
                max_connections: 100,
                max_outgoing_packet_count: 200,
                max_segment_size: 10 << 20,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(HashMap::from([("1".to_string(), server)])),
            ..Default::default()
        };
        std::thread::spawn(move || {
            if let Err(e) = Broker::new(config).start() {
                panic!("embedded broker on port {port}: {e}");
            }
        });
        port
    }
}

/// MQTT options for a client `id` of the broker on 127.0.0.1:`port` (over TLS with the CA at
/// `ca`, and with `credentials`, when given).
fn options(id: String, port: u16, ca: Option<&Path>, credentials: Option<(&str, &str)>) -> rumqttc::MqttOptions {
    use rumqttc::{MqttOptions, TlsConfiguration, Transport};
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    if let Some((u, p)) = credentials {
        o.set_credentials(u, p);
    }
    if let Some(ca) = ca {
        let _ = rustls::crypto::ring::default_provider().install_default();
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: std::fs::read(ca).unwrap(),
            alpn: None,
            client_auth: None,
        }));
    }
    o
}

/// Whether a clean-session client gets a CONNACK from 127.0.0.1:`port` within `within`; the
/// last error seen when not.
fn connack_from(
    port: u16,
    ca: Option<&Path>,
    credentials: Option<(&str, &str)>,
    within: Duration,
) -> Result<(), String> {
    use rumqttc::{Client, Event, Packet};
    let (client, mut conn) = Client::new(options(format!("probe-{port}"), port, ca, credentials), 4);
    let t0 = Instant::now();
    let mut last = "no CONNACK".to_string();
    while t0.elapsed() < within {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                let _ = client.disconnect();
                return Ok(());
            }
            Ok(Err(e)) => {
                last = format!("no CONNACK ({e})");
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => {}
        }
    }
    Err(format!("{last} within {within:?}"))
}

/// A TCP relay from `port` to a broker; [`Outage::cut`] takes the broker away for a while.
pub struct Outage {
    pub port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Outage {
    pub fn relay_to(broker: u16) -> Outage {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, o) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    continue; // refused: closed at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", broker)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = o.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Outage { port, down, open }
    }

    /// Every connection through the relay dropped at once, and new ones refused for `down`.
    pub fn cut(&self, down: Duration) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        std::thread::sleep(down);
        self.down.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// Whether `program` is an executable file in a `$PATH` folder.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Mosquitto's broker and clients are installed (Debian: `mosquitto`, `mosquitto-clients`;
/// .ci/run installs them). When not, says that the test named `test` is skipped.
pub fn mosquitto_installed(test: &str) -> bool {
    let missing: Vec<&str> = ["mosquitto", "mosquitto_sub", "mosquitto_passwd"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "{test}: skipped: mosquitto not installed (no {} on PATH)",
        missing.join(", ")
    );
    false
}

/// The Mosquitto broker as a child process, with a configuration file.
pub struct Mosquitto {
    child: Child,
    conf: PathBuf,
    port: u16,
}

impl Mosquitto {
    /// Starts `mosquitto -c conf`, listening on `port`.
    pub fn start(conf: &Path, port: u16) -> Mosquitto {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Mosquitto broker (Debian package `mosquitto`)");
        wait_listening(port, "mosquitto");
        Mosquitto {
            child,
            conf: conf.to_path_buf(),
            port,
        }
    }

    /// SIGTERM (the broker saves its sessions), then start it again after `down`.
    pub fn restart(&mut self, down: Duration) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        std::thread::sleep(down);
        *self = Mosquitto::start(&self.conf, self.port);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The plant's consumer: a persistent session (clean session off), QoS 1, reconnecting on its
/// own, subscribed to `ferroscope/rec-test/#`.
pub struct Consumer {
    /// Every `item/reject` message, parsed.
    pub rejects: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Every `status` message.
    pub statuses: Arc<Mutex<Vec<String>>>,
}

impl Consumer {
    /// Connects to `port` (over TLS with the CA at `ca`, and with `credentials`, when given)
    /// and returns once subscribed.
    pub fn start(port: u16, ca: Option<&Path>, credentials: Option<(&str, &str)>) -> Consumer {
        use rumqttc::{Client, Event, Packet, QoS};
        let mut o = options(format!("plant-consumer-{port}"), port, ca, credentials);
        o.set_clean_session(false);
        let (client, mut conn) = Client::new(o, 64);
        let c = Consumer {
            rejects: Arc::default(),
            statuses: Arc::default(),
        };
        let subscribed = Arc::new(AtomicBool::new(false));
        // What the connection did before the subscription was acknowledged, for the message
        // when it never is.
        let early: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let (rejects, statuses, subscribed, early) =
                (c.rejects.clone(), c.statuses.clone(), subscribed.clone(), early.clone());
            std::thread::spawn(move || {
                for ev in conn.iter() {
                    if !subscribed.load(Ordering::SeqCst) {
                        let mut early = early.lock().unwrap();
                        if early.len() < 40 {
                            early.push(match &ev {
                                Ok(e) => format!("{e:?}"),
                                Err(e) => format!("error: {e}"),
                            });
                        }
                    }
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe("ferroscope/rec-test/#", QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.store(true, Ordering::SeqCst),
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if p.topic.ends_with("/item/reject") {
                                rejects
                                    .lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&p.payload).unwrap());
                            } else if p.topic.ends_with("/status") {
                                statuses
                                    .lock()
                                    .unwrap()
                                    .push(String::from_utf8_lossy(&p.payload).into_owned());
                            }
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(200)),
                    }
                }
            });
        }
        let t0 = Instant::now();
        while !subscribed.load(Ordering::SeqCst) {
            assert!(
                t0.elapsed() < READY_WITHIN,
                "the consumer never subscribed on port {port}; its connection saw: {:?}",
                early.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    /// Waits until `n` rejects have arrived (or `within` passed); returns what arrived.
    pub fn rejects_after(&self, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let t0 = Instant::now();
        while self.rejects.lock().unwrap().len() < n && t0.elapsed() < within {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.rejects.lock().unwrap().clone()
    }
}
