//! `warp inspect` (alias `warp-inspect`): validate a checkpoint completely and list its
//! tensors.

use super::common::out;
use super::progress::Progress;
use super::Ctx;
use crate::io::lora::Adapter;
use crate::io::writer::human_bytes;

/// Validate a checkpoint completely and list its tensors.
///
/// Validate a checkpoint (every shard header, every offset, the index against the shards and its
/// total_size, and every float value: no NaN or Inf) and print one row per tensor: name, dtype,
/// shape, bytes, shard; then totals. A PEFT LoRA adapter (adapter_config.json and
/// adapter_model.safetensors) is validated likewise (its factors paired, its config read) and
/// described on a last line: rank, alpha, scale, modules, base. Exits non-zero with the reason
/// when anything is wrong.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder (model.safetensors or index + shards, or a PEFT adapter), .safetensors file, or hub
    /// id org/name[@rev].
    #[arg(value_name = "CKPT")]
    checkpoint: String,
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    let local = crate::builtin::resolve_spec(&a.checkpoint)?;
    let progress = Progress::new(false);
    let hub = crate::hub::HubOptions::from_env();
    let local = crate::hub::resolve_checkpoint(&local, &hub, &progress)?;
    // A PEFT adapter folder (or hub repo): its factors file, and what the adapter is.
    let adapter = if crate::io::lora::is_adapter(&local) {
        Some(crate::io::lora::Adapter::open(&local)?)
    } else {
        None
    };
    let owned;
    let ck = match &adapter {
        Some(ad) => &ad.file,
        None => {
            owned = crate::io::Checkpoint::open(&local)?;
            &owned
        }
    };
    ck.check_strict()?;
    crate::io::verify::check_finite_values(ck, &progress)?;
    let shard_name = |i: usize| {
        ck.shards[i]
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let params: u64 = ck.tensors().iter().map(|t| t.numel()).sum();
    if a.json {
        let mut v = crate::io::verify::inspect_json(ck);
        if let Some(ad) = &adapter {
            v["adapter"] = adapter_json(ad);
        }
        return out(&(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"));
    }
    let mut s = format!(
        "{:<60} {:>8} {:>20} {:>12}  {}\n",
        "tensor", "dtype", "shape", "bytes", "shard"
    );
    for t in ck.tensors() {
        s += &format!(
            "{:<60} {:>8} {:>20} {:>12}  {}\n",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.nbytes,
            shard_name(t.shard)
        );
    }
    s += &format!(
        "{} tensors, {} parameters, {} ({} bytes) in {} shard(s): OK\n",
        ck.tensors().len(),
        params,
        human_bytes(ck.total_bytes()),
        ck.total_bytes(),
        ck.shards.len()
    );
    if let Some(ad) = &adapter {
        s += &adapter_line(ad);
    }
    out(&s)
}

/// What an adapter is, for `--json`: its config's defining fields, its scale, its modules.
fn adapter_json(ad: &Adapter) -> serde_json::Value {
    serde_json::json!({
        "config": ad.config,
        "scale": ad.config.scale(),
        "lora_modules": ad.modules().collect::<Vec<_>>(),
        "full_tensors": ad.has_full_tensors(),
    })
}

/// The table's last line for an adapter.
fn adapter_line(ad: &Adapter) -> String {
    let c = &ad.config;
    let targets = match &c.target_modules {
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Array(v) => v
            .iter()
            .map(|x| x.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    format!(
        "PEFT LoRA adapter: r {}, lora_alpha {}, scale {}{}, {} LoRA modules (targets {}){}; \
         base {}\n",
        c.r,
        c.lora_alpha,
        c.scale(),
        if c.use_rslora { " (rsLoRA)" } else { "" },
        ad.modules().count(),
        targets,
        if ad.has_full_tensors() {
            format!(", full tensors for {}", c.modules_to_save.join(","))
        } else {
            String::new()
        },
        c.base_model_name_or_path
            .as_deref()
            .unwrap_or("(not named)")
    )
}
