//! Adam / AdamW over a model's parameters, with linear warm-up and global-norm gradient clipping.
//! Our own (not tch's `nn::Optimizer`) because a resumable run must save and restore the moment
//! estimates, which tch does not expose.

use tch::{Kind, Tensor};

use super::model::LlamaModel;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled (AdamW) weight decay; 0 is plain Adam.
    pub weight_decay: f64,
    /// Steps of linear warm-up from lr/warmup to lr (0: none).
    pub warmup: u64,
    /// Global gradient-norm clip (0: none).
    pub grad_clip: f64,
    /// Steps of cosine decay to 10 % of lr after warm-up (0: constant lr).
    pub decay_steps: u64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup: 0,
            grad_clip: 1.0,
            decay_steps: 0,
        }
    }
}

pub struct Adam {
    pub cfg: AdamConfig,
    /// Optimizer steps taken.
    pub step: u64,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

impl Adam {
    /// Over every parameter of `model`, in its save order.
    pub fn new(model: &LlamaModel, cfg: AdamConfig) -> Adam {
        let vars = model.vs.variables();
        let params: Vec<(String, Tensor)> = model
            .parameter_names()
            .map(|n| (n.to_string(), vars[n].shallow_clone()))
            .collect();
        let zeros = |p: &Tensor| Tensor::zeros_like(p).to_kind(Kind::Float);
        let m = params.iter().map(|(_, p)| zeros(p)).collect();
        let v = params.iter().map(|(_, p)| zeros(p)).collect();
        Adam {
            cfg,
            step: 0,
            params,
            m,
            v,
        }
    }

    /// Learning rate of optimizer step `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let c = &self.cfg;
        if c.warmup > 0 && step <= c.warmup {
            return c.lr * step as f64 / c.warmup as f64;
        }
        if c.decay_steps == 0 {
            return c.lr;
        }
        let t = ((step - c.warmup) as f64 / c.decay_steps as f64).min(1.0);
        c.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Applies one update from the parameters' current gradients (a parameter without a
    /// gradient is an error: every parameter of the policy must be trained).
    pub fn step(&mut self) -> Result<StepInfo> {
        self.step += 1;
        let lr = self.lr_at(self.step);
        let c = self.cfg.clone();
        tch::no_grad(|| {
            let mut grads = Vec::with_capacity(self.params.len());
            for (name, p) in &self.params {
                let g = p.grad();
                if !g.defined() {
                    return Err(Error::Usage(format!(
                        "parameter '{name}' received no gradient"
                    )));
                }
                grads.push(g.to_kind(Kind::Float));
            }
            let sq: f64 = grads
                .iter()
                .map(|g| g.pow_tensor_scalar(2).sum(Kind::Double).double_value(&[]))
                .sum();
            let grad_norm = sq.sqrt();
            if !grad_norm.is_finite() {
                return Err(Error::Usage(format!(
                    "non-finite gradient norm ({grad_norm}) at optimizer step {}",
                    self.step
                )));
            }
            let scale = if c.grad_clip > 0.0 && grad_norm > c.grad_clip {
                c.grad_clip / grad_norm
            } else {
                1.0
            };
            let t = self.step as i32;
            let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
            for (i, g) in grads.iter().enumerate() {
                let g = g * scale;
                self.m[i] *= c.beta1;
                self.m[i] += &g * (1.0 - c.beta1);
                self.v[i] *= c.beta2;
                self.v[i] += g.square() * (1.0 - c.beta2);
                let denom = (&self.v[i] / bc2).sqrt() + c.eps;
                let mut upd = (&self.m[i] / bc1) / denom;
                let p = &mut self.params[i].1;
                if c.weight_decay > 0.0 {
                    upd += p.to_kind(Kind::Float) * c.weight_decay;
                }
                let new = p.to_kind(Kind::Float) - upd * lr;
                p.copy_(&new.to_kind(p.kind()));
            }
            Ok(StepInfo { lr, grad_norm })
        })
    }

    /// The moment estimates as named tensors (`m.NAME`, `v.NAME`), for a resumable checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        out
    }

    /// Restores what [`state`](Self::state) saved, and the step count.
    pub fn load_state(
        &mut self,
        step: u64,
        get: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>,
    ) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            let shape = p.size();
            self.m[i] = get(&format!("m.{name}"), &shape)?.to_kind(Kind::Float);
            self.v[i] = get(&format!("v.{name}"), &shape)?.to_kind(Kind::Float);
        }
        self.step = step;
        Ok(())
    }
}
