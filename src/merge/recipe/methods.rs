//! The recipe methods: their parameters (scope, type, default, as in mergekit 0.1.5), whether
//! they need a base model, how many inputs they take, and the kernel of one tensor once its
//! parameters are resolved. The math of each lives in its own file under `src/merge`.

use std::collections::HashMap;

use super::{Recipe, Scalar};
use crate::error::{Error, Result};
use crate::merge::kernel::{Kernel, TensorCx};
use crate::merge::task_arithmetic::{Sparsify, TaskArithmetic};
use crate::merge::{
    karcher, linear, model_stock, multislerp, nearswap, nuslerp, passthrough, sce, slerp_pair,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasePolicy {
    /// The method combines task vectors from a base: a recipe without one is refused.
    Required,
    /// Task vectors from the base when there is one, the models themselves otherwise.
    Optional,
    /// The base, when given, is one more input like the others.
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dflt {
    Required,
    Absent,
    Num(f64),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Num,
    Int,
    Bool,
    /// A list of numbers (WARP's η): not a gradient.
    List,
    Str,
}

pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub default: Dflt,
}

const fn p(name: &'static str, kind: Kind, default: Dflt) -> Param {
    Param {
        name,
        kind,
        default,
    }
}

pub struct Spec {
    pub name: &'static str,
    pub base: BasePolicy,
    /// Inputs besides the base (all inputs for [`BasePolicy::Input`]).
    pub min_models: usize,
    pub max_models: usize,
    /// One value for the whole merge of a tensor.
    pub shared: Vec<Param>,
    /// One value per input (per model other than the base, unless `per_input_on_base`).
    pub per_input: Vec<Param>,
    pub per_input_on_base: bool,
}

use Dflt::{Absent, Bool, Num, Required};
use Kind::{Bool as B, Int as I, List as L, Num as F, Str as S};

fn gta(name: &'static str, normalize: bool, rescale: bool, extra: Option<Param>) -> Spec {
    let mut per = vec![p("weight", F, Required), p("density", F, Num(1.0))];
    per.extend(extra);
    Spec {
        name,
        base: BasePolicy::Required,
        min_models: 1,
        max_models: usize::MAX,
        shared: vec![
            p("int8_mask", B, Bool(false)),
            p("normalize", B, Bool(normalize)),
            p("rescale", B, Bool(rescale)),
            p("lambda", F, Num(1.0)),
        ],
        per_input: per,
        per_input_on_base: false,
    }
}

/// Every method `warp merge` knows, by name.
// long fn: the table of methods, one arm each with its parameters and defaults.
pub fn spec(name: &str) -> Option<Spec> {
    let g = || Some(p("gamma", F, Num(0.01)));
    let one = |name, base, shared: Vec<Param>, per: Vec<Param>, min, max| Spec {
        name,
        base,
        min_models: min,
        max_models: max,
        shared,
        per_input: per,
        per_input_on_base: false,
    };
    Some(match name {
        "linear" => Spec {
            per_input_on_base: true,
            ..one(
                "linear",
                BasePolicy::Input,
                vec![p("normalize", B, Bool(true))],
                vec![p("weight", F, Required)],
                1,
                usize::MAX,
            )
        },
        "task_arithmetic" => gta("task_arithmetic", false, false, None),
        "ties" => gta("ties", true, false, None),
        "dare_ties" => gta("dare_ties", false, true, None),
        "dare_linear" => gta("dare_linear", false, true, None),
        "breadcrumbs" => gta("breadcrumbs", false, false, g()),
        "breadcrumbs_ties" => gta("breadcrumbs_ties", false, false, g()),
        "della" => gta("della", true, true, Some(p("epsilon", F, Num(0.15)))),
        "della_linear" => gta(
            "della_linear",
            false,
            true,
            Some(p("epsilon", F, Num(0.15))),
        ),
        "slerp" => one(
            "slerp",
            BasePolicy::Required,
            vec![p("t", F, Required)],
            vec![],
            1,
            1,
        ),
        "nearswap" => one(
            "nearswap",
            BasePolicy::Required,
            vec![p("t", F, Required)],
            vec![],
            1,
            1,
        ),
        "nuslerp" => one(
            "nuslerp",
            BasePolicy::Optional,
            vec![
                p("nuslerp_row_wise", B, Bool(false)),
                p("nuslerp_flatten", B, Bool(true)),
            ],
            vec![p("weight", F, Required)],
            2,
            2,
        ),
        "multislerp" => one(
            "multislerp",
            BasePolicy::Optional,
            vec![
                p("normalize_weights", B, Bool(true)),
                p("eps", F, Num(1e-8)),
            ],
            vec![p("weight", F, Required)],
            1,
            usize::MAX,
        ),
        "karcher" => one(
            "karcher",
            BasePolicy::Input,
            vec![p("max_iter", I, Num(10.0)), p("tol", F, Num(1e-5))],
            vec![],
            1,
            usize::MAX,
        ),
        "model_stock" => one(
            "model_stock",
            BasePolicy::Required,
            vec![p("filter_wise", B, Bool(false))],
            vec![],
            2,
            usize::MAX,
        ),
        "sce" => one(
            "sce",
            BasePolicy::Required,
            vec![
                p("int8_mask", B, Bool(false)),
                p("select_topk", F, Num(1.0)),
            ],
            vec![],
            1,
            usize::MAX,
        ),
        "passthrough" => Spec {
            per_input_on_base: true,
            ..one(
                "passthrough",
                BasePolicy::Input,
                vec![],
                vec![p("scale", F, Absent)],
                1,
                1,
            )
        },
        // WARP's own: SLERP of M task vectors from the base (the init), with fused LITI points.
        "warp_slerp" => one(
            "warp_slerp",
            BasePolicy::Required,
            vec![
                p("etas", L, Absent),
                p("angle", S, Absent),
                p(
                    "lerp_threshold",
                    F,
                    Num(crate::merge::slerp::DEFAULT_THRESHOLD),
                ),
            ],
            vec![],
            2,
            usize::MAX,
        ),
        _ => return None,
    })
}

/// Names for the "unknown merge method" message (and the docs).
pub const METHODS: &[&str] = &[
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "model_stock",
    "sce",
    "nearswap",
    "passthrough",
    "warp_slerp",
];

/// mergekit methods this version refuses, with why.
fn unsupported(name: &str) -> Option<&'static str> {
    match name {
        "arcee_fusion" | "ram" | "ramplus_tl" => Some("is not implemented in this version of warp"),
        _ => None,
    }
}

fn bad(at: &str, msg: impl std::fmt::Display) -> Error {
    Error::setting(at, msg.to_string())
}

/// Checks the method, every parameter name (in the scope it is given in), the base model and
/// the number of inputs of each slice. Nothing is opened.
pub fn check(r: &Recipe) -> Result<()> {
    if let Some(why) = unsupported(&r.merge_method) {
        return Err(bad("merge_method", format!("'{}' {why}", r.merge_method)));
    }
    let Some(spec) = spec(&r.merge_method) else {
        return Err(bad(
            "merge_method",
            format!(
                "unknown merge method '{}' (known: {})",
                r.merge_method,
                METHODS.join(", ")
            ),
        ));
    };
    let names = |ps: &[Param]| ps.iter().map(|p| p.name).collect::<Vec<_>>();
    let shared = names(&spec.shared);
    let per = names(&spec.per_input);
    let check_scope = |params: &super::Params, at: &str, allow_shared: bool| -> Result<()> {
        for (k, _) in params {
            if per.contains(&k.as_str()) || (allow_shared && shared.contains(&k.as_str())) {
                continue;
            }
            if shared.contains(&k.as_str()) {
                return Err(bad(
                    &format!("{at}.{k}"),
                    format!(
                        "'{k}' is one value for the whole merge: set it under the recipe's (or \
                         the slice's) parameters"
                    ),
                ));
            }
            let mut known = shared.clone();
            known.extend(per.iter());
            return Err(bad(
                &format!("{at}.{k}"),
                format!(
                    "unknown parameter of merge method '{}' (known: {})",
                    spec.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        Ok(())
    };
    check_scope(&r.params, "parameters", true)?;
    for (i, s) in r.slices.iter().enumerate() {
        check_scope(&s.params, &format!("{}.parameters", s.at), true)?;
        for src in &s.sources {
            check_scope(&src.params, &format!("{}.parameters", src.at), false)?;
        }
        let base = r.base_of(i);
        if spec.base == BasePolicy::Required && base.is_none() {
            return Err(bad(
                "base_model",
                format!(
                    "merge method '{}' combines task vectors from a base model: give base_model",
                    spec.name
                ),
            ));
        }
        let has_base_source = base.is_some_and(|b| s.sources.iter().any(|x| x.model == b));
        let models = match spec.base {
            BasePolicy::Input => s.sources.len() + usize::from(base.is_some() && !has_base_source),
            _ if base.is_some() => s.sources.len() - usize::from(has_base_source),
            _ => s.sources.len(),
        };
        if models < spec.min_models || models > spec.max_models {
            let want = if spec.min_models == spec.max_models {
                format!("{}", spec.min_models)
            } else if spec.max_models == usize::MAX {
                format!("at least {}", spec.min_models)
            } else {
                format!("{} to {}", spec.min_models, spec.max_models)
            };
            let what = if spec.base == BasePolicy::Input {
                "input model(s)"
            } else {
                "model(s) besides the base"
            };
            return Err(bad(
                &s.at,
                format!(
                    "merge method '{}' takes {want} {what}, got {models}",
                    spec.name
                ),
            ));
        }
    }
    Ok(())
}

/// A parameter's value for one tensor: scopes from the most specific, then the default.
pub type Resolved = HashMap<&'static str, Scalar>;

fn num(v: &Resolved, name: &str, at: &str) -> Result<f64> {
    match v.get(name) {
        Some(Scalar::Num(x)) if x.is_finite() => Ok(*x),
        Some(Scalar::Bool(b)) => Ok(f64::from(u8::from(*b))),
        Some(o) => Err(bad(at, format!("{name}: {o} is not a finite number"))),
        None => Err(Error::Internal(format!("parameter {name} unresolved"))),
    }
}

fn boolean(v: &Resolved, name: &str, at: &str) -> Result<bool> {
    match v.get(name) {
        Some(Scalar::Bool(b)) => Ok(*b),
        Some(Scalar::Num(x)) if *x == 0.0 || *x == 1.0 => Ok(*x == 1.0),
        Some(Scalar::Str(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(o) => Err(bad(at, format!("{name}: {o} is not true or false"))),
        None => Err(Error::Internal(format!("parameter {name} unresolved"))),
    }
}

// long fn: one arm per method, each building its kernel from the resolved parameters.
/// The kernel of one tensor: `shared` and `per` (one per input, base first when the method has
/// one) resolved; `at` names the tensor for messages. None: the output is input 0 as it is.
pub fn kernel(
    spec: &Spec,
    cx: TensorCx,
    has_base: bool,
    shared: &Resolved,
    per: &[Resolved],
    at: &str,
) -> Result<Option<Box<dyn Kernel>>> {
    let models = &per[usize::from(has_base && !spec.per_input_on_base)..];
    let nums =
        |name: &str| -> Result<Vec<f64>> { models.iter().map(|r| num(r, name, at)).collect() };
    let k: Box<dyn Kernel> = match spec.name {
        "linear" => {
            let weights = nums("weight")?;
            let normalize = boolean(shared, "normalize", at)?;
            if normalize && weights.iter().map(|&w| w as f32).sum::<f32>() == 0.0 {
                return Err(bad(
                    at,
                    format!("weight: the weights {weights:?} sum to 0, and normalize divides by their sum"),
                ));
            }
            Box::new(linear::Linear { weights, normalize })
        }
        "task_arithmetic" | "ties" | "dare_ties" | "dare_linear" | "breadcrumbs"
        | "breadcrumbs_ties" | "della" | "della_linear" => {
            if models.is_empty() {
                return Ok(None);
            }
            task_arithmetic(spec, cx, shared, models, at)?
        }
        "slerp" => Box::new(slerp_pair::PairSlerp {
            t: num(shared, "t", at)?,
        }),
        "nearswap" => Box::new(nearswap::NearSwap {
            t: num(shared, "t", at)?,
        }),
        "nuslerp" => {
            if boolean(shared, "nuslerp_row_wise", at)? || !boolean(shared, "nuslerp_flatten", at)?
            {
                return Err(bad(
                    at,
                    "nuslerp_row_wise/nuslerp_flatten: only the flattened form (nuslerp_flatten: \
                     true, nuslerp_row_wise: false) is implemented in this version",
                ));
            }
            let w = nums("weight")?;
            let total = w[0] + w[1];
            let t = if total.abs() < 1e-6 {
                0.5
            } else {
                w[1] / total
            };
            Box::new(nuslerp::NuSlerp { t, has_base })
        }
        "multislerp" => {
            let weights = nums("weight")?;
            if weights.len() == 1 {
                // One model is copied (its own values, not the base's).
                return Ok(Some(Box::new(passthrough::Pick {
                    input: usize::from(has_base),
                })));
            }
            Box::new(multislerp::MultiSlerp {
                name: cx.name.clone(),
                weights,
                normalize: boolean(shared, "normalize_weights", at)?,
                eps: num(shared, "eps", at)?,
                has_base,
            })
        }
        "karcher" => {
            if per.len() == 1 {
                return Ok(None);
            }
            let it = num(shared, "max_iter", at)?;
            if it < 0.0 || it.fract() != 0.0 {
                return Err(bad(at, format!("max_iter: {it} is not a whole number ≥ 0")));
            }
            Box::new(karcher::Karcher {
                n: per.len(),
                max_iter: it as u64,
                tol: num(shared, "tol", at)?,
            })
        }
        "model_stock" => {
            if boolean(shared, "filter_wise", at)? {
                return Err(bad(
                    at,
                    "filter_wise: true is not implemented in this version (one ratio per tensor)",
                ));
            }
            Box::new(model_stock::ModelStock {
                models: per.len() - 1,
            })
        }
        "sce" => Box::new(sce::Sce {
            models: per.len() - 1,
            topk: num(shared, "select_topk", at)?,
            numel: cx.numel,
        }),
        "passthrough" => match per[0].get("scale") {
            None => return Ok(None),
            Some(_) => Box::new(passthrough::Scale {
                scale: num(&per[0], "scale", at)?,
            }),
        },
        other => return Err(Error::Internal(format!("no kernel for method {other}"))),
    };
    Ok(Some(k))
}

/// The kernel of the task-arithmetic family (ties, dare, breadcrumbs, della, …).
fn task_arithmetic(
    spec: &Spec,
    cx: TensorCx,
    shared: &Resolved,
    models: &[Resolved],
    at: &str,
) -> Result<Box<dyn Kernel>> {
    let nums =
        |name: &str| -> Result<Vec<f64>> { models.iter().map(|r| num(r, name, at)).collect() };
    let sparsify = match spec.name {
        "ties" => Sparsify::Magnitude,
        "dare_ties" | "dare_linear" => Sparsify::Random,
        "breadcrumbs" | "breadcrumbs_ties" => Sparsify::Outliers,
        "della" | "della_linear" => Sparsify::MagPrune,
        _ => Sparsify::None,
    };
    let consensus = matches!(
        spec.name,
        "ties" | "dare_ties" | "breadcrumbs_ties" | "della"
    );
    let (shape, name) = (cx.shape.clone(), cx.name.clone());
    let gammas = if sparsify == Sparsify::Outliers {
        nums("gamma")?
    } else {
        vec![0.0; models.len()]
    };
    let densities = nums("density")?;
    let mut epsilons = Vec::new();
    if sparsify == Sparsify::MagPrune {
        epsilons = nums("epsilon")?;
        for (&d, &e) in densities.iter().zip(&epsilons) {
            if d < 1.0 && d > 0.0 && (d + e >= 1.0 || d - e <= 0.0) {
                return Err(bad(
                    at,
                    format!(
                        "epsilon: density ± epsilon must lie in (0, 1) (density {d}, epsilon {e})"
                    ),
                ));
            }
        }
        if shape.len() > 2 {
            return Err(bad(
                at,
                format!(
                    "{}: tensors of more than 2 dimensions ({name}: {shape:?}) are not supported",
                    spec.name
                ),
            ));
        }
    }
    let cols = if shape.len() == 2 {
        shape[1]
    } else {
        cx.numel as usize
    };
    Ok(Box::new(
        TaskArithmetic::new(
            cx,
            sparsify,
            consensus,
            nums("weight")?,
            densities,
            gammas,
            boolean(shared, "normalize", at)?,
            boolean(shared, "rescale", at)?,
            num(shared, "lambda", at)?,
        )
        .with_ranks(epsilons, cols),
    ))
}
