//! What a job will do before doing it: the tensors, the bytes, and the memory model that turns
//! the working-memory budget into a chunk size (`--dry-run` prints it).

use std::path::{Path, PathBuf};

use super::backend::GRAM_BLOCK;
use super::{check_compatible, MergeJob};
use crate::error::Result;
use crate::io::reader::RELEASE_GRAIN;
use crate::io::writer::{human_bytes, WRITE_BUF};
use crate::io::DType;
use crate::merge::{group_key, Grouping};

/// A tensor as it will be processed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedTensor {
    pub name: String,
    /// The dtype in the init/base model (input 0).
    pub dtype: DType,
    /// The dtype in every input, in input order (float dtypes may differ).
    pub in_dtypes: Vec<DType>,
    pub out_dtype: DType,
    pub shape: Vec<usize>,
    pub numel: u64,
    /// Float tensors are combined; others must be equal in every input and are copied.
    pub combined: bool,
    /// The group whose statistics drive its coefficients (when the method has statistics).
    pub group: Option<String>,
}

/// What a job will do, before doing it (`--dry-run`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub method: String,
    pub tensors: Vec<PlannedTensor>,
    pub outputs: Vec<PathBuf>,
    /// Bytes read from the inputs, counting a statistics pre-pass when there is one.
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub chunk_elems: usize,
    /// Tensors whose inputs total at most this many bytes keep their pages mapped between the
    /// statistics and combine passes (read once); larger ones are re-read from the page cache.
    pub keep_bytes: u64,
    /// The working-memory budget in force: the one asked for, or the floor when that is less.
    pub budget: u64,
    /// The least working memory this job can run in (the smallest chunk, the page margins of
    /// the inputs, the write buffers and the kernels' scratch).
    pub floor_bytes: u64,
    /// Bytes buffered per output shard file before each write.
    pub write_buffer: usize,
    /// Estimated peak working memory (buffers + mapped input pages), bytes.
    pub peak_bytes: u64,
    /// Estimated peak memory of the whole process: the working memory plus [`PROGRAM_BYTES`].
    pub process_bytes: u64,
    /// Things the user should know before the run (a budget raised to the floor).
    pub notes: Vec<String>,
}

/// Output buffers alive per output: one being filled, one queued, one being written.
pub(super) const BUFS_PER_OUTPUT: u64 = 3;
/// Larger chunks buy no throughput (each is already MBs of sequential I/O per input) but cost
/// memory: cap them so the default budget keeps peak RSS well under it.
const MAX_CHUNK_ELEMS: usize = 4 << 20;
/// The smallest chunk: below it, per-chunk costs (thread hand-offs, system calls) dominate while
/// the memory it saves is small next to the inputs' page margins.
const MIN_CHUNK_ELEMS: usize = 8 * GRAM_BLOCK;
/// The smallest write buffer per output shard file (small budgets).
const MIN_WRITE_BUF: u64 = 64 << 10;
/// Memory of the program itself, outside the working memory: code, libraries, thread stacks,
/// the parsed headers. Measured at about 5 MiB (peak RSS of a `--dry-run` of three ~500 MB
/// inputs, x86-64 Linux); rounded up for the estimate.
pub const PROGRAM_BYTES: u64 = 8 << 20;

/// The memory model of a job: how the budget is split and what the peak will be.
struct Memory {
    budget: u64,
    floor: u64,
    chunk_elems: usize,
    keep_bytes: u64,
    write_buffer: u64,
    peak: u64,
}

impl Memory {
    /// `n` inputs, `k` outputs, the largest input/output element sizes, the tensors' input
    /// bytes (all inputs together) for the keep rule. Working memory is:
    /// - mapped input pages: per input the current chunk plus a release grain on each side
    ///   (pages are given back in whole grains, see `io::reader::RELEASE_GRAIN`);
    /// - output buffers: [`BUFS_PER_OUTPUT`] chunks per output, and a write buffer per output;
    /// - the CPU kernels' per-thread scratch;
    /// - for methods with statistics, the inputs of the largest tensor that fits a quarter of
    ///   what remains, kept mapped between the two passes.
    fn new(
        requested: u64,
        (n, k): (usize, usize),
        (max_in, max_out): (usize, usize),
        (extra_fixed, extra_per_elem): (u64, u64),
        threads: usize,
        keeps: bool,
        tensor_bytes: impl Iterator<Item = u64>,
    ) -> Memory {
        let (n64, k64) = (n as u64, k as u64);
        let per_elem =
            n64 * max_in as u64 + BUFS_PER_OUTPUT * k64 * max_out as u64 + extra_per_elem;
        let scratch = threads as u64 * (GRAM_BLOCK * (4 * (n + 1) + 8 * n)) as u64 + extra_fixed;
        let fixed_with = |write_buffer: u64| n64 * 2 * RELEASE_GRAIN + k64 * write_buffer + scratch;
        let floor = fixed_with(MIN_WRITE_BUF) + MIN_CHUNK_ELEMS as u64 * per_elem;
        let budget = requested.max(floor);
        // Larger write buffers (fewer system calls) from what the budget has beyond the floor,
        // at most half of that excess and 1/32 of the budget.
        let excess = budget - floor;
        let write_buffer = (MIN_WRITE_BUF + excess / (2 * k64))
            .min(budget / (32 * k64))
            .clamp(MIN_WRITE_BUF, WRITE_BUF as u64);
        let fixed = fixed_with(write_buffer);
        let avail = budget - fixed;
        // A quarter holds a whole tensor's inputs between the two passes: with the default
        // 1 GiB that covers every matrix of a 7B-class model but the embeddings.
        let keep_bytes = if keeps { avail / 4 } else { 0 };
        let chunk_elems = (((avail - keep_bytes) / per_elem) as usize / GRAM_BLOCK * GRAM_BLOCK)
            .clamp(MIN_CHUNK_ELEMS, MAX_CHUNK_ELEMS);
        let largest_kept = tensor_bytes.filter(|&b| b <= keep_bytes).max().unwrap_or(0);
        Memory {
            budget,
            floor,
            chunk_elems,
            keep_bytes,
            write_buffer,
            peak: fixed + chunk_elems as u64 * per_elem + largest_kept,
        }
    }
}

impl Plan {
    pub fn new(job: &MergeJob) -> Result<Plan> {
        check_compatible(job.inputs)?;
        job.method.validate(job.inputs.len())?;
        let k = job.method.outputs().len();
        let n = job.inputs.len();
        let base = &job.inputs[0].ckpt;
        let needs_gram = job.method.needs_gram();
        let mut tensors = Vec::with_capacity(base.tensors().len());
        let (mut read, mut write) = (0u64, 0u64);
        let (mut max_in, mut max_out) = (1usize, 1usize);
        let mut all_bytes = Vec::with_capacity(base.tensors().len());
        let mut factor_bytes = 0u64;
        for t in base.tensors() {
            // Outputs default to the dtype of input 0's (base) model, also where an adapter
            // replaces or changes the tensor.
            let combined = t.dtype.is_float();
            let out_dtype = job.out_dtype.resolve(t.dtype);
            let numel = t.numel();
            // Checked compatible: every input has the tensor.
            let srcs: Vec<_> = job
                .inputs
                .iter()
                .filter_map(|i| i.source(&t.name))
                .collect();
            let ins: Vec<_> = srcs.iter().map(|s| s.info).collect();
            // An adapter's factors are held whole while its tensor is read (A and B read, then
            // the scaled and transposed copies the kernel uses: at most twice their f32 size).
            let lora: u64 = job
                .inputs
                .iter()
                .filter_map(|i| i.adapter.as_ref().and_then(|a| a.factor_bytes(&t.name)))
                .sum();
            factor_bytes = factor_bytes.max(2 * lora);
            let bytes: u64 = ins.iter().map(|i| i.nbytes).sum();
            all_bytes.push(bytes);
            read += bytes;
            write += numel * out_dtype.size() as u64 * k as u64;
            if needs_gram && combined && job.method.grouping() != Grouping::Tensor {
                read += bytes;
            }
            max_in = ins.iter().map(|i| i.dtype.size()).fold(max_in, usize::max);
            max_out = max_out.max(out_dtype.size());
            tensors.push(PlannedTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                in_dtypes: srcs.iter().map(|s| s.dtype()).collect(),
                out_dtype,
                shape: t.shape.clone(),
                numel,
                combined,
                group: (needs_gram && combined).then(|| group_key(&t.name, job.method.grouping())),
            });
        }
        // Each adapter input computes its low-rank tensors into an f32 chunk of its own.
        let adapters = job.inputs.iter().filter(|i| i.adapter.is_some()).count();
        let mem = Memory::new(
            job.budget,
            (n, k),
            (max_in, max_out),
            (factor_bytes, 4 * adapters as u64),
            rayon::current_num_threads(),
            // Only per-tensor statistics keep a tensor mapped between its two passes (grouped
            // ones make a statistics pass over everything first).
            needs_gram && job.method.grouping() == Grouping::Tensor,
            all_bytes.into_iter(),
        );
        let mut notes = Vec::new();
        if job.budget < mem.floor {
            notes.push(format!(
                "memory budget {} is below the least this job can run in ({} for {n} input(s) \
                 and {k} output(s)): using {}",
                human_bytes(job.budget),
                human_bytes(mem.floor),
                human_bytes(mem.floor)
            ));
        }
        Ok(Plan {
            method: job.method.name().to_string(),
            tensors,
            outputs: output_paths(&job.dest, &job.method.outputs()),
            read_bytes: read,
            write_bytes: write,
            chunk_elems: mem.chunk_elems,
            keep_bytes: mem.keep_bytes,
            budget: mem.budget,
            floor_bytes: mem.floor,
            write_buffer: mem.write_buffer as usize,
            peak_bytes: mem.peak,
            process_bytes: mem.peak + PROGRAM_BYTES,
            notes,
        })
    }

    /// A human-readable table of the plan.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<60} {:>6} {:>6} {:>14} {}\n",
            "tensor", "in", "out", "elements", "group"
        );
        for t in &self.tensors {
            // Inputs of several dtypes show as "mixed" (the JSON plan lists them).
            let mixed = t.in_dtypes.iter().any(|&d| d != t.dtype);
            s += &format!(
                "{:<60} {:>6} {:>6} {:>14} {}\n",
                t.name,
                if mixed { "mixed" } else { t.dtype.name() },
                t.out_dtype.name(),
                t.numel,
                t.group
                    .as_deref()
                    .unwrap_or(if t.combined { "-" } else { "copied" })
            );
        }
        s += &format!(
            "{} tensors; read {}, write {} to {} output(s); chunk {} elements; memory budget {} \
             (least possible {}); estimated peak memory {} ({} working memory + {} for the \
             program)\n",
            self.tensors.len(),
            human_bytes(self.read_bytes),
            human_bytes(self.write_bytes),
            self.outputs.len(),
            self.chunk_elems,
            human_bytes(self.budget),
            human_bytes(self.floor_bytes),
            human_bytes(self.process_bytes),
            human_bytes(self.peak_bytes),
            human_bytes(PROGRAM_BYTES),
        );
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        for o in &self.outputs {
            s += &format!("output: {}\n", o.display());
        }
        s
    }
}

fn output_paths(dest: &Path, names: &[String]) -> Vec<PathBuf> {
    if names.len() == 1 {
        vec![dest.to_path_buf()]
    } else {
        names.iter().map(|n| dest.join(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(budget: u64) -> Memory {
        // Three bf16 inputs, one bf16 output, two threads, SLERP (keeps), one 190 MB tensor.
        Memory::new(
            budget,
            (3, 1),
            (2, 2),
            (0, 0),
            2,
            true,
            [190_000_000u64, 40_000_000].into_iter(),
        )
    }

    #[test]
    fn budgets_below_the_floor_run_at_the_floor() {
        let floor = mem(1).floor;
        for b in [1, 64_000, 1_000_000, floor] {
            let m = mem(b);
            assert_eq!((m.budget, m.chunk_elems), (floor, MIN_CHUNK_ELEMS), "{b}");
            assert!(m.peak <= floor, "{b}: {} > {floor}", m.peak);
        }
        // The floor is what the page margins, buffers and scratch need, nothing more.
        assert!(floor < 16 << 20, "{floor}");
    }

    #[test]
    fn the_peak_stays_within_the_budget_above_the_floor() {
        let floor = mem(1).floor;
        for b in [
            floor + 1,
            16u64 << 20,
            64 << 20,
            256 << 20,
            1 << 30,
            8 << 30,
        ] {
            let m = mem(b);
            assert_eq!(m.budget, b);
            assert!(m.peak <= b, "{b}: peak {}", m.peak);
            assert!(m.chunk_elems % GRAM_BLOCK == 0 && m.chunk_elems <= MAX_CHUNK_ELEMS);
        }
        // The default budget keeps the 190 MB tensor mapped between the passes.
        assert!(mem(1 << 30).peak > 190_000_000);
        assert!(mem(64 << 20).peak < 64 << 20);
    }
}
