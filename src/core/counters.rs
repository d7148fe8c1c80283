//! Station counters: what was inspected and what happened to it. They always add up:
//! `inspected == accepted + rejected` and every item has exactly one outcome.

use super::decision::{Action, Decision, Outcome};
use super::MAX_CLASSES;

/// Running totals for one station.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Counters {
    /// Items decided.
    pub inspected: u64,
    /// Items let through.
    pub accepted: u64,
    /// Items sent to the reject actuator, whatever the reason.
    pub rejected: u64,
    /// Confident detections per class (index = manifest class order).
    pub per_class: [u64; MAX_CLASSES],
    /// Confident detections of a reject class, per class.
    pub rejected_per_class: [u64; MAX_CLASSES],
    /// Items where no head was confident.
    pub uncertain: u64,
    /// Items with no valid decision (the fail-safe action applied).
    pub failsafe: u64,
    /// Faults seen (a fault may or may not cost an item).
    pub faults: u64,
}

impl Counters {
    /// Account one decided item.
    pub fn record(&mut self, d: &Decision) {
        self.inspected += 1;
        match d.action {
            Action::Accept => self.accepted += 1,
            Action::Reject => self.rejected += 1,
        }
        match d.outcome {
            Outcome::Accept | Outcome::Reject => {
                if let Some(c) = d.class {
                    let c = c as usize % MAX_CLASSES;
                    self.per_class[c] += 1;
                    if d.outcome == Outcome::Reject {
                        self.rejected_per_class[c] += 1;
                    }
                }
            }
            Outcome::Uncertain => self.uncertain += 1,
            Outcome::FailSafe => self.failsafe += 1,
        }
    }

    /// Account one fault.
    pub fn fault(&mut self) {
        self.faults += 1;
    }

    /// Accepted share of inspected items, in percent (100 when nothing was inspected).
    pub fn yield_percent(&self) -> f32 {
        if self.inspected == 0 {
            100.0
        } else {
            self.accepted as f32 * 100.0 / self.inspected as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up() {
        let mut c = Counters::default();
        let ok = Decision {
            outcome: Outcome::Accept,
            action: Action::Accept,
            class: Some(1),
            score: 0.9,
        };
        let bad = Decision {
            outcome: Outcome::Reject,
            action: Action::Reject,
            class: Some(2),
            score: 0.9,
        };
        let unsure = Decision {
            outcome: Outcome::Uncertain,
            action: Action::Reject,
            class: Some(0),
            score: 0.3,
        };
        let fs = Decision {
            outcome: Outcome::FailSafe,
            action: Action::Reject,
            class: None,
            score: 0.0,
        };
        for d in [ok, bad, bad, unsure, fs] {
            c.record(&d);
        }
        assert_eq!(c.inspected, 5);
        assert_eq!(c.accepted + c.rejected, c.inspected);
        assert_eq!(c.rejected, 4);
        assert_eq!(c.rejected_per_class[2], 2);
        assert_eq!(c.per_class[1], 1);
        assert_eq!((c.uncertain, c.failsafe), (1, 1));
        assert!((c.yield_percent() - 20.0).abs() < 1e-4);
    }
}
