//! The PLC's Modbus TCP server (`[modbus]`), spoken to on the wire: a poller sees every item
//! in order with the result code the station reports for it; malformed and random frames get
//! an exception or a closed connection, and the station decides and fires as before; several
//! clients at once, one more refused, one vanishing mid-request harming nothing.

mod audit;

use audit::no_reject_missed_as_planned;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroscope::core::decision::{Action, Decision, Outcome};
use ferroscope::plc::modbus::{ModbusServer, MAX_CLIENTS};
use ferroscope::plc::{PlcState, StationState};
use ferroscope::sim::conveyor::SplitMix64;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Modbus TCP client at the wire: MBAP header, unit 1, one request at a time.
struct Client {
    s: TcpStream,
    tid: u16,
}

/// What came back for a request.
#[derive(Debug, PartialEq)]
enum Reply {
    Data(Vec<u8>),
    Exception(u8),
    Closed,
}

impl Client {
    fn connect(addr: SocketAddr, within: Duration) -> Client {
        let t0 = Instant::now();
        loop {
            match TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    s.set_nodelay(true).unwrap();
                    return Client { s, tid: 0 };
                }
                Err(e) if t0.elapsed() < within => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("{addr}: {e}"),
            }
        }
    }

    /// Send `pdu` in a well-formed header; the reply's PDU.
    fn call(&mut self, pdu: &[u8]) -> Reply {
        self.tid = self.tid.wrapping_add(1);
        let mut f = Vec::with_capacity(7 + pdu.len());
        f.extend_from_slice(&self.tid.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        f.push(1);
        f.extend_from_slice(pdu);
        self.raw(&f)
    }

    /// Send `frame` as it is; the reply's PDU.
    fn raw(&mut self, frame: &[u8]) -> Reply {
        if self.s.write_all(frame).is_err() {
            return Reply::Closed;
        }
        let mut hdr = [0u8; 7];
        match self.s.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => {
                return Reply::Closed
            }
            Err(e) => panic!("no reply and the connection still open: {e} (frame {frame:02x?})"),
        }
        assert_eq!(
            &hdr[0..2],
            &frame[0..2],
            "the reply carries the request's transaction ID"
        );
        let len = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
        let mut pdu = vec![0u8; len - 1];
        self.s.read_exact(&mut pdu).unwrap();
        if pdu[0] & 0x80 != 0 {
            assert_eq!(pdu.len(), 2, "{pdu:02x?}");
            return Reply::Exception(pdu[1]);
        }
        Reply::Data(pdu)
    }

    fn read_input_registers(&mut self, addr: u16, n: u16) -> Result<Vec<u16>, u8> {
        let mut pdu = vec![0x04];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&n.to_be_bytes());
        match self.call(&pdu) {
            Reply::Data(d) => Ok(d[2..].chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()),
            Reply::Exception(e) => Err(e),
            Reply::Closed => panic!("closed"),
        }
    }

    fn read_discrete_inputs(&mut self, addr: u16, n: u16) -> Result<Vec<bool>, u8> {
        let mut pdu = vec![0x02];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&n.to_be_bytes());
        match self.call(&pdu) {
            Reply::Data(d) => Ok((0..n as usize).map(|i| d[2 + i / 8] >> (i % 8) & 1 == 1).collect()),
            Reply::Exception(e) => Err(e),
            Reply::Closed => panic!("closed"),
        }
    }

    fn write_coil(&mut self, addr: u16, on: bool) -> Reply {
        let mut pdu = vec![0x05];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(if on { &[0xFF, 0x00] } else { &[0x00, 0x00] });
        self.call(&pdu)
    }

    fn write_register(&mut self, addr: u16, v: u16) -> Reply {
        let mut pdu = vec![0x06];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&v.to_be_bytes());
        self.call(&pdu)
    }

    fn read_holding_register(&mut self, addr: u16) -> Result<u16, u8> {
        match self.call(&[0x03, (addr >> 8) as u8, addr as u8, 0, 1]) {
            Reply::Data(d) => Ok(u16::from_be_bytes([d[2], d[3]])),
            Reply::Exception(e) => Err(e),
            Reply::Closed => panic!("closed"),
        }
    }
}

/// Where the test's profile for `port` is written.
fn profile_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("ferroscope-modbus-{}-{port}.toml", std::process::id()))
}

/// The host simulation with its Modbus server on `port`, replayed `loops` times (0: until
/// stopped); its relative paths made absolute.
fn station(port: u16, loops: u32, seconds: u32) -> Child {
    station_with(port, loops, seconds, false)
}

/// The same, with the PLC's software trigger as the part-present signal when `plc_trigger`.
fn station_with(port: u16, loops: u32, seconds: u32, plc_trigger: bool) -> Child {
    let boards = root().join("boards").display().to_string();
    let full = std::fs::read_to_string(root().join("boards/host-sim-plc.toml")).unwrap();
    // Without the OPC UA server (tests/opcua.rs has it): [opcua] is followed by [modbus].
    let opcua = &full[full.find("[opcua]").unwrap()..full.find("[modbus]").unwrap()];
    let mut text = full
        .replace(opcua, "")
        .replace("127.0.0.1:1502", &format!("127.0.0.1:{port}"))
        .replace("loops = 0 ", &format!("loops = {loops} "))
        .replace("\"../", &format!("\"{boards}/../"))
        // Tests run beside each other: the frame loops not all confined to CPU 0, where they
        // would queue behind each other (the segment recipe alone takes about a period per
        // item on a slow host) …
        .replace("frame_cpus = [0]", "frame_cpus = []")
        // … and each station its own control socket.
        .replace(
            "name = \"host-sim-plc\"",
            &format!(
                "name = \"host-sim-plc\"\ncontrol_socket = \"{}\"",
                std::env::temp_dir()
                    .join(format!("ferroscope-modbus-{}-{port}.sock", std::process::id()))
                    .display()
            ),
        );
    if plc_trigger {
        text = text.replace("[tool]", "trigger = \"software\"\n\n[tool]") + "software_trigger = true\n";
    }
    let profile = profile_path(port);
    std::fs::write(&profile, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["run", "--json", "--duration-s", &seconds.to_string(), "--config"])
        .arg(&profile)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child, port: u16) -> (Vec<serde_json::Value>, serde_json::Value) {
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(profile_path(port));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, items) = lines.split_last().unwrap();
    (items.to_vec(), summary.clone())
}

#[test]
fn a_poller_at_100_hz_sees_every_item_in_order_with_its_result_code() {
    let port = free_port();
    let child = station(port, 1, 30);
    let mut c = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(30));
    let mut seen: Vec<(u32, u16, u16)> = Vec::new();
    let mut states = Vec::new();
    let mut acknowledged = 0;
    let t0 = Instant::now();
    // Poll until the station stops (state 3) or the port closes with it.
    loop {
        // The flags first: inspection ID 0 is both the first item's and the ID before any
        // item, and only `result valid` tells them apart. Read before the registers, a set
        // flag means the registers hold item 0's result or a later item's; read after, it
        // could belong to an item decided between the two reads.
        let flags = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.read_discrete_inputs(0, 5))) {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => panic!("exception {e} on a read inside the map"),
            Err(_) => break,
        };
        let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.read_input_registers(0, 9))) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("exception {e} on a read inside the map"),
            Err(_) => break,
        };
        let id = (r[0] as u32) << 16 | r[1] as u32;
        let state = r[8];
        if states.last() != Some(&state) {
            states.push(state);
        }
        // A new inspection ID is a new item (result valid may have been cleared by the
        // acknowledge of the one before it, if it came between the read and the write).
        if seen.last().map(|s| s.0) != Some(id) && (id != 0 || flags[2] || !seen.is_empty()) {
            seen.push((id, r[2], r[3]));
            if c.write_coil(2, true) == Reply::Data(vec![0x05, 0, 2, 0xFF, 0]) {
                acknowledged += 1;
            }
        }
        if state == StationState::Stopped as u16 || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (items, summary) = finish(child, port);
    assert_eq!(items.len(), 36);
    let expected: Vec<(u32, u16)> = items
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().unwrap() as u32,
                i["result_code"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    let got: Vec<(u32, u16)> = seen.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(got, expected, "every inspection ID, in order, with its result code");
    assert!(acknowledged >= 36, "{acknowledged}");
    assert_eq!(states.first(), Some(&(StationState::Starting as u16)), "{states:?}");
    assert!(states.contains(&(StationState::Running as u16)), "{states:?}");
    no_reject_missed_as_planned(&summary);
    assert!(
        summary["modbus"]["answered"].as_u64().unwrap() > 100,
        "{}",
        summary["modbus"]
    );
}

/// Frames a faulty or hostile client might send: random function codes and bodies in a
/// well-formed header, bodies of the wrong length, and broken headers (protocol ID, length).
fn hostile_frame(r: &mut SplitMix64, tid: u16) -> Vec<u8> {
    let kind = r.next_u64() % 4;
    let body_len = (r.next_u64() % 12) as usize;
    let mut pdu: Vec<u8> = (0..=body_len).map(|_| r.next_u64() as u8).collect();
    match kind {
        0 => pdu[0] = [1, 2, 3, 4, 5, 6, 15, 16, 22, 23][(r.next_u64() % 10) as usize],
        1 => pdu[0] = (r.next_u64() % 0x80) as u8,
        _ => {}
    }
    let mut f = tid.to_be_bytes().to_vec();
    let proto: u16 = if kind == 3 && r.next_u64().is_multiple_of(2) {
        r.next_u64() as u16
    } else {
        0
    };
    f.extend_from_slice(&proto.to_be_bytes());
    let len = if kind == 3 && proto == 0 {
        [0u16, 1][(r.next_u64() % 2) as usize]
    } else {
        pdu.len() as u16 + 1
    };
    f.extend_from_slice(&len.to_be_bytes());
    f.push(r.next_u64() as u8);
    f.extend_from_slice(&pdu[..(len as usize).saturating_sub(1).min(pdu.len())]);
    f
}

#[test]
fn ten_thousand_hostile_frames_get_an_exception_or_a_closed_connection_and_the_station_runs_on() {
    let cases: usize = std::env::var("FERROSCOPE_MODBUS_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let port = free_port();
    let child = station(port, 0, 12);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = Client::connect(addr, Duration::from_secs(30));
    // The same frames every run.
    let mut r = SplitMix64::new(0x0DB0_5EED);
    let (mut answered, mut exceptions, mut closed) = (0, 0, 0);
    for i in 0..cases {
        let f = hostile_frame(&mut r, i as u16);
        match c.raw(&f) {
            Reply::Data(_) => answered += 1,
            Reply::Exception(e) => {
                assert!((1..=4).contains(&e), "exception {e} for {f:02x?}");
                exceptions += 1
            }
            Reply::Closed => {
                closed += 1;
                c = Client::connect(addr, Duration::from_secs(5));
            }
        }
    }
    // The map still reads right after them.
    let regs = c.read_input_registers(0, 9).unwrap();
    assert_eq!(regs.len(), 9);
    drop(c);
    let (items, summary) = finish(child, port);
    assert!(
        exceptions > 1000 && closed > 100,
        "answered {answered}, exceptions {exceptions}, closed {closed}"
    );
    assert!(items.len() > 50, "the station kept deciding: {}", items.len());
    no_reject_missed_as_planned(&summary);
    assert_eq!(summary["false_rejects"], 0, "{summary}");
    assert_eq!(summary["faults"], 0, "{summary}");
    eprintln!(
        "{cases} frames: answered {answered}, exceptions {exceptions}, connection closed {closed}; modbus {}",
        summary["modbus"]
    );
}

#[test]
fn several_clients_at_once_one_more_refused_and_one_vanishing_mid_request_harms_nothing() {
    let state = Arc::new(PlcState::default());
    state.set_state(StationState::Running, false);
    let d = Decision {
        outcome: Outcome::Reject,
        action: Action::Reject,
        class: Some(2),
        score: 0.9,
    };
    state.publish(41, &d, None, 42, 7);
    let server = ModbusServer::start("127.0.0.1:0".parse().unwrap(), state.clone(), "test").unwrap();
    let addr = server.local_addr;
    let mut clients: Vec<Client> = (0..MAX_CLIENTS)
        .map(|_| Client::connect(addr, Duration::from_secs(5)))
        .collect();
    for c in clients.iter_mut() {
        assert_eq!(c.read_input_registers(0, 4), Ok(vec![0, 41, 1, 2]));
    }
    // One more than MAX_CLIENTS: its connection is closed without an answer.
    let mut extra = Client::connect(addr, Duration::from_secs(5));
    assert_eq!(extra.call(&[0x04, 0, 0, 0, 1]), Reply::Closed);
    // One client goes away halfway through a frame; the others are answered as before.
    let mut half = clients.pop().unwrap();
    half.s.write_all(&[0, 9, 0, 0, 0, 6, 1, 0x04]).unwrap();
    drop(half);
    std::thread::sleep(Duration::from_millis(50));
    for c in clients.iter_mut() {
        assert_eq!(c.read_input_registers(4, 4), Ok(vec![0, 42, 0, 7]));
    }
    // Its place is free again.
    let mut again = Client::connect(addr, Duration::from_secs(5));
    assert_eq!(again.read_input_registers(8, 1), Ok(vec![StationState::Running as u16]));
    // Illegal places and functions: exceptions, the connection stays.
    assert_eq!(again.read_input_registers(9, 1), Err(2));
    // No software trigger in this profile: coil 1 is refused; coil 0 switches triggers off
    // and "ready" with them.
    assert_eq!(again.write_coil(1, true), Reply::Exception(2));
    assert_eq!(again.write_coil(0, false), Reply::Data(vec![0x05, 0, 0, 0, 0]));
    assert_eq!(again.call(&[0x01, 0, 0, 0, 4]), Reply::Data(vec![0x01, 1, 0b0000]));
    assert_eq!(again.read_discrete_inputs(0, 1), Ok(vec![false]));
    assert_eq!(again.write_coil(0, true), Reply::Data(vec![0x05, 0, 0, 0xFF, 0]));
    assert_eq!(again.call(&[0x01, 0, 0, 0, 4]), Reply::Data(vec![0x01, 1, 0b0001]));
    assert_eq!(again.call(&[0x06, 0, 0, 0, 3]), Reply::Exception(3));
    assert_eq!(again.call(&[0x2B, 0x0E, 1, 0]), Reply::Exception(1));
    assert_eq!(again.write_coil(3, true), Reply::Data(vec![0x05, 0, 3, 0xFF, 0]));
    assert!(state.take_reset_faults(), "the reset reached the station");
    let s = &server.stats;
    assert_eq!(s.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(server);
    // Stopped: the port is closed.
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn the_plcs_software_trigger_makes_items_and_trigger_enable_off_ignores_it() {
    let port = free_port();
    let child = station_with(port, 0, 8, true);
    let mut c = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(30));
    // Wait for the frame loop (state 1), then trigger as a PLC would, one part every 150 ms.
    let t0 = Instant::now();
    while c.read_input_registers(8, 1) != Ok(vec![StationState::Running as u16]) {
        assert!(t0.elapsed() < Duration::from_secs(30), "the station never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    let parts = 12;
    for _ in 0..parts {
        assert_eq!(c.write_coil(1, true), Reply::Data(vec![0x05, 0, 1, 0xFF, 0]));
        std::thread::sleep(Duration::from_millis(150));
    }
    // Triggers off: three more writes are taken and ignored.
    assert_eq!(c.write_coil(0, false), Reply::Data(vec![0x05, 0, 0, 0, 0]));
    for _ in 0..3 {
        assert_eq!(c.write_coil(1, true), Reply::Data(vec![0x05, 0, 1, 0xFF, 0]));
        std::thread::sleep(Duration::from_millis(150));
    }
    let regs = c.read_input_registers(0, 6).unwrap();
    drop(c);
    let (items, summary) = finish(child, port);
    assert_eq!(
        items.len(),
        parts,
        "one item per software trigger while triggers were on"
    );
    assert_eq!(
        (regs[4] as u64) << 16 | regs[5] as u64,
        parts as u64,
        "items inspected, as the PLC read it"
    );
    assert_eq!(summary["modbus"]["triggers_ignored"], 3, "{}", summary["modbus"]);
    no_reject_missed_as_planned(&summary);
    assert_eq!(summary["faults"], 0, "{summary}");
}

#[test]
fn holding_register_0_switches_the_recipe_and_reads_back_the_one_deciding() {
    let port = free_port();
    let child = station(port, 0, 10);
    let mut c = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(30));
    assert_eq!(c.read_holding_register(0), Ok(0), "recipe 0 at the start");
    // The profile has two recipes: 2 is refused, 1 is taken and read back once it decides.
    assert_eq!(c.write_register(0, 2), Reply::Exception(3));
    assert_eq!(c.write_register(0, 1), Reply::Data(vec![0x06, 0, 0, 0, 1]));
    let t0 = Instant::now();
    while c.read_holding_register(0) != Ok(1) {
        assert!(t0.elapsed() < Duration::from_secs(8), "register 0 never read 1");
        std::thread::sleep(Duration::from_millis(10));
    }
    let switched_at = c.read_input_registers(0, 2).unwrap();
    let switched_at = (switched_at[0] as u32) << 16 | switched_at[1] as u32;
    drop(c);
    let (items, summary) = finish(child, port);
    // Items after the one the PLC saw last when register 0 read 1 are the new recipe's.
    let later: Vec<_> = items
        .iter()
        .filter(|i| i["id"].as_u64().unwrap() > switched_at as u64 + 1)
        .collect();
    assert!(later.len() > 10, "{}", later.len());
    assert!(
        later.iter().all(|i| i["recipe"] == "kolektor-commutator"),
        "{:?}",
        later.iter().map(|i| &i["recipe"]).collect::<Vec<_>>()
    );
    assert_eq!(items[0]["recipe"], "neu-strip");
    assert_eq!(summary["recipes"]["switches"], 1, "{}", summary["recipes"]);
    assert_eq!(summary["recipes"]["active"], "kolektor-commutator");
    assert_eq!(summary["faults"], 0, "{summary}");
}
