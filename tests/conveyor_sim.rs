//! The seeded conveyor at full size: 100 000 items in speed mode and in encoder mode, with
//! speed changes, broken frames and slow decisions, against the acceptance targets (0 missed,
//! 0 false rejects, every pulse within ±1 mm of its item), and the reject timeline against the
//! golden file `tests/golden/reject_timeline.txt` (its first edges verbatim, and a digest of
//! the whole). `FERROSCOPE_BLESS=1 cargo test --release --test conveyor_sim` rewrites it after
//! an intended change of behaviour.

use std::fmt::Write as _;
use std::path::PathBuf;

use ferroscope::sim::conveyor::{self, timeline_digest, timeline_text, SimConfig};

const ITEMS: u32 = 100_000;
const VERBATIM_EDGES: usize = 400;

#[test]
fn hundred_thousand_items_meet_the_targets_and_match_the_golden_timeline() {
    let mut golden = String::new();
    for encoder in [false, true] {
        let cfg = SimConfig::reference(1, ITEMS, encoder);
        let r = conveyor::run(&cfg);
        let mode = if encoder { "encoder" } else { "speed" };
        assert_eq!(r.items, ITEMS as u64);
        assert!(
            r.defective > 9_000 && r.failsafe_rejects > 500,
            "{mode}: {:?}",
            r.to_json()
        );
        assert_eq!(r.missed_rejects, 0, "{mode}: {}", r.to_json());
        assert_eq!(r.false_rejects, 0, "{mode}: {}", r.to_json());
        assert_eq!(
            r.duplicate_fires + r.wrong_ejector + r.gap_violations,
            0,
            "{mode}: {}",
            r.to_json()
        );
        assert_eq!(r.deadline_mismatches, 0, "{mode}: {}", r.to_json());
        assert_eq!(r.rejected_ok, r.must_reject);
        assert!(
            r.overdue > 0 && r.tracker.merged > 0,
            "slow decisions and merges were exercised"
        );
        assert!(r.error_mm_max <= 1.0, "{mode}: max error {} mm", r.error_mm_max);
        writeln!(
            golden,
            "# mode {mode}, seed 1, {ITEMS} items: {} edges, sha256 {}",
            r.timeline.len(),
            timeline_digest(&r.timeline)
        )
        .unwrap();
        golden.push_str(&timeline_text(&r.timeline, VERBATIM_EDGES));
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/reject_timeline.txt");
    if std::env::var_os("FERROSCOPE_BLESS").is_some() {
        std::fs::write(&path, &golden).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap();
    if want != golden {
        let first = want
            .lines()
            .zip(golden.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(golden.lines().count()));
        panic!(
            "{}: the reject timeline changed, first at line {}:\n  golden: {:?}\n  now:    {:?}",
            path.display(),
            first + 1,
            want.lines().nth(first),
            golden.lines().nth(first)
        );
    }
}
