//! SLERP of task vectors (WARP paper, Sec. 3.2 and App. B.3).
//!
//! Two task vectors s, d with interpolation λ: cos Ω = ⟨s,d⟩/(|s||d|),
//!   slerp = sin((1−λ)Ω)/sin Ω · s + sin(λΩ)/sin Ω · d.
//! M > 2, as the paper: s ← δ1, then s ← slerp(s, δm, λ = 1/m) for m = 2..M. The running merge is
//! tracked as coefficients a over the δ's, so ⟨s,δm⟩ = Σj aj·G[j][m] and |s|² = aᵀGa come from
//! the Gram matrix: no extra pass over the data.
//!
//! Degenerate cases (documented in docs/MERGES.md):
//! - a zero task vector (|s| = 0 or |δm| = 0): the angle is undefined → LERP, (1−λ)·s + λ·δm;
//! - (anti)parallel vectors, |cos Ω| > threshold (default 0.9995, mergekit's DOT_THRESHOLD): sin Ω
//!   → 0 makes the formula ill-conditioned → LERP (the exact limit for parallel vectors);
//! - the sign of a task vector is never flipped to take a "shorter path".

use super::{check_etas, eta_outputs, extrapolation_note, liti_rows, Gram, Grouping, Method};
use crate::error::{Error, Result};

pub const DEFAULT_THRESHOLD: f64 = 0.9995;

pub struct Slerp {
    /// Number of task vectors (policies).
    pub m: usize,
    pub etas: Vec<f64>,
    pub grouping: Grouping,
    pub threshold: f64,
}

/// What happened at one step of the iterative merge (for reports).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Slerp { omega: f64 },
    LerpZero,
    LerpParallel { cos: f64 },
}

impl Slerp {
    pub fn new(m: usize, etas: Vec<f64>, grouping: Grouping, threshold: f64) -> Result<Slerp> {
        if m < 2 {
            return Err(Error::setting(
                "models",
                "SLERP needs at least two models besides the init",
            ));
        }
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(Error::setting(
                "lerp_threshold",
                format!("{threshold}: must be in (0, 1]"),
            ));
        }
        let slerp = Slerp {
            m,
            etas: check_etas(&etas)?,
            grouping,
            threshold,
        };
        slerp.validate(m + 1)?;
        Ok(slerp)
    }
}

/// The coefficients a (over δ1..δM) of the iterative SLERP, and what each step did.
pub fn slerp_weights(g: &Gram, threshold: f64) -> (Vec<f64>, Vec<Step>) {
    let m = g.m;
    let mut a = vec![0.0; m];
    a[0] = 1.0;
    let mut steps = Vec::with_capacity(m.saturating_sub(1));
    for k in 1..m {
        let lambda = 1.0 / (k + 1) as f64;
        let ss: f64 = (0..k)
            .map(|i| (0..k).map(|j| a[i] * a[j] * g.at(i, j)).sum::<f64>())
            .sum();
        let sd: f64 = (0..k).map(|j| a[j] * g.at(j, k)).sum();
        let dd = g.at(k, k);
        let step = if ss <= 0.0 || dd <= 0.0 {
            Step::LerpZero
        } else {
            let cos = (sd / (ss * dd).sqrt()).clamp(-1.0, 1.0);
            if cos.abs() > threshold {
                Step::LerpParallel { cos }
            } else {
                Step::Slerp { omega: cos.acos() }
            }
        };
        let (w_s, w_d) = match step {
            Step::Slerp { omega } => {
                let s = omega.sin();
                (
                    ((1.0 - lambda) * omega).sin() / s,
                    (lambda * omega).sin() / s,
                )
            }
            _ => (1.0 - lambda, lambda),
        };
        for x in a.iter_mut().take(k) {
            *x *= w_s;
        }
        a[k] = w_d;
        steps.push(step);
    }
    (a, steps)
}

impl Method for Slerp {
    fn name(&self) -> &'static str {
        "slerp"
    }
    fn outputs(&self) -> Vec<String> {
        eta_outputs(&self.etas)
    }
    fn needs_gram(&self) -> bool {
        true
    }
    fn grouping(&self) -> Grouping {
        self.grouping
    }
    fn coefficients(&self, gram: Option<&Gram>) -> Result<Vec<Vec<f64>>> {
        let g =
            gram.ok_or_else(|| Error::Internal("SLERP coefficients without statistics".into()))?;
        let (a, _) = slerp_weights(g, self.threshold);
        Ok(liti_rows(&a, &self.etas))
    }
    fn recipe(&self) -> serde_json::Value {
        serde_json::json!({
            "method": "slerp",
            "m": self.m,
            "lambda": "1/m, iterative (WARP App. B.3)",
            "angle": self.grouping,
            "lerp_threshold": self.threshold,
            "eta": self.etas,
        })
    }
    fn notes(&self, k: usize) -> Vec<String> {
        self.etas
            .get(k)
            .map(|&e| extrapolation_note(e))
            .unwrap_or_default()
    }
    /// The coefficients depend on the tensors, but they are bounded: each step of the iteration
    /// multiplies the running ones by sin((1−λ)Ω)/sin Ω and adds sin(λΩ)/sin Ω, both at most
    /// 1/sin Ω ≤ 1/√(1−t²) for the threshold t (beyond it LERP's weights, at most 1, are used).
    /// An η that would take that bound beyond f32 is refused here; below it, the engine still
    /// checks each tensor's coefficients and outputs.
    fn validate(&self, inputs: usize) -> Result<()> {
        if inputs != self.m + 1 {
            return Err(Error::Internal(format!(
                "SLERP of {} models given {inputs} inputs",
                self.m
            )));
        }
        let Some(bound) = coefficient_bound(self.m, self.threshold) else {
            return Ok(());
        };
        for &eta in &self.etas {
            let worst = [eta * bound, 1.0 + eta * bound];
            if worst.iter().any(|c| !(*c as f32).is_finite()) {
                return Err(Error::setting(
                    "etas",
                    format!(
                        "{eta}: SLERP coefficients of {} models (LERP threshold {}) reach up to \
                         {bound:.3e}, so this η takes them beyond the f32 range (±{:e}) the \
                         merge computes in",
                        self.m,
                        self.threshold,
                        f32::MAX
                    ),
                ));
            }
        }
        Ok(())
    }
    /// Norms, angles, the SLERP coefficients and what each iterative step did.
    fn report_entry(&self, gram: &Gram) -> serde_json::Value {
        let mut v = gram.to_json();
        let (a, steps) = slerp_weights(gram, self.threshold);
        v["coefficients"] = serde_json::json!(a);
        v["steps"] = steps
            .iter()
            .map(|s| serde_json::Value::String(format!("{s:?}")))
            .collect();
        v
    }
}

/// An upper bound of Σ|a_m| for the iterative SLERP of `m` task vectors with LERP beyond
/// |cos Ω| > `threshold`; None when the threshold allows sin Ω → 0 (no bound).
fn coefficient_bound(m: usize, threshold: f64) -> Option<f64> {
    let sin_min = (1.0 - threshold * threshold).sqrt();
    if sin_min <= 0.0 {
        return None;
    }
    let w = (1.0 / sin_min).max(1.0);
    Some((1..m).fold(1.0, |b, _| b * w + w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram_of(vs: &[Vec<f64>]) -> Gram {
        let m = vs.len();
        let mut g = Gram::zeros(m);
        for i in 0..m {
            for j in 0..m {
                g.g[i * m + j] = vs[i].iter().zip(&vs[j]).map(|(a, b)| a * b).sum();
            }
        }
        g
    }

    #[test]
    fn orthogonal_equal_norms_give_one_over_sqrt2_and_keep_the_norm() {
        // Paper's Lemma 1: the merged task vector keeps the norm of its orthogonal inputs.
        let g = gram_of(&[vec![3.0, 0.0], vec![0.0, 3.0]]);
        let (a, steps) = slerp_weights(&g, DEFAULT_THRESHOLD);
        let r = std::f64::consts::FRAC_1_SQRT_2;
        assert!(
            (a[0] - r).abs() < 1e-15 && (a[1] - r).abs() < 1e-15,
            "{a:?}"
        );
        assert!(
            matches!(steps[0], Step::Slerp { omega } if (omega - std::f64::consts::FRAC_PI_2).abs() < 1e-15)
        );
        let norm2 = a[0] * a[0] * 9.0 + a[1] * a[1] * 9.0;
        assert!((norm2 - 9.0).abs() < 1e-12);
    }

    #[test]
    fn closed_form_at_60_degrees() {
        // δ1 = (1,0), δ2 = (cos60°, sin60°): Ω = π/3, α = sin(π/6)/sin(π/3) = 1/√3 each.
        let c = 0.5f64;
        let s = 0.75f64.sqrt();
        let g = gram_of(&[vec![1.0, 0.0], vec![c, s]]);
        let (a, _) = slerp_weights(&g, DEFAULT_THRESHOLD);
        let want = 1.0 / 3f64.sqrt();
        assert!((a[0] - want).abs() < 1e-12 && (a[1] - want).abs() < 1e-12);
    }

    #[test]
    fn three_orthonormal_vectors_follow_the_iteration() {
        // Step 2: s = (δ1+δ2)/√2 (unit). Step 3 with λ = 1/3, Ω = π/2: s·sin(π/3) + δ3·sin(π/6).
        let g = gram_of(&[
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
        ]);
        let (a, _) = slerp_weights(&g, DEFAULT_THRESHOLD);
        let s3 = (std::f64::consts::PI / 3.0).sin();
        let r = std::f64::consts::FRAC_1_SQRT_2;
        assert!((a[0] - r * s3).abs() < 1e-12 && (a[1] - r * s3).abs() < 1e-12);
        assert!((a[2] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn degenerate_cases_fall_back_to_lerp() {
        // Identical task vectors: parallel → LERP → the same vector back (a sums to 1).
        let v = vec![1.0, 2.0, -1.0];
        let g = gram_of(&[v.clone(), v.clone(), v.clone()]);
        let (a, steps) = slerp_weights(&g, DEFAULT_THRESHOLD);
        assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert!(steps.iter().all(|s| matches!(s, Step::LerpParallel { .. })));
        // Anti-parallel: LERP with λ = 1/2, never a sign flip.
        let w: Vec<f64> = v.iter().map(|x| -x).collect();
        let (a, steps) = slerp_weights(&gram_of(&[v.clone(), w]), DEFAULT_THRESHOLD);
        assert_eq!(a, vec![0.5, 0.5]);
        assert!(matches!(steps[0], Step::LerpParallel { cos } if cos < -0.99));
        // A zero task vector: LERP.
        let (a, steps) = slerp_weights(&gram_of(&[vec![0.0; 3], v]), DEFAULT_THRESHOLD);
        assert_eq!(a, vec![0.5, 0.5]);
        assert_eq!(steps[0], Step::LerpZero);
    }

    #[test]
    fn the_coefficient_bound_holds_and_refuses_overflowing_etas() {
        // Near the threshold (the largest coefficients SLERP can produce): within the bound.
        let t = DEFAULT_THRESHOLD;
        let cos = -t + 1e-9;
        let g = gram_of(&[vec![1.0, 0.0], vec![cos, (1.0 - cos * cos).sqrt()]]);
        let (a, _) = slerp_weights(&g, t);
        let b = coefficient_bound(2, t).unwrap();
        assert!(a.iter().map(|x| x.abs()).sum::<f64>() <= b, "{a:?} vs {b}");
        for eta in [1e39, 1e308] {
            assert!(Slerp::new(2, vec![eta], Grouping::Tensor, t).is_err());
        }
        assert!(Slerp::new(2, vec![1e30], Grouping::Tensor, t).is_ok());
        assert_eq!(coefficient_bound(3, 1.0), None);
    }

    #[test]
    fn fused_liti_rows() {
        let s = Slerp::new(2, vec![0.0, 1.0], Grouping::Tensor, DEFAULT_THRESHOLD).unwrap();
        let g = gram_of(&[vec![1.0, 0.0], vec![0.0, 1.0]]);
        let rows = s.coefficients(Some(&g)).unwrap();
        assert_eq!(rows[0], vec![1.0, 0.0, 0.0]);
        let r = std::f64::consts::FRAC_1_SQRT_2;
        assert!((rows[1][0] - (1.0 - 2.0 * r)).abs() < 1e-15);
    }
}
