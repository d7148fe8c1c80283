//! Property tests of reject tracking over random conveyors: whatever the speeds, spacing, pulse
//! widths, gaps, merge policy and speed source, every item that must be rejected is rejected
//! exactly once by the right ejector with its true arrival inside the pulse, no good item
//! decided in time is hit, pulses on one output keep their minimum gap, and pulses sit within
//! ±1 mm of the item (those that opened in time: a belt speeding up just before the window
//! leaves it less than half a pulse's travel, and the pulse is not made shorter than half).

use ferroscope::core::reject::{EjectorConfig, FailSafePolicy, MergePolicy, OutcomeSet};
use ferroscope::sim::conveyor::{self, EncoderSim, SimConfig};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_reject_lands_once_and_nothing_else_is_hit(
        seed in any::<u64>(),
        v_lo in 200.0f32..1000.0,
        v_span in 0.0f32..1000.0,
        width_ms in 5u32..30,
        gap_ms in 0u32..15,
        d0 in 150.0f32..800.0,
        d_extra in 50.0f32..1200.0,
        clip in any::<bool>(),
        encoder in proptest::option::of((1.0f32..10.0, 0.0f32..50.0)),
        accel in 500.0f32..5000.0,
        defect_rate in 0.0f32..0.5,
    ) {
        let v_hi = v_lo + v_span;
        let merge = if clip { MergePolicy::Clip } else { MergePolicy::Extend };
        let e = |d: f32, classes: u16, tail: bool| EjectorConfig {
            ejector_distance_mm: d,
            pulse_width_us: width_ms * 1000,
            min_gap_us: gap_ms * 1000,
            merge,
            takes: OutcomeSet { classes, uncertain: tail, failsafe: tail },
        };
        // Items no closer than half a pulse plus half a gap at the top speed (closer ones
        // could put a good item inside a merged pulse), plus a margin.
        let min_spacing = (width_ms + gap_ms) as f32 / 2.0 * v_hi / 1000.0 + 5.0;
        let cfg = SimConfig {
            seed,
            items: 300,
            spacing_mm: (min_spacing, min_spacing * 4.0),
            defect_rate,
            classes: 4,
            broken_rate: 0.02,
            ejectors: vec![e(d0, 0b0011, false), e(d0 + d_extra, 0b1100, true)],
            failsafe: FailSafePolicy::Reject,
            speed_mm_per_s: (v_lo, v_hi),
            speed_change_every_mm: 500.0,
            accel_mm_per_s2: accel,
            encoder: encoder.map(|(c, j)| EncoderSim { counts_per_mm: c, jitter_us: j }),
            latency_us: (1_000, 40_000),
            slow_rate: 0.02,
            slow_latency_us: (200_000, 2_000_000),
        };
        let r = conveyor::run(&cfg);
        prop_assert_eq!(r.items, 300);
        prop_assert_eq!(r.missed_rejects, 0, "{:?}", r.to_json());
        prop_assert_eq!(r.false_rejects, 0, "{:?}", r.to_json());
        prop_assert_eq!(r.duplicate_fires, 0);
        prop_assert_eq!(r.wrong_ejector, 0);
        prop_assert_eq!(r.gap_violations, 0, "{:?}", r.to_json());
        prop_assert_eq!(r.deadline_mismatches, 0, "{:?}", r.to_json());
        prop_assert_eq!(r.rejected_ok, r.must_reject);
        // Counters add up: every fire is an item that had to be rejected.
        prop_assert_eq!(r.tracker.fired.iter().sum::<u64>(), r.must_reject);
        prop_assert_eq!(r.tracker.failsafe_rejects, r.failsafe_rejects);
        prop_assert!(r.error_mm_max <= 1.0, "{:?}", r.to_json());
    }
}
