//! Property tests of reject timing: pulses never overlap, every scheduled reject's arrival
//! lies inside a pulse, and nothing is dropped silently.

use ferroscope::core::reject::{Edge, EjectorConfig, RejectScheduler, ScheduleError, MAX_PENDING_PULSES};
use ferroscope::core::time::Instant;
use proptest::prelude::*;

proptest! {
    #[test]
    fn every_reject_is_inside_a_pulse_and_pulses_never_overlap(
        gaps in proptest::collection::vec(20_000u64..200_000, 1..200),
        speed in 2_000.0f32..20_000.0,
        distance in 0.0f32..2_000.0,
        width in 100u32..50_000,
        min_gap in 0u32..20_000,
        decide_after in 0u64..30_000,
    ) {
        let cfg = EjectorConfig { ejector_distance_mm: distance, pulse_width_us: width, min_gap_us: min_gap };
        let mut s = RejectScheduler::new(cfg, speed);
        let mut captured = 1_000_000u64;
        let mut arrivals = Vec::new();
        let mut pulses: Vec<(u64, u64)> = Vec::new();
        let mut on_at = None;
        let drain = |s: &mut RejectScheduler, now: u64, pulses: &mut Vec<(u64, u64)>, on_at: &mut Option<u64>| {
            while let Some((edge, p)) = s.poll(Instant::from_us(now)) {
                match edge {
                    Edge::On => { assert!(on_at.is_none()); *on_at = Some(p.on.us); }
                    Edge::Off => { pulses.push((on_at.take().unwrap(), p.off.us)); }
                }
            }
        };
        for g in gaps {
            captured += g;
            let now = captured + decide_after;
            drain(&mut s, now, &mut pulses, &mut on_at);
            match s.schedule(Instant::from_us(captured), Instant::from_us(now)) {
                Ok(r) => arrivals.push((r.arrival.us, r.clipped)),
                Err(ScheduleError::TooLate { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected {:?} with {} pending of {}", e, s.pending(), MAX_PENDING_PULSES),
            }
        }
        drain(&mut s, u64::MAX / 2, &mut pulses, &mut on_at);
        prop_assert!(on_at.is_none());
        for w in pulses.windows(2) {
            // The next pulse starts at least the minimum gap after the previous one ended
            // (closer ones were merged).
            prop_assert!(w[1].0 >= w[0].1 + min_gap as u64, "pulses overlap or crowd: {:?}", w);
        }
        for (a, clipped) in arrivals {
            let inside = pulses.iter().any(|(on, off)| *on <= a && a <= *off);
            prop_assert!(inside || clipped, "arrival {} in no pulse", a);
        }
    }
}
