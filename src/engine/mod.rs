//! The streaming executor (DESIGN.md §1). For each tensor, in the init model's on-disk order:
//! an optional statistics pass (Gram of the task vectors, f64, fixed block order), then the
//! combine pass writing K outputs — chunk by chunk from the mmapped inputs, with the chunk size
//! derived from the memory budget, so peak memory does not grow with the model.
//!
//! Each output has its own writer thread fed through a bounded channel: computing chunk i+1
//! overlaps writing chunk i. Pages of processed input chunks are released as soon as possible.

pub mod backend;
pub mod cpu;
#[cfg_attr(feature = "cuda", path = "cuda_real.rs")]
pub mod cuda;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

pub use crate::device::Device;
pub use backend::{backend_for, Backend, NonFinite, GRAM_BLOCK};

use crate::error::{Error, Result};
use crate::io::companion::{copy_companions, ModelCard};
use crate::io::writer::{human_bytes, CheckpointWriter, OutTensor, Staging, WriterOptions};
use crate::io::{Checkpoint, DType, OutDType, TensorInfo};
use crate::merge::{group_key, Gram, Grouping, Method};
use crate::progress::Reporter;

/// One input checkpoint of a job, with the name the user gave it and its role in the recipe.
pub struct Input {
    pub spec: String,
    pub role: String,
    pub ckpt: Checkpoint,
}

/// Everything a merge needs. Input 0 is the init/base model: its tensor order, companion files
/// and (by default) dtypes define the outputs.
pub struct MergeJob<'a> {
    pub inputs: &'a [Input],
    pub method: &'a dyn Method,
    pub dest: PathBuf,
    pub out_dtype: OutDType,
    pub max_shard_size: u64,
    pub force: bool,
    /// Working-memory budget in bytes (chunk buffers and mapped input pages).
    pub budget: u64,
    pub allow_nonfinite: bool,
}

/// A tensor as it will be processed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: DType,
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
    /// Estimated peak working memory (buffers + mapped input pages), bytes.
    pub peak_bytes: u64,
}

/// Output buffers alive per output: one being filled, one queued, one being written.
const BUFS_PER_OUTPUT: u64 = 3;
/// Larger chunks buy no throughput (each is already MBs of sequential I/O per input) but cost
/// memory: cap them so the default budget keeps peak RSS well under it.
const MAX_CHUNK_ELEMS: usize = 4 << 20;

impl Plan {
    pub fn new(job: &MergeJob) -> Result<Plan> {
        check_compatible(job.inputs)?;
        let k = job.method.outputs().len();
        let n = job.inputs.len();
        let base = &job.inputs[0].ckpt;
        let needs_gram = job.method.needs_gram();
        let mut tensors = Vec::with_capacity(base.tensors().len());
        let (mut read, mut write) = (0u64, 0u64);
        let (mut max_in, mut max_out) = (1usize, 1usize);
        for t in base.tensors() {
            let combined = t.dtype.is_float();
            let out_dtype = job.out_dtype.resolve(t.dtype);
            let numel = t.numel();
            read += t.nbytes * n as u64;
            write += numel * out_dtype.size() as u64 * k as u64;
            if needs_gram && combined && job.method.grouping() != Grouping::Tensor {
                read += t.nbytes * n as u64;
            }
            max_in = max_in.max(t.dtype.size());
            max_out = max_out.max(out_dtype.size());
            tensors.push(PlannedTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                out_dtype,
                shape: t.shape.clone(),
                numel,
                combined,
                group: (needs_gram && combined).then(|| group_key(&t.name, job.method.grouping())),
            });
        }
        let per_elem = (n * max_in) as u64 + BUFS_PER_OUTPUT * (k * max_out) as u64;
        let chunk_elems = ((job.budget / per_elem) as usize / GRAM_BLOCK * GRAM_BLOCK)
            .clamp(GRAM_BLOCK, MAX_CHUNK_ELEMS);
        // Scratch of the CPU kernels: per thread, N+1 blocks of f32 and M blocks of f64.
        let scratch =
            rayon::current_num_threads() as u64 * (GRAM_BLOCK * (4 * (n + 1) + 8 * n)) as u64;
        // A quarter of the budget holds a whole tensor's inputs between the two passes: with the
        // default 1 GiB that covers every matrix of a 7B-class model but the embeddings.
        let keep_bytes = if needs_gram { job.budget / 4 } else { 0 };
        let largest_kept = base
            .tensors()
            .iter()
            .map(|t| t.nbytes * n as u64)
            .filter(|&b| b <= keep_bytes)
            .max()
            .unwrap_or(0);
        let peak_bytes = chunk_elems as u64 * per_elem + scratch + largest_kept;
        let outputs = output_paths(&job.dest, &job.method.outputs());
        Ok(Plan {
            method: job.method.name().to_string(),
            tensors,
            outputs,
            read_bytes: read,
            write_bytes: write,
            chunk_elems,
            keep_bytes,
            peak_bytes,
        })
    }

    /// A human-readable table of the plan.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<60} {:>6} {:>6} {:>14} {}\n",
            "tensor", "in", "out", "elements", "group"
        );
        for t in &self.tensors {
            s += &format!(
                "{:<60} {:>6} {:>6} {:>14} {}\n",
                t.name,
                t.dtype.name(),
                t.out_dtype.name(),
                t.numel,
                t.group
                    .as_deref()
                    .unwrap_or(if t.combined { "-" } else { "copied" })
            );
        }
        s += &format!(
            "{} tensors; read {}, write {} to {} output(s); chunk {} elements; estimated peak memory {}\n",
            self.tensors.len(),
            human_bytes(self.read_bytes),
            human_bytes(self.write_bytes),
            self.outputs.len(),
            self.chunk_elems,
            human_bytes(self.peak_bytes),
        );
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

/// Inputs must agree on tensor names, shapes and dtypes. Lists the first mismatches.
pub fn check_compatible(inputs: &[Input]) -> Result<()> {
    const SHOW: usize = 10;
    let base = &inputs[0];
    let mut problems = Vec::new();
    for other in &inputs[1..] {
        for t in base.ckpt.tensors() {
            match other.ckpt.get(&t.name) {
                None => problems.push(format!(
                    "{}: tensor '{}' is missing (present in {})",
                    other.spec, t.name, base.spec
                )),
                Some(o) if o.shape != t.shape => problems.push(format!(
                    "{}: tensor '{}' has shape {:?}, but {:?} in {}",
                    other.spec, t.name, o.shape, t.shape, base.spec
                )),
                Some(o) if o.dtype != t.dtype => problems.push(format!(
                    "{}: tensor '{}' is {}, but {} in {}",
                    other.spec, t.name, o.dtype, t.dtype, base.spec
                )),
                _ => {}
            }
        }
        for o in other.ckpt.tensors() {
            if base.ckpt.get(&o.name).is_none() {
                problems.push(format!(
                    "{}: tensor '{}' is not in {}",
                    other.spec, o.name, base.spec
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let total = problems.len();
    let mut msg = format!("the inputs do not match ({total} problem(s)):");
    for p in problems.iter().take(SHOW) {
        msg += "\n  ";
        msg += p;
    }
    if total > SHOW {
        msg += &format!("\n  … and {} more", total - SHOW);
    }
    Err(Error::Mismatch(msg))
}

/// What a run produced.
pub struct Summary {
    pub outputs: Vec<PathBuf>,
    /// Per-tensor and per-group norms and angles of the task vectors (methods with statistics).
    pub report: Option<serde_json::Value>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// Sends chunks to one output's writer thread; buffers come back for reuse.
struct Sink {
    tx: Option<SyncSender<(Vec<u8>, usize)>>,
    back: Receiver<Vec<u8>>,
    handle: Option<JoinHandle<Result<CheckpointWriter>>>,
}

impl Sink {
    fn spawn(mut w: CheckpointWriter) -> Sink {
        let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(1);
        let (back_tx, back) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            for (buf, len) in rx {
                w.write(&buf[..len])?;
                let _ = back_tx.send(buf);
            }
            Ok(w)
        });
        Sink {
            tx: Some(tx),
            back,
            handle: Some(handle),
        }
    }

    fn buffer(&self, len: usize) -> Vec<u8> {
        match self.back.try_recv() {
            Ok(b) if b.len() >= len => b,
            _ => vec![0u8; len],
        }
    }

    fn send(&mut self, buf: Vec<u8>, len: usize) -> Result<()> {
        let ok = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send((buf, len)).is_ok());
        if ok {
            return Ok(());
        }
        // The writer stopped: its error explains why.
        self.finish().map(|_| ())?;
        Err(Error::Usage("internal: writer thread stopped".into()))
    }

    fn finish(&mut self) -> Result<CheckpointWriter> {
        self.tx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Usage("internal: writer thread panicked".into())),
            None => Err(Error::Usage("internal: writer already finished".into())),
        }
    }
}

/// Runs a planned job. All outputs appear at once at the end, or none does.
pub fn run(
    job: &MergeJob,
    plan: &Plan,
    backend: &dyn Backend,
    reporter: &dyn Reporter,
) -> Result<Summary> {
    let method = job.method;
    let names = method.outputs();
    let base = &job.inputs[0];
    // Several outputs live in one staging folder renamed into place at the end.
    let staging = if names.len() > 1 {
        Some(Staging::new(&job.dest, job.force)?)
    } else {
        None
    };
    let targets: Vec<PathBuf> = match &staging {
        Some(s) => names.iter().map(|nm| s.path().join(nm)).collect(),
        None => vec![job.dest.clone()],
    };

    let recipe_inputs: Vec<serde_json::Value> = job
        .inputs
        .iter()
        .map(|i| serde_json::json!({"role": i.role, "path": i.spec, "header_sha256": i.ckpt.fingerprint()}))
        .collect();
    let out_tensors: Vec<OutTensor> = plan
        .tensors
        .iter()
        .map(|t| OutTensor {
            name: t.name.clone(),
            dtype: t.out_dtype,
            shape: t.shape.clone(),
        })
        .collect();

    let mut sinks = Vec::with_capacity(names.len());
    for (k, target) in targets.iter().enumerate() {
        let mut recipe = method.recipe();
        recipe["output"] = names[k].clone().into();
        recipe["inputs"] = recipe_inputs.clone().into();
        recipe["dtype"] = job.out_dtype.to_string().into();
        let mut metadata = BTreeMap::new();
        metadata.insert("warp_version".into(), env!("CARGO_PKG_VERSION").into());
        metadata.insert("warp_recipe".into(), recipe.to_string());
        let opts = WriterOptions {
            max_shard_size: job.max_shard_size,
            force: job.force,
            metadata,
        };
        let mut w = CheckpointWriter::create(target, out_tensors.clone(), &opts)?;
        copy_companions(&base.ckpt.dir, &mut w)?;
        let card = ModelCard {
            title: &format!("{} ({})", names[k], method.name()),
            base_model: &base.spec,
            method: method.name(),
            recipe: &recipe,
            notes: method.notes(k),
        };
        w.add_file("README.md", card.render().as_bytes())?;
        sinks.push(Sink::spawn(w));
    }

    let result = stream(job, plan, backend, reporter, &mut sinks);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            // Dropping the sinks' writers removes their temporary folders.
            for s in &mut sinks {
                let _ = s.finish();
            }
            return Err(e);
        }
    };
    let mut writers = Vec::with_capacity(sinks.len());
    for s in &mut sinks {
        writers.push(s.finish()?);
    }
    for w in writers {
        w.finish()?;
    }
    if let Some(s) = staging {
        s.commit()?;
    }
    Ok(Summary {
        outputs: plan.outputs.clone(),
        report,
        bytes_read: plan.read_bytes,
        bytes_written: plan.write_bytes,
    })
}

/// Per-tensor Gram statistics, and their sums per group.
struct Stats {
    per_tensor: BTreeMap<String, Gram>,
    per_group: BTreeMap<String, Gram>,
}

fn tensor_infos<'a>(job: &'a MergeJob, name: &str) -> Vec<&'a TensorInfo> {
    job.inputs
        .iter()
        .map(|i| i.ckpt.get(name).expect("checked compatible"))
        .collect()
}

fn nonfinite_error(job: &MergeJob, name: &str, nf: NonFinite, offset: u64) -> Error {
    let input = &job.inputs[nf.input];
    let t = input.ckpt.get(name).expect("checked compatible");
    Error::tensor(
        &input.ckpt.shards[t.shard].path,
        name,
        format!(
            "non-finite value (NaN or Inf) at element {} (use --allow-nonfinite to merge anyway)",
            offset + nf.index
        ),
    )
}

/// Starts reading the chunk after `range` in every input, to overlap disk reads with compute.
fn prefetch_next(job: &MergeJob, infos: &[&TensorInfo], range: &std::ops::Range<u64>, step: u64) {
    let end = (range.end + step).min(infos[0].nbytes);
    if range.end < end {
        for (i, ti) in job.inputs.iter().zip(infos) {
            i.ckpt.prefetch(ti, range.end..end);
        }
    }
}

/// The Gram matrix of one tensor over all its chunks.
fn tensor_gram(
    job: &MergeJob,
    plan: &Plan,
    backend: &dyn Backend,
    t: &PlannedTensor,
    reporter: &dyn Reporter,
    release: bool,
) -> Result<Gram> {
    let infos = tensor_infos(job, &t.name);
    let m = job.inputs.len() - 1;
    let p = backend::upper_len(m);
    let es = t.dtype.size() as u64;
    let mut acc = vec![0f64; p];
    let mut partial = Vec::new();
    let step = plan.chunk_elems as u64 * es;
    for range in crate::io::reader::chunks(infos[0].nbytes, es as usize, step) {
        crate::cancel::check()?;
        prefetch_next(job, &infos, &range, step);
        let slices: Vec<&[u8]> = job
            .inputs
            .iter()
            .zip(&infos)
            .map(|(i, ti)| i.ckpt.bytes(ti, range.clone()))
            .collect();
        partial.clear();
        match backend.gram(t.dtype, &slices, &mut partial) {
            Ok(()) => {}
            Err(nf) if !job.allow_nonfinite => {
                return Err(nonfinite_error(job, &t.name, nf, range.start / es))
            }
            Err(_) => partial.clear(),
        }
        // Fold block partials in order: the same sum whatever the chunking or thread count.
        for block in partial.chunks_exact(p.max(1)) {
            for (a, b) in acc.iter_mut().zip(block) {
                *a += b;
            }
        }
        if release {
            for (i, ti) in job.inputs.iter().zip(&infos) {
                i.ckpt.release(ti, range.clone());
            }
        }
        reporter.advance((range.end - range.start) * job.inputs.len() as u64);
    }
    Ok(Gram::from_upper(m, &acc))
}

fn stream(
    job: &MergeJob,
    plan: &Plan,
    backend: &dyn Backend,
    reporter: &dyn Reporter,
    sinks: &mut [Sink],
) -> Result<Option<serde_json::Value>> {
    let method = job.method;
    let needs_gram = method.needs_gram();
    let grouping = method.grouping();
    let mut stats = Stats {
        per_tensor: BTreeMap::new(),
        per_group: BTreeMap::new(),
    };

    // Grouped angles need every tensor of a group before any of it can be combined.
    if needs_gram && grouping != Grouping::Tensor {
        let total: u64 = plan
            .tensors
            .iter()
            .filter(|t| t.combined)
            .map(|t| tensor_infos(job, &t.name)[0].nbytes * job.inputs.len() as u64)
            .sum();
        reporter.start("statistics", total);
        for t in plan.tensors.iter().filter(|t| t.combined) {
            let g = tensor_gram(job, plan, backend, t, reporter, true)?;
            let key = t.group.clone().unwrap_or_default();
            stats
                .per_group
                .entry(key)
                .or_insert_with(|| Gram::zeros(g.m))
                .add(&g);
            stats.per_tensor.insert(t.name.clone(), g);
        }
        reporter.finish();
    }

    let combine_total: u64 = plan
        .tensors
        .iter()
        .map(|t| tensor_infos(job, &t.name)[0].nbytes * job.inputs.len() as u64)
        .sum();
    reporter.start(method.name(), combine_total);
    for t in &plan.tensors {
        let infos = tensor_infos(job, &t.name);
        let es = t.dtype.size() as u64;
        let oes = t.out_dtype.size() as u64;
        // A tensor that fits the keep budget stays mapped between the two passes (read once);
        // larger ones drop each chunk as soon as it is done, so memory stays within the budget.
        let keep = infos.iter().map(|i| i.nbytes).sum::<u64>() <= plan.keep_bytes;
        let coeffs: Option<Vec<Vec<f32>>> = if t.combined {
            let gram = if !needs_gram {
                None
            } else if grouping == Grouping::Tensor {
                let g = tensor_gram(job, plan, backend, t, &crate::progress::Silent, !keep)?;
                stats.per_tensor.insert(t.name.clone(), g.clone());
                stats.per_group.insert(t.name.clone(), g.clone());
                Some(g)
            } else {
                stats
                    .per_group
                    .get(t.group.as_deref().unwrap_or_default())
                    .cloned()
            };
            let rows = method.coefficients(gram.as_ref())?;
            Some(
                rows.iter()
                    .map(|r| r.iter().map(|&c| c as f32).collect())
                    .collect(),
            )
        } else {
            None
        };
        // Rows that are exactly one input in the same dtype are copied bit for bit.
        let copy_of: Vec<Option<usize>> = match &coeffs {
            None => vec![Some(0); sinks.len()],
            Some(rows) => rows
                .iter()
                .map(|r| {
                    let ones: Vec<usize> = (0..r.len()).filter(|&i| r[i] != 0.0).collect();
                    (ones.len() == 1 && r[ones[0]] == 1.0 && t.dtype == t.out_dtype)
                        .then(|| ones[0])
                })
                .collect(),
        };
        let check_finite = t.combined && !needs_gram && !job.allow_nonfinite;
        // The rows that need arithmetic (the others are copies), fixed for the whole tensor.
        let compute_rows: Vec<Vec<f32>> = match &coeffs {
            Some(rows) => (0..rows.len())
                .filter(|&k| copy_of[k].is_none())
                .map(|k| rows[k].clone())
                .collect(),
            None => Vec::new(),
        };
        let step = plan.chunk_elems as u64 * es;
        for range in crate::io::reader::chunks(infos[0].nbytes, es as usize, step) {
            crate::cancel::check()?;
            // In the combine pass of a kept tensor the pages are already resident.
            if !(keep && needs_gram) {
                prefetch_next(job, &infos, &range, step);
            }
            let slices: Vec<&[u8]> = job
                .inputs
                .iter()
                .zip(&infos)
                .map(|(i, ti)| i.ckpt.bytes(ti, range.clone()))
                .collect();
            let elems = ((range.end - range.start) / es) as usize;
            let out_len = elems * oes as usize;
            if !t.combined {
                if let Some(j) = (1..slices.len()).find(|&j| slices[j] != slices[0]) {
                    let inp = &job.inputs[j];
                    return Err(Error::tensor(
                        &inp.ckpt.shards[infos[j].shard].path,
                        &t.name,
                        format!("{} tensor differs from {}: non-float tensors cannot be merged and must be equal", t.dtype, job.inputs[0].spec),
                    ));
                }
            }
            let mut bufs: Vec<Vec<u8>> = sinks.iter().map(|s| s.buffer(out_len)).collect();
            for (buf, c) in bufs.iter_mut().zip(&copy_of) {
                if let Some(i) = c {
                    buf[..out_len].copy_from_slice(slices[*i]);
                }
            }
            if !compute_rows.is_empty() || check_finite {
                let mut outs: Vec<&mut [u8]> = bufs
                    .iter_mut()
                    .zip(&copy_of)
                    .filter(|(_, c)| c.is_none())
                    .map(|(b, _)| &mut b[..out_len])
                    .collect();
                if let Err(nf) = backend.combine(
                    t.dtype,
                    &slices,
                    &compute_rows,
                    t.out_dtype,
                    &mut outs,
                    check_finite,
                ) {
                    return Err(nonfinite_error(job, &t.name, nf, range.start / es));
                }
            }
            if !keep || !needs_gram {
                for (i, ti) in job.inputs.iter().zip(&infos) {
                    i.ckpt.release(ti, range.clone());
                }
            }
            for (s, b) in sinks.iter_mut().zip(bufs) {
                s.send(b, out_len)?;
            }
            reporter.advance((range.end - range.start) * job.inputs.len() as u64);
        }
        if keep && needs_gram {
            for (i, ti) in job.inputs.iter().zip(&infos) {
                i.ckpt.release(ti, 0..ti.nbytes);
            }
        }
    }
    reporter.finish();
    Ok(needs_gram.then(|| report_json(job, &stats)))
}

fn report_json(job: &MergeJob, stats: &Stats) -> serde_json::Value {
    let threshold = job
        .method
        .recipe()
        .get("lerp_threshold")
        .and_then(|v| v.as_f64())
        .unwrap_or(crate::merge::slerp::DEFAULT_THRESHOLD);
    let entry = |g: &Gram| {
        let mut v = g.to_json();
        let (a, steps) = crate::merge::slerp::slerp_weights(g, threshold);
        v["coefficients"] = serde_json::json!(a);
        v["steps"] = steps
            .iter()
            .map(|s| serde_json::Value::String(format!("{s:?}")))
            .collect();
        v
    };
    let tensors: serde_json::Map<String, serde_json::Value> = stats
        .per_tensor
        .iter()
        .map(|(k, g)| (k.clone(), entry(g)))
        .collect();
    // Per transformer block, whatever the grouping used for the merge.
    let mut layers: BTreeMap<String, Gram> = BTreeMap::new();
    let mut global: Option<Gram> = None;
    for (name, g) in &stats.per_tensor {
        if let Some(l) = crate::merge::layer_of(name) {
            layers.entry(l).or_insert_with(|| Gram::zeros(g.m)).add(g);
        }
        global.get_or_insert_with(|| Gram::zeros(g.m)).add(g);
    }
    let inputs: Vec<&str> = job.inputs.iter().map(|i| i.spec.as_str()).collect();
    serde_json::json!({
        "inputs": inputs,
        "angle": job.method.grouping(),
        "tensors": tensors,
        "layers": layers.iter().map(|(k, g)| (k.clone(), entry(g))).collect::<serde_json::Map<_, _>>(),
        "global": global.as_ref().map(entry),
    })
}
