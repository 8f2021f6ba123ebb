//! EMA over a sequence of checkpoints: ema ← (1−μ)·ema + μ·θ, starting from the first.
//! Unrolled, checkpoint i (0-based) of N gets μ(1−μ)^(N−1−i), the first (1−μ)^(N−1).

use super::{Gram, Method};
use crate::error::{Error, Result};

pub struct Ema {
    pub mu: f64,
    pub n: usize,
}

impl Ema {
    pub fn new(mu: f64, n: usize) -> Result<Ema> {
        if !(mu > 0.0 && mu <= 1.0) {
            return Err(Error::setting("mu", format!("{mu}: must be in (0, 1]")));
        }
        if n < 2 {
            return Err(Error::setting(
                "checkpoints",
                "EMA needs at least two checkpoints",
            ));
        }
        Ok(Ema { mu, n })
    }
}

impl Method for Ema {
    fn name(&self) -> &'static str {
        "ema"
    }
    fn outputs(&self) -> Vec<String> {
        vec!["ema".into()]
    }
    fn coefficients(&self, _: Option<&Gram>) -> Result<Vec<Vec<f64>>> {
        let n = self.n;
        let keep = 1.0 - self.mu;
        let row = (0..n)
            .map(|i| {
                let age = (n - 1 - i) as i32;
                if i == 0 {
                    keep.powi(age)
                } else {
                    self.mu * keep.powi(age)
                }
            })
            .collect();
        Ok(vec![row])
    }
    fn recipe(&self) -> serde_json::Value {
        serde_json::json!({ "method": "ema", "mu": self.mu })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrolled_weights_match_the_recursion_and_sum_to_one() {
        let e = Ema::new(0.1, 4).unwrap();
        let row = &e.coefficients(None).unwrap()[0];
        // Recursion by hand on scalars 1, 10, 100, 1000.
        let xs = [1.0, 10.0, 100.0, 1000.0];
        let mut ema = xs[0];
        for x in &xs[1..] {
            ema = 0.9 * ema + 0.1 * x;
        }
        let unrolled: f64 = row.iter().zip(&xs).map(|(c, x)| c * x).sum();
        assert!((ema - unrolled).abs() < 1e-12);
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert!(Ema::new(0.0, 2).is_err() && Ema::new(0.5, 1).is_err());
    }
}
