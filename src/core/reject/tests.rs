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

#[test]
fn line_stop_policy_latches_the_line_stop_output() {
    let mut t = tracker(&[ejector(500.0, MergePolicy::Extend, ALL)], FailSafePolicy::LineStop);
    t.begin(1, Instant::from_us(0));
    t.begin(2, Instant::from_us(100_000));
    let (mut edges, mut fired) = (Vec::new(), Vec::new());
    run(&mut t, 0, 2_000_000, &mut edges, &mut fired);
    assert_eq!(edges, vec![(Output::LineStop, true, 490_000)]);
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
