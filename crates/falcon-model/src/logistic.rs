//! Multinomial logistic regression on sparse features, trained with L-BFGS.
//!
//! We do not use linfa-logistic here: it trains on a dense `Array2`, and a dense
//! 19k × 60k TF-IDF matrix needs ~9 GB, where the sparse one needs ~20 MB. The objective
//! is scikit-learn's (`C · Σ sᵢ·CEᵢ + ½‖W‖²`, intercept not penalised), scaled by 1/(C·n).

use serde::{Deserialize, Serialize};

use crate::tfidf::SparseVec;

/// How class imbalance is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeight {
    /// Every sample counts once.
    Uniform,
    /// Each sample of class k counts `n / (K · n_k)`, as scikit-learn's "balanced".
    Balanced,
    /// The square root of the balanced weight: half-way between the two, in log scale.
    SqrtBalanced,
}

/// Training hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Inverse regularisation strength (larger = less regularisation).
    pub c: f64,
    pub class_weight: ClassWeight,
    /// Upper bound on L-BFGS iterations.
    pub max_iter: usize,
    /// Stop once the largest gradient component is below this.
    pub tol: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { c: 8.0, class_weight: ClassWeight::SqrtBalanced, max_iter: 500, tol: 1e-6 }
    }
}

/// What the optimiser did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    pub iterations: usize,
    pub final_loss: f64,
    pub converged: bool,
}

/// Learned weights. `coef` is feature-major (`coef[j * n_classes + k]`), so scoring one
/// sparse vector touches one contiguous run per non-zero feature.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    n_features: usize,
    n_classes: usize,
    coef: Vec<f64>,
    intercept: Vec<f64>,
}

impl LogisticModel {
    /// Rebuilds a model from stored weights, checking shapes and values.
    pub fn from_parts(
        n_features: usize,
        n_classes: usize,
        coef: Vec<f64>,
        intercept: Vec<f64>,
    ) -> Result<Self, String> {
        if n_classes < 2 {
            return Err(format!("need at least 2 classes, got {n_classes}"));
        }
        if coef.len() != n_features * n_classes || intercept.len() != n_classes {
            return Err(format!(
                "weights have {} coefficients and {} intercepts, expected {} and {}",
                coef.len(),
                intercept.len(),
                n_features * n_classes,
                n_classes
            ));
        }
        if coef.iter().chain(&intercept).any(|w| !w.is_finite()) {
            return Err("weights contain a non-finite value".into());
        }
        Ok(Self { n_features, n_classes, coef, intercept })
    }

    /// Fits the model. `y[i]` is the class index of `x[i]`; features must be `< n_features`.
    pub fn fit(
        x: &[SparseVec],
        y: &[usize],
        n_features: usize,
        n_classes: usize,
        cfg: &TrainConfig,
    ) -> (Self, FitReport) {
        let n = x.len().max(1) as f64;
        let mut counts = vec![0usize; n_classes];
        for &k in y {
            counts[k] += 1;
        }
        let balanced = |c: usize| if c == 0 { 0.0 } else { n / (n_classes as f64 * c as f64) };
        let class_w: Vec<f64> = match cfg.class_weight {
            ClassWeight::Uniform => vec![1.0; n_classes],
            ClassWeight::Balanced => counts.iter().map(|&c| balanced(c)).collect(),
            ClassWeight::SqrtBalanced => counts.iter().map(|&c| balanced(c).sqrt()).collect(),
        };
        let objective =
            Objective { x, y, class_w, lambda: 1.0 / (cfg.c * n), n_classes, n_coef: n_features * n_classes };
        let n_coef = objective.n_coef;
        let w0 = vec![0.0; n_coef + n_classes];
        let (w, report) = lbfgs(|w, g| objective.eval(w, g), w0, cfg.max_iter, cfg.tol, 10);
        let (coef, intercept) = w.split_at(n_coef);
        let model = Self { n_features, n_classes, coef: coef.to_vec(), intercept: intercept.to_vec() };
        (model, report)
    }

    /// Class probabilities of one sparse vector; they sum to 1.
    pub fn predict_proba(&self, x: &SparseVec) -> Vec<f64> {
        let mut z = vec![0.0; self.n_classes];
        logits(&self.coef, &self.intercept, self.n_classes, x, &mut z);
        let lse = log_sum_exp(&z);
        z.iter().map(|v| (v - lse).exp()).collect()
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Feature-major coefficients.
    pub fn coef(&self) -> &[f64] {
        &self.coef
    }

    pub fn intercept(&self) -> &[f64] {
        &self.intercept
    }
}

/// The training loss `(1/n)·Σ sᵢ·CEᵢ + (λ/2)·‖coef‖²` over `[coef…, intercept…]`.
struct Objective<'a> {
    x: &'a [SparseVec],
    y: &'a [usize],
    class_w: Vec<f64>,
    lambda: f64,
    n_classes: usize,
    n_coef: usize,
}

impl Objective<'_> {
    /// Returns the loss at `w` and writes its gradient into `grad`.
    fn eval(&self, w: &[f64], grad: &mut [f64]) -> f64 {
        let k_n = self.n_classes;
        let n = self.x.len().max(1) as f64;
        grad.fill(0.0);
        let (coef, intercept) = w.split_at(self.n_coef);
        let (gcoef, gint) = grad.split_at_mut(self.n_coef);
        let mut loss = 0.0;
        let mut z = vec![0.0; k_n];
        for (xi, &yi) in self.x.iter().zip(self.y) {
            logits(coef, intercept, k_n, xi, &mut z);
            let lse = log_sum_exp(&z);
            let s = self.class_w[yi];
            loss += s * (lse - z[yi]);
            for (k, zk) in z.iter_mut().enumerate() {
                let p = (*zk - lse).exp();
                *zk = s * (p - if k == yi { 1.0 } else { 0.0 }) / n;
            }
            for &(j, v) in xi {
                let row = &mut gcoef[j as usize * k_n..][..k_n];
                for (r, zk) in row.iter_mut().zip(&z) {
                    *r += v * zk;
                }
            }
            for (g, zk) in gint.iter_mut().zip(&z) {
                *g += zk;
            }
        }
        let mut reg = 0.0;
        for (g, c) in gcoef.iter_mut().zip(coef) {
            reg += c * c;
            *g += self.lambda * c;
        }
        loss / n + 0.5 * self.lambda * reg
    }
}

fn logits(coef: &[f64], intercept: &[f64], k: usize, x: &SparseVec, z: &mut [f64]) {
    z.copy_from_slice(intercept);
    for &(j, v) in x {
        let row = &coef[j as usize * k..][..k];
        for (zk, w) in z.iter_mut().zip(row) {
            *zk += v * w;
        }
    }
}

fn log_sum_exp(z: &[f64]) -> f64 {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Limited-memory BFGS with a backtracking (Armijo) line search. Sequential and free of
/// randomness, so the same inputs always give bit-identical weights.
fn lbfgs(
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
    mut x: Vec<f64>,
    max_iter: usize,
    tol: f64,
    memory: usize,
) -> (Vec<f64>, FitReport) {
    let dim = x.len();
    let mut g = vec![0.0; dim];
    let mut fx = f(&x, &mut g);
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut x_new = vec![0.0; dim];
    let mut g_new = vec![0.0; dim];
    let mut d = vec![0.0; dim];
    let mut alpha_hist = vec![0.0; memory];
    for iter in 0..max_iter {
        let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if gmax <= tol {
            return (x, FitReport { iterations: iter, final_loss: fx, converged: true });
        }
        // Two-loop recursion: d = -H·g.
        d.iter_mut().zip(&g).for_each(|(di, gi)| *di = -gi);
        for (i, (s, y, rho)) in pairs.iter().enumerate().rev() {
            let a = rho * dot(s, &d);
            alpha_hist[i] = a;
            d.iter_mut().zip(y).for_each(|(di, yi)| *di -= a * yi);
        }
        if let Some((s, y, _)) = pairs.back() {
            let gamma = dot(s, y) / dot(y, y);
            d.iter_mut().for_each(|di| *di *= gamma);
        }
        for (i, (s, y, rho)) in pairs.iter().enumerate() {
            let b = rho * dot(y, &d);
            let a = alpha_hist[i];
            d.iter_mut().zip(s).for_each(|(di, si)| *di += (a - b) * si);
        }
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            pairs.clear();
            d.iter_mut().zip(&g).for_each(|(di, gi)| *di = -gi);
            slope = dot(&g, &d);
        }
        let mut step = if pairs.is_empty() { 1.0 / dot(&g, &g).sqrt().max(1.0) } else { 1.0 };
        let mut accepted = false;
        let mut f_new = fx;
        for _ in 0..50 {
            x_new.iter_mut().zip(&x).zip(&d).for_each(|((xn, xi), di)| *xn = xi + step * di);
            f_new = f(&x_new, &mut g_new);
            if f_new <= fx + 1e-4 * step * slope {
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            return (x, FitReport { iterations: iter, final_loss: fx, converged: false });
        }
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-12 {
            if pairs.len() == memory {
                pairs.pop_front();
            }
            pairs.push_back((s, yv, 1.0 / sy));
        }
        let improvement = (fx - f_new) / fx.abs().max(f_new.abs()).max(1.0);
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
        fx = f_new;
        if improvement.abs() < 1e-13 {
            return (x, FitReport { iterations: iter + 1, final_loss: fx, converged: true });
        }
    }
    (x, FitReport { iterations: max_iter, final_loss: fx, converged: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three separable classes on three one-hot features, plus a shared noise feature.
    fn toy() -> (Vec<SparseVec>, Vec<usize>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..30 {
            let k = i % 3;
            x.push(vec![(k as u32, 0.9), (3, 0.3)]);
            y.push(k);
        }
        (x, y)
    }

    #[test]
    fn learns_separable_classes() {
        let (x, y) = toy();
        let (m, report) = LogisticModel::fit(&x, &y, 4, 3, &TrainConfig::default());
        assert!(report.converged, "{report:?}");
        for (xi, &yi) in x.iter().zip(&y) {
            let p = m.predict_proba(xi);
            let best = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
            assert_eq!(best, yi);
        }
    }

    #[test]
    fn probabilities_sum_to_one() {
        let (x, y) = toy();
        let (m, _) = LogisticModel::fit(&x, &y, 4, 3, &TrainConfig::default());
        for xi in x.iter().chain([&vec![], &vec![(3, 1.0)]]) {
            let p = m.predict_proba(xi);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn stronger_regularisation_shrinks_weights() {
        let (x, y) = toy();
        let norm = |c| {
            let cfg = TrainConfig { c, ..TrainConfig::default() };
            let (m, _) = LogisticModel::fit(&x, &y, 4, 3, &cfg);
            m.coef().iter().map(|w| w * w).sum::<f64>()
        };
        assert!(norm(0.01) < norm(10.0));
    }

    #[test]
    fn training_is_deterministic() {
        let (x, y) = toy();
        let (a, _) = LogisticModel::fit(&x, &y, 4, 3, &TrainConfig::default());
        let (b, _) = LogisticModel::fit(&x, &y, 4, 3, &TrainConfig::default());
        assert_eq!(a, b);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (x, y) = toy();
        let obj = Objective { x: &x, y: &y, class_w: vec![1.0, 2.0, 0.5], lambda: 0.1, n_classes: 3, n_coef: 12 };
        let w: Vec<f64> = (0..15).map(|i| ((i * 7 % 11) as f64 - 5.0) / 10.0).collect();
        let mut grad = vec![0.0; 15];
        obj.eval(&w, &mut grad);
        let mut scratch = vec![0.0; 15];
        for i in 0..15 {
            let h = 1e-6;
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += h;
            wm[i] -= h;
            let numeric = (obj.eval(&wp, &mut scratch) - obj.eval(&wm, &mut scratch)) / (2.0 * h);
            assert!((numeric - grad[i]).abs() < 1e-6, "component {i}: {numeric} vs {}", grad[i]);
        }
    }

    #[test]
    fn from_parts_rejects_bad_shapes_and_values() {
        assert!(LogisticModel::from_parts(2, 3, vec![0.0; 5], vec![0.0; 3]).is_err());
        assert!(LogisticModel::from_parts(2, 3, vec![0.0; 6], vec![0.0; 2]).is_err());
        assert!(LogisticModel::from_parts(1, 2, vec![f64::INFINITY, 0.0], vec![0.0; 2]).is_err());
        assert!(LogisticModel::from_parts(1, 2, vec![0.0; 2], vec![0.0; 2]).is_ok());
    }
}
