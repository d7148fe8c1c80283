//! Generated inputs for every parser that reads what the station is given: board profiles,
//! model manifests, model files, image files, camera frames (raw and MJPEG), decision-log
//! segments, MQTT packets, Modbus requests and the reject co-processor's link frames. Each
//! target starts from the real thing (a shipped profile, manifest, model, sample image, a
//! written log) and damages it at random — bit flips, cut ends, spliced garbage, repeated and
//! dropped lines — or generates bytes outright.
//!
//! What every target asserts: no panic, and either a clear error or a result that keeps its
//! own invariants (a decoded image has the pixels its size says and respects the size limits;
//! a log read back returns only records that were written, unchanged).
//!
//! Cases per target: `FERROSCOPE_FUZZ_CASES` (default [`DEFAULT_CASES`]). The long run is
//! `FERROSCOPE_FUZZ_CASES=1000000 cargo test --release --test generated_inputs -- --nocapture`,
//! which also prints each target's slowest case. With `FERROSCOPE_FUZZ_LAST_CASE=FILE` the
//! model-file target writes each case there before running it, so a case that kills the
//! process is named by the file it leaves.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use ferroscope::camera::decode::{check_jpeg, decode_frame, jpeg_size};
use ferroscope::core::pixel::{OutputFormat, PixelFormat};
use ferroscope::model::engine::Engine;
use ferroscope::model::manifest::Manifest;
use ferroscope::records::log::{self, LogRecord, LogWriter, RECORD_BYTES};
use ferroscope::sim::replay::{decode_gray, MAX_IMAGE_SIDE};
use ferroscope::station::config::StationConfig;

/// Cases per target in the test suite: enough to reach every mutation kind many times over
/// while the whole file stays under a minute on two cores.
const DEFAULT_CASES: u32 = 256;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases() -> u32 {
    std::env::var("FERROSCOPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// A random damage to a byte string.
#[derive(Clone, Debug)]
enum Damage {
    /// Flip bit `bit` of byte `at` (positions taken modulo the length).
    Flip { at: usize, bit: u8 },
    /// Keep only the first `keep` bytes.
    Cut { keep: usize },
    /// Insert these bytes at `at`.
    Splice { at: usize, bytes: Vec<u8> },
    /// Remove `len` bytes at `at`.
    Drop { at: usize, len: usize },
    /// Copy `len` bytes from `from` over `to`.
    Repeat { from: usize, to: usize, len: usize },
    /// Overwrite one byte with an interesting value (0, 0xFF, 0x7F, 0x80, a digit, a quote…).
    Poke { at: usize, value: u8 },
}

fn damage() -> impl Strategy<Value = Damage> {
    let interesting = prop::sample::select(vec![0u8, 0xFF, 0x7F, 0x80, b'9', b'"', b'[', b'=', b'\n', b'-', b'.']);
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        1 => any::<usize>().prop_map(|keep| Damage::Cut { keep }),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Damage::Splice { at, bytes }),
        2 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Damage::Drop { at, len }),
        1 => (any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(from, to, len)| Damage::Repeat { from, to, len }),
        3 => (any::<usize>(), interesting).prop_map(|(at, value)| Damage::Poke { at, value }),
    ]
}

fn apply(bytes: &[u8], damages: &[Damage]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for d in damages {
        let n = b.len();
        if n == 0 {
            break;
        }
        match d {
            Damage::Flip { at, bit } => b[at % n] ^= 1 << bit,
            Damage::Cut { keep } => b.truncate(keep % n),
            Damage::Splice { at, bytes } => {
                let at = at % (n + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Damage::Drop { at, len } => {
                let at = at % n;
                b.drain(at..(at + len).min(n));
            }
            Damage::Repeat { from, to, len } => {
                let (from, to) = (from % n, to % n);
                let len = (*len).min(n - from).min(n - to);
                let chunk = b[from..from + len].to_vec();
                b[to..to + len].copy_from_slice(&chunk);
            }
            Damage::Poke { at, value } => b[at % n] = *value,
        }
    }
    b
}

/// CPU time of the calling thread: a case's cost, whatever else the machine runs.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant of the platform.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Run `check` over `cases` generated values of `strategy`; report the slowest case (thread
/// CPU time, so a loaded machine does not make a case look like a hang).
fn run<S: Strategy>(name: &str, cases: u32, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let slowest = Mutex::new(Duration::ZERO);
    let started = Instant::now();
    let result = runner.run(&strategy, |v| {
        let t = thread_cpu();
        let r = check(v);
        let e = thread_cpu().saturating_sub(t);
        let mut s = slowest.lock().unwrap();
        *s = (*s).max(e);
        r
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "{name}: {cases} cases in {:.1} s, slowest {:.1} ms of CPU",
        started.elapsed().as_secs_f64(),
        slowest.lock().unwrap().as_secs_f64() * 1e3
    );
}

fn files(dir: &str, ext: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {ext} files in {dir}");
    v
}

fn damaged_text(originals: Vec<(PathBuf, Vec<u8>)>) -> impl Strategy<Value = (PathBuf, String)> {
    (0..originals.len(), prop::collection::vec(damage(), 1..6)).prop_map(move |(k, d)| {
        let (p, b) = &originals[k];
        (p.clone(), String::from_utf8_lossy(&apply(b, &d)).into_owned())
    })
}

#[test]
fn damaged_board_profiles_are_refused_by_name_or_read() {
    let profiles = files("boards", "toml");
    run("profiles", cases(), damaged_text(profiles), |(path, text)| {
        if let Err(e) = StationConfig::parse(&text, &path) {
            let msg = format!("{e:#}");
            let name = path.file_name().unwrap().to_string_lossy();
            prop_assert!(msg.contains(name.as_ref()), "error does not name {name}: {msg}");
        }
        Ok(())
    });
}

#[test]
fn damaged_manifests_are_refused_by_name_or_read() {
    let manifests = files("models", "toml");
    run("manifests", cases(), damaged_text(manifests), |(path, text)| {
        if let Err(e) = Manifest::parse(&text, &path) {
            let msg = format!("{e:#}");
            let name = path.file_name().unwrap().to_string_lossy();
            prop_assert!(msg.contains(name.as_ref()), "error does not name {name}: {msg}");
        }
        Ok(())
    });
}

/// Peak resident memory of this process so far, bytes.
fn peak_rss() -> u64 {
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF is a constant of the platform.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as u64 * 1024
}

/// What loading a damaged model may add to the test's peak resident memory: the undamaged
/// model loads in about 100 MiB (its 512 × 512 maps and tract's plan), so a case that takes
/// several times that has allocated something the file asked for.
const MODEL_CASE_PEAK_BYTES: u64 = 1 << 30;

#[test]
fn damaged_model_files_give_an_error_not_a_crash() {
    let path = root().join("models/kolektor_crack_filter.onnx");
    let original = std::fs::read(&path).unwrap();
    // The undamaged file loads: the damage, not the harness, is what fails.
    Engine::from_bytes(&original, &path, &[1, 1, 512, 512]).unwrap();
    let ceiling = peak_rss() + MODEL_CASE_PEAK_BYTES;
    // Each case is written here before it runs, so a case that kills the process (the kernel's
    // OOM killer, an abort) is named by the file it leaves.
    let last_case = std::env::var_os("FERROSCOPE_FUZZ_LAST_CASE").map(PathBuf::from);
    let strategy = prop::collection::vec(damage(), 1..4);
    run("model files", cases(), strategy, |d| {
        if let Some(p) = &last_case {
            std::fs::write(p, format!("{d:?}\n")).unwrap();
        }
        let bytes = apply(&original, &d);
        if let Err(e) = Engine::from_bytes(&bytes, &path, &[1, 1, 512, 512]) {
            let msg = format!("{e:#}");
            prop_assert!(
                msg.contains("kolektor_crack_filter.onnx"),
                "error does not name the file: {msg}"
            );
        }
        let peak = peak_rss();
        prop_assert!(peak <= ceiling, "peak resident memory {peak} bytes after this case");
        Ok(())
    });
}

/// A shape constant with a high bit set (here the length `ConstantOfShape` makes: 4 becomes
/// 2³⁰ + 4) in a file whose declared intermediate shapes are gone: tract would make and fill a
/// gigabytes-long tensor while it types the model. The loader refuses it by name before tract
/// sees it, with memory untouched.
#[test]
fn a_constant_asking_for_a_huge_tensor_is_refused_before_it_is_made() {
    use prost::Message;
    use tract_onnx::prelude::Framework;
    let path = root().join("models/kolektor_crack_filter.onnx");
    let original = std::fs::read(&path).unwrap();
    let mut proto = tract_onnx::onnx().proto_model_for_read(&mut &original[..]).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    graph.value_info.clear();
    let feeds: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "ConstantOfShape")
        .map(|n| n.input[0].clone())
        .collect();
    assert!(!feeds.is_empty(), "the anomaly model has no ConstantOfShape");
    let constant = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "Constant" && n.output[0] == feeds[0])
        .unwrap();
    let t = constant.attribute[0].t.as_mut().unwrap();
    assert_eq!(t.raw_data, 4i64.to_le_bytes(), "the shape constant is not [4]");
    t.raw_data = ((1i64 << 30) + 4).to_le_bytes().to_vec();
    let damaged = proto.encode_to_vec();
    let before = peak_rss();
    let e = Engine::from_bytes(&damaged, &path, &[1, 1, 512, 512])
        .err()
        .expect("the damaged model loaded");
    let msg = format!("{e:#}");
    assert!(msg.contains("kolektor_crack_filter.onnx"), "{msg}");
    assert!(msg.contains("ConstantOfShape") && msg.contains("1073741828"), "{msg}");
    assert!(peak_rss() < before + (64 << 20), "memory grew while refusing: {msg}");
}

fn sample_images() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (dir, ext) in [
        ("tests/data/neu_samples/scratches", "png"),
        ("tests/data/xsdd_samples/red_iron", "jpg"),
        ("tests/data/kolektor_samples/masks", "png"),
    ] {
        v.extend(files(dir, ext).into_iter().take(2).map(|(_, b)| b));
    }
    // A BMP, made here from a sample (none is committed).
    let (w, h, px) = decode_gray(&v[0]).unwrap();
    let img = image::GrayImage::from_raw(w as u32, h as u32, px).unwrap();
    let mut bmp = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bmp, image::ImageFormat::Bmp).unwrap();
    v.push(bmp.into_inner());
    v
}

fn check_decoded(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((w, h, px)) = decode_gray(bytes) {
        prop_assert_eq!(px.len(), w * h);
        prop_assert!(w as u32 <= MAX_IMAGE_SIDE && h as u32 <= MAX_IMAGE_SIDE, "{w}x{h}");
    }
    Ok(())
}

#[test]
fn damaged_image_files_decode_or_are_refused() {
    let images = sample_images();
    let n = images.len();
    let strategy = (0..n, prop::collection::vec(damage(), 1..6));
    run("image files", cases(), strategy, |(k, d)| {
        check_decoded(&apply(&images[k], &d))
    });
    run(
        "image bytes",
        cases(),
        prop::collection::vec(any::<u8>(), 0..512),
        |b| check_decoded(&b),
    );
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG header declaring `w`×`h` pixels of `colour` (0 gray, 2 RGB) with one tiny data chunk.
fn png_bomb(w: u32, h: u32, colour: u8) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, colour, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A BMP header declaring `w`×`h` 24-bit pixels and no pixel data.
fn bmp_bomb(w: i32, h: i32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&54u32.to_le_bytes()); // file size (ignored by readers)
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    b.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    b
}

#[test]
fn decompression_bombs_are_refused_by_the_size_limits_before_allocation() {
    let big = MAX_IMAGE_SIDE + 1;
    let bombs = [
        ("PNG wider than the limit", png_bomb(big, 8, 0)),
        ("PNG taller than the limit", png_bomb(8, big, 0)),
        // Within the side limit, but 768 MiB of RGB: the allocation limit refuses it.
        ("PNG over the memory limit", png_bomb(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE, 2)),
        ("BMP over the limits", bmp_bomb(60_000, 60_000)),
    ];
    for (what, bytes) in bombs {
        let e = decode_gray(&bytes).expect_err(what);
        assert!(
            e.to_lowercase().contains("limit"),
            "{what}: refused, but not by a limit: {e}"
        );
    }
    // A header within the limits is read on (and fails on its missing data instead).
    let e = decode_gray(&png_bomb(64, 64, 0)).expect_err("no pixel data");
    assert!(!e.to_lowercase().contains("limit"), "{e}");
}

#[test]
fn raw_camera_frames_of_any_size_format_and_stride_decode_or_are_refused() {
    let strategy = (
        prop::sample::select(PixelFormat::ALL.to_vec()),
        prop::option::of((0usize..400, 0usize..300)),
        prop::option::of(0usize..1300),
        prop::bool::ANY,
        0usize..200_000,
        0usize..400_000,
        any::<u64>(),
    );
    run(
        "camera frames",
        cases(),
        strategy,
        |(format, expect, stride, rgb, len, dst_len, seed)| {
            let mut bytes = vec![0u8; len];
            let mut x = seed | 1;
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let out = if rgb { OutputFormat::Rgb } else { OutputFormat::Gray };
            let mut dst = vec![0u8; dst_len];
            if let Ok(d) = decode_frame(format, &bytes, expect, stride, out, &mut dst) {
                let bpp = if rgb { 3 } else { 1 };
                prop_assert!(d.width * d.height * bpp <= dst_len);
                if let Some(e) = expect {
                    prop_assert_eq!((d.width, d.height), e);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn damaged_mjpeg_frames_decode_or_are_refused() {
    let jpegs: Vec<Vec<u8>> = files("tests/data/xsdd_samples/red_iron", "jpg")
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let n = jpegs.len();
    let strategy = (0..n, prop::collection::vec(damage(), 1..6), prop::bool::ANY);
    run("mjpeg frames", cases(), strategy, |(k, d, sized)| {
        let bytes = apply(&jpegs[k], &d);
        let _ = check_jpeg(&bytes);
        let _ = jpeg_size(&bytes);
        let mut dst = vec![0u8; 128 * 128 * 3];
        let expect = sized.then_some((128, 128));
        if let Ok(dec) = decode_frame(PixelFormat::Mjpeg, &bytes, expect, None, OutputFormat::Gray, &mut dst) {
            prop_assert!(dec.width * dec.height <= dst.len());
        }
        Ok(())
    });
}

fn record(item: u32) -> LogRecord {
    LogRecord {
        seq: 0,
        unix_ms: 1_800_000_000_000 + item as u64,
        day: 20_261_203,
        shift: 1,
        item,
        frame_seq: item,
        outcome: ferroscope::core::decision::Outcome::Accept,
        action: ferroscope::core::decision::Action::Accept,
        class: Some((item % 6) as u8),
        fault: 0,
        score: item as f32 / 100.0,
        latency_us: 1000 + item,
        recipe: 0,
    }
}

fn fresh_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("ferroscope-gen-{tag}-{}-{k}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn only_written(dir: &Path, written: &[LogRecord]) -> Result<usize, TestCaseError> {
    let back = log::read_from(dir, 0).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    for r in &back {
        prop_assert!(
            written.contains(r),
            "record {} read back is not one written: {r:?}",
            r.seq
        );
    }
    Ok(back.len())
}

#[test]
fn damaged_decision_log_segments_give_back_only_what_was_written() {
    const ITEMS: u32 = 40;
    let strategy = prop::collection::vec(damage(), 1..6);
    run("decision log", cases(), strategy, |d| {
        let dir = fresh_dir("log");
        let mut written: Vec<LogRecord> = (0..ITEMS).map(record).collect();
        {
            let (mut w, _) = LogWriter::open(&dir, 4).unwrap();
            w.append(&mut written).unwrap();
            w.sync().unwrap();
        }
        let (_, seg) = log::segments(&dir).unwrap().pop().unwrap();
        let bytes = std::fs::read(&seg).unwrap();
        prop_assert_eq!(bytes.len(), ITEMS as usize * RECORD_BYTES);
        std::fs::write(&seg, apply(&bytes, &d)).unwrap();
        let before = only_written(&dir, &written)?;
        let _ = log::check(&dir);
        // Start-up over the damaged log: it recovers, and appending goes on after it.
        let (mut w, rec) = LogWriter::open(&dir, 4).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        prop_assert!(rec.next_seq as usize >= before);
        let mut more = vec![record(ITEMS)];
        w.append(&mut more).unwrap();
        w.sync().unwrap();
        drop(w);
        written.extend(more);
        only_written(&dir, &written)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    });
}

/// Largest packet the station's MQTT client reads from the broker (rumqttc's default).
const MQTT_MAX_INCOMING: usize = 10 * 1024;

/// Every packet a broker sends the station, as bytes on the wire.
fn broker_packets() -> Vec<Vec<u8>> {
    use rumqttc::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode};
    let mut publish = Publish::new("ferroscope/line-3/cmd", QoS::AtLeastOnce, b"{\"x\":1}".to_vec());
    publish.pkid = 7;
    let packets = [
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, true)),
        Packet::PubAck(PubAck::new(1)),
        Packet::PubAck(PubAck::new(0xFFFF)),
        Packet::SubAck(SubAck::new(3, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)])),
        Packet::Publish(publish),
        Packet::PingResp,
        Packet::Disconnect,
    ];
    packets
        .iter()
        .map(|p| {
            let mut b = bytes::BytesMut::new();
            p.write(&mut b, MQTT_MAX_INCOMING).unwrap();
            b.to_vec()
        })
        .collect()
}

/// What the broker sends, read the way the station's MQTT client reads its socket: packets
/// decoded one after another from the stream (rumqttc's `Packet::read`), each handed to a
/// session's state (`MqttState`, as its event loop does) with messages of its own in flight.
/// Damaged packets, several in one stream, and random bytes: an error, never a panic, and
/// never more consumed than was sent.
#[test]
fn mqtt_packets_from_the_broker_decode_or_are_refused() {
    use rumqttc::{MqttState, Packet, Publish, QoS, Request};
    let valid = broker_packets();
    let n = valid.len();
    let stream = prop_oneof![
        3 => (prop::collection::vec(0..n, 1..5), prop::collection::vec(damage(), 0..6)).prop_map({
            let valid = valid.clone();
            move |(ks, d)| apply(&ks.iter().flat_map(|k| valid[*k].clone()).collect::<Vec<u8>>(), &d)
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    run("mqtt packets", cases(), stream, |bytes| {
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let mut state = MqttState::new(10, false);
        for pkid in 0..3u16 {
            let mut p = Publish::new("ferroscope/line-3/item/reject", QoS::AtLeastOnce, b"{}".to_vec());
            p.pkid = pkid;
            let _ = state.handle_outgoing_packet(Request::Publish(p));
        }
        let mut consumed = 0;
        // A packet is at least two bytes: the loop ends.
        for _ in 0..bytes.len() {
            let before = buf.len();
            match Packet::read(&mut buf, MQTT_MAX_INCOMING) {
                Ok(p) => {
                    consumed += before - buf.len();
                    prop_assert!(consumed <= bytes.len());
                    let _ = state.handle_incoming_packet(p);
                }
                Err(_) => break,
            }
        }
        Ok(())
    });
}

/// Every Modbus request the PLC can send, at any address, count and value, answered from a
/// live state table: a response of exactly the size asked for, or one of the three exception
/// codes the map uses. The soft-trigger queue never grows beyond its capacity.
#[test]
fn modbus_requests_of_any_address_count_and_value_are_answered_or_refused() {
    use std::borrow::Cow;
    use tokio_modbus::{ExceptionCode, Request, Response};
    let addr = prop_oneof![3 => 0u16..16, 1 => any::<u16>()];
    let count = prop_oneof![3 => 0u16..16, 1 => any::<u16>()];
    let request = prop_oneof![
        (addr.clone(), count.clone()).prop_map(|(a, n)| Request::ReadInputRegisters(a, n)),
        (addr.clone(), count.clone()).prop_map(|(a, n)| Request::ReadHoldingRegisters(a, n)),
        (addr.clone(), count.clone()).prop_map(|(a, n)| Request::ReadDiscreteInputs(a, n)),
        (addr.clone(), count.clone()).prop_map(|(a, n)| Request::ReadCoils(a, n)),
        (addr.clone(), any::<bool>()).prop_map(|(a, on)| Request::WriteSingleCoil(a, on)),
        (addr.clone(), prop::collection::vec(any::<bool>(), 0..40))
            .prop_map(|(a, v)| Request::WriteMultipleCoils(a, Cow::Owned(v))),
        (addr.clone(), prop_oneof![0u16..2, any::<u16>()]).prop_map(|(a, v)| Request::WriteSingleRegister(a, v)),
        (
            addr.clone(),
            prop::collection::vec(prop_oneof![Just(0u16), any::<u16>()], 0..8)
        )
            .prop_map(|(a, v)| Request::WriteMultipleRegisters(a, Cow::Owned(v))),
        (addr.clone(), any::<u16>(), any::<u16>()).prop_map(|(a, m, o)| Request::MaskWriteRegister(a, m, o)),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(f, b)| Request::Custom(f, Cow::Owned(b))),
    ];
    let requests = prop::collection::vec(request, 1..24);
    run("modbus requests", cases(), (requests, any::<bool>()), |(reqs, soft)| {
        let state = ferroscope::plc::PlcState::new(ferroscope::sim::clock::MonotonicClock::default(), soft);
        for req in &reqs {
            match ferroscope::plc::modbus::answer(&state, req) {
                Ok(resp) => {
                    let len_ok = match (req, &resp) {
                        (Request::ReadInputRegisters(_, n), Response::ReadInputRegisters(v))
                        | (Request::ReadHoldingRegisters(_, n), Response::ReadHoldingRegisters(v)) => {
                            v.len() == *n as usize
                        }
                        (Request::ReadDiscreteInputs(_, n), Response::ReadDiscreteInputs(v))
                        | (Request::ReadCoils(_, n), Response::ReadCoils(v)) => v.len() == *n as usize,
                        (Request::WriteSingleCoil(a, on), Response::WriteSingleCoil(b, o)) => a == b && on == o,
                        (Request::WriteMultipleCoils(a, v), Response::WriteMultipleCoils(b, n)) => {
                            a == b && v.len() == *n as usize
                        }
                        (Request::WriteSingleRegister(a, v), Response::WriteSingleRegister(b, w)) => a == b && v == w,
                        (Request::WriteMultipleRegisters(a, v), Response::WriteMultipleRegisters(b, n)) => {
                            a == b && v.len() == *n as usize
                        }
                        _ => false,
                    };
                    prop_assert!(len_ok, "{req:?} answered {resp:?}");
                }
                Err(e) => prop_assert!(
                    matches!(
                        e,
                        ExceptionCode::IllegalFunction
                            | ExceptionCode::IllegalDataAddress
                            | ExceptionCode::IllegalDataValue
                    ),
                    "{req:?} refused with {e:?}"
                ),
            }
        }
        let mut queued = 0;
        while state.take_soft_trigger().is_some() {
            queued += 1;
            prop_assert!(queued <= 16, "soft triggers beyond the queue's capacity");
        }
        Ok(())
    });
}

/// Frames of both directions of the co-processor link, one of each kind, back to back.
fn link_stream() -> Vec<u8> {
    use ferroscope::core::link::*;
    let mut out = Vec::new();
    let mut push = |n: usize, f: &[u8; MAX_FRAME]| out.extend_from_slice(&f[..n]);
    let to = [
        ToMcu::Hello { protocol: PROTOCOL },
        ToMcu::Ejector {
            index: 1,
            ejector: WireEjector {
                distance_mm: 600.0,
                pulse_width_us: 20_000,
                min_gap_us: 10_000,
                extend: false,
                classes: 0b111000,
                uncertain: true,
                failsafe: true,
            },
        },
        ToMcu::Start {
            ejectors: 2,
            failsafe: 0,
            belt: WireBelt::Encoder(4.0),
            link_timeout_ms: 15,
            clocking: Clocking::Hardware,
        },
        ToMcu::Capture {
            id: 1234,
            at_us: 987_654_321,
        },
        ToMcu::Decide {
            id: 1234,
            decision: WireDecision {
                outcome: 1,
                reject: true,
                class: Some(3),
                score: 0.93,
            },
            at_us: 987_700_000,
        },
        ToMcu::Speed {
            mm_per_s: 812.0,
            at_us: 5,
        },
        ToMcu::Encoder { count: -77, at_us: 6 },
        ToMcu::Advance { to_us: 1 << 40 },
        ToMcu::Ping { seq: 9 },
        ToMcu::Stats,
    ];
    for m in &to {
        let mut f = [0u8; MAX_FRAME];
        let n = encode(m, &mut f).unwrap();
        push(n, &f);
    }
    let from = [
        FromMcu::Hello {
            protocol: PROTOCOL,
            version: [0, 1, 0],
        },
        FromMcu::Started { error: 0 },
        FromMcu::Edge {
            output: LINE_STOP,
            active: true,
            at_us: 42,
        },
        FromMcu::Fired {
            id: 7,
            ejector: 1,
            on_us: 100,
            off_us: 20_100,
            merged: true,
            clipped: false,
            failsafe: true,
        },
        FromMcu::Overdue { id: 8 },
        FromMcu::Refused { id: 9, why: 2 },
        FromMcu::Advanced {
            now_us: 5,
            next_us: Some(6),
            in_flight: 3,
            losses: 0,
        },
        FromMcu::Pong { seq: 9, now_us: 11 },
        FromMcu::Stats(WireStats {
            items: 10,
            fired: [1, 2, 3, 4],
            ..WireStats::default()
        }),
    ];
    for m in &from {
        let mut f = [0u8; MAX_FRAME];
        let n = encode(m, &mut f).unwrap();
        push(n, &f);
    }
    out
}

/// Feed `bytes` to a decoder of `T`: every frame ended by a zero is either a message, which
/// encodes back to a frame that decodes to the same message, or counted as dropped.
fn check_link<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    use ferroscope::core::link::*;
    let mut d = FrameDecoder::new();
    let mut ended = 0u64;
    let mut run = 0usize;
    for &b in bytes {
        if b == 0 {
            if run > 0 {
                ended += 1;
            }
            run = 0;
        } else {
            run += 1;
        }
        if let Some(Ok(m)) = d.push::<T>(b) {
            let mut f = [0u8; MAX_FRAME];
            let n = encode(&m, &mut f).map_err(|e| TestCaseError::fail(format!("{m:?} does not encode: {e}")))?;
            let mut again = FrameDecoder::new();
            let back = f[..n].iter().find_map(|&b| again.push::<T>(b));
            prop_assert_eq!(back, Some(Ok(m)));
        }
    }
    let s = d.stats();
    prop_assert_eq!(s.frames + s.dropped(), ended, "frames ended by a zero: {:?}", s);
    Ok(())
}

#[test]
fn coprocessor_link_frames_decode_or_are_dropped() {
    use ferroscope::core::link::{FromMcu, ToMcu};
    let stream = link_stream();
    run("link frames", cases(), prop::collection::vec(damage(), 1..6), |d| {
        let bytes = apply(&stream, &d);
        check_link::<ToMcu>(&bytes)?;
        check_link::<FromMcu>(&bytes)
    });
    run("link bytes", cases(), prop::collection::vec(any::<u8>(), 0..512), |b| {
        check_link::<ToMcu>(&b)?;
        check_link::<FromMcu>(&b)
    });
}
