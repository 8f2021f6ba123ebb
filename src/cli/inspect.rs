//! `warp inspect` (alias `warp-inspect`): validate a checkpoint completely and list its
//! tensors.

use super::common::out;
use super::progress::Progress;
use super::Ctx;
use crate::io::writer::human_bytes;

/// Validate a checkpoint completely and list its tensors.
///
/// Validate a checkpoint (every shard header, every offset, the index against the shards and its
/// total_size, and every float value: no NaN or Inf) and print one row per tensor: name, dtype,
/// shape, bytes, shard; then totals. Exits non-zero with the reason when anything is wrong.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder (model.safetensors or index + shards), .safetensors file, or hub id org/name[@rev].
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
    let ck = crate::hub::open_checkpoint(&local, &hub, &progress)?;
    ck.check_strict()?;
    crate::io::verify::check_finite_values(&ck, &progress)?;
    let shard_name = |i: usize| {
        ck.shards[i]
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let params: u64 = ck.tensors().iter().map(|t| t.numel()).sum();
    if a.json {
        let v = crate::io::verify::inspect_json(&ck);
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
    out(&s)
}
