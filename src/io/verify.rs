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
