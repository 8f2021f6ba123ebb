//! Merges of PEFT LoRA adapters in rank space (issue 25): the statistics and the outputs of a
//! merge of adapters of one base, computed from their factors, never from a full weight.
//!
//! With δn = sn·Bn·An per module (δ = 0 for the base itself and for a module an adapter does not
//! train), every inner product is exact at r×r cost, in f64:
//!
//! ```text
//! ⟨si·Bi·Ai, sj·Bj·Aj⟩ = si·sj·tr((Biᵀ·Bj)·(Aj·Aiᵀ))
//! ```
//!
//! so the Gram matrices of the task vectors (per tensor, summed per block or over the model as
//! the engine does) and every angle are those of the materialised deltas, without rounding them
//! to f32 first. Every method merged here is affine (each coefficient row sums to 1), so the
//! base's weight passes through and a row c gives the delta Σn cn·δn, which is exactly the LoRA
//!
//! ```text
//! B = [c1·s1·B1 | c2·s2·B2 | …],  A = [A1; A2; …]   of rank Σ rn, scale 1
//! ```
//!
//! written as a PEFT adapter with `lora_alpha = r` (PEFT's scale α/r = 1, no rsLoRA). Modules are
//! read and written one at a time; an input's modules are read twice when the method needs
//! statistics (once for the Gram matrices, once for the outputs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::job::{Options, Outcome};
use super::{Input, Summary};
use crate::error::{Error, Result};
use crate::io::guard::ReadGuard;
use crate::io::lora::RawFactors;
use crate::io::lora_writer::{AdapterLayout, AdapterWriter, ModuleShape};
use crate::io::writer::{check_destination, human_bytes, Staging};
use crate::io::{DType, OutDType};
use crate::merge::{check_rows, group_key, Gram, Method};
use crate::progress::Reporter;

/// Why the inputs cannot be merged in rank space (None: they can): at least one input is a
/// LoRA adapter, every input is an adapter of one base or that base itself, no adapter saves
/// full tensors, and the adapters agree on `fan_in_fan_out`.
pub fn why_not_rank_space(inputs: &[Input]) -> Option<String> {
    let Some(first) = inputs.iter().find(|i| i.adapter.is_some()) else {
        return Some("no input is a PEFT LoRA adapter".into());
    };
    let base = files_of(first);
    for i in inputs {
        if files_of(i) != base {
            return Some(format!(
                "{} is not an adapter of the base of {} (nor that base): adapters of different \
                 bases have no common rank-space form",
                i.spec, first.spec
            ));
        }
        let Some(a) = &i.adapter else { continue };
        if a.has_full_tensors() {
            return Some(format!(
                "{} saves full tensors (modules_to_save or biases), which have no low-rank form",
                i.spec
            ));
        }
        let fifo = first.adapter.as_ref().map(|f| f.config.fan_in_fan_out);
        if Some(a.config.fan_in_fan_out) != fifo {
            return Some(format!(
                "{} and {} disagree on fan_in_fan_out",
                i.spec, first.spec
            ));
        }
    }
    None
}

/// The files of an input's base checkpoint, resolved (one base reached by two spellings of its
/// path, or by a hub id and its cache folder, is one base).
fn files_of(i: &Input) -> Vec<PathBuf> {
    i.ckpt
        .shards
        .iter()
        .map(|s| std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone()))
        .collect()
}

/// The base model to name in the written adapters: a hub id as given, else the local folder.
pub fn base_name(inputs: &[Input]) -> String {
    if let Some(i) = inputs.iter().find(|i| i.adapter.is_none()) {
        if crate::io::companion::looks_like_hub_id(&i.spec) {
            return i.spec.clone();
        }
    } else if let Some(b) = inputs.iter().find_map(|i| i.adapter.as_ref()?.base_spec()) {
        if crate::io::companion::looks_like_hub_id(b) {
            return b.to_string();
        }
    }
    let dir = &inputs[0].ckpt.dir;
    std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.clone())
        .to_string_lossy()
        .into_owned()
}

/// A rank-space merge: adapters of one base (see [`why_not_rank_space`]) into PEFT adapters.
pub struct RankSpaceJob<'a> {
    pub inputs: &'a [Input],
    pub method: &'a dyn Method,
    /// One output: this folder; several: one sub-folder per output inside it.
    pub dest: PathBuf,
    pub force: bool,
    /// The dtype of the written factors (`Same`: f32).
    pub dtype: OutDType,
}

/// What a rank-space merge wrote.
pub struct Written {
    pub outputs: Vec<PathBuf>,
    /// Norms and angles of the task vectors, shaped as the engine's report (methods with
    /// statistics).
    pub report: Option<serde_json::Value>,
    /// The rank of every output adapter (Σ of the adapters' ranks).
    pub rank: usize,
}

/// The plan of a rank-space merge: the modules, each adapter's block of rows in the output rank.
pub struct RankSpacePlan {
    /// The modules any adapter changes, sorted, with their shapes in the output rank.
    pub modules: Vec<ModuleShape>,
    /// Per input: the first row of its block in the output's factors.
    offsets: Vec<usize>,
    pub rank: usize,
    pub fan_in_fan_out: bool,
    pub task_type: Option<String>,
    /// Bytes of the inputs' factors (what is read, once or twice).
    pub factor_bytes: u64,
}

impl RankSpacePlan {
    /// Checks the inputs and plans: every module's factors agree across the adapters.
    pub fn new(inputs: &[Input]) -> Result<RankSpacePlan> {
        if let Some(why) = why_not_rank_space(inputs) {
            return Err(Error::setting(
                "as",
                format!("cannot merge in rank space: {why}"),
            ));
        }
        let mut offsets = Vec::with_capacity(inputs.len());
        let mut rank = 0;
        for i in inputs {
            offsets.push(rank);
            rank += i.adapter.as_ref().map_or(0, |a| a.config.r);
        }
        let mut shapes: BTreeMap<String, ModuleShape> = BTreeMap::new();
        let mut factor_bytes = 0;
        for (i, a) in inputs.iter().filter_map(|i| Some((i, i.adapter.as_ref()?))) {
            for w in a.modules() {
                let (a_shape, b_shape, embedding) = a.factor_shapes(w)?;
                factor_bytes += a.factor_bytes(w).unwrap_or(0);
                let m = ModuleShape {
                    weight: w.to_string(),
                    embedding,
                    a_shape: [rank, a_shape[1]],
                    b_shape: [b_shape[0], rank],
                };
                match shapes.get(w) {
                    Some(s) if *s != m => {
                        return Err(Error::Mismatch(format!(
                            "{}: LoRA module '{w}' has factors A {a_shape:?} and B {b_shape:?} \
                             ({}), which do not fit the other adapters' ({} [{}, {}])",
                            i.spec,
                            if embedding { "Embedding" } else { "Linear" },
                            if s.embedding { "Embedding" } else { "Linear" },
                            s.b_shape[0],
                            s.a_shape[1]
                        )))
                    }
                    Some(_) => {}
                    None => {
                        shapes.insert(w.to_string(), m);
                    }
                }
            }
        }
        let first = inputs.iter().find_map(|i| i.adapter.as_ref());
        Ok(RankSpacePlan {
            modules: shapes.into_values().collect(),
            offsets,
            rank,
            fan_in_fan_out: first.is_some_and(|a| a.config.fan_in_fan_out),
            task_type: first.and_then(|a| a.config.task_type.clone()),
            factor_bytes,
        })
    }
}

/// The factors of module `w` in every input (None: the input does not change it).
fn module_factors(inputs: &[Input], w: &str) -> Result<Vec<Option<RawFactors>>> {
    inputs
        .iter()
        .map(|i| match &i.adapter {
            Some(a) if a.modules().any(|m| m == w) => a.raw_factors(w).map(Some),
            _ => Ok(None),
        })
        .collect()
}

/// The inner products ⟨δi, δj⟩ (N×N, row-major) of the inputs' deltas of one module, exact from
/// the factors, in f64.
fn inner_products(f: &[Option<RawFactors>]) -> Vec<f64> {
    let n = f.len();
    let mut ip = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            if let (Some(x), Some(y)) = (&f[i], &f[j]) {
                let v = x.scale * y.scale * trace_product(x, y);
                ip[i * n + j] = v;
                ip[j * n + i] = v;
            }
        }
    }
    ip
}

/// tr((Bxᵀ·By)·(Ay·Axᵀ)) = Σ_{a,b} (Bxᵀ·By)[a][b] · (Ay·Axᵀ)[b][a] = ⟨Bx·Ax, By·Ay⟩, in f64.
fn trace_product(x: &RawFactors, y: &RawFactors) -> f64 {
    let (rx, ry) = (x.a_shape[0], y.a_shape[0]);
    let (out, inn) = (x.b_shape[0], x.a_shape[1]);
    // P = Bxᵀ·By [rx, ry]: a sum over the output dimension.
    let mut p = vec![0f64; rx * ry];
    for o in 0..out {
        let bx = &x.b[o * rx..(o + 1) * rx];
        let by = &y.b[o * ry..(o + 1) * ry];
        for (a, &u) in bx.iter().enumerate() {
            for (b, &v) in by.iter().enumerate() {
                p[a * ry + b] += u as f64 * v as f64;
            }
        }
    }
    // Σ P[a][b]·Q[b][a] with Q = Ay·Axᵀ [ry, rx]: a sum over the input dimension.
    let mut t = 0.0;
    for b in 0..ry {
        let ay = &y.a[b * inn..(b + 1) * inn];
        for a in 0..rx {
            let ax = &x.a[a * inn..(a + 1) * inn];
            let q: f64 = ay.iter().zip(ax).map(|(u, v)| *u as f64 * *v as f64).sum();
            t += p[a * ry + b] * q;
        }
    }
    t
}

/// The Gram matrix of the task vectors δm − δ0 (m = 1..N−1) from the inner products of the
/// inputs' deltas: ⟨δi − δ0, δj − δ0⟩ = Iij − Ii0 − I0j + I00.
fn gram_of(ip: &[f64], n: usize) -> Gram {
    let m = n - 1;
    let mut g = Gram::zeros(m);
    for i in 0..m {
        for j in 0..m {
            g.g[i * m + j] = ip[(i + 1) * n + j + 1] - ip[(i + 1) * n] - ip[j + 1] + ip[0];
        }
    }
    g
}

/// The Gram matrix of every float tensor of the base (zero where no input changes it), from
/// the factors, modules in parallel.
fn statistics(inputs: &[Input], plan: &RankSpacePlan) -> Result<BTreeMap<String, Gram>> {
    let n = inputs.len();
    let grams: Vec<(String, Gram)> = plan
        .modules
        .par_iter()
        .map(|m| {
            crate::interrupt::check()?;
            let f = module_factors(inputs, &m.weight)?;
            Ok((m.weight.clone(), gram_of(&inner_products(&f), n)))
        })
        .collect::<Result<_>>()?;
    let mut per_tensor: BTreeMap<String, Gram> = grams.into_iter().collect();
    for t in inputs[0].ckpt.tensors() {
        if t.dtype.is_float() && !per_tensor.contains_key(&t.name) {
            per_tensor.insert(t.name.clone(), Gram::zeros(n - 1));
        }
    }
    Ok(per_tensor)
}

/// One output's factors of a module for the coefficient row `row`: B = [cn·sn·Bn …] and
/// A = [An; …], each input's block at its offset in the output rank (zero where an input does
/// not change the module).
fn combine(
    f: &[Option<RawFactors>],
    row: &[f64],
    plan: &RankSpacePlan,
    m: &ModuleShape,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (rank, inn, out) = (plan.rank, m.a_shape[1], m.b_shape[0]);
    let mut a = vec![0f32; rank * inn];
    let mut b = vec![0f32; out * rank];
    for ((x, &c), &off) in f.iter().zip(row).zip(&plan.offsets) {
        let Some(x) = x else { continue };
        let r = x.a_shape[0];
        a[off * inn..(off + r) * inn].copy_from_slice(&x.a);
        let cs = c * x.scale;
        for o in 0..out {
            for j in 0..r {
                b[o * rank + off + j] = (cs * x.b[o * r + j] as f64) as f32;
            }
        }
    }
    if let Some(k) = b.iter().position(|v| !v.is_finite()) {
        return Err(Error::setting(
            "coefficients",
            format!(
                "LoRA module '{}': the merged factor B overflows f32 at element {k} \
                 (coefficients {row:?})",
                m.weight
            ),
        ));
    }
    Ok((a, b))
}

/// The coefficient rows of module `w`: from its group's Gram matrix for methods with
/// statistics; checked finite in f32 and affine (each row sums to 1, so the base passes through
/// and the merge is a delta of it).
fn rows_of(
    method: &dyn Method,
    per_group: &BTreeMap<String, Gram>,
    w: &str,
    n: usize,
) -> Result<Vec<Vec<f64>>> {
    let gram = if method.needs_gram() {
        let key = group_key(w, method.grouping());
        Some(
            per_group
                .get(&key)
                .ok_or_else(|| Error::Internal(format!("no statistics for group '{key}'")))?,
        )
    } else {
        None
    };
    let rows = method.coefficients_of(w, gram)?;
    check_rows(&rows, n)?;
    for row in &rows {
        let sum: f64 = row.iter().sum();
        let size: f64 = row.iter().map(|c| c.abs()).sum();
        if (sum - 1.0).abs() > 1e-9 * size.max(1.0) {
            return Err(Error::Internal(format!(
                "{} coefficients {row:?} of '{w}' do not sum to 1: not a delta of the base",
                method.name()
            )));
        }
    }
    Ok(rows)
}

/// A merge of adapters of one base in rank space as the front ends run it — the counterpart of
/// [`super::job::merge`] once the inputs are open and [`why_not_rank_space`] found
/// nothing: the destinations checked against the inputs, the plan, then the plan itself (a dry
/// run) or the adapters, the report's table (a message) and file. `o.dtype` is the factors'
/// dtype; the memory budget, device and shard size do not apply.
pub fn merge_opened(
    method: &dyn Method,
    inputs: &[Input],
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<Outcome> {
    let paths: Vec<&Path> = inputs.iter().map(|i| i.ckpt.path.as_path()).collect();
    check_destination(&o.out, &paths)?;
    if let Some(r) = &o.report {
        check_destination(r, &paths)?;
    }
    let plan = RankSpacePlan::new(inputs)?;
    let names = method.outputs();
    let outputs: Vec<PathBuf> = if names.len() == 1 {
        vec![o.out.clone()]
    } else {
        names.iter().map(|n| o.out.join(n)).collect()
    };
    let what = format!(
        "{}: {} input(s) → {} PEFT LoRA adapter(s) of rank {} over {} module(s), in rank space \
         from the factors alone ({} read; no full weight is read or written)",
        method.name(),
        inputs.len(),
        outputs.len(),
        plan.rank,
        plan.modules.len(),
        human_bytes(plan.factor_bytes)
    );
    if o.dry_run {
        let mut table = what + "\n";
        for x in &outputs {
            table += &format!("  {}\n", x.display());
        }
        let json = serde_json::json!({
            "as": "adapter",
            "method": method.name(),
            "inputs": inputs.iter().map(|i| i.spec.as_str()).collect::<Vec<_>>(),
            "outputs": outputs,
            "rank": plan.rank,
            "modules": plan.modules.iter().map(|m| m.weight.as_str()).collect::<Vec<_>>(),
            "read_bytes": plan.factor_bytes,
        });
        return Ok(Outcome::Planned { table, json });
    }
    reporter.message(&what);
    let job = RankSpaceJob {
        inputs,
        method,
        dest: o.out.clone(),
        force: o.force,
        dtype: o.dtype,
    };
    let w = merge(&job, reporter)?;
    if let Some(rep) = &w.report {
        reporter.message(crate::merge::report::summary_table(rep).trim_end());
        if let Some(path) = &o.report {
            let text =
                serde_json::to_string_pretty(rep).map_err(|e| Error::Internal(e.to_string()))?;
            crate::io::write_file_atomic(path, (text + "\n").as_bytes())?;
        }
    }
    let elems: usize = plan
        .modules
        .iter()
        .map(|m| m.a_shape[0] * m.a_shape[1] + m.b_shape[0] * m.b_shape[1])
        .sum();
    let size = match o.dtype {
        OutDType::Same => 4,
        OutDType::To(d) => d.size(),
    };
    Ok(Outcome::Done(Summary {
        outputs: w.outputs,
        report: w.report,
        bytes_read: plan.factor_bytes,
        bytes_written: (elems * size * names.len()) as u64,
    }))
}

/// Merges the adapters of `job` and writes every output as a PEFT adapter, all appearing at
/// once at the end (or none, on an error).
pub fn merge(job: &RankSpaceJob, reporter: &dyn Reporter) -> Result<Written> {
    let (inputs, method) = (job.inputs, job.method);
    let plan = RankSpacePlan::new(inputs)?;
    method.validate(inputs.len())?;
    // Reads of a file truncated under its mapping become an error naming it (checked after
    // each read, before what was read is used).
    let shards = || inputs.iter().flat_map(|i| i.shards());
    let guard = ReadGuard::new(shards().map(|s| (s.mapped(), s.path.as_path())));
    let per_tensor = if method.needs_gram() {
        reporter.message(&format!(
            "statistics of {} module(s) from their factors",
            plan.modules.len()
        ));
        let stats = statistics(inputs, &plan)?;
        guard.check()?;
        Some(stats)
    } else {
        None
    };
    let mut per_group: BTreeMap<String, Gram> = BTreeMap::new();
    for (w, g) in per_tensor.iter().flatten() {
        per_group
            .entry(group_key(w, method.grouping()))
            .or_insert_with(|| Gram::zeros(g.m))
            .add(g);
    }
    let staging = Staging::new(&job.dest, job.force)?;
    for r in staging.reclaimed() {
        reporter.message(&crate::io::writer::reclaimed_message(r));
    }
    let (mut writers, outputs) = open_outputs(job, &plan, &staging)?;
    reporter.start_steps(method.name(), plan.modules.len() as u64);
    for m in &plan.modules {
        crate::interrupt::check()?;
        let f = module_factors(inputs, &m.weight)?;
        guard.check()?;
        let rows = rows_of(method, &per_group, &m.weight, inputs.len())?;
        for (w, row) in writers.iter_mut().zip(&rows) {
            let (a, b) = combine(&f, row, &plan, m)?;
            w.write_module(&a, &b)?;
        }
        reporter.advance(1);
    }
    reporter.finish();
    for s in shards() {
        s.check_unchanged()?;
    }
    for w in writers {
        w.finish()?;
    }
    staging.commit()?;
    let specs: Vec<&str> = inputs.iter().map(|i| i.spec.as_str()).collect();
    Ok(Written {
        outputs,
        report: per_tensor.map(|p| crate::merge::report::report_json(method, &specs, &p)),
        rank: plan.rank,
    })
}

/// One adapter writer per output inside the staging folder (the folder itself for a single
/// output), each with its model card; returns them and the outputs' final paths.
fn open_outputs(
    job: &RankSpaceJob,
    plan: &RankSpacePlan,
    staging: &Staging,
) -> Result<(Vec<AdapterWriter>, Vec<PathBuf>)> {
    let method = job.method;
    let names = method.outputs();
    let base = base_name(job.inputs);
    let dtype = match job.dtype {
        OutDType::Same => DType::F32,
        OutDType::To(d) => d,
    };
    let inputs: Vec<serde_json::Value> = job
        .inputs
        .iter()
        .map(|i| serde_json::json!({"role": i.role, "path": i.spec, "header_sha256": i.fingerprint(), "lora_adapter": i.adapter.is_some()}))
        .collect();
    let mut writers = Vec::with_capacity(names.len());
    let mut outputs = Vec::with_capacity(names.len());
    for (k, name) in names.iter().enumerate() {
        let (dir, shown) = if names.len() == 1 {
            (staging.path().to_path_buf(), job.dest.clone())
        } else {
            let d = staging.path().join(name);
            std::fs::create_dir(&d).map_err(|e| Error::io(job.dest.join(name), e))?;
            (d, job.dest.join(name))
        };
        let mut recipe = method.recipe();
        recipe["output"] = name.clone().into();
        recipe["inputs"] = inputs.clone().into();
        recipe["as"] = "adapter".into();
        recipe["dtype"] = dtype.name().into();
        let mut metadata = BTreeMap::new();
        metadata.insert("warp_version".into(), env!("CARGO_PKG_VERSION").into());
        metadata.insert("warp_recipe".into(), recipe.to_string());
        let layout = AdapterLayout {
            r: plan.rank,
            fan_in_fan_out: plan.fan_in_fan_out,
            task_type: plan.task_type.clone(),
            base_model: base.clone(),
            modules: plan.modules.clone(),
            dtype,
            metadata,
            scaling: None,
        };
        writers.push(AdapterWriter::create(&dir, &shown, &layout)?);
        write_card(&dir, &shown, name, plan.rank, &base, method, &recipe, k)?;
        outputs.push(shown);
    }
    Ok((writers, outputs))
}

/// The model card (README.md) of one output adapter.
#[allow(clippy::too_many_arguments)]
fn write_card(
    dir: &Path,
    shown: &Path,
    name: &str,
    rank: usize,
    base: &str,
    method: &dyn Method,
    recipe: &serde_json::Value,
    k: usize,
) -> Result<()> {
    let mut notes = method.notes(k);
    notes.push(format!(
        "This is a PEFT LoRA adapter of rank {rank} (`lora_alpha` = r: scale 1) holding the \
         merged task vector exactly, computed by warp from the inputs' LoRA factors. Load it \
         with `PeftModel.from_pretrained(base_model, path)`."
    ));
    let card = crate::io::companion::ModelCard {
        title: &format!("{name} ({}, LoRA adapter of rank {rank})", method.name()),
        base_model: base,
        method: method.name(),
        recipe,
        notes,
    };
    // The card says what loads it: PEFT, not transformers alone.
    let text = card
        .render()
        .replacen("library_name: transformers", "library_name: peft", 1);
    std::fs::write(dir.join("README.md"), text).map_err(|e| Error::io(shown.join("README.md"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(a: Vec<f32>, r: usize, b: Vec<f32>, scale: f64) -> RawFactors {
        let inn = a.len() / r;
        let out = b.len() / r;
        RawFactors {
            a,
            a_shape: [r, inn],
            b,
            b_shape: [out, r],
            scale,
            embedding: false,
        }
    }

    /// s·B·A materialised [out, in], f64.
    fn dense(x: &RawFactors) -> Vec<f64> {
        let (r, inn, out) = (x.a_shape[0], x.a_shape[1], x.b_shape[0]);
        let mut d = vec![0f64; out * inn];
        for o in 0..out {
            for i in 0..inn {
                for k in 0..r {
                    d[o * inn + i] += x.scale * x.b[o * r + k] as f64 * x.a[k * inn + i] as f64;
                }
            }
        }
        d
    }

    /// Inner products from the factors equal those of the dense deltas; the Gram of the task
    /// vectors follows; a merge row's factors give Σ cn·δn.
    #[test]
    fn inner_products_from_factors_equal_those_of_the_dense_deltas() {
        let v = |n: usize, k: f32| (0..n).map(|i| (i as f32 * 0.37 + k).sin()).collect();
        let x = raw(v(2 * 5, 0.1), 2, v(3 * 2, 0.7), 2.0);
        let y = raw(v(3 * 5, 1.3), 3, v(3 * 3, 2.1), 0.5);
        let z = raw(v(5, 0.4), 1, v(3, 0.9), 1.5);
        let f = vec![Some(z), Some(x), Some(y)];
        let ip = inner_products(&f);
        let d: Vec<Vec<f64>> = f.iter().map(|o| dense(o.as_ref().unwrap())).collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for i in 0..3 {
            for j in 0..3 {
                let want = dot(&d[i], &d[j]);
                assert!((ip[i * 3 + j] - want).abs() <= 1e-12 * want.abs().max(1.0));
            }
        }
        // Task vectors relative to input 0 (here an adapter too: δm − δ0).
        let g = gram_of(&ip, 3);
        let t: Vec<Vec<f64>> = (1..3)
            .map(|m| d[m].iter().zip(&d[0]).map(|(a, b)| a - b).collect())
            .collect();
        for i in 0..2 {
            for j in 0..2 {
                let want = dot(&t[i], &t[j]);
                assert!((g.at(i, j) - want).abs() <= 1e-12 * want.abs().max(1.0));
            }
        }
        let plan = RankSpacePlan {
            modules: Vec::new(),
            offsets: vec![0, 1, 3],
            rank: 6,
            fan_in_fan_out: false,
            task_type: None,
            factor_bytes: 0,
        };
        let m = ModuleShape {
            weight: "w".into(),
            embedding: false,
            a_shape: [6, 5],
            b_shape: [3, 6],
        };
        let row = [0.2, 0.5, 0.3];
        let (a, b) = combine(&f, &row, &plan, &m).unwrap();
        let merged = dense(&raw(a, 6, b, 1.0));
        for e in 0..15 {
            let want = 0.2 * d[0][e] + 0.5 * d[1][e] + 0.3 * d[2][e];
            assert!(
                (merged[e] - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{e}"
            );
        }
    }
}
