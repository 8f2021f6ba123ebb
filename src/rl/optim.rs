//! Adam / AdamW over a model's parameters, with linear warm-up, cosine decay and global-norm
//! gradient clipping. Our own (not tch's `nn::Optimizer`) because a resumable run must save and
//! restore the moment estimates, which tch does not expose, and because low-precision training
//! needs f32 master weights.
//!
//! Precision: the moments are always f32. A parameter that is not f32 (bf16, f16) gets an f32
//! **master copy**: the update is computed and applied in f32 on the master, then the master is
//! cast (round to nearest even) into the parameter the forward pass uses. An update far below
//! the parameter's half-ulp (lr 1e-6 on a bf16 weight of 0.02, whose spacing is 1.2e-4) is
//! therefore kept and accumulates in the master instead of being rounded away at every step; the
//! master is what [`Adam::weights_f32`] hands to the EMA and what a checkpoint saves for resuming.
//! Gradients of several backward passes (micro-batches) can be summed in f32
//! ([`Adam::accumulate`]) rather than in the parameter's dtype.

use tch::{Kind, Tensor};

use super::model::CausalLm;
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

/// One optimised parameter.
struct Slot {
    name: String,
    /// The model's variable (shared storage), in the compute dtype.
    param: Tensor,
    /// f32 copy of a parameter that is not f32; the update is applied here, then cast.
    master: Option<Tensor>,
    /// f32 sum of the gradients folded in by [`Adam::accumulate`] since the last step.
    acc: Option<Tensor>,
    m: Tensor,
    v: Tensor,
}

impl Slot {
    /// The exact (f32) weights: the master copy, or the parameter itself when it is f32.
    fn weights(&self) -> &Tensor {
        self.master.as_ref().unwrap_or(&self.param)
    }

    /// Adds the parameter's current gradient to the f32 accumulator and zeroes it.
    fn fold(&mut self) -> Result<()> {
        let mut g = self.param.grad();
        if !g.defined() {
            return Ok(());
        }
        let gf = g.f_to_kind(Kind::Float).map_err(|e| be(&self.name, e))?;
        match &mut self.acc {
            Some(a) => {
                let _ = a.f_add_(&gf).map_err(|e| be(&self.name, e))?;
            }
            None => {
                // A copy: for an f32 gradient `to_kind` aliases it, and it is zeroed next.
                self.acc = Some(gf.f_detach_copy().map_err(|e| be(&self.name, e))?);
            }
        }
        let _ = g.f_zero_().map_err(|e| be(&self.name, e))?;
        Ok(())
    }

    /// This step's gradient in f32: the accumulated sum plus the parameter's current gradient
    /// (either may be absent). `None` when the parameter received no gradient at all.
    fn grad_f32(&self) -> Result<Option<Tensor>> {
        let g = self.param.grad();
        let g = if g.defined() {
            Some(g.f_to_kind(Kind::Float).map_err(|e| be(&self.name, e))?)
        } else {
            None
        };
        Ok(match (&self.acc, g) {
            (Some(a), Some(g)) => Some(a.f_add(&g).map_err(|e| be(&self.name, e))?),
            (Some(a), None) => Some(a.shallow_clone()),
            (None, g) => g,
        })
    }
}

fn be(name: &str, e: tch::TchError) -> Error {
    Error::compute(format!("optimizer, parameter '{name}'"), e)
}

pub struct Adam {
    pub cfg: AdamConfig,
    /// Optimizer steps taken.
    pub step: u64,
    slots: Vec<Slot>,
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
    pub fn new(model: &CausalLm, cfg: AdamConfig) -> Result<Adam> {
        let vars = model.vs.variables();
        let params = model
            .parameter_names()
            .map(|n| {
                vars.get(n)
                    .map(|t| (n.to_string(), t.shallow_clone()))
                    .ok_or_else(|| {
                        Error::Internal(format!("parameter '{n}' is not in the var store"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_params(params, cfg)
    }

    /// Over named tensors that require gradients (the variables of a model, or any other).
    pub fn from_params(params: Vec<(String, Tensor)>, cfg: AdamConfig) -> Result<Adam> {
        let slots = tch::no_grad(|| {
            params
                .into_iter()
                .map(|(name, param)| {
                    let zeros = || {
                        Tensor::f_zeros(param.size(), (Kind::Float, param.device()))
                            .map_err(|e| be(&name, e))
                    };
                    let master = match param.kind() {
                        Kind::Float => None,
                        Kind::BFloat16 | Kind::Half => Some(
                            param
                                .f_to_kind(Kind::Float)
                                .and_then(|t| t.f_detach())
                                .map_err(|e| be(&name, e))?,
                        ),
                        k => {
                            return Err(Error::Internal(format!(
                                "parameter '{name}' has dtype {k:?}; the optimizer trains f32, \
                                 bf16 and f16 parameters"
                            )))
                        }
                    };
                    Ok(Slot {
                        m: zeros()?,
                        v: zeros()?,
                        name,
                        param,
                        master,
                        acc: None,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(Adam {
            cfg,
            step: 0,
            slots,
        })
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

    /// Clears the parameters' gradients and the f32 accumulators.
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
            s.acc = None;
        }
    }

    /// Folds the parameters' current gradients into f32 accumulators and clears them, so that
    /// the gradients of several backward passes (micro-batches) are summed in f32 even when the
    /// parameters are bf16. [`step`](Self::step) uses the sum. Not needed for f32 parameters,
    /// whose gradients libtorch already sums in f32.
    pub fn accumulate(&mut self) -> Result<()> {
        tch::no_grad(|| self.slots.iter_mut().try_for_each(Slot::fold))
    }

    /// The index of the slot that optimises `param` (the same tensor storage), if any: for
    /// [`accumulate_slots`](Self::accumulate_slots).
    pub fn slot_of(&self, param: &Tensor) -> Option<usize> {
        let p = param.data_ptr();
        self.slots.iter().position(|s| s.param.data_ptr() == p)
    }

    /// [`accumulate`](Self::accumulate) for the given slots only (e.g. the LM head after each
    /// chunk of the chunked scoring's backward pass, when the rest has no gradient yet).
    pub fn accumulate_slots(&mut self, slots: &[usize]) -> Result<()> {
        tch::no_grad(|| {
            for &i in slots {
                let s = self
                    .slots
                    .get_mut(i)
                    .ok_or_else(|| Error::Internal(format!("no optimizer slot {i}")))?;
                s.fold()?;
            }
            Ok(())
        })
    }

    /// The squared global gradient norm (accumulated and current gradients, squares in f32
    /// summed in f64), as a 0-dim f64 tensor on the device: no host sync, so a caller can read it
    /// together with other values and pass the norm to [`apply`](Self::apply). A parameter
    /// without a gradient is an error: every parameter of the policy must be trained.
    pub fn grad_sq_norm(&self) -> Result<Tensor> {
        tch::no_grad(|| {
            let mut sq = Vec::with_capacity(self.slots.len());
            for s in &self.slots {
                let g = s.grad_f32()?.ok_or_else(|| {
                    Error::Internal(format!("parameter '{}' received no gradient", s.name))
                })?;
                sq.push(
                    g.f_pow_tensor_scalar(2)
                        .and_then(|x| x.f_sum(Kind::Double))
                        .map_err(|e| be(&s.name, e))?,
                );
            }
            Tensor::f_stack(&sq, 0)
                .and_then(|t| t.f_sum(Kind::Double))
                .map_err(|e| Error::compute("optimizer, gradient norm", e))
        })
    }

    /// Applies one update from the gradients (accumulated and current): the global gradient norm
    /// is computed on the device and read back once (one host sync per step, for the clipping
    /// factor, the non-finite check and the metrics).
    pub fn step(&mut self) -> Result<StepInfo> {
        let sq = self
            .grad_sq_norm()?
            .f_double_value(&[])
            .map_err(|e| Error::compute("optimizer, gradient norm", e))?;
        self.apply(sq.sqrt())
    }

    /// As [`step`](Self::step), with the global gradient norm already read (the square root of
    /// [`grad_sq_norm`](Self::grad_sq_norm), e.g. in one read with the step's metrics).
    pub fn apply(&mut self, grad_norm: f64) -> Result<StepInfo> {
        let step = self.step + 1;
        let lr = self.lr_at(step);
        let c = self.cfg.clone();
        let info = tch::no_grad(|| -> Result<StepInfo> {
            if !grad_norm.is_finite() {
                return Err(Error::compute(
                    format!("optimizer step {step}"),
                    format!(
                        "non-finite gradient norm ({grad_norm}); the loss or the model's outputs \
                         overflowed (a smaller learning rate, or f32, may help)"
                    ),
                ));
            }
            let scale = if c.grad_clip > 0.0 && grad_norm > c.grad_clip {
                c.grad_clip / grad_norm
            } else {
                1.0
            };
            let t = step as i32;
            let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
            for s in &mut self.slots {
                update(s, scale, lr, bc1, bc2, &c).map_err(|e| be(&s.name, e))?;
                s.acc = None;
            }
            Ok(StepInfo { lr, grad_norm })
        })?;
        self.step = step;
        Ok(info)
    }

    /// The exact f32 weights by parameter name: the master copies of bf16/f16 parameters, the
    /// parameters themselves when they are f32 (shallow clones: they follow later steps).
    pub fn weights_f32(&self) -> Vec<(&str, Tensor)> {
        self.slots
            .iter()
            .map(|s| (s.name.as_str(), s.weights().shallow_clone()))
            .collect()
    }

    /// The gradients the next step would use (accumulated and current), f32, by name.
    pub fn gradients_f32(&self) -> Result<Vec<(String, Tensor)>> {
        self.slots
            .iter()
            .map(|s| {
                let g = s.grad_f32()?.ok_or_else(|| {
                    Error::Internal(format!("parameter '{}' received no gradient", s.name))
                })?;
                Ok((s.name.clone(), g))
            })
            .collect()
    }

    /// Whether some parameter trains through an f32 master copy (it is not f32 itself).
    pub fn has_masters(&self) -> bool {
        self.slots.iter().any(|s| s.master.is_some())
    }

    /// Sets the master copies (of the parameters that have one) to exact f32 weights, e.g. the
    /// init's own f32 values rather than their rounding to the parameter's dtype, and casts them
    /// into the parameters. `get(name, shape)` gives the weights of one parameter.
    pub fn set_masters(
        &mut self,
        get: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>,
    ) -> Result<()> {
        for s in &mut self.slots {
            let Some(master) = &mut s.master else {
                continue;
            };
            let w = get(&s.name, &s.param.size())?;
            if w.size() != s.param.size() {
                return Err(Error::Internal(format!(
                    "master weights of '{}' have shape {:?}, the parameter {:?}",
                    s.name,
                    w.size(),
                    s.param.size()
                )));
            }
            tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
                master.f_copy_(&w)?;
                s.param.f_copy_(master)
            })
            .map_err(|e| be(&s.name, e))?;
        }
        Ok(())
    }

    /// The optimizer state as named f32 tensors for a resumable checkpoint: the moment estimates
    /// (`m.NAME`, `v.NAME`) and the master copies (`master.NAME`, for parameters that have one).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.slots.len());
        for s in &self.slots {
            out.push((format!("m.{}", s.name), s.m.shallow_clone()));
            out.push((format!("v.{}", s.name), s.v.shallow_clone()));
            if let Some(w) = &s.master {
                out.push((format!("master.{}", s.name), w.shallow_clone()));
            }
        }
        out
    }

    /// Restores what [`state`](Self::state) saved, and the step count; a restored master copy is
    /// cast into its parameter too. `get(name, shape)` reads one saved tensor (an error when it is
    /// missing or of another shape).
    pub fn load_state(
        &mut self,
        step: u64,
        get: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>,
    ) -> Result<()> {
        for s in &mut self.slots {
            let shape = s.param.size();
            let f32_of = |t: Tensor, name: &str| {
                t.f_to_kind(Kind::Float)
                    .and_then(|t| t.f_detach())
                    .map_err(|e| be(name, e))
            };
            s.m = f32_of(get(&format!("m.{}", s.name), &shape)?, &s.name)?;
            s.v = f32_of(get(&format!("v.{}", s.name), &shape)?, &s.name)?;
            if s.master.is_some() {
                let w = f32_of(get(&format!("master.{}", s.name), &shape)?, &s.name)?;
                tch::no_grad(|| s.param.f_copy_(&w)).map_err(|e| be(&s.name, e))?;
                s.master = Some(w);
            }
            s.acc = None;
        }
        self.step = step;
        Ok(())
    }
}

/// One Adam(W) update of one parameter, in f32, then cast into the parameter when it has a
/// master copy.
fn update(
    s: &mut Slot,
    scale: f64,
    lr: f64,
    bc1: f64,
    bc2: f64,
    c: &AdamConfig,
) -> std::result::Result<(), tch::TchError> {
    let g = match s.grad_f32() {
        Ok(Some(g)) => g,
        // Checked by the caller before any update.
        _ => return Ok(()),
    };
    let g = g.f_mul_scalar(scale)?;
    let _ = s.m.f_mul_scalar_(c.beta1)?;
    let _ = s.m.f_add_(&g.f_mul_scalar(1.0 - c.beta1)?)?;
    let _ = s.v.f_mul_scalar_(c.beta2)?;
    let _ = s.v.f_add_(&g.f_square()?.f_mul_scalar(1.0 - c.beta2)?)?;
    let denom = s.v.f_div_scalar(bc2)?.f_sqrt()?.f_add_scalar(c.eps)?;
    let mut upd = s.m.f_div_scalar(bc1)?.f_div(&denom)?;
    let w = s.weights().shallow_clone();
    if c.weight_decay > 0.0 {
        let _ = upd.f_add_(&w.f_mul_scalar(c.weight_decay)?)?;
    }
    let new = w.f_sub(&upd.f_mul_scalar(lr)?)?;
    match &mut s.master {
        Some(master) => {
            master.f_copy_(&new)?;
            s.param.f_copy_(&new)?;
        }
        None => {
            s.param.f_copy_(&new)?;
        }
    }
    Ok(())
}
