//! Classification metrics from a confusion matrix: accuracy, per-class and macro precision,
//! recall and F1. A class with no predictions has precision 0 (and no images: recall 0).

/// Metrics of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassMetrics {
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    /// Correct / all.
    pub accuracy: f64,
    /// Per class.
    pub precision: Vec<f64>,
    /// Per class.
    pub recall: Vec<f64>,
    /// Per class.
    pub f1: Vec<f64>,
    /// Images per class.
    pub support: Vec<u64>,
}

impl ClassMetrics {
    /// Compute from `confusion[truth][predicted]` (square).
    pub fn from_confusion(confusion: Vec<Vec<u64>>) -> ClassMetrics {
        let k = confusion.len();
        let total: u64 = confusion.iter().flatten().sum();
        let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
        let mut precision = vec![0.0; k];
        let mut recall = vec![0.0; k];
        let mut f1 = vec![0.0; k];
        let mut support = vec![0; k];
        for c in 0..k {
            let tp = confusion[c][c] as f64;
            let predicted: u64 = (0..k).map(|t| confusion[t][c]).sum();
            support[c] = confusion[c].iter().sum();
            precision[c] = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
            recall[c] = if support[c] > 0 { tp / support[c] as f64 } else { 0.0 };
            let s = precision[c] + recall[c];
            f1[c] = if s > 0.0 {
                2.0 * precision[c] * recall[c] / s
            } else {
                0.0
            };
        }
        ClassMetrics {
            accuracy: if total > 0 { correct as f64 / total as f64 } else { 0.0 },
            confusion,
            precision,
            recall,
            f1,
            support,
        }
    }

    fn macro_of(&self, v: &[f64]) -> f64 {
        // Macro average over classes that have images.
        let present: Vec<usize> = (0..v.len()).filter(|c| self.support[*c] > 0).collect();
        if present.is_empty() {
            0.0
        } else {
            present.iter().map(|c| v[*c]).sum::<f64>() / present.len() as f64
        }
    }

    /// Macro precision over classes with images.
    pub fn macro_precision(&self) -> f64 {
        self.macro_of(&self.precision)
    }

    /// Macro recall over classes with images.
    pub fn macro_recall(&self) -> f64 {
        self.macro_of(&self.recall)
    }

    /// Macro F1 over classes with images.
    pub fn macro_f1(&self) -> f64 {
        self.macro_of(&self.f1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_known_matrix() {
        // truth 0: 8 right, 2 as class 1; truth 1: 1 as 0, 9 right.
        let m = ClassMetrics::from_confusion(vec![vec![8, 2], vec![1, 9]]);
        assert!((m.accuracy - 17.0 / 20.0).abs() < 1e-12);
        assert!((m.precision[0] - 8.0 / 9.0).abs() < 1e-12);
        assert!((m.recall[0] - 0.8).abs() < 1e-12);
        assert!((m.precision[1] - 9.0 / 11.0).abs() < 1e-12);
        let f0 = 2.0 * (8.0 / 9.0) * 0.8 / (8.0 / 9.0 + 0.8);
        assert!((m.f1[0] - f0).abs() < 1e-12);
        assert!((m.macro_recall() - 0.85).abs() < 1e-12);
    }

    #[test]
    fn absent_classes_do_not_dilute_macro_averages() {
        let m = ClassMetrics::from_confusion(vec![vec![5, 0, 0], vec![0, 5, 0], vec![0, 0, 0]]);
        assert_eq!(m.macro_precision(), 1.0);
        assert_eq!(m.macro_f1(), 1.0);
    }
}
