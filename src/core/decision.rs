//! Decision rules: per-class scores from one-vs-all heads → accept / reject / uncertain.
//!
//! Every head is an independent binary classifier, so scores need not sum to one. The rule:
//! the winning class is the head with the highest score; it counts only if that score reaches
//! the class's threshold. No confident head means `Uncertain`, whose action is configured.
//! Scores that are not finite are a model fault and get the fail-safe action.

use super::MAX_CLASSES;

/// What happens to the item physically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Action {
    /// Let the item pass.
    Accept,
    /// Fire the reject actuator for the item.
    Reject,
}

/// Why the item got its action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Outcome {
    /// A confident head of a class configured as acceptable.
    Accept,
    /// A confident head of a class configured to reject.
    Reject,
    /// No head reached its threshold; the configured uncertain action applies.
    Uncertain,
    /// No valid decision (broken frame, model error, late decision): fail-safe action.
    FailSafe,
}

impl Outcome {
    /// The outcome's name in output, logs and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Accept => "accept",
            Outcome::Reject => "reject",
            Outcome::Uncertain => "uncertain",
            Outcome::FailSafe => "failsafe",
        }
    }
}

/// Per-class rule.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClassRule {
    /// Reject items of this class (otherwise accept them).
    pub reject: bool,
    /// Lowest head score (0..=1) at which the class counts as detected.
    pub min_score: f32,
}

/// The decision for one item.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Decision {
    /// Why.
    pub outcome: Outcome,
    /// What the actuator does.
    pub action: Action,
    /// Index of the highest-scoring class, if scores were valid.
    pub class: Option<u8>,
    /// Score of that class (0 when there was none).
    pub score: f32,
}

/// Errors building [`DecisionRules`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RulesError {
    /// No classes, or more than [`MAX_CLASSES`].
    ClassCount(usize),
    /// A threshold outside 0..=1 (or NaN) for the class with this index.
    Threshold(usize),
}

/// The configured rules for one model.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionRules {
    rules: heapless::Vec<ClassRule, MAX_CLASSES>,
    /// Action when no head is confident.
    pub uncertain_action: Action,
    /// Action when no valid decision exists.
    pub failsafe_action: Action,
    /// Detection tools (segment, anomaly: one `defect` class): a score under the threshold is
    /// a good part (`Accept`, no class), not an uncertain one.
    pub detector: bool,
}

impl DecisionRules {
    /// Rules for `rules.len()` classes.
    pub fn new(rules: &[ClassRule], uncertain_action: Action, failsafe_action: Action) -> Result<Self, RulesError> {
        if rules.is_empty() || rules.len() > MAX_CLASSES {
            return Err(RulesError::ClassCount(rules.len()));
        }
        let mut v = heapless::Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if !(0.0..=1.0).contains(&r.min_score) {
                return Err(RulesError::Threshold(i));
            }
            // Cannot fail: length checked above.
            let _ = v.push(*r);
        }
        Ok(DecisionRules {
            rules: v,
            uncertain_action,
            failsafe_action,
            detector: false,
        })
    }

    /// Number of classes.
    pub fn class_count(&self) -> usize {
        self.rules.len()
    }

    /// Rule of class `i`.
    pub fn rule(&self, i: usize) -> Option<&ClassRule> {
        self.rules.get(i)
    }

    /// The fail-safe decision.
    pub fn fail_safe(&self) -> Decision {
        Decision {
            outcome: Outcome::FailSafe,
            action: self.failsafe_action,
            class: None,
            score: 0.0,
        }
    }

    /// Decide from one score per class. A wrong count or a non-finite score is fail-safe.
    pub fn decide(&self, scores: &[f32]) -> Decision {
        if scores.len() != self.rules.len() || scores.iter().any(|s| !s.is_finite()) {
            return self.fail_safe();
        }
        let mut best = 0usize;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
            }
        }
        let score = scores[best];
        let rule = self.rules[best];
        if score < rule.min_score && self.detector {
            return Decision {
                outcome: Outcome::Accept,
                action: Action::Accept,
                class: None,
                score,
            };
        }
        if score < rule.min_score {
            return Decision {
                outcome: Outcome::Uncertain,
                action: self.uncertain_action,
                class: Some(best as u8),
                score,
            };
        }
        if rule.reject {
            Decision {
                outcome: Outcome::Reject,
                action: Action::Reject,
                class: Some(best as u8),
                score,
            }
        } else {
            Decision {
                outcome: Outcome::Accept,
                action: Action::Accept,
                class: Some(best as u8),
                score,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> DecisionRules {
        let r = [
            ClassRule {
                reject: true,
                min_score: 0.5,
            },
            ClassRule {
                reject: false,
                min_score: 0.6,
            },
            ClassRule {
                reject: true,
                min_score: 0.9,
            },
        ];
        DecisionRules::new(&r, Action::Reject, Action::Reject).unwrap()
    }

    #[test]
    fn highest_confident_head_decides() {
        let d = rules().decide(&[0.7, 0.2, 0.1]);
        assert_eq!(
            (d.outcome, d.action, d.class),
            (Outcome::Reject, Action::Reject, Some(0))
        );
        let d = rules().decide(&[0.1, 0.65, 0.3]);
        assert_eq!(
            (d.outcome, d.action, d.class),
            (Outcome::Accept, Action::Accept, Some(1))
        );
    }

    #[test]
    fn below_class_threshold_is_uncertain_with_configured_action() {
        let d = rules().decide(&[0.1, 0.2, 0.85]);
        assert_eq!(
            (d.outcome, d.action, d.class),
            (Outcome::Uncertain, Action::Reject, Some(2))
        );
        let mut lenient = rules();
        lenient.uncertain_action = Action::Accept;
        assert_eq!(lenient.decide(&[0.1, 0.2, 0.85]).action, Action::Accept);
    }

    #[test]
    fn nan_or_wrong_count_is_fail_safe() {
        assert_eq!(rules().decide(&[f32::NAN, 0.2, 0.1]).outcome, Outcome::FailSafe);
        assert_eq!(rules().decide(&[0.9, 0.2]).outcome, Outcome::FailSafe);
        assert_eq!(rules().decide(&[0.9, 0.2]).action, Action::Reject);
    }

    #[test]
    fn invalid_rules_are_refused() {
        assert_eq!(
            DecisionRules::new(&[], Action::Reject, Action::Reject),
            Err(RulesError::ClassCount(0))
        );
        let bad = [ClassRule {
            reject: true,
            min_score: 1.5,
        }];
        assert_eq!(
            DecisionRules::new(&bad, Action::Reject, Action::Reject),
            Err(RulesError::Threshold(0))
        );
    }
}
