//! Classification metrics on a held-out set.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// Metrics of a classifier on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

impl Evaluation {
    /// The share of each class among the predictions (the confusion matrix's column
    /// sums): what the model predicts on held-out data, the baseline for drift.
    pub fn predicted_shares(&self) -> Option<Vec<f64>> {
        let k = self.confusion.len();
        let total: usize = self.confusion.iter().flatten().sum();
        (total > 0).then(|| {
            (0..k)
                .map(|c| {
                    self.confusion.iter().map(|row| row.get(c).copied().unwrap_or(0)).sum::<usize>() as f64
                        / total as f64
                })
                .collect()
        })
    }

    /// The share of each class among the true labels (the rows' sums).
    pub fn true_shares(&self) -> Option<Vec<f64>> {
        let total: usize = self.confusion.iter().flatten().sum();
        (total > 0).then(|| self.confusion.iter().map(|row| row.iter().sum::<usize>() as f64 / total as f64).collect())
    }
}

/// Scores predictions against the truth. A class never predicted has precision 0 (as
/// scikit-learn's `zero_division=0`).
pub fn evaluate(y_true: &[usize], y_pred: &[usize], labels: &[&str]) -> Evaluation {
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in y_true.iter().zip(y_pred) {
        confusion[t][p] += 1;
    }
    let n = y_true.len();
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let tp = confusion[c][c];
            let support: usize = confusion[c].iter().sum();
            let predicted: usize = (0..k).map(|t| confusion[t][c]).sum();
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, support);
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassMetrics { label: labels[c].to_owned(), precision, recall, f1, support }
        })
        .collect();
    let macro_f1 = per_class.iter().map(|c| c.f1).sum::<f64>() / k.max(1) as f64;
    Evaluation { n, accuracy: ratio(correct, n), macro_f1, per_class, confusion }
}

impl Evaluation {
    /// A human-readable report: headline figures, per-class table and confusion matrix.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "test set: {} sentences", self.n);
        let _ = writeln!(s, "accuracy: {:.4}   macro-F1: {:.4}", self.accuracy, self.macro_f1);
        let _ = writeln!(s, "{:<10} {:>9} {:>9} {:>9} {:>8}", "class", "precision", "recall", "f1", "support");
        for c in &self.per_class {
            let _ =
                writeln!(s, "{:<10} {:>9.4} {:>9.4} {:>9.4} {:>8}", c.label, c.precision, c.recall, c.f1, c.support);
        }
        let _ = writeln!(s, "confusion matrix (rows = true, columns = predicted):");
        let _ = write!(s, "{:<10}", "");
        for c in &self.per_class {
            let _ = write!(s, " {:>9}", c.label);
        }
        let _ = writeln!(s);
        for (c, row) in self.per_class.iter().zip(&self.confusion) {
            let _ = write!(s, "{:<10}", c.label);
            for v in row {
                let _ = write!(s, " {v:>9}");
            }
            let _ = writeln!(s);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computation() {
        // true: a a b b c ; pred: a b b b a
        let e = evaluate(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], &["a", "b", "c"]);
        assert_eq!(e.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 0]]);
        assert!((e.accuracy - 0.6).abs() < 1e-12);
        let a = &e.per_class[0];
        assert!((a.precision - 0.5).abs() < 1e-12 && (a.recall - 0.5).abs() < 1e-12);
        let b = &e.per_class[1];
        assert!((b.precision - 2.0 / 3.0).abs() < 1e-12 && (b.recall - 1.0).abs() < 1e-12);
        assert_eq!(e.per_class[2].f1, 0.0);
        assert!((e.macro_f1 - (0.5 + 0.8) / 3.0).abs() < 1e-12);
        assert!(e.render().contains("macro-F1: 0.4333"));
    }
}
