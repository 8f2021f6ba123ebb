//! `warp extract-lora` (alias `warp-extract-lora`): a PEFT LoRA adapter approximating a full
//! fine-tune's task vector by truncated SVD per module ([`crate::merge::extract_lora`]).

use std::path::{Path, PathBuf};

use super::common::{check_new_dir, check_new_file, out, parse_threads};
use super::progress::Progress;
use super::Ctx;
use crate::error::{Error, Result};
use crate::io::writer::parse_size;
use crate::io::DType;
use crate::merge::extract_lora::{extract, ExtractJob, Extracted};

/// Extract a LoRA adapter from a full fine-tune: truncated SVD of its task vector per module.
///
/// Writes a PEFT adapter (adapter_config.json, adapter_model.safetensors, README.md) of rank R
/// whose B·A approximates δ = MODEL − BASE for every target module, by randomised subspace
/// iteration in f64, reading δ in blocks of rows within the memory budget. A task vector of rank
/// ≤ R is reproduced to float precision; otherwise the captured energy Σσ²(top R) / ‖δ‖² is
/// printed per tensor. Tensors that differ from the base but are not targets (embeddings,
/// norms, …) are listed: the adapter does not hold them.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The fine-tuned model (a checkpoint folder, .safetensors file or hub id).
    #[arg(value_name = "MODEL")]
    model: String,
    /// The base model MODEL was fine-tuned from (named in the adapter's config).
    #[arg(long, value_name = "BASE")]
    init: String,
    /// The adapter's rank R.
    #[arg(long, value_name = "R")]
    rank: usize,
    /// Output folder (created; must not exist unless --force).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Replace an existing output folder (only once the new one is complete).
    #[arg(long)]
    force: bool,
    /// Modules to decompose, PEFT-style: a module whose path is NAME or ends with `.NAME`
    /// (repeatable or comma-separated, e.g. q_proj,v_proj). Default: every 2-D weight inside
    /// the numbered blocks (`layers.N.…`, `h.N.…`); embeddings are not supported.
    #[arg(long = "target-modules", value_delimiter = ',', value_name = "NAME")]
    target_modules: Vec<String>,
    /// The weights are stored [in, out] (GPT-2's Conv1D). Default: on for model_type gpt2 in
    /// the base's config.json.
    #[arg(long)]
    fan_in_fan_out: bool,
    /// Rounds of subspace iteration (more: closer to the exact truncated SVD of a full-rank δ;
    /// each costs two passes over δ).
    #[arg(long, default_value_t = 2, value_name = "N")]
    power_iters: usize,
    /// Extra random directions beyond R.
    #[arg(long, default_value_t = 10, value_name = "P")]
    oversample: usize,
    /// Dtype of the stored factors: f32 (default), bf16, f16 or f64.
    #[arg(long, default_value = "f32", value_parser = parse_factor_dtype)]
    dtype: DType,
    /// Memory for the blocks of rows of δ being read (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    memory_budget: u64,
    /// Number of CPU threads (default: all cores).
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
    /// Write the per-tensor norms, captured energy and singular values (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// No progress and no per-tensor lines on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_factor_dtype(s: &str) -> std::result::Result<DType, String> {
    match s.parse::<crate::io::OutDType>()? {
        crate::io::OutDType::To(d) => Ok(d),
        crate::io::OutDType::Same => Err("give a dtype: f32, bf16, f16 or f64".into()),
    }
}

pub fn run(a: &Args, _: &Ctx) -> Result<()> {
    check_new_dir("-o", &a.output, a.force)?;
    if let Some(r) = &a.report {
        check_new_file("--report", r)?;
    }
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::Internal(format!("thread pool of {n}: {e}")))?;
    }
    let progress = Progress::new(a.quiet);
    let hub = crate::hub::HubOptions::from_env();
    let open = |spec: &str, flag: &str| -> Result<crate::io::Checkpoint> {
        let local = crate::builtin::resolve_spec(spec)?;
        let local = crate::hub::resolve_checkpoint(&local, &hub, &progress)?;
        if crate::io::lora::is_adapter(&local) {
            return Err(Error::Usage(format!(
                "{flag} {spec}: is a LoRA adapter; extract-lora reads full checkpoints"
            )));
        }
        crate::io::Checkpoint::open(local)
    };
    let (model, base) = (open(&a.model, "MODEL")?, open(&a.init, "--init")?);
    let paths = [model.path.as_path(), base.path.as_path()];
    crate::io::writer::check_destination(&a.output, &paths)?;
    let base_name = if crate::io::companion::looks_like_hub_id(&a.init) {
        a.init.clone()
    } else {
        let d = std::fs::canonicalize(&base.dir).unwrap_or_else(|_| base.dir.clone());
        d.to_string_lossy().into_owned()
    };
    let job = ExtractJob {
        model: &model,
        base: &base,
        base_name,
        rank: a.rank,
        target_modules: a.target_modules.clone(),
        fan_in_fan_out: a.fan_in_fan_out || model_type(&base.dir).as_deref() == Some("gpt2"),
        power_iters: a.power_iters,
        oversample: a.oversample,
        budget: a.memory_budget,
        dest: a.output.clone(),
        force: a.force,
        dtype: a.dtype,
    };
    let x = extract(&job, &progress)?;
    if !a.quiet {
        eprint!("{}", summary(&x));
    }
    if let Some(r) = &a.report {
        let text = serde_json::to_string_pretty(&x).map_err(|e| Error::Internal(e.to_string()))?;
        crate::io::write_file_atomic(r, (text + "\n").as_bytes())?;
    }
    out(&format!("{}\n", a.output.display()))
}

/// `model_type` of the config.json in `dir`, if any.
fn model_type(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("model_type")?.as_str().map(String::from)
}

/// The stderr table: per tensor ‖δ‖ and the energy the rank captures; what is left out.
fn summary(x: &Extracted) -> String {
    let mut s = format!("rank {}: per tensor ‖δ‖ and captured energy\n", x.rank);
    let (mut total, mut kept) = (0f64, 0f64);
    for (name, t) in &x.tensors {
        s += &format!(
            "  {name:<48} {:>10.4e} {:>8.4}%\n",
            t.norm,
            100.0 * t.captured
        );
        total += t.norm * t.norm;
        kept += t.captured * t.norm * t.norm;
    }
    let all = if total > 0.0 { kept / total } else { 1.0 };
    s += &format!(
        "  {:<48} {:>10.4e} {:>8.4}%\n",
        "all modules",
        total.sqrt(),
        100.0 * all
    );
    if !x.not_captured.is_empty() {
        let shown: Vec<&str> = x.not_captured.iter().take(5).map(String::as_str).collect();
        s += &format!(
            "note: {} tensor(s) differ from the base but are not LoRA targets, so the adapter \
             does not hold them: {}{}\n",
            x.not_captured.len(),
            shown.join(", "),
            if x.not_captured.len() > 5 {
                ", …"
            } else {
                ""
            }
        );
    }
    s
}
