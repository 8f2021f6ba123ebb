//! LoRA adapters on the decoder's linear modules (issue 25, `warp rl --lora R`).
//!
//! A module with an adapter computes `W·x + b + s·B·(A·x)` with A `[r, in]` and B `[out, r]`,
//! as PEFT's `lora.Linear` does: the input is cast to the adapter's dtype (f32), the low-rank
//! product is added to the base output in that dtype and the sum cast back to the base's. The
//! base weights are shared between models ([`CausalLm::with_adapters`]): a policy, its EMA and
//! the frozen init differ only in their adapters, so a LoRA run holds the base once.
//!
//! Initialisation (PEFT's default `init_lora_weights=True`): B = 0, so the adapted model starts
//! equal to its base, and A uniform in ±1/√in, the bound of `kaiming_uniform_(a=√5)` that PEFT
//! applies to A; drawn from a seeded [`SplitMix64`] stream so a run is reproducible.

use tch::{Device, Kind, TchError, Tensor};

use super::CausalLm;
use crate::error::{Error, Result};
use crate::rl::config::ModelConfig;
use crate::rl::model::Head;
use crate::rng::SplitMix64;

type TchResult<T> = std::result::Result<T, TchError>;

/// The adapter of one module, as a model's forward uses it.
pub(crate) struct LoraPart {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl LoraPart {
    /// `y` (the base output for `x`) plus s·B·A·x, in PEFT's order of casts.
    pub fn add_to(&self, x: &Tensor, y: Tensor) -> TchResult<Tensor> {
        let kind = y.kind();
        let d = x
            .f_to_kind(self.a.kind())?
            .f_linear::<Tensor>(&self.a, None)?
            .f_linear::<Tensor>(&self.b, None)?
            .f_mul_scalar(self.scale)?;
        y.f_to_kind(d.kind())?.f_add(&d)?.f_to_kind(kind)
    }
}

/// One module's factors.
pub struct AdapterModule {
    /// The module's path, e.g. "model.layers.0.self_attn.q_proj".
    pub module: String,
    /// `[r, in]`, f32.
    pub a: Tensor,
    /// `[out, r]`, f32.
    pub b: Tensor,
}

/// A LoRA adapter of a model: the factors of every target module and the scale s.
pub struct Adapters {
    pub scale: f64,
    pub modules: Vec<AdapterModule>,
}

/// PEFT's key of a module's A factor in `adapter_model.safetensors`.
pub fn key_a(module: &str) -> String {
    format!("base_model.model.{module}.lora_A.weight")
}

/// PEFT's key of a module's B factor.
pub fn key_b(module: &str) -> String {
    format!("base_model.model.{module}.lora_B.weight")
}

impl Adapters {
    /// A fresh adapter of rank `r` on `targets` (module path, [out, in]): B = 0, A uniform in
    /// ±1/√in from the stream (`seed`, module index); f32 on `device`, requiring gradients.
    pub fn init(
        targets: &[(String, [i64; 2])],
        r: i64,
        scale: f64,
        seed: u64,
        device: Device,
    ) -> Result<Adapters> {
        let modules = targets
            .iter()
            .enumerate()
            .map(|(i, (module, [out, inp]))| {
                let mut rng = SplitMix64::stream(seed, (1 << 40) | i as u64);
                let bound = 1.0 / (*inp as f64).sqrt();
                let vals: Vec<f32> = (0..r * inp)
                    .map(|_| ((2.0 * rng.next_open01() - 1.0) * bound) as f32)
                    .collect();
                let mk = || -> TchResult<(Tensor, Tensor)> {
                    let a = Tensor::f_from_slice(&vals)?
                        .f_view([r, *inp])?
                        .f_to_device(device)?;
                    let b = Tensor::f_zeros([*out, r], (Kind::Float, device))?;
                    Ok((a, b))
                };
                let (a, b) =
                    mk().map_err(|e| Error::compute(format!("LoRA init of {module}"), e))?;
                Ok(AdapterModule {
                    module: module.clone(),
                    a: a.set_requires_grad(true),
                    b: b.set_requires_grad(true),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Adapters { scale, modules })
    }

    /// The factors by PEFT key (A then B per module), shallow clones.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        self.modules
            .iter()
            .flat_map(|m| {
                [
                    (key_a(&m.module), m.a.shallow_clone()),
                    (key_b(&m.module), m.b.shallow_clone()),
                ]
            })
            .collect()
    }

    /// A copy of the factors that does not require gradients (e.g. the EMA's start).
    pub fn frozen_copy(&self) -> Result<Adapters> {
        let modules = tch::no_grad(|| {
            self.modules
                .iter()
                .map(|m| {
                    Ok(AdapterModule {
                        module: m.module.clone(),
                        a: m.a.f_detach_copy()?,
                        b: m.b.f_detach_copy()?,
                    })
                })
                .collect::<TchResult<Vec<_>>>()
        })
        .map_err(|e| Error::compute("copying the LoRA factors", e))?;
        Ok(Adapters {
            scale: self.scale,
            modules,
        })
    }

    fn part(&self, module: &str) -> Option<LoraPart> {
        self.modules
            .iter()
            .find(|m| m.module == module)
            .map(|m| LoraPart {
                a: m.a.shallow_clone(),
                b: m.b.shallow_clone(),
                scale: self.scale,
            })
    }
}

/// The projections `all-linear` stands for: every linear module of the decoder layers.
pub const ALL_LINEAR: &str = "all-linear";

/// The linear modules of the decoder layers (path, [out, in]) in parameter order: the 2-D
/// weights of `model.layers.*` in the layout (the layers' other tensors are 1-D norms).
pub fn linear_modules(config: &ModelConfig) -> Vec<(String, [i64; 2])> {
    config
        .parameter_layout(Head::Lm)
        .into_iter()
        .filter(|p| p.name.starts_with("model.layers.") && p.shape.len() == 2)
        .filter_map(|p| {
            let m = p.name.strip_suffix(".weight")?.to_string();
            Some((m, [p.shape[0], p.shape[1]]))
        })
        .collect()
}

/// The modules `names` select in a model of `config`: `all-linear`, or names matched as PEFT
/// matches `target_modules` (the module's path, or its ending after a dot). A name that
/// matches nothing is a setting error naming it and the model's module names.
pub fn lora_targets(config: &ModelConfig, names: &[String]) -> Result<Vec<(String, [i64; 2])>> {
    let all = linear_modules(config);
    if names.iter().any(|n| n == ALL_LINEAR) {
        return Ok(all);
    }
    let hits = |n: &str, m: &str| m == n || m.ends_with(&format!(".{n}"));
    if let Some(bad) = names.iter().find(|n| !all.iter().any(|(m, _)| hits(n, m))) {
        let mut kinds: Vec<&str> = all
            .iter()
            .filter_map(|(m, _)| m.rsplit('.').next())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        return Err(Error::setting(
            "lora_targets",
            format!(
                "the model has no linear module '{bad}' (its linear modules: {}; or all-linear)",
                kinds.join(", ")
            ),
        ));
    }
    Ok(all
        .into_iter()
        .filter(|(m, _)| names.iter().any(|n| hits(n, m)))
        .collect())
}

impl CausalLm {
    /// A model sharing this one's weights (no copy), with `adapters` on their modules (none:
    /// the base itself). Its var store lists the shared weights, frozen.
    pub fn with_adapters(&self, adapters: Option<&Adapters>) -> Result<CausalLm> {
        let part = |m: &str| adapters.and_then(|a| a.part(m));
        let vs = tch::nn::VarStore::new(self.device);
        for (name, t) in self.vs.variables() {
            // Shared storage: registered frozen, so the base's own flag is not touched.
            let _ = super::register_as(&vs.root(), &name, t.shallow_clone(), false);
        }
        let backend = |e: TchError| Error::compute(format!("model {}: sharing", self.name), e);
        let mut ropes =
            vec![
                super::RopeFreqs::new(&self.config.rope, self.config.rotary_dim, self.device)
                    .map_err(backend)?,
            ];
        if let Some(local) = &self.config.local_rope {
            ropes.push(
                super::RopeFreqs::new(local, self.config.rotary_dim, self.device)
                    .map_err(backend)?,
            );
        }
        Ok(CausalLm {
            config: self.config.clone(),
            vs,
            device: self.device,
            kind: self.kind,
            name: self.name.clone(),
            embed: self.embed.shallow_clone(),
            embed_scale: self.embed_scale.as_ref().map(Tensor::shallow_clone),
            layers: self.layers.iter().map(|l| l.share(&part)).collect(),
            norm: self.norm.shallow_clone(),
            lm_head: match &self.lm_head {
                super::LmHead::Tied => super::LmHead::Tied,
                super::LmHead::Own(w) => super::LmHead::Own(w.shallow_clone()),
                super::LmHead::Absent => super::LmHead::Absent,
            },
            ropes,
            names: self.names.clone(),
        })
    }
}
