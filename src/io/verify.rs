//! Reading every value of a checkpoint (what `warp-inspect` checks beyond the structure).

use super::dtype::first_nonfinite_par;
use super::guard::ReadGuard;
use super::reader::{chunks, Checkpoint, Sweep};
use crate::error::{Error, Result};
use crate::progress::Reporter;

/// Bytes checked at a time per tensor.
const CHUNK: u64 = 16 << 20;

/// Reads every float tensor of `ck` and errors at the first NaN or infinity, naming the file, the
/// tensor and the element. Memory stays bounded (pages are given back behind the reader), and a
/// file truncated or changed meanwhile is an error naming it, not a crash.
pub fn check_finite_values(ck: &Checkpoint, reporter: &dyn Reporter) -> Result<()> {
    let guard = ReadGuard::new(ck.shards.iter().map(|s| (s.mapped(), s.path.as_path())));
    let floats = || ck.tensors().iter().filter(|t| t.dtype.is_float());
    reporter.start("check values", floats().map(|t| t.nbytes).sum());
    for t in floats() {
        let shard = &ck.shards[t.shard];
        let es = t.dtype.size();
        let step = CHUNK / es as u64 * es as u64;
        let mut sweep = Sweep::new(ck, t);
        for range in chunks(t.nbytes, es, step) {
            crate::interrupt::check()?;
            sweep.prefetch(range.end..range.end + step);
            let found = first_nonfinite_par(t.dtype, sweep.bytes(range.clone()));
            guard.check()?;
            if let Some(i) = found {
                return Err(Error::tensor(
                    &shard.path,
                    &t.name,
                    format!(
                        "non-finite value (NaN or Inf) at element {}",
                        range.start / es as u64 + i as u64
                    ),
                ));
            }
            sweep.done(range.end);
            reporter.advance(range.end - range.start);
        }
        sweep.finish();
        shard.check_unchanged()?;
    }
    reporter.finish();
    Ok(())
}

/// What `warp inspect --json` prints about a checkpoint (validated by the caller): its path,
/// layout, shards, every tensor (name, dtype, shape, bytes, shard file), totals, the first
/// shard's metadata and the warnings.
pub fn inspect_json(ck: &Checkpoint) -> serde_json::Value {
    let shard_name = |i: usize| {
        ck.shards[i]
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let params: u64 = ck.tensors().iter().map(|t| t.numel()).sum();
    let tensors: Vec<_> = ck
        .tensors()
        .iter()
        .map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "bytes": t.nbytes, "shard": shard_name(t.shard)}))
        .collect();
    serde_json::json!({
        "path": ck.path, "layout": ck.layout, "shards": ck.shards.len(),
        "tensors": tensors, "total_bytes": ck.total_bytes(), "parameters": params,
        "metadata": ck.shards.first().and_then(|s| s.header.metadata.clone()),
        "warnings": ck.warnings,
    })
}
