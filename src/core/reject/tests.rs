//! Tests of the reject tracker ([`super::Tracker`]).

use super::*;

const ALL: OutcomeSet = OutcomeSet::ALL;

fn ejector(distance: f32, merge: MergePolicy, takes: OutcomeSet) -> EjectorConfig {
    EjectorConfig {
        ejector_distance_mm: distance,
        pulse_width_us: 20_000,
        min_gap_us: 10_000,
        merge,
        takes,
    }
}

fn reject(class: u8) -> Decision {
    Decision {
        outcome: Outcome::Reject,
        action: Action::Reject,
        class: Some(class),
        score: 0.9,
    }
}

fn accept() -> Decision {
    Decision {
        outcome: Outcome::Accept,
        action: Action::Accept,
        class: Some(0),
        score: 0.9,
    }
}

/// Run the tracker from `from` to `to` µs, polling at every predicted event; collects edges.
fn run(t: &mut Tracker, from: u64, to: u64, edges: &mut Vec<(Output, bool, u64)>, fired: &mut Vec<TrackEvent>) {
    let mut now = Instant::from_us(from);
    loop {
        t.poll(now, |ev| match ev {
            TrackEvent::Edge { output, active, at } => edges.push((output, active, at.us)),
            f => fired.push(f),
        });
        match t.next_event(now) {
            Some(n) if n.us <= to => now = n.max(now.add_us(1)),
            _ => break,
        }
    }
}

fn tracker(ejectors: &[EjectorConfig], fs: FailSafePolicy) -> Tracker {
    Tracker::new(ejectors, fs, Belt::from_speed(1000.0, Instant::from_us(0))).unwrap()
}

#[test]
fn pulse_is_centred_on_arrival_at_the_right_ejector() {
    let a = OutcomeSet {
        classes: 0b01,
        ..Default::default()
    };
    let b = OutcomeSet { classes: 0b10, ..ALL };
    let mut t = tracker(
        &[
            ejector(300.0, MergePolicy::Extend, a),
            ejector(500.0, MergePolicy::Extend, b),
        ],
        FailSafePolicy::Reject,
    );
    assert!(t.begin(1, Instant::from_us(100_000)));
    assert!(t.begin(2, Instant::from_us(200_000)));
    assert!(t.begin(3, Instant::from_us(300_000)));
    let now = Instant::from_us(350_000);
    t.decide(1, &reject(0), now).unwrap();
    t.decide(2, &reject(1), now).unwrap();
    t.decide(3, &accept(), now).unwrap();
    let (mut edges, mut fired) = (Vec::new(), Vec::new());
    run(&mut t, 350_000, 2_000_000, &mut edges, &mut fired);
    // Item 1 reaches ejector 0 (300 mm at 1 m/s) at 400 ms; item 2 ejector 1 at 700 ms.
    assert_eq!(
        edges,
        vec![
            (Output::Ejector(0), true, 390_000),
            (Output::Ejector(0), false, 410_000),
            (Output::Ejector(1), true, 690_000),
            (Output::Ejector(1), false, 710_000),
        ]
    );
    assert_eq!(fired.len(), 2);
    assert_eq!(t.stats().accepted, 1);
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn close_rejects_extend_or_clip_and_far_ones_stay_apart() {
    for merge in [MergePolicy::Extend, MergePolicy::Clip] {
        let mut t = tracker(&[ejector(500.0, merge, ALL)], FailSafePolicy::Reject);
        // 25 ms apart: windows [490,510] and [515,535]; gap 5 ms < 10 ms.
        for (id, at) in [(1, 0), (2, 25_000), (3, 125_000)] {
            t.begin(id, Instant::from_us(at));
            t.decide(id, &reject(0), Instant::from_us(at + 1000)).unwrap();
        }
        let (mut edges, mut fired) = (Vec::new(), Vec::new());
        run(&mut t, 130_000, 2_000_000, &mut edges, &mut fired);
        let ons: Vec<_> = edges.iter().filter(|e| e.1).map(|e| e.2).collect();
        let offs: Vec<_> = edges.iter().filter(|e| !e.1).map(|e| e.2).collect();
        match merge {
            MergePolicy::Extend => {
                assert_eq!(ons, vec![490_000, 615_000]);
                assert_eq!(offs, vec![535_000, 635_000]);
                assert_eq!(t.stats().merged, 1);
            }
            MergePolicy::Clip => {
                // Second window starts after the gap (520 ms), still before its arrival.
                assert_eq!(ons, vec![490_000, 520_000, 615_000]);
                assert_eq!(offs, vec![510_000, 535_000, 635_000]);
                assert_eq!(t.stats().clipped, 1);
            }
        }
        assert_eq!(t.stats().fired[0], 3);
    }
}

#[test]
fn undecided_items_get_the_fail_safe_at_their_deadline() {
    let mut t = tracker(&[ejector(500.0, MergePolicy::Extend, ALL)], FailSafePolicy::Reject);
    t.begin(7, Instant::from_us(0));
    let (mut edges, mut fired) = (Vec::new(), Vec::new());
    run(&mut t, 0, 1_000_000, &mut edges, &mut fired);
    assert_eq!(fired[0], TrackEvent::Overdue { id: 7 });
    assert!(matches!(
        fired[1],
        TrackEvent::Fired {
            id: 7,
            failsafe: true,
            ..
        }
    ));
    assert_eq!(edges[0], (Output::Ejector(0), true, 490_000));
    assert_eq!(t.stats().failsafe_rejects, 1);
    // The decision comes too late: reported, not applied.
    assert_eq!(
        t.decide(7, &accept(), Instant::from_us(600_000)),
        Err(DecideError::Late)
    );
    assert_eq!(
        t.decide(99, &accept(), Instant::from_us(600_000)),
        Err(DecideError::UnknownItem)
    );
    t.begin(8, Instant::from_us(1_000_000));
    run(&mut t, 1_000_000, 1_495_000, &mut edges, &mut fired);
    assert_eq!(
        t.decide(8, &accept(), Instant::from_us(1_495_000)),
        Err(DecideError::Late)
    );
}

/// One ejector 500 mm downstream with 4 ms pulses and a 10 ms gap (1 m/s, Extend); item 1
/// captured at 0 and rejected at 1 ms (its pulse 498-502 ms), item 2 captured at 8 ms
/// (arriving at 508 ms, inside the gap after item 1's pulse) and not yet decided.
fn two_items_8_ms_apart() -> Tracker {
    let short = EjectorConfig {
        pulse_width_us: 4_000,
        min_gap_us: 10_000,
        ..ejector(500.0, MergePolicy::Extend, ALL)
    };
    let mut t = tracker(&[short], FailSafePolicy::Reject);
    t.begin(1, Instant::from_us(0));
    t.begin(2, Instant::from_us(8_000));
    assert_eq!(t.decide(1, &reject(0), Instant::from_us(1_000)), Ok(()));
    t
}

#[test]
fn a_reject_that_must_hold_a_pulse_on_is_due_a_gap_before_its_window() {
    // 4 ms pulses, 10 ms gap: item 1 arrives at 500 ms (pulse 498-502), item 2 at 508 ms,
    // inside the gap after item 1's pulse, so it can only be reached by holding that pulse on.
    // Its deadline is 496 ms (its window opens at 506, less the gap), before the pulse ends.
    for (decided_at, late) in [(495_000, false), (496_000, false), (496_001, true), (504_000, true)] {
        let mut t = two_items_8_ms_apart();
        let (mut edges, mut fired) = (Vec::new(), Vec::new());
        run(&mut t, 0, decided_at - 1, &mut edges, &mut fired);
        let r = t.decide(2, &reject(0), Instant::from_us(decided_at));
        assert_eq!(r.is_err(), late, "decided at {decided_at}: {r:?}");
        run(&mut t, decided_at, 1_000_000, &mut edges, &mut fired);
        // Either way one pulse holds on through both items: the gap is kept and item 2 is
        // rejected (by its decision, or by the fail-safe when the decision came too late).
        let ejector0 = Output::Ejector(0);
        assert_eq!(
            edges,
            vec![(ejector0, true, 498_000), (ejector0, false, 510_000)],
            "decided at {decided_at}"
        );
        let item2 = fired.iter().find_map(|f| match f {
            TrackEvent::Fired {
                id: 2,
                merged,
                failsafe,
                ..
            } => Some((*merged, *failsafe)),
            _ => None,
        });
        assert_eq!(item2, Some((true, late)), "decided at {decided_at}");
    }
}

#[test]
fn a_pulse_held_for_the_next_item_stays_on_when_the_belt_slows_meanwhile() {
    // 4 ms pulses, 10 ms gap, 1 m/s: item 1's pulse is 498-502 ms and item 2, due at 508 ms,
    // would open its window inside the gap, so item 1's pulse is held on for it from 502.
    // At 504 ms the belt slows to 0.25 m/s: item 2, 4 mm away, now arrives at 520 ms, later
    // than 4 pulse widths after item 1's window opened (514). The hold lasts the gap and 4
    // widths past 502 (528), so the pulse stays on through item 2 instead of ending at 514
    // and coming on again 4 ms later, inside the gap. If the belt stops instead, the hold
    // ends at 528 and is not begun again; the item fires when the belt moves again.
    let ejector0 = Output::Ejector(0);
    for (slow_to, expected) in [
        (250.0, vec![(ejector0, true, 498_000), (ejector0, false, 522_000)]),
        (0.0, vec![(ejector0, true, 498_000), (ejector0, false, 528_000)]),
    ] {
        let mut t = two_items_8_ms_apart();
        t.decide(2, &reject(0), Instant::from_us(2_000)).unwrap();
        let (mut edges, mut fired) = (Vec::new(), Vec::new());
        run(&mut t, 0, 503_999, &mut edges, &mut fired);
        t.belt_mut().set_speed(Instant::from_us(504_000), slow_to);
        run(&mut t, 504_000, 1_000_000, &mut edges, &mut fired);
        assert_eq!(edges, expected, "slowed to {slow_to} mm/s");
        if slow_to == 0.0 {
            // 4 mm at 1 m/s from 2 s: arrival 2.004 s, window from 2.002 s.
            t.belt_mut().set_speed(Instant::from_us(2_000_000), 1000.0);
            run(&mut t, 2_000_000, 3_000_000, &mut edges, &mut fired);
            assert_eq!(edges[2..], [(ejector0, true, 2_002_000), (ejector0, false, 2_006_000)]);
        } else {
            let merged = fired.iter().any(|f| {
                matches!(
                    f,
                    TrackEvent::Fired {
                        id: 2,
                        merged: true,
                        ..
                    }
                )
            });
            assert!(merged, "{fired:?}");
        }
    }
}

#[test]
fn line_stop_policy_latches_the_line_stop_output() {
    let mut t = tracker(&[ejector(500.0, MergePolicy::Extend, ALL)], FailSafePolicy::LineStop);
    t.begin(1, Instant::from_us(0));
    t.begin(2, Instant::from_us(100_000));
    let (mut edges, mut fired) = (Vec::new(), Vec::new());
    run(&mut t, 0, 2_000_000, &mut edges, &mut fired);
    // The first item's deadline: the 10 ms gap before its window opens at 490 ms.
    assert_eq!(edges, vec![(Output::LineStop, true, 480_000)]);
    assert!(t.line_stop_active());
    assert_eq!(t.stats().line_stops, 1);
    assert_eq!(t.stats().overdue, 2);
    t.reset_line_stop(Instant::from_us(3_000_000), |e| {
        assert_eq!(
            e,
            TrackEvent::Edge {
                output: Output::LineStop,
                active: false,
                at: Instant::from_us(3_000_000)
            }
        )
    });
    assert!(!t.line_stop_active());
}

#[test]
fn overflow_merges_into_the_newest_item_with_the_fail_safe() {
    let mut t = tracker(&[ejector(5000.0, MergePolicy::Extend, ALL)], FailSafePolicy::Reject);
    for i in 0..MAX_ITEMS_IN_FLIGHT as u32 {
        assert!(t.begin(i, Instant::from_us(i as u64 * 1000)));
    }
    let n = MAX_ITEMS_IN_FLIGHT as u32;
    assert!(!t.begin(n, Instant::from_us(n as u64 * 1000)));
    assert_eq!(t.stats().overflows, 1);
    // The newest tracked item now covers both and is rejected whatever its decision.
    for i in 0..n {
        t.decide(i, &accept(), Instant::from_us(300_000)).unwrap();
    }
    let (mut edges, mut fired) = (Vec::new(), Vec::new());
    run(&mut t, 300_000, 20_000_000, &mut edges, &mut fired);
    let on = edges.iter().find(|e| e.1).unwrap().2;
    let off = edges.iter().find(|e| !e.1).unwrap().2;
    // Item n-1 arrives at 5 s + 255 ms, item n (merged) 1 ms later: both inside the pulse.
    let last = 5_000_000 + (n as u64 - 1) * 1000;
    assert!(on <= last && off >= last + 1000, "{on} {off}");
    assert_eq!(t.stats().failsafe_rejects, 1);
}

#[test]
fn a_stopped_belt_holds_items_and_a_restart_fires_them() {
    let mut t = tracker(&[ejector(500.0, MergePolicy::Extend, ALL)], FailSafePolicy::Reject);
    t.begin(1, Instant::from_us(0));
    t.decide(1, &reject(0), Instant::from_us(10_000)).unwrap();
    t.belt_mut().set_speed(Instant::from_us(200_000), 0.0); // stopped 300 mm before
    let (mut edges, mut fired) = (Vec::new(), Vec::new());
    run(&mut t, 200_000, 10_000_000, &mut edges, &mut fired);
    assert!(edges.is_empty());
    assert_eq!(t.next_event(Instant::from_us(10_000_000)), None);
    t.belt_mut().set_speed(Instant::from_us(10_000_000), 500.0); // 300 mm at 0.5 m/s = 600 ms
    run(&mut t, 10_000_000, 20_000_000, &mut edges, &mut fired);
    assert_eq!(edges[0], (Output::Ejector(0), true, 10_590_000));
}

#[test]
fn configurations_without_a_fail_safe_ejector_are_refused() {
    let a = OutcomeSet {
        classes: 1,
        ..Default::default()
    };
    let b = Belt::from_speed(1.0, Instant::from_us(0));
    assert_eq!(
        Tracker::new(
            &[ejector(1.0, MergePolicy::Extend, a)],
            FailSafePolicy::Reject,
            b.clone()
        )
        .unwrap_err(),
        TrackerError::NoFailSafeEjector
    );
    assert!(Tracker::new(
        &[ejector(1.0, MergePolicy::Extend, a)],
        FailSafePolicy::LineStop,
        b.clone()
    )
    .is_ok());
    assert_eq!(
        Tracker::new(&[], FailSafePolicy::Accept, b).unwrap_err(),
        TrackerError::EjectorCount(0)
    );
}

/// Edges of the tracker on an encoder belt (1 count/mm), fed `counts` (count, µs) one by one,
/// polling at each count and at every predicted event in between.
fn run_encoder(t: &mut Tracker, counts: &[(i64, u64)], edges: &mut Vec<(Output, bool, u64)>) {
    let mut fired = Vec::new();
    for w in counts.windows(2) {
        let ((c, at), (_, next)) = (w[0], w[1]);
        t.belt_mut().on_encoder(c, Instant::from_us(at));
        run(t, at, next - 1, edges, &mut fired);
    }
}

#[test]
fn a_belt_running_backwards_moves_its_items_back_and_they_fire_when_they_come_round_again() {
    // One ejector 20 mm downstream, 1 count/mm, pulses 2 ms.
    let e = EjectorConfig {
        pulse_width_us: 2_000,
        min_gap_us: 1_000,
        ..ejector(20.0, MergePolicy::Extend, ALL)
    };
    let mut t = Tracker::new(&[e], FailSafePolicy::Reject, Belt::from_encoder(1.0).unwrap()).unwrap();
    let mut counts = Vec::new();
    let mut us = 1_000;
    // Forward to 15 mm at 1 mm/ms …
    for c in 0..=15 {
        counts.push((c, us));
        us += 1_000;
    }
    // … the item is begun and decided at 0 mm (count 0 at 1 ms) …
    t.begin(1, Instant::from_us(1_000));
    t.decide(1, &reject(0), Instant::from_us(1_500)).unwrap();
    // … back to 5 mm, then forward to 30 mm.
    for c in (5..15).rev() {
        counts.push((c, us));
        us += 1_000;
    }
    let back_at = us;
    for c in 6..=30 {
        counts.push((c, us));
        us += 1_000;
    }
    let mut edges = Vec::new();
    run_encoder(&mut t, &counts, &mut edges);
    let on: Vec<u64> = edges.iter().filter(|(_, a, _)| *a).map(|(_, _, at)| *at).collect();
    assert_eq!(on.len(), 1, "one pulse: {edges:?}");
    // The item reaches 20 mm only on the second forward run, after the belt came back to
    // 5 mm and ran 15 mm on: at back_at + 14 ms (count 20) less half the pulse.
    assert!(
        on[0] > back_at,
        "fired before the belt came back: {on:?}, back at {back_at}"
    );
    let arrival = back_at + 14_000;
    assert!(
        on[0].abs_diff(arrival - 1_000) <= 1_000,
        "on at {} for arrival {arrival}",
        on[0]
    );
}

#[test]
fn an_encoder_fault_gives_every_item_in_flight_the_fail_safe() {
    let a = OutcomeSet {
        classes: 0b01,
        ..Default::default()
    };
    let fs = OutcomeSet { classes: 0, ..ALL };
    let mut t = tracker(
        &[
            ejector(100.0, MergePolicy::Extend, a),
            ejector(200.0, MergePolicy::Extend, fs),
        ],
        FailSafePolicy::Reject,
    );
    t.begin(1, Instant::from_us(0));
    t.begin(2, Instant::from_us(10_000));
    t.begin(3, Instant::from_us(20_000));
    t.decide(1, &reject(0), Instant::from_us(5_000)).unwrap();
    t.decide(2, &accept(), Instant::from_us(15_000)).unwrap();
    t.fail_safe_in_flight(Instant::from_us(25_000));
    // Item 3 was undecided: its accept is overruled by the fail-safe.
    t.decide(3, &accept(), Instant::from_us(30_000)).unwrap();
    let (mut edges, mut fired) = (Vec::new(), Vec::new());
    run(&mut t, 25_000, 1_000_000, &mut edges, &mut fired);
    let by_item: Vec<(u32, u8, bool)> = fired
        .iter()
        .filter_map(|f| match f {
            TrackEvent::Fired {
                id, ejector, failsafe, ..
            } => Some((*id, *ejector, *failsafe)),
            _ => None,
        })
        .collect();
    // 1 (a reject for ejector 0) and 3 go to the fail-safe ejector; 2 stays accepted.
    assert_eq!(by_item, vec![(1, 1, true), (3, 1, true)], "{edges:?}");
}
