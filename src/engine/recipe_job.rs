//! A recipe merge as the front ends run it (`warp merge RECIPE.yaml -o OUT` and
//! `warp_align.merge`): a mergekit recipe (its configuration language as of mergekit 0.1.5)
//! parsed and checked, the destination checked before any input is read, the models opened,
//! the recipe's program built, the companion files (config with renumbered layers, tokenizer,
//! chat template, model card) prepared, then either the plan (a dry run) or [`super::recipe::run`].
//! `merge_method: warp_slerp` runs WARP's SLERP through [`super::job::merge`]. See docs/RECIPES.md.

use crate::device::Device;
use crate::error::{Error, IoContext, Result};
use crate::io::companion::{config_with_dtype, ModelCard, COMPANION_FILES};
use crate::io::writer::{check_destination, human_bytes};
use crate::io::OutDType;
use crate::merge::recipe::program::{self, Program};
use crate::merge::recipe::{Recipe, Scalar, Setting};
use crate::progress::Reporter;

use super::job::{check_new_dir, check_new_file, with_threads, Options, Outcome};
use super::recipe::{run, ExtraFile, RecipeJob, RecipePlan};
use super::recipe_lora::{affine_method, OutputForm};
use super::{Input, Summary};

/// Runs the recipe `text` (`file` names it in messages: its path, or `<recipe>`); `seed` drives
/// the random methods (dare_ties, dare_linear). `o.report` is not used (recipes have no report).
/// Writes a full checkpoint (see [`merge_recipe_as`]).
pub fn merge_recipe(
    text: &str,
    file: &str,
    seed: u64,
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<Outcome> {
    merge_recipe_as(text, file, seed, OutputForm::Full, o, reporter)
}

/// [`merge_recipe`], writing a PEFT adapter computed in rank space where `form` asks for one
/// (or allows it and the recipe has one: an affine merge of adapters of one base; see
/// [`super::recipe_lora`]).
pub fn merge_recipe_as(
    text: &str,
    file: &str,
    seed: u64,
    form: OutputForm,
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<Outcome> {
    let recipe = Recipe::parse(text, file)?;
    if recipe.merge_method == "warp_slerp" {
        return warp_slerp(&recipe, file, form, o, reporter);
    }
    if let Device::Cuda(_) = o.device {
        let n = o.names;
        return Err(Error::setting(
            n.arg(n.device, "cuda"),
            format!(
                "recipe merges run on the CPU in this version of warp (the element-wise kernels \
                 have no CUDA implementation yet); use {} or {}",
                n.arg(n.device, "cpu"),
                n.arg(n.device, "auto")
            ),
        ));
    }
    if !o.dry_run {
        check_new_dir(o.names, o.names.out, &o.out, o.force)?;
    }
    with_threads(o.threads, || {
        let opened = open_models(&recipe.models(), file, reporter)?;
        if form != OutputForm::Full {
            if let Some(done) = as_adapter(&recipe, file, seed, form, &opened, o, reporter)? {
                return Ok(done);
            }
        }
        merge_opened(&recipe, file, seed, &opened, o, reporter)
    })
}

/// The recipe written as an adapter in rank space, or None where `form` is `Auto` and it has
/// no adapter form (a note on stderr says why, unless no model is an adapter at all).
fn as_adapter(
    recipe: &Recipe,
    file: &str,
    seed: u64,
    form: OutputForm,
    opened: &[Input],
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<Option<Outcome>> {
    let no_adapter = opened.iter().all(|i| i.adapter.is_none());
    if no_adapter && form == OutputForm::Auto {
        return Ok(None);
    }
    let prog = build_program(recipe, file, seed, opened)?;
    let method = match affine_method(recipe, &prog, opened) {
        Ok(m) => m,
        Err(why) if form == OutputForm::Adapter => {
            return Err(Error::setting(
                "--as adapter",
                format!("{file}: {why} (use --as full)"),
            ))
        }
        Err(why) => {
            reporter.message(&format!("note: writing a full checkpoint: {why}"));
            return Ok(None);
        }
    };
    check_destination(&o.out, &input_paths(opened))?;
    // The factors' dtype: --dtype, else the recipe's out_dtype or dtype (else f32).
    let dtype = match (o.dtype, recipe.out_dtype.or(recipe.dtype)) {
        (OutDType::Same, Some(d)) => OutDType::To(d),
        (d, _) => d,
    };
    let o = Options {
        out: o.out.clone(),
        report: None,
        dtype,
        ..*o
    };
    super::lora::merge_opened(&method, opened, &o, reporter).map(Some)
}

/// The paths a destination must not overlap: the models' files and the adapters' folders.
fn input_paths(opened: &[Input]) -> Vec<&std::path::Path> {
    let mut paths: Vec<&std::path::Path> = opened.iter().map(|i| i.ckpt.path.as_path()).collect();
    paths.extend(
        opened
            .iter()
            .filter_map(|i| Some(i.adapter.as_ref()?.dir.as_path())),
    );
    paths
}

/// The recipe's program over the opened models (a parameter error names the recipe file).
fn build_program(recipe: &Recipe, file: &str, seed: u64, opened: &[Input]) -> Result<Program> {
    let models: Vec<(String, &crate::io::Checkpoint)> =
        opened.iter().map(|i| (i.spec.clone(), &i.ckpt)).collect();
    program::build(recipe, &models, seed).map_err(|e| match e {
        Error::Setting { field, msg } => Error::setting(format!("{file}: {field}"), msg),
        e => e,
    })
}

/// Opens the recipe's models: checkpoints, PEFT adapter folders (on the base their config
/// names) and mergekit's `BASE+ADAPTER` (that adapter on that base); every one streamed as a
/// checkpoint, an adapter's tensors as base + s·B·A chunk by chunk.
fn open_models(names: &[String], file: &str, reporter: &dyn Reporter) -> Result<Vec<Input>> {
    let hub = crate::hub::HubOptions::from_env();
    let mut opened = Vec::with_capacity(names.len());
    for spec in names {
        let mut input = match crate::merge::recipe::split_lora(spec) {
            Some((base, adapter)) => {
                let refuse = |what: &str| {
                    Error::setting(
                        format!("{file}: {spec}"),
                        format!("in BASE+ADAPTER, {what}"),
                    )
                };
                if !crate::engine::is_adapter_spec(adapter, &hub, reporter) {
                    return Err(refuse(&format!(
                        "'{adapter}' is not a PEFT LoRA adapter (adapter_config.json and \
                         adapter_model.safetensors)"
                    )));
                }
                if crate::engine::is_adapter_spec(base, &hub, reporter) {
                    return Err(refuse(&format!(
                        "the base '{base}' is itself an adapter (give a full model)"
                    )));
                }
                Input::open(adapter.to_string(), "model", Some(base), &hub, reporter)?
            }
            None => Input::open(spec.clone(), "model", None, &hub, reporter)?,
        };
        input.spec = spec.clone();
        for w in &input.ckpt.warnings {
            reporter.message(&format!("warning: {w}"));
        }
        opened.push(input);
    }
    Ok(opened)
}

fn merge_opened(
    recipe: &Recipe,
    file: &str,
    seed: u64,
    opened: &[Input],
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<Outcome> {
    check_destination(&o.out, &input_paths(opened))?;
    let prog = build_program(recipe, file, seed, opened)?;
    let out_dtype = match (o.dtype, recipe.out_dtype.or(recipe.dtype)) {
        (OutDType::Same, Some(d)) => OutDType::To(d),
        (d, _) => d,
    };
    let json = recipe.to_json();
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("warp_version".into(), env!("CARGO_PKG_VERSION").into());
    metadata.insert("warp_recipe".into(), json.to_string());
    let files = extra_files(recipe, &prog, opened, out_dtype, &json)?;
    let job = RecipeJob {
        inputs: opened,
        program: &prog,
        dest: o.out.clone(),
        out_dtype,
        max_shard_size: o.max_shard_size,
        force: o.force,
        budget: o.memory_budget,
        allow_nonfinite: o.allow_nonfinite,
        metadata,
        files,
    };
    let plan = RecipePlan::new(&job)?;
    if o.dry_run {
        return Outcome::planned(&plan, plan.table());
    }
    for n in &plan.notes {
        reporter.message(&format!("note: {n}"));
    }
    reporter.message(&format!(
        "{}: {} model(s) → {} tensors, read {}, write {}, on cpu ({} threads)",
        recipe.merge_method,
        opened.len(),
        prog.ops.len(),
        human_bytes(plan.read_bytes),
        human_bytes(plan.write_bytes),
        rayon::current_num_threads()
    ));
    let started = std::time::Instant::now();
    let dest = run(&job, &plan, reporter)?;
    reporter.message(&format!("done in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(Outcome::Done(Summary {
        outputs: vec![dest],
        report: None,
        bytes_read: plan.read_bytes,
        bytes_written: plan.write_bytes,
    }))
}

/// The companion files that describe the model (from the config model); the others are the
/// tokenizer's (from the tokenizer model).
const MODEL_FILES: &[&str] = &["config.json", "generation_config.json"];

/// config.json (layers renumbered, dtype), generation config, tokenizer files, chat template and
/// the model card.
fn extra_files(
    r: &Recipe,
    prog: &Program,
    opened: &[Input],
    out_dtype: OutDType,
    json: &serde_json::Value,
) -> Result<Vec<ExtraFile>> {
    let mut files = Vec::new();
    let cdir = &opened[prog.config_model].ckpt.dir;
    let tdir = &opened[prog.tokenizer_model].ckpt.dir;
    for name in COMPANION_FILES {
        let from = if MODEL_FILES.contains(name) {
            cdir
        } else {
            tdir
        };
        let p = from.join(name);
        if !p.is_file() {
            continue;
        }
        if *name == "chat_template.jinja" && r.chat_template.as_deref().is_some_and(|t| t != "auto")
        {
            continue;
        }
        let mut bytes = std::fs::read(&p).at(&p)?;
        if *name == "config.json" {
            bytes = config_for(&bytes, prog, opened, out_dtype);
        }
        files.push(ExtraFile {
            name: name.to_string(),
            bytes,
        });
    }
    if let Some(t) = r.chat_template.as_deref().filter(|t| *t != "auto") {
        files.push(ExtraFile {
            name: "chat_template.jinja".into(),
            bytes: t.as_bytes().to_vec(),
        });
    }
    let base = r
        .base_model
        .clone()
        .unwrap_or_else(|| opened[prog.config_model].spec.clone());
    let card = ModelCard {
        title: &format!("merge ({})", r.merge_method),
        base_model: &base,
        method: &r.merge_method,
        recipe: json,
        notes: vec![format!(
            "Made with `warp merge` from this mergekit recipe:\n\n```yaml\n{}\n```",
            r.text.trim_end()
        )],
    };
    files.push(ExtraFile {
        name: "README.md".into(),
        bytes: card.render().into_bytes(),
    });
    Ok(files)
}

/// The config of the output: its layer count and per-layer lists follow the slices, its dtype
/// the output's.
fn config_for(bytes: &[u8], prog: &Program, opened: &[Input], out_dtype: OutDType) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Ok(serde_json::Value::Object(mut cfg)) =
        serde_json::from_slice::<serde_json::Value>(bytes)
    {
        let n = prog.layers.len();
        let changed = cfg.get("num_hidden_layers").and_then(|v| v.as_u64()) != Some(n as u64);
        if changed && n > 0 {
            cfg.insert("num_hidden_layers".into(), n.into());
            if let Some(serde_json::Value::Array(types)) = cfg.get("layer_types").cloned() {
                let mapped: Vec<serde_json::Value> = prog
                    .layers
                    .iter()
                    .map(|&(_, l)| types.get(l).cloned().unwrap_or(serde_json::Value::Null))
                    .collect();
                if mapped.iter().all(|v| !v.is_null()) {
                    cfg.insert("layer_types".into(), mapped.into());
                }
            }
            let _ = opened;
            if let Ok(mut v) = serde_json::to_vec_pretty(&serde_json::Value::Object(cfg)) {
                v.push(b'\n');
                out = v;
            }
        }
    }
    if let OutDType::To(d) = out_dtype {
        if let Some(fixed) = config_with_dtype(&out, d) {
            out = fixed;
        }
    }
    out
}

/// WARP's SLERP of M task vectors (with LITI points) from a recipe: models, base_model (the
/// init), parameters `etas` (a list), `angle` (tensor, layer, global), `lerp_threshold`.
/// Adapters of base_model are merged in rank space as `form` says (as `warp slerp --as`).
fn warp_slerp(
    r: &Recipe,
    file: &str,
    form: OutputForm,
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<Outcome> {
    use crate::merge::{slerp::Slerp, Grouping};
    let bad = |k: &str, m: &str| Error::setting(format!("{file}: parameters.{k}"), m);
    if !r.models_form {
        return Err(Error::setting(
            format!("{file}: slices"),
            "warp_slerp merges whole models: use 'models'",
        ));
    }
    let get = |k: &str| r.params.iter().find(|(n, _)| n == k).map(|(_, s)| s);
    let etas = match get("etas") {
        None => Vec::new(),
        Some(Setting::Gradient(v)) => v
            .iter()
            .map(|s| match s {
                Scalar::Num(x) => Ok(*x),
                _ => Err(bad("etas", "a list of numbers")),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(Setting::Scalar(Scalar::Num(x))) => vec![*x],
        Some(_) => return Err(bad("etas", "a number or a list of numbers")),
    };
    let angle = match get("angle") {
        None => Grouping::Tensor,
        Some(Setting::Scalar(Scalar::Str(s))) => match s.as_str() {
            "tensor" => Grouping::Tensor,
            "layer" => Grouping::Layer,
            "global" => Grouping::Global,
            _ => return Err(bad("angle", "tensor, layer or global")),
        },
        Some(_) => return Err(bad("angle", "tensor, layer or global")),
    };
    let threshold = match get("lerp_threshold") {
        None => crate::merge::slerp::DEFAULT_THRESHOLD,
        Some(Setting::Scalar(Scalar::Num(x))) => *x,
        Some(_) => return Err(bad("lerp_threshold", "a number")),
    };
    let base = r
        .base_model
        .clone()
        .ok_or_else(|| Error::Internal("checked".into()))?;
    let models: Vec<String> = r.slices[0]
        .sources
        .iter()
        .map(|s| s.model.clone())
        .filter(|m| *m != base)
        .collect();
    if let Some(m) = models
        .iter()
        .chain([&base])
        .find(|m| crate::merge::recipe::split_lora(m).is_some())
    {
        return Err(Error::setting(
            format!("{file}: {m}"),
            "warp_slerp takes no BASE+ADAPTER references: give the adapter folders themselves \
             (merged in rank space on base_model)",
        ));
    }
    let method = Slerp::new(models.len(), etas, angle, threshold)?;
    let mut inputs = vec![(base, "init")];
    inputs.extend(models.into_iter().map(|m| (m, "model")));
    if form == OutputForm::Full {
        return super::job::merge(&method, inputs, o, reporter);
    }
    if !o.dry_run {
        check_new_dir(o.names, o.names.out, &o.out, o.force)?;
        if let Some(r) = &o.report {
            check_new_file(o.names, o.names.report, r)?;
        }
    }
    // Opened once: in rank space when the inputs allow it, else the full merge of the same
    // opened inputs.
    with_threads(o.threads, || {
        let opened = super::job::open_inputs(inputs, reporter)?;
        match super::lora::why_not_rank_space(&opened) {
            None => super::lora::merge_opened(&method, &opened, o, reporter),
            Some(why) if form == OutputForm::Adapter => Err(Error::setting(
                "--as adapter",
                format!("{file}: {why} (use --as full)"),
            )),
            Some(why) => {
                if opened.iter().any(|i| i.adapter.is_some()) {
                    reporter.message(&format!("note: writing full checkpoints: {why}"));
                }
                super::job::merge_opened(&method, opened, o, reporter)
            }
        }
    })
}
