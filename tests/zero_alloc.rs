//! The frame path allocates nothing in our code after warm-up: preprocessing, decision,
//! reject tracking and counters, with tract's own allocations counted separately.

use std::path::PathBuf;

use ferroscope::alloc_count::{CountingAlloc, Scope, Snapshot};
use ferroscope::core::belt::Belt;
use ferroscope::core::counters::Counters;
use ferroscope::core::decision::{Action, ClassRule, DecisionRules};
use ferroscope::core::frame::GrayFrame;
use ferroscope::core::reject::{EjectorConfig, FailSafePolicy, MergePolicy, OutcomeSet, TrackEvent, Tracker};
use ferroscope::core::time::Instant;
use ferroscope::model::manifest::Precision;
use ferroscope::sim::replay::decode_gray;
use ferroscope::tools::classify::Classifier;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn frame_path_allocates_nothing_in_our_code_after_warm_up() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut clf = Classifier::load(&root.join("models/neu_classify.toml"), Precision::Int8).unwrap();
    let rules = DecisionRules::new(
        &[ClassRule {
            reject: true,
            min_score: 0.5,
        }; 6],
        Action::Reject,
        Action::Reject,
    )
    .unwrap();
    let ejector = EjectorConfig {
        ejector_distance_mm: 100.0,
        pulse_width_us: 1000,
        min_gap_us: 0,
        merge: MergePolicy::Extend,
        takes: OutcomeSet::ALL,
    };
    let mut tracker = Tracker::new(
        &[ejector],
        FailSafePolicy::Reject,
        Belt::from_speed(1000.0, Instant::from_us(0)),
    )
    .unwrap();
    let mut id = 0u32;
    let mut edges = 0u64;
    let mut counters = Counters::default();
    // Frames decoded up front: the camera's buffers, not the frame path.
    let dir = root.join("tests/data/neu_samples/inclusion");
    let frames: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| decode_gray(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    // A frame of another size exercises the resampler too (taps sized at warm-up).
    let big: Vec<u8> = (0..320 * 240).map(|i| (i % 251) as u8).collect();

    let mut step = |px: &[u8], w: usize, h: usize, t: u64| {
        let f = GrayFrame::new(px, w, h, w).unwrap();
        let d = rules.decide(clf.classify(&f).unwrap());
        counters.record(&d);
        id += 1;
        tracker.begin(id, Instant::from_us(t));
        tracker.decide(id, &d, Instant::from_us(t)).unwrap();
        tracker.poll(Instant::from_us(t + 99_000), |e| {
            edges += matches!(e, TrackEvent::Edge { .. }) as u64
        });
        tracker.poll(Instant::from_us(t + 200_000), |e| {
            edges += matches!(e, TrackEvent::Edge { .. }) as u64
        });
    };
    step(&big, 320, 240, 0);
    for (w, h, px) in &frames {
        step(px, *w, *h, 0);
    }
    let before = Snapshot::take_thread();
    let mut t = 1_000_000;
    for _ in 0..5 {
        for (w, h, px) in &frames {
            step(px, *w, *h, t);
            t += 10_000;
        }
        step(&big, 320, 240, t);
    }
    let after = Snapshot::take_thread();
    assert_eq!(
        after.since(&before, Scope::Ours),
        0,
        "our code allocated on the frame path"
    );
    assert!(
        after.tract_requests_since(&before) > 0,
        "tract's requests are counted in their own scope (system calls or pool hits)"
    );
    assert_eq!(counters.inspected, 7 + 35);
    assert_eq!(tracker.in_flight(), 0);
    assert_eq!(edges, 2 * counters.rejected, "one pulse per reject");
}

#[test]
fn segment_frame_path_allocates_nothing_in_our_code_after_warm_up() {
    use ferroscope::tools::segment::{SegmentRules, Segmenter};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rules = SegmentRules {
        mm_per_px: Some(0.05),
        reject_if_length_mm_over: Some(2.0),
        ..Default::default()
    };
    let mut seg = Segmenter::load(&root.join("models/kolektor_segment.toml"), Precision::Int8, rules).unwrap();
    let dir = root.join("tests/data/kolektor_samples/images");
    let mut frames: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| decode_gray(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    // One frame size, as from one camera: crop every frame to the smallest.
    let (w, h) = frames
        .iter()
        .fold((usize::MAX, usize::MAX), |a, f| (a.0.min(f.0), a.1.min(f.1)));
    for f in frames.iter_mut() {
        let px: Vec<u8> = (0..h).flat_map(|y| f.2[y * f.0..y * f.0 + w].to_vec()).collect();
        *f = (w, h, px);
    }
    let f0 = GrayFrame::new(&frames[0].2, w, h, w).unwrap();
    seg.segment(&f0).unwrap();
    let before = Snapshot::take_thread();
    let mut regions = 0;
    for (w, h, px) in frames.iter().chain(frames.iter()) {
        let f = GrayFrame::new(px, *w, *h, *w).unwrap();
        let r = seg.segment(&f).unwrap();
        regions += r.regions.len();
    }
    let after = Snapshot::take_thread();
    assert_eq!(
        after.since(&before, Scope::Ours),
        0,
        "our code allocated on the segment frame path"
    );
    assert!(
        after.tract_requests_since(&before) > 0,
        "tract's requests are counted in their own scope (system calls or pool hits)"
    );
    assert!(regions > 0, "the defective samples have regions");
}

#[test]
fn grains_analysis_allocates_nothing_in_our_code_after_warm_up() {
    use ferroscope::grains::model::GrainModel;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut gm = GrainModel::load(&root.join("models/grains_316l.toml"), Precision::Int8).unwrap();
    let dir = root.join("tests/data/grains_samples/images");
    let frames: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| decode_gray(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    let um = gm.section().um_per_px;
    let params = gm.section().params(um);
    let level = gm.section().pixel_threshold;
    // Warm-up: every micrograph once, so the buffers reach the largest grain and run counts.
    for (w, h, px) in &frames {
        gm.boundary_map(&GrayFrame::new(px, *w, *h, *w).unwrap()).unwrap();
        gm.analyse_map(level, &params).unwrap();
    }
    let mut grains = 0;
    for (w, h, px) in frames.iter().chain(frames.iter()) {
        gm.boundary_map(&GrayFrame::new(px, *w, *h, *w).unwrap()).unwrap();
        let before = Snapshot::take_thread();
        grains += gm.analyse_map(level, &params).unwrap().grains.len();
        let after = Snapshot::take_thread();
        assert_eq!(
            after.since(&before, Scope::Ours),
            0,
            "our code allocated in the threshold and grain analysis"
        );
    }
    assert!(grains > 0, "the samples have grains");
}

/// tract itself, after warm-up, asks the system allocator for nothing on any shipped model
/// file, int8 or f32: every block it frees comes back from the engine's pool (tiny and
/// low-aligned ones included), so its allocations per inference stay at 0, under the bound of
/// 10 the runtime promises. Pool hits are counted apart and must be there (tract does allocate).
#[test]
fn tract_asks_the_system_for_nothing_per_inference_on_every_shipped_model() {
    use ferroscope::alloc_count::scoped;
    use ferroscope::model::engine::Engine;
    use ferroscope::model::manifest::Manifest;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root.join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 6, "the shipped manifests: {manifests:?}");
    for m in &manifests {
        // a grains manifest has a loader of its own
        let manifest = Manifest::load(m)
            .or_else(|_| ferroscope::grains::model::load_manifest(m).map(|(m, _)| m))
            .unwrap();
        for p in [Precision::Int8, Precision::F32] {
            if p == Precision::F32 && manifest.model.f32_file.is_none() {
                continue;
            }
            let file = manifest.model_path(p).unwrap();
            let mut engine = Engine::load_outputs(&file, &manifest.input.shape).unwrap();
            for (i, v) in engine.input_mut().iter_mut().enumerate() {
                *v = (i * 7 % 256) as f32 / 64.0 - 2.0;
            }
            let mut out = vec![0.0f32; engine.output_len()];
            for _ in 0..2 {
                scoped(Scope::Tract, || engine.run(&mut out)).unwrap();
            }
            let before = Snapshot::take_thread();
            for _ in 0..3 {
                scoped(Scope::Tract, || engine.run(&mut out)).unwrap();
            }
            let after = Snapshot::take_thread();
            let system = after.since(&before, Scope::Tract);
            assert_eq!(
                system,
                0,
                "{}: tract asked the system allocator {system} times in 3 runs",
                file.display()
            );
            assert!(
                after.pool_hits > before.pool_hits,
                "{}: tract's requests served by the pool are counted",
                file.display()
            );
            assert_eq!(
                after.since(&before, Scope::Ours),
                0,
                "{}: our code allocated",
                file.display()
            );
        }
    }
}
