//! The streaming passes: for each tensor, in the init model's on-disk order, an optional
//! statistics pass (Gram of the task vectors, f64, fixed block order), then the combine pass
//! writing K outputs, chunk by chunk from the mapped inputs.
//!
//! Every chunk is checked before anything computed from it leaves this module: its input pages
//! could all be read (`io::guard`), the inputs hold no NaN/Inf (unless allowed), and so do the
//! outputs. Every input file is checked unchanged since it was opened after each tensor, and
//! once more before the outputs are renamed into place (`Shard::check_unchanged`).

use std::collections::BTreeMap;
use std::ops::Range;

use super::backend::{self, Backend, NonFinite};
use super::plan::{Plan, PlannedTensor};
use super::sink::Sink;
use super::MergeJob;
use crate::error::{Error, Result};
use crate::io::dtype::first_nonfinite_par;
use crate::io::guard::ReadGuard;
use crate::io::lora::Factors;
use crate::io::reader::chunks;
use crate::io::{DType, Sweep, TensorInfo};
use crate::merge::{Gram, Grouping};
use crate::progress::{Reporter, Silent};

/// What every pass needs.
pub(super) struct Ctx<'a> {
    pub job: &'a MergeJob<'a>,
    pub plan: &'a Plan,
    pub backend: &'a dyn Backend,
    pub reporter: &'a dyn Reporter,
    pub guard: &'a ReadGuard,
}

/// Per-tensor Gram statistics, and their sums per group.
#[derive(Default)]
struct Stats {
    per_tensor: BTreeMap<String, Gram>,
    per_group: BTreeMap<String, Gram>,
}

/// Runs the passes over every tensor, feeding `sinks`; returns the report of a method with
/// statistics.
pub(super) fn stream(cx: &Ctx, sinks: &mut [Sink]) -> Result<Option<serde_json::Value>> {
    let method = cx.job.method;
    let needs_gram = method.needs_gram();
    let mut stats = Stats::default();
    let per_tensor = method.grouping() == Grouping::Tensor;
    // Grouped angles need every tensor of a group before any of it can be combined.
    if needs_gram && !per_tensor {
        statistics_pass(cx, &mut stats)?;
    }
    cx.reporter
        .start(method.name(), input_bytes(cx, cx.plan.tensors.iter()));
    for t in &cx.plan.tensors {
        let ins = TensorInputs::new(cx.job, &t.name)?;
        // A tensor that fits the keep budget stays mapped between its two passes (read once);
        // larger ones drop each chunk as soon as it is done, so memory stays within the budget.
        let keep = needs_gram && per_tensor && ins.bytes() <= cx.plan.keep_bytes;
        let rows = coefficient_rows(cx, t, keep, &mut stats)?;
        combine_tensor(cx, t, ins, &rows, keep, sinks)?;
    }
    cx.reporter.finish();
    Ok(needs_gram.then(|| report(cx, &stats)))
}

/// Input bytes of `tensors` over all inputs (what the progress bar counts).
fn input_bytes<'a>(cx: &Ctx, tensors: impl Iterator<Item = &'a PlannedTensor>) -> u64 {
    tensors
        .map(|t| {
            cx.job
                .inputs
                .iter()
                .filter_map(|i| i.ckpt.get(&t.name))
                .map(|ti| ti.nbytes)
                .sum::<u64>()
        })
        .sum()
}

/// The Gram matrix of every combined tensor, summed per group, before any output is written.
fn statistics_pass(cx: &Ctx, stats: &mut Stats) -> Result<()> {
    let combined = || cx.plan.tensors.iter().filter(|t| t.combined);
    cx.reporter.start("statistics", input_bytes(cx, combined()));
    for t in combined() {
        let g = tensor_gram(cx, t, cx.reporter, true)?;
        let key = t.group.clone().unwrap_or_default();
        stats
            .per_group
            .entry(key)
            .or_insert_with(|| Gram::zeros(g.m))
            .add(&g);
        stats.per_tensor.insert(t.name.clone(), g);
    }
    cx.reporter.finish();
    Ok(())
}

/// One tensor's slices in every input, read front to back. Ranges are in elements: the inputs
/// may hold the tensor in different (float) dtypes, hence different byte ranges.
struct TensorInputs<'a> {
    infos: Vec<&'a TensorInfo>,
    sweeps: Vec<Sweep<'a>>,
    /// The dtype the kernels read from each input (f32 where a low-rank delta is added).
    dtypes: Vec<DType>,
    /// Per input: an adapter's low-rank delta of this tensor, and the f32 chunk computed
    /// from it by [`TensorInputs::load`].
    deltas: Vec<Option<(Factors, Vec<u8>)>>,
    /// Per input: the file holding the tensor (its base's, or the adapter's).
    shards: Vec<&'a crate::io::reader::Shard>,
    job: &'a MergeJob<'a>,
}

impl<'a> TensorInputs<'a> {
    fn new(job: &'a MergeJob<'a>, name: &str) -> Result<TensorInputs<'a>> {
        let n = job.inputs.len();
        let (mut infos, mut sweeps, mut dtypes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut deltas, mut shards) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in job.inputs {
            let s = i.source(name).ok_or_else(|| {
                Error::Internal(format!(
                    "tensor '{name}' missing from checked input {}",
                    i.spec
                ))
            })?;
            infos.push(s.info);
            sweeps.push(Sweep::new(s.ckpt, s.info));
            dtypes.push(s.dtype());
            shards.push(&s.ckpt.shards[s.info.shard]);
            deltas.push(match (&i.adapter, s.low_rank) {
                (Some(a), true) => Some((a.factors(name)?, Vec::new())),
                _ => None,
            });
        }
        Ok(TensorInputs {
            infos,
            sweeps,
            dtypes,
            deltas,
            shards,
            job,
        })
    }

    /// Data bytes of the tensor, all inputs together.
    fn bytes(&self) -> u64 {
        self.infos.iter().map(|t| t.nbytes).sum()
    }

    /// Bytes of the elements `range` over all inputs (what the progress bar counts).
    fn chunk_bytes(&self, range: &Range<u64>) -> u64 {
        let elems = range.end - range.start;
        self.infos
            .iter()
            .map(|t| elems * t.dtype.size() as u64)
            .sum()
    }

    fn numel(&self) -> u64 {
        self.infos[0].numel()
    }

    /// Computes the elements `range` of every input with a low-rank delta (base + s·B·A, f32),
    /// for [`TensorInputs::slices`].
    fn load(&mut self, range: &Range<u64>) {
        for ((d, s), t) in self.deltas.iter_mut().zip(&self.sweeps).zip(&self.infos) {
            if let Some((f, buf)) = d {
                let es = t.dtype.size() as u64;
                buf.resize(((range.end - range.start) * 4) as usize, 0);
                f.apply(
                    t.dtype,
                    s.bytes(range.start * es..range.end * es),
                    range.start,
                    buf,
                );
            }
        }
    }

    /// The elements `range` of every input, as bytes of the dtype the kernels read
    /// (`load(range)` first when there are low-rank deltas).
    fn slices(&self, range: &Range<u64>) -> Vec<&[u8]> {
        super::input::range_bytes(&self.sweeps, &self.infos, &self.deltas, range)
    }

    /// Starts reading the `step` elements after `range` in every input, to overlap disk reads
    /// with compute.
    fn prefetch_next(&mut self, range: &Range<u64>, step: u64) {
        for (s, t) in self.sweeps.iter_mut().zip(&self.infos) {
            let es = t.dtype.size() as u64;
            s.prefetch(range.end * es..(range.end + step) * es);
        }
    }

    /// Every element before `upto` is processed: its pages may go.
    fn done(&mut self, upto: u64) {
        for (s, t) in self.sweeps.iter_mut().zip(&self.infos) {
            s.done(upto * t.dtype.size() as u64);
        }
    }

    fn finish(&mut self) {
        for s in &mut self.sweeps {
            s.finish();
        }
    }

    /// Whether every page just read could be read (a file truncated under its mapping reads as
    /// zeros and is reported here): checked after each chunk, before its results are used.
    fn check_readable(&self, guard: &ReadGuard) -> Result<()> {
        guard.check()
    }

    /// Whether no input file was changed in place since it was opened. Checked after each
    /// tensor, and for every file before the outputs are renamed into place: a change before a
    /// file's last read is always seen (its results are then discarded); checking sooner only
    /// stops a doomed run earlier.
    fn check_unchanged(&self) -> Result<()> {
        for s in &self.shards {
            s.check_unchanged()?;
        }
        for i in self.job.inputs {
            if let Some(a) = &i.adapter {
                for s in &a.file.shards {
                    s.check_unchanged()?;
                }
            }
        }
        Ok(())
    }

    /// The file of input `n` holding the tensor (an adapter's, when it changes the tensor).
    fn path(&self, n: usize) -> &'a std::path::Path {
        match (&self.job.inputs[n].adapter, &self.deltas[n]) {
            (Some(a), Some(_)) => &a.file.path,
            _ => &self.shards[n].path,
        }
    }
}

fn nonfinite_input(ins: &TensorInputs, name: &str, nf: NonFinite, offset: u64) -> Error {
    Error::tensor(
        ins.path(nf.input),
        name,
        format!(
            "non-finite value (NaN or Inf) at element {}: inputs with NaN/Inf are merged only \
             when allow_nonfinite is set",
            offset + nf.index
        ),
    )
}

/// The Gram matrix of one tensor over all its chunks; `release`: give the pages back as it goes
/// (else they stay mapped for the combine pass).
fn tensor_gram(
    cx: &Ctx,
    t: &PlannedTensor,
    reporter: &dyn Reporter,
    release: bool,
) -> Result<Gram> {
    let mut ins = TensorInputs::new(cx.job, &t.name)?;
    let m = cx.job.inputs.len() - 1;
    let p = backend::upper_len(m);
    let mut acc = vec![0f64; p];
    let mut partial = Vec::new();
    let step = cx.plan.chunk_elems as u64;
    for range in chunks(ins.numel(), 1, step) {
        crate::interrupt::check()?;
        ins.prefetch_next(&range, step);
        ins.load(&range);
        let slices = ins.slices(&range);
        partial.clear();
        let res = cx.backend.gram(&ins.dtypes, &slices, &mut partial);
        ins.check_readable(cx.guard)?;
        match res {
            Ok(()) => {}
            Err(nf) if !cx.job.allow_nonfinite => {
                return Err(nonfinite_input(&ins, &t.name, nf, range.start))
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
            ins.done(range.end);
        }
        reporter.advance(ins.chunk_bytes(&range));
    }
    ins.check_unchanged()?;
    if release {
        ins.finish();
    }
    Ok(Gram::from_upper(m, &acc))
}

/// How a tensor's outputs are made from its inputs.
struct Rows {
    /// Per output: the input it is a bit-for-bit copy of, when it is one.
    copy_of: Vec<Option<usize>>,
    /// The coefficient rows of the other outputs, in output order.
    compute: Vec<Vec<f32>>,
    /// The inputs must be checked for NaN/Inf in the combine pass (no statistics pass did).
    check_inputs: bool,
}

/// The coefficients of tensor `t` (its statistics first, for methods that have them), checked.
fn coefficient_rows(cx: &Ctx, t: &PlannedTensor, keep: bool, stats: &mut Stats) -> Result<Rows> {
    let job = cx.job;
    let k = cx.plan.outputs.len();
    if !t.combined {
        return Ok(Rows {
            copy_of: vec![Some(0); k],
            compute: Vec::new(),
            check_inputs: false,
        });
    }
    let gram = if !job.method.needs_gram() {
        None
    } else if job.method.grouping() == Grouping::Tensor {
        let g = tensor_gram(cx, t, &Silent, !keep)?;
        stats.per_tensor.insert(t.name.clone(), g.clone());
        stats.per_group.insert(t.name.clone(), g.clone());
        Some(g)
    } else {
        stats
            .per_group
            .get(t.group.as_deref().unwrap_or_default())
            .cloned()
    };
    let rows: Vec<Vec<f32>> = job
        .method
        .coefficients(gram.as_ref())?
        .iter()
        .map(|r| r.iter().map(|&c| c as f32).collect())
        .collect();
    if let Some(row) = rows.iter().find(|r| r.iter().any(|c| !c.is_finite())) {
        return Err(Error::tensor(
            &job.inputs[0].ckpt.path,
            &t.name,
            format!("merge coefficients {row:?} are beyond the f32 range the merge computes in"),
        ));
    }
    // Rows that are exactly one input in the output's dtype are copied bit for bit.
    let copy_of: Vec<Option<usize>> = rows
        .iter()
        .map(|r| {
            let used: Vec<usize> = (0..r.len()).filter(|&i| r[i] != 0.0).collect();
            (used.len() == 1 && r[used[0]] == 1.0 && t.in_dtypes[used[0]] == t.out_dtype)
                .then(|| used[0])
        })
        .collect();
    let compute = (0..rows.len())
        .filter(|&k| copy_of[k].is_none())
        .map(|k| rows[k].clone())
        .collect();
    Ok(Rows {
        copy_of,
        compute,
        check_inputs: !job.method.needs_gram() && !job.allow_nonfinite,
    })
}

/// The combine pass of one tensor: every chunk read, combined, checked and sent to the outputs.
fn combine_tensor(
    cx: &Ctx,
    t: &PlannedTensor,
    mut ins: TensorInputs,
    rows: &Rows,
    keep: bool,
    sinks: &mut [Sink],
) -> Result<()> {
    let oes = t.out_dtype.size() as u64;
    let step = cx.plan.chunk_elems as u64;
    for range in chunks(ins.numel(), 1, step) {
        crate::interrupt::check()?;
        // In the combine pass of a kept tensor the pages are already resident.
        if !keep {
            ins.prefetch_next(&range, step);
        }
        let out_len = ((range.end - range.start) * oes) as usize;
        ins.load(&range);
        let mut bufs: Vec<Vec<u8>> = sinks.iter_mut().map(|s| s.buffer(out_len)).collect();
        let computed = combine_chunk(cx, t, &ins, &range, rows, &mut bufs, out_len);
        // Nothing computed from a chunk that was not read intact is used, errors included.
        ins.check_readable(cx.guard)?;
        computed?;
        ins.done(range.end);
        for (s, b) in sinks.iter_mut().zip(bufs) {
            s.send(b, out_len)?;
        }
        cx.reporter.advance(ins.chunk_bytes(&range));
    }
    ins.check_unchanged()?;
    ins.finish();
    Ok(())
}

/// Fills the K output buffers of one chunk: copies, combinations, and their checks.
fn combine_chunk(
    cx: &Ctx,
    t: &PlannedTensor,
    ins: &TensorInputs,
    range: &Range<u64>,
    rows: &Rows,
    bufs: &mut [Vec<u8>],
    out_len: usize,
) -> Result<()> {
    let job = cx.job;
    let slices = ins.slices(range);
    if !t.combined {
        if let Some(j) = (1..slices.len()).find(|&j| slices[j] != slices[0]) {
            return Err(Error::tensor(
                ins.path(j),
                &t.name,
                format!(
                    "{} tensor differs from {}: non-float tensors cannot be merged and must be \
                     equal",
                    t.dtype, job.inputs[0].spec
                ),
            ));
        }
    }
    for (buf, c) in bufs.iter_mut().zip(&rows.copy_of) {
        if let Some(i) = c {
            buf[..out_len].copy_from_slice(slices[*i]);
        }
    }
    if rows.compute.is_empty() {
        // Every output is a copy: nothing for the backend to compute, but the inputs may still
        // have to be checked.
        if rows.check_inputs {
            for (n, x) in slices.iter().enumerate() {
                if let Some(i) = first_nonfinite_par(ins.dtypes[n], x) {
                    let nf = NonFinite {
                        input: n,
                        index: i as u64,
                    };
                    return Err(nonfinite_input(ins, &t.name, nf, range.start));
                }
            }
        }
        return Ok(());
    }
    let mut outs: Vec<&mut [u8]> = bufs
        .iter_mut()
        .zip(&rows.copy_of)
        .filter(|(_, c)| c.is_none())
        .map(|(b, _)| &mut b[..out_len])
        .collect();
    if let Err(nf) = cx.backend.combine(
        &ins.dtypes,
        &slices,
        &rows.compute,
        t.out_dtype,
        &mut outs,
        rows.check_inputs,
    ) {
        return Err(nonfinite_input(ins, &t.name, nf, range.start));
    }
    if job.allow_nonfinite {
        return Ok(());
    }
    // Finite inputs can still combine to values beyond the output dtype (a large η, f16).
    let computed = (0..rows.copy_of.len()).filter(|&k| rows.copy_of[k].is_none());
    for (k, out) in computed.zip(&outs) {
        if let Some(i) = first_nonfinite_par(t.out_dtype, out) {
            return Err(Error::tensor(
                &cx.plan.outputs[k],
                &t.name,
                format!(
                    "non-finite value (NaN or Inf) at element {} of the output: the finite \
                     inputs combine to a value beyond {} (the coefficients are too large for \
                     this tensor); written only when allow_nonfinite is set",
                    range.start + i as u64,
                    t.out_dtype
                ),
            ));
        }
    }
    Ok(())
}

/// The statistics report (see [`crate::merge::report::report_json`]).
fn report(cx: &Ctx, stats: &Stats) -> serde_json::Value {
    let inputs: Vec<&str> = cx.job.inputs.iter().map(|i| i.spec.as_str()).collect();
    crate::merge::report::report_json(cx.job.method, &inputs, &stats.per_tensor)
}
