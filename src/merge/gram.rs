//! The Gram matrix of the task vectors of one tensor (or group): G[i][j] = ⟨δi, δj⟩. Norms and
//! angles — all that SLERP needs — are in it.

/// Symmetric M×M matrix, stored full for simplicity (M is small).
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    pub m: usize,
    pub g: Vec<f64>,
}

impl Gram {
    pub fn zeros(m: usize) -> Gram {
        Gram {
            m,
            g: vec![0.0; m * m],
        }
    }

    /// From the upper triangle (row-major i ≤ j), the layout the accumulators produce.
    pub fn from_upper(m: usize, upper: &[f64]) -> Gram {
        let mut g = Gram::zeros(m);
        let mut k = 0;
        for i in 0..m {
            for j in i..m {
                g.g[i * m + j] = upper[k];
                g.g[j * m + i] = upper[k];
                k += 1;
            }
        }
        g
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.g[i * self.m + j]
    }

    pub fn add(&mut self, other: &Gram) {
        for (a, b) in self.g.iter_mut().zip(&other.g) {
            *a += b;
        }
    }

    pub fn norm(&self, i: usize) -> f64 {
        self.at(i, i).max(0.0).sqrt()
    }

    /// Angle between δi and δj in degrees; None when either is zero.
    pub fn angle_deg(&self, i: usize, j: usize) -> Option<f64> {
        let d = self.at(i, i) * self.at(j, j);
        (d > 0.0).then(|| {
            (self.at(i, j) / d.sqrt())
                .clamp(-1.0, 1.0)
                .acos()
                .to_degrees()
        })
    }

    /// JSON for reports: norms and the pairwise angle matrix (null where undefined).
    pub fn to_json(&self) -> serde_json::Value {
        let norms: Vec<f64> = (0..self.m).map(|i| self.norm(i)).collect();
        let angles: Vec<Vec<Option<f64>>> = (0..self.m)
            .map(|i| {
                (0..self.m)
                    .map(|j| {
                        if i == j {
                            // A vector's angle with itself is 0, unless it is zero (undefined).
                            (self.at(i, i) > 0.0).then_some(0.0)
                        } else {
                            self.angle_deg(i, j)
                        }
                    })
                    .collect()
            })
            .collect();
        serde_json::json!({ "norms": norms, "angles_deg": angles })
    }
}
