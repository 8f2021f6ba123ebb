//! Parameter settings of a recipe and their value for one tensor, as mergekit resolves them:
//!
//! - a scalar is its value;
//! - a gradient [v₀, …, v_{K−1}] at layer position t ∈ [0, 1] (the layer's index in its slice
//!   over the slice's length − 1; 0 for tensors outside the layers) is, with s = t·(K−1),
//!   i = ⌊s⌋, f = s − i: (1−f)·v_i + f·v_{min(i+1, K−1)} for numbers, v_⌊t(K−1)⌋ otherwise;
//! - conditionals [{filter, value}, …] take the first whose filter is absent, `*` or a substring
//!   of the tensor's name; none matching means unset (the next scope is asked).
//!
//! Scopes are asked from the most specific: the source's own parameters, the slice's, then the
//! recipe's; a parameter set nowhere takes the method's default (or is an error when required).

use serde_yaml_ng::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Num(f64),
    Bool(bool),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    Scalar(Scalar),
    Gradient(Vec<Scalar>),
    /// (filter, value): the value a scalar or a gradient.
    Cond(Vec<(Option<String>, Setting)>),
}

fn scalar(v: &Value) -> Option<Scalar> {
    match v {
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Number(n) => n.as_f64().map(Scalar::Num),
        Value::String(s) => Some(Scalar::Str(s.clone())),
        _ => None,
    }
}

fn bad(at: &str, msg: impl std::fmt::Display) -> Error {
    Error::setting(at, msg.to_string())
}

fn value_setting(v: &Value, at: &str) -> Result<Setting> {
    if let Some(s) = scalar(v) {
        return Ok(Setting::Scalar(s));
    }
    if let Some(seq) = v.as_sequence() {
        if seq.is_empty() {
            return Err(bad(at, "an empty list is not a value"));
        }
        let g: Option<Vec<Scalar>> = seq.iter().map(scalar).collect();
        return g
            .map(Setting::Gradient)
            .ok_or_else(|| bad(at, "a gradient is a list of numbers"));
    }
    Err(bad(
        at,
        "expected a number, a boolean, a string or a list of them",
    ))
}

fn cond(v: &Value, at: &str) -> Result<(Option<String>, Setting)> {
    let m = v
        .as_mapping()
        .ok_or_else(|| bad(at, "expected {filter, value}"))?;
    let (mut filter, mut value) = (None, None);
    for (k, val) in m {
        match k.as_str() {
            Some("filter") => {
                filter = Some(
                    val.as_str()
                        .ok_or_else(|| bad(&format!("{at}.filter"), "expected a string"))?
                        .to_string(),
                )
            }
            Some("value") => value = Some(value_setting(val, &format!("{at}.value"))?),
            _ => {
                return Err(bad(
                    &format!("{at}.{}", k.as_str().unwrap_or("?")),
                    "unknown key (known here: filter, value)",
                ))
            }
        }
    }
    Ok((
        filter,
        value.ok_or_else(|| bad(&format!("{at}.value"), "missing"))?,
    ))
}

/// Reads one parameter's setting.
pub fn setting(v: &Value, at: &str) -> Result<Setting> {
    if v.is_mapping() {
        return Ok(Setting::Cond(vec![cond(v, at)?]));
    }
    if let Some(seq) = v.as_sequence() {
        if seq.iter().any(|x| x.is_mapping()) {
            return seq
                .iter()
                .enumerate()
                .map(|(i, x)| cond(x, &format!("{at}[{i}]")))
                .collect::<Result<Vec<_>>>()
                .map(Setting::Cond);
        }
    }
    value_setting(v, at)
}

impl Setting {
    /// The value for tensor `name` at layer position `t`; None when no conditional matches.
    pub fn eval(&self, name: &str, t: f64) -> Option<Scalar> {
        match self {
            Setting::Scalar(s) => Some(s.clone()),
            Setting::Gradient(v) => {
                let nums: Option<Vec<f64>> = v
                    .iter()
                    .map(|s| match s {
                        Scalar::Num(x) => Some(*x),
                        _ => None,
                    })
                    .collect();
                let k = v.len();
                let Some(nums) = nums else {
                    return Some(v[(t * (k - 1) as f64) as usize].clone());
                };
                let s = t * (k - 1) as f64;
                let i0 = s as usize;
                let i1 = (i0 + 1).min(k - 1);
                let f = s - i0 as f64;
                Some(Scalar::Num((1.0 - f) * nums[i0] + f * nums[i1]))
            }
            Setting::Cond(list) => list
                .iter()
                .find(|(f, _)| match f {
                    None => true,
                    Some(f) => f == "*" || (!name.is_empty() && name.contains(f.as_str())),
                })
                .and_then(|(_, v)| v.eval(name, t)),
        }
    }
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Num(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Str(s) => write!(f, "'{s}'"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(y: &str) -> Setting {
        setting(&serde_yaml_ng::from_str(y).unwrap(), "p").unwrap()
    }

    #[test]
    fn gradients_interpolate_like_mergekit() {
        let g = s("[0.0, 0.5, 1.0]");
        let num = |t| match g.eval("x", t) {
            Some(Scalar::Num(v)) => v,
            o => panic!("{o:?}"),
        };
        assert_eq!(num(0.0), 0.0);
        assert_eq!(num(1.0), 1.0);
        assert!((num(0.25) - 0.25).abs() < 1e-15);
        assert!((num(0.8) - 0.8).abs() < 1e-15);
        let g = s("[0.1, 0.9]");
        assert!(matches!(g.eval("x", 0.5), Some(Scalar::Num(v)) if (v - 0.5).abs() < 1e-15));
    }

    #[test]
    fn filters_pick_the_first_match() {
        let c = s("[{filter: self_attn, value: 0.1}, {filter: mlp, value: [0, 1]}, {value: 0.5}]");
        assert_eq!(
            c.eval("model.layers.0.self_attn.q_proj.weight", 0.3),
            Some(Scalar::Num(0.1))
        );
        assert_eq!(
            c.eval("model.layers.0.mlp.up_proj.weight", 1.0),
            Some(Scalar::Num(1.0))
        );
        assert_eq!(c.eval("model.norm.weight", 0.0), Some(Scalar::Num(0.5)));
        let c = s("{filter: mlp, value: 2}");
        assert_eq!(c.eval("model.norm.weight", 0.0), None);
    }
}
