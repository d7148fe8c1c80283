//! Camera frames: every pixel format through the one decoder (known vectors, real JPEGs,
//! corrupt and truncated ones), and the station against a replay that drops frames, delivers
//! corrupt ones and loses the camera for a second.

mod audit;

use std::path::{Path, PathBuf};

use ferroscope::alloc_count::CountingAlloc;
use ferroscope::camera::decode::{decode_frame, DecodeError};
use ferroscope::core::pixel::{rgb_to_gray, OutputFormat, PixelFormat};
use ferroscope::station::{self, config::StationConfig, config::DEFAULT_CONFIG_PATH};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn jpeg(pixels: &[u8], w: u32, h: u32, color: image::ExtendedColorType, quality: u8) -> Vec<u8> {
    let mut v = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut v, quality);
    image::ImageEncoder::write_image(enc, pixels, w, h, color).unwrap();
    v
}

/// A 64x48 gray test card: a horizontal ramp with a bright block.
fn card() -> Vec<u8> {
    (0..48usize)
        .flat_map(|y| {
            (0..64usize).map(move |x| {
                if (16..32).contains(&x) && (8..24).contains(&y) {
                    240
                } else {
                    (x * 3 + y) as u8
                }
            })
        })
        .collect()
}

fn max_and_mean_diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    let mean = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as f64).sum::<f64>() / a.len() as f64;
    (max, mean)
}

#[test]
fn mjpeg_gray_frame_decodes_close_to_the_original() {
    let src = card();
    let j = jpeg(&src, 64, 48, image::ExtendedColorType::L8, 95);
    let mut out = vec![0u8; 64 * 48];
    let d = decode_frame(
        PixelFormat::Mjpeg,
        &j,
        Some((64, 48)),
        None,
        OutputFormat::Gray,
        &mut out,
    )
    .unwrap();
    assert_eq!((d.width, d.height), (64, 48));
    let (max, mean) = max_and_mean_diff(&out, &src);
    assert!(max <= 24 && mean < 2.0, "max {max}, mean {mean}");
}

#[test]
fn mjpeg_colour_frame_decodes_to_rgb_and_to_bt601_gray() {
    // Four flat colour quadrants (red, green, blue, white): JPEG keeps flat areas nearly exact.
    let quad = |x: usize, y: usize| -> [u8; 3] {
        match (x < 32, y < 32) {
            (true, true) => [200, 30, 30],
            (false, true) => [30, 200, 30],
            (true, false) => [30, 30, 200],
            (false, false) => [250, 250, 250],
        }
    };
    let rgb: Vec<u8> = (0..64usize)
        .flat_map(|y| (0..64usize).flat_map(move |x| quad(x, y)))
        .collect();
    let j = jpeg(&rgb, 64, 64, image::ExtendedColorType::Rgb8, 95);
    let mut out = vec![0u8; 64 * 64 * 3];
    decode_frame(
        PixelFormat::Mjpeg,
        &j,
        Some((64, 64)),
        None,
        OutputFormat::Rgb,
        &mut out,
    )
    .unwrap();
    // Centres of the quadrants, away from chroma edges.
    for (x, y) in [(16usize, 16usize), (48, 16), (16, 48), (48, 48)] {
        let i = (y * 64 + x) * 3;
        let want = quad(x, y);
        for k in 0..3 {
            assert!(
                out[i + k].abs_diff(want[k]) <= 6,
                "({x},{y}) channel {k}: {} vs {}",
                out[i + k],
                want[k]
            );
        }
    }
    let mut gray = vec![0u8; 64 * 64];
    decode_frame(
        PixelFormat::Mjpeg,
        &j,
        Some((64, 64)),
        None,
        OutputFormat::Gray,
        &mut gray,
    )
    .unwrap();
    for (x, y) in [(16usize, 16usize), (48, 16), (16, 48), (48, 48)] {
        let [r, g, b] = quad(x, y);
        let want = rgb_to_gray(r, g, b);
        assert!(
            gray[y * 64 + x].abs_diff(want) <= 4,
            "({x},{y}): {} vs {want}",
            gray[y * 64 + x]
        );
    }
}

#[test]
fn corrupt_truncated_and_misfit_mjpeg_frames_are_errors_not_pictures() {
    let j = jpeg(&card(), 64, 48, image::ExtendedColorType::L8, 90);
    let mut out = vec![0u8; 64 * 48];
    let dec =
        |b: &[u8], out: &mut [u8]| decode_frame(PixelFormat::Mjpeg, b, Some((64, 48)), None, OutputFormat::Gray, out);
    // Drivers pad MJPEG buffers with zeros after the end marker: still a good frame.
    let mut padded = j.clone();
    padded.extend_from_slice(&[0u8; 300]);
    assert!(dec(&padded, &mut out).is_ok());
    // Cut short (a lost USB transfer), with or without padding after the cut.
    let half = &j[..j.len() / 2];
    assert!(matches!(dec(half, &mut out), Err(DecodeError::Truncated { .. })));
    let mut half_padded = half.to_vec();
    half_padded.extend_from_slice(&[0u8; 300]);
    assert!(matches!(
        dec(&half_padded, &mut out),
        Err(DecodeError::Truncated { .. })
    ));
    // No start marker.
    let mut no_soi = j.clone();
    no_soi[1] = 0;
    assert!(matches!(dec(&no_soi, &mut out), Err(DecodeError::Corrupt(_))));
    // Headers destroyed (start-of-frame and tables overwritten), end marker intact.
    let mut garbled = j.clone();
    for b in &mut garbled[2..200] {
        *b = 0xA5;
    }
    assert!(matches!(dec(&garbled, &mut out), Err(DecodeError::Corrupt(_))));
    // Not JPEG at all.
    assert!(dec(&[0u8; 16], &mut out).is_err());
    // A good frame of another size than configured.
    assert_eq!(
        decode_frame(
            PixelFormat::Mjpeg,
            &j,
            Some((640, 480)),
            None,
            OutputFormat::Gray,
            &mut out
        ),
        Err(DecodeError::WrongSize { width: 64, height: 48 })
    );
    // A buffer too small for it.
    assert_eq!(
        decode_frame(PixelFormat::Mjpeg, &j, None, None, OutputFormat::Gray, &mut out[..100]),
        Err(DecodeError::BufferTooSmall { needed: 64 * 48 })
    );
}

#[test]
fn raw_frames_through_the_decoder_keep_the_driver_stride_and_catch_short_buffers() {
    // YUYV 4x2 with a 12-byte stride (4 bytes of padding a driver may add per line).
    let yuyv = [
        10, 128, 20, 128, 30, 128, 40, 128, 0, 0, 0, 0, //
        50, 128, 60, 128, 70, 128, 80, 128,
    ];
    let mut out = [0u8; 8];
    decode_frame(
        PixelFormat::Yuyv,
        &yuyv,
        Some((4, 2)),
        Some(12),
        OutputFormat::Gray,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [10, 20, 30, 40, 50, 60, 70, 80]);
    assert_eq!(
        decode_frame(
            PixelFormat::Yuyv,
            &yuyv[..15],
            Some((4, 2)),
            Some(12),
            OutputFormat::Gray,
            &mut out
        ),
        Err(DecodeError::Truncated { needed: 20, got: 15 })
    );
    let rgb = [255u8, 0, 0, 0, 0, 255];
    let mut g = [0u8; 2];
    decode_frame(PixelFormat::Rgb24, &rgb, Some((2, 1)), None, OutputFormat::Gray, &mut g).unwrap();
    assert_eq!(g, [77, 29]);
}

/// The committed NEU samples re-encoded as JPEG files (what a replay of camera JPEGs plays).
fn jpeg_samples(dir: &Path) {
    for class in std::fs::read_dir(root().join("tests/data/neu_samples")).unwrap() {
        let class = class.unwrap().path();
        if !class.is_dir() {
            continue;
        }
        let name = class.file_name().unwrap().to_owned();
        std::fs::create_dir_all(dir.join(&name)).unwrap();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            let g = image::open(&f).unwrap().into_luma8();
            let j = jpeg(g.as_raw(), g.width(), g.height(), image::ExtendedColorType::L8, 92);
            std::fs::write(dir.join(&name).join(f.with_extension("jpg").file_name().unwrap()), j).unwrap();
        }
    }
}

#[test]
fn a_replay_with_drops_corrupt_frames_and_a_pulled_camera_never_stops_the_station() {
    let dir = std::env::temp_dir().join(format!("ferroscope-camera-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    jpeg_samples(&dir);
    let text = std::fs::read_to_string(DEFAULT_CONFIG_PATH).unwrap();
    let mut cfg = StationConfig::parse(&text, Path::new(DEFAULT_CONFIG_PATH)).unwrap();
    cfg.camera.path = dir.clone();
    cfg.camera.rate_fps = 25.0;
    cfg.camera.loops = 2;
    cfg.camera.faults = Some(station::config::ReplayFaultsSection {
        seed: 7,
        drop_fraction: 0.05,
        corrupt_fraction: 0.1,
        disconnect_after_s: Some(1.0),
        disconnect_for_s: 1.0,
        disconnect_every_s: None,
    });
    let mut faults = Vec::with_capacity(256);
    let s = station::run(&cfg, |item| {
        if let Some(f) = item.fault {
            faults.push(f);
        }
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let inj = s.injected.expect("replay reports what it injected");
    let k = s.camera;
    let c = &s.counters;
    // The faults really happened.
    assert!(inj.corrupted >= 3 && inj.dropped >= 1, "{inj:?}");
    assert_eq!(inj.disconnects, 1);
    // Each corrupt JPEG was caught by the decoder, counted, and its item failed safe.
    assert_eq!(k.corrupt, inj.corrupted);
    assert_eq!(s.faults.corrupt_frame, inj.corrupted);
    assert_eq!(
        faults.iter().filter(|f| **f == "corrupt frame").count() as u64,
        inj.corrupted
    );
    // Drops show as sequence gaps (a drop just before the disconnect or at the very end has no
    // next frame in the same stream to reveal it).
    assert!(
        k.dropped <= inj.dropped && k.dropped + 2 >= inj.dropped,
        "{k:?} vs {inj:?}"
    );
    assert_eq!(s.faults.dropped_frame, k.dropped);
    // The camera went away once and came back, within 2 s of returning (it was away 1 s).
    assert_eq!((k.disconnects, k.reconnects), (1, 1), "{k:?}");
    assert!(!s.camera_down_at_end);
    assert!(
        k.longest_outage_us >= 1_000_000 && k.longest_outage_us <= 1_000_000 + 2_000_000,
        "outage {} µs",
        k.longest_outage_us
    );
    // While it was away the belt kept moving: one fail-safe item per 40 ms frame period.
    let lost = faults.iter().filter(|f| **f == "camera lost").count() as u64;
    assert!(
        (20..=80).contains(&lost),
        "{lost} blind items during a 1 s outage at 25 fps"
    );
    assert_eq!(s.blind_items, lost + k.dropped);
    // Every item was decided, and every fail-safe item rejected on time.
    assert_eq!(c.inspected, k.frames + k.corrupt + s.blind_items);
    assert!(c.failsafe >= k.corrupt + s.blind_items);
    audit::no_reject_missed_as_planned_in(&s);
    assert_eq!(s.tracker.failsafe_rejects, c.failsafe);
    // Faults and all, the frame path allocated nothing of ours after the first item (the JPEG
    // decoder's own scratch is counted apart).
    assert_eq!(s.allocations_ours_after_warmup, 0);
    // And the station ran to the end of the replay.
    assert!(k.frames >= 40, "{k:?}");
}

#[test]
fn camera_config_errors_name_the_field() {
    let text = std::fs::read_to_string(DEFAULT_CONFIG_PATH).unwrap();
    let p = Path::new(DEFAULT_CONFIG_PATH);
    let e = StationConfig::parse(&text.replace("source = \"replay\"", "source = \"v4l2\""), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("host-sim.toml") && e.contains("camera.device"), "{e}");
    let live = text.replace(
        "source = \"replay\"",
        "source = \"v4l2\"\ndevice = \"/dev/video0\"\nformat = \"nv12\"\nwidth = 640\nheight = 480",
    );
    let e = StationConfig::parse(&live, p).unwrap_err().to_string();
    assert!(e.contains("camera.format") && e.contains("yuyv"), "{e}");
    let odd = live.replace("nv12", "yuyv").replace("width = 640", "width = 641");
    let e = StationConfig::parse(&odd, p).unwrap_err().to_string();
    assert!(e.contains("camera.width"), "{e}");
    let trig = live
        .replace("nv12", "mjpeg")
        .replace("width = 640", "width = 640\ntrigger = \"software\"");
    let e = StationConfig::parse(&trig, p).unwrap_err().to_string();
    assert!(e.contains("[inputs.trigger]"), "{e}");
    let bad = text.replace("loops = 1", "loops = 1\n[camera.faults]\ndrop_fraction = 1.5");
    let e = StationConfig::parse(&bad, p).unwrap_err().to_string();
    assert!(e.contains("camera.faults.drop_fraction"), "{e}");
    // A node that exists but is no camera is a start-up error naming it.
    let not_a_camera = live.replace("nv12", "yuyv").replace("/dev/video0", "/dev/null");
    let cfg = StationConfig::parse(&not_a_camera, p).unwrap();
    let e = format!("{:#}", station::run(&cfg, |_| {}).unwrap_err());
    assert!(e.contains("/dev/null"), "{e}");
}

#[test]
fn a_camera_missing_at_boot_runs_the_station_blind_and_fail_safe() {
    let text = std::fs::read_to_string(DEFAULT_CONFIG_PATH).unwrap();
    let live = text.replace(
        "source = \"replay\"",
        "source = \"v4l2\"\ndevice = \"/dev/video-not-plugged\"\nformat = \"yuyv\"\nwidth = 640\nheight = 480\nfps = 20.0",
    );
    let cfg = StationConfig::parse(&live, Path::new(DEFAULT_CONFIG_PATH)).unwrap();
    let stop = std::sync::Arc::new(station::Control::new());
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            stop.request_stop("requested");
        })
    };
    let mut lost = 0u64;
    let s = station::run_until(&cfg, &stop, |item| {
        if item.fault == Some("camera lost") {
            lost += 1;
        }
    })
    .unwrap();
    stopper.join().unwrap();
    // Every 50 ms frame period of the 1.5 s became a fail-safe reject, on time; the camera
    // was retried all along and is still away.
    assert!((20..=40).contains(&lost), "{lost} blind items");
    assert_eq!(s.blind_items, lost);
    assert_eq!(s.counters.failsafe, lost);
    assert!(s.camera_down_at_end);
    assert_eq!((s.camera.disconnects, s.camera.reconnects), (1, 0));
    assert!(s.camera.reopen_failures >= 2, "{:?}", s.camera);
    audit::no_reject_missed_as_planned_in(&s);
}
