//! The technician's screen: golden screens pixel by pixel, framebuffer packing through a real
//! file, a display that never finishes drawing, and the station drawing while it inspects.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;
use ferroscope::alloc_count::CountingAlloc;
use ferroscope::core::screen::{counters_region, draw_counters};
use ferroscope::display::fb::Framebuffer;
use ferroscope::display::thread::Display;
use ferroscope::display::{demo_state, render, Canvas, DemoState, DisplayError, Panel, PixelLayout};
use ferroscope::station::{self, config::StationConfig, config::DEFAULT_CONFIG_PATH};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn demo(kind: DemoState) -> ferroscope::core::screen::ScreenState {
    let thumb = kind.sample().map(|p| {
        let bytes = std::fs::read(root().join(p)).unwrap();
        ferroscope::sim::replay::decode_gray(&bytes).unwrap()
    });
    demo_state(
        kind,
        "host-sim",
        "neu_classify 1.0.0 int8",
        thumb.as_ref().map(|(w, h, p)| (*w, *h, p.as_slice())),
    )
}

#[test]
fn golden_screens_match_pixel_for_pixel() {
    let bless = std::env::var_os("FERROSCOPE_BLESS").is_some();
    let mut failures = Vec::new();
    for kind in [DemoState::Ok, DemoState::Reject, DemoState::Uncertain, DemoState::Fault] {
        for (w, h) in [(320u32, 240u32), (800, 480)] {
            let canvas = render(&demo(kind), w, h);
            let path = root().join(format!("tests/golden/screen_{}_{w}x{h}.png", kind.name()));
            if bless {
                ferroscope::display::write_png(&canvas, &path).unwrap();
                continue;
            }
            let golden = image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (FERROSCOPE_BLESS=1 writes it)", path.display()))
                .into_rgb8();
            assert_eq!((golden.width(), golden.height()), (w, h), "{}", path.display());
            let mut differing = 0;
            for y in 0..h {
                for x in 0..w {
                    if golden.get_pixel(x, y).0 != canvas.rgb888(x, y) {
                        differing += 1;
                    }
                }
            }
            if differing > 0 {
                failures.push(format!("{}: {differing} pixels differ", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn screens_differ_where_they_must() {
    // The outcome banner's colour is the first thing read from a metre away.
    let ok = render(&demo(DemoState::Ok), 320, 240);
    let reject = render(&demo(DemoState::Reject), 320, 240);
    let fault = render(&demo(DemoState::Fault), 800, 480);
    let [r, g, _] = ok.rgb888(4, 30);
    assert!(g > 150 && r < 60, "OK banner is green: {:?}", ok.rgb888(4, 30));
    let [r, g, _] = reject.rgb888(4, 30);
    assert!(r > 180 && g < 60, "REJECT banner is red: {:?}", reject.rgb888(4, 30));
    // The fault strip at the bottom is red when a fault is active, green otherwise.
    let [r, g, _] = fault.rgb888(790, 475);
    assert!(r > 150 && g < 30, "fault strip: {:?}", fault.rgb888(790, 475));
    let [r, g, _] = render(&demo(DemoState::Ok), 800, 480).rgb888(790, 475);
    assert!(g > 60 && r < 30, "healthy strip: {r} {g}");
}

#[test]
fn the_framebuffer_backend_writes_the_drivers_layout_and_only_the_changed_rows() {
    let (w, h) = (320u32, 240u32);
    let line_length = w as usize * 4 + 64; // drivers pad lines
    let path = std::env::temp_dir().join(format!("ferroscope-fb-{}", std::process::id()));
    std::fs::write(&path, vec![0xAAu8; line_length * h as usize]).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut fb = Framebuffer::with_layout(file, w, h, line_length, 0, PixelLayout::XRGB8888).unwrap();
    let mut state = demo(DemoState::Reject);
    let mut canvas = render(&state, w, h);
    fb.flush(&canvas, None).unwrap();
    let read = |path: &Path| {
        let mut v = Vec::new();
        std::fs::File::open(path).unwrap().read_to_end(&mut v).unwrap();
        v
    };
    let bytes = read(&path);
    for (x, y) in [(0u32, 0u32), (5, 30), (200, 150), (319, 239)] {
        let o = y as usize * line_length + x as usize * 4;
        let [r, g, b] = canvas.rgb888(x, y);
        assert_eq!(&bytes[o..o + 4], &[b, g, r, 0], "pixel ({x},{y})");
    }
    // Padding after each line is never written.
    assert_eq!(bytes[w as usize * 4], 0xAA);
    // A counters-only update rewrites only the counters' rows.
    let before = bytes.clone();
    state.inspected += 1;
    draw_counters(&state, &mut canvas).unwrap();
    let region = counters_region(canvas.size());
    fb.flush(&canvas, Some(region)).unwrap();
    let after = read(&path);
    let top = region.top_left.y as usize * line_length;
    assert_eq!(&after[..top], &before[..top], "rows above the counters untouched");
    assert_ne!(&after[top..], &before[top..], "the counters changed");
    let _ = std::fs::remove_file(&path);
}

/// A panel that never finishes drawing until told to.
struct StuckPanel {
    release: Arc<AtomicBool>,
    flushes: Arc<AtomicU64>,
}

impl Panel for StuckPanel {
    fn size(&self) -> (u32, u32) {
        (320, 240)
    }

    fn flush(&mut self, _canvas: &Canvas, _region: Option<Rectangle>) -> Result<(), DisplayError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        while !self.release.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(DisplayError("panel stopped answering".into()))
    }
}

#[test]
fn a_display_that_hangs_never_holds_up_the_frame_path() {
    let release = Arc::new(AtomicBool::new(false));
    let flushes = Arc::new(AtomicU64::new(0));
    let panel = StuckPanel {
        release: release.clone(),
        flushes: flushes.clone(),
    };
    let mut display = Display::spawn(Box::new(panel), 50.0).unwrap();
    // One state, and the display thread takes it and gets stuck in its first flush (outside the
    // mailbox's lock, so every offer below finds the slot free whatever the scheduler does).
    assert!(display.offer(|s| s.inspected = 1));
    let t0 = std::time::Instant::now();
    while flushes.load(Ordering::Relaxed) == 0 {
        assert!(t0.elapsed().as_secs() < 20, "the display thread never drew");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The frame path offers 2000 states while the panel is stuck in its first flush. If an
    // offer waited for drawing, this thread would never finish: the test would time out.
    let (tx, rx) = std::sync::mpsc::channel();
    let frame_path = std::thread::spawn(move || {
        let mut taken = 0;
        for i in 0..2000u64 {
            if display.offer(|s| s.inspected = i) {
                taken += 1;
            }
        }
        tx.send(()).unwrap();
        (display, taken)
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("the frame path was blocked by the display");
    let (display, taken) = frame_path.join().unwrap();
    assert_eq!(taken, 2000, "offers refused while the display thread held no lock");
    assert!(flushes.load(Ordering::Relaxed) <= 1, "still stuck in the first flush");
    release.store(true, Ordering::Relaxed);
    let stats = display.stop();
    // Intermediate states were dropped, not queued; the failing panel is a counted error.
    assert_eq!(stats.offered, 2001);
    assert!(stats.dropped >= 1990, "{stats:?}");
    assert!(stats.full_draws + stats.partial_draws <= 3, "{stats:?}");
    assert!(stats.errors >= 1 && stats.last_error.as_deref() == Some("panel stopped answering"));
}

#[test]
fn the_station_draws_its_screen_while_it_inspects_without_allocating() {
    let out = std::env::temp_dir().join(format!("ferroscope-screen-{}.png", std::process::id()));
    let text = std::fs::read_to_string(DEFAULT_CONFIG_PATH).unwrap();
    let with_display = format!(
        "{text}\n[display]\nbackend = \"png\"\npath = \"{}\"\nwidth = 320\nheight = 240\nrefresh_hz = 20.0\n",
        out.display()
    );
    let mut cfg = StationConfig::parse(&with_display, Path::new(DEFAULT_CONFIG_PATH)).unwrap();
    cfg.camera.rate_fps = 25.0;
    let s = station::run(&cfg, |_| {}).unwrap();
    let d = s.display.as_ref().expect("display stats");
    assert_eq!(d.offered, 36);
    assert!(d.full_draws >= 5, "{d:?}");
    assert_eq!(d.errors, 0);
    assert_eq!(
        s.allocations_ours_after_warmup, 0,
        "offering the screen state must not allocate"
    );
    let png = image::open(&out).unwrap().into_rgb8();
    assert_eq!((png.width(), png.height()), (320, 240));
    // The last item was a scratches reject: the banner is red.
    let p = png.get_pixel(4, 30).0;
    assert!(p[0] > 180 && p[1] < 60, "{p:?}");
    let _ = std::fs::remove_file(&out);
}

#[test]
fn display_config_errors_name_the_field_and_a_broken_display_is_not_fatal() {
    let text = std::fs::read_to_string(DEFAULT_CONFIG_PATH).unwrap();
    let p = Path::new(DEFAULT_CONFIG_PATH);
    let e = StationConfig::parse(&format!("{text}\n[display]\nbackend = \"hdmi\"\n"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("display.backend") && e.contains("st7789"), "{e}");
    let e = StationConfig::parse(&format!("{text}\n[display]\nbackend = \"st7789\"\n"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("display.spi_device"), "{e}");
    // A framebuffer that is not there: the station runs headless and says so.
    let mut cfg = StationConfig::parse(
        &format!("{text}\n[display]\nbackend = \"fb\"\npath = \"/dev/fb-missing\"\n"),
        p,
    )
    .unwrap();
    cfg.camera.rate_fps = 50.0;
    let s = station::run(&cfg, |_| {}).unwrap();
    assert_eq!(s.counters.inspected, 36);
    assert!(s.display.is_none());
}
