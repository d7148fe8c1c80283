//! Evaluation metrics. Classification from a confusion matrix: accuracy, per-class and macro
//! precision, recall and F1 (a class with no predictions has precision 0, and no images: recall
//! 0). Ranking of image scores: average precision and AUROC.

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

/// Average precision of `scores` against `labels` (true = positive): the mean of precision at
/// each positive's rank, equal scores ranked together (step-wise, as scikit-learn's
/// `average_precision_score`). 0 without positives.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    let pos = labels.iter().filter(|&&l| l).count();
    if pos == 0 {
        return 0.0;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut prev_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            if labels[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let recall = tp as f64 / pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    ap
}

/// Area under the ROC curve: the chance a random positive scores above a random negative
/// (ties count half). 0.5 when one side is empty.
pub fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mann-Whitney U with average ranks for ties.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            if labels[k] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j;
    }
    let p = labels.iter().filter(|&&l| l).count() as f64;
    let n = labels.len() as f64 - p;
    if p == 0.0 || n == 0.0 {
        return 0.5;
    }
    (rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n)
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

    #[test]
    fn ranking_metrics_of_known_cases() {
        let l = [true, false, true, false];
        // perfect ranking
        assert_eq!(average_precision(&[0.9, 0.1, 0.8, 0.2], &l), 1.0);
        assert_eq!(auroc(&[0.9, 0.1, 0.8, 0.2], &l), 1.0);
        // ranks: P N P N -> AP = (1/1 + 2/3) / 2
        assert!((average_precision(&[0.9, 0.8, 0.7, 0.1], &l) - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((auroc(&[0.9, 0.8, 0.7, 0.1], &l) - 0.75).abs() < 1e-12);
        // all tied: AP = prevalence, AUROC = 0.5
        assert!((average_precision(&[0.5; 4], &l) - 0.5).abs() < 1e-12);
        assert!((auroc(&[0.5; 4], &l) - 0.5).abs() < 1e-12);
        assert_eq!(average_precision(&[0.1, 0.2], &[false, false]), 0.0);
    }
}
