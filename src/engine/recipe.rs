//! The executor of recipe merges (`warp merge`): for each output tensor of a
//! [`Program`](crate::merge::recipe::program::Program), the passes its
//! [`Kernel`](crate::merge::kernel::Kernel) asks for — selection (two histogram passes),
//! sums, combine — each streamed chunk by chunk from the mapped inputs, blocks in parallel on
//! the CPU (rayon). Inputs of any float dtype are decoded to f32; floats are written in the
//! output dtype (round to nearest even). Memory: the chunk size comes from the budget; the
//! statistics are a few histograms and sums per tensor, never a whole tensor.
//!
//! Every chunk's pages are checked readable before its results are used, every input checked
//! unchanged after each tensor; the output appears atomically at the end, or not at all.

use std::ops::Range;
use std::path::PathBuf;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::dtype::{decode_f32, encode_f32};
use crate::io::guard::ReadGuard;
use crate::io::reader::{chunks, RELEASE_GRAIN};
use crate::io::writer::{human_bytes, CheckpointWriter, OutTensor, WriterOptions};
use crate::io::{DType, OutDType, Sweep, TensorInfo};
use crate::merge::kernel::{Block, Kernel, RankWindow, BLOCK};
use crate::merge::recipe::program::{Program, TensorOp};
use crate::progress::Reporter;

use super::Input;

/// Bins of each histogram pass (16 bits of the key's f32 pattern).
const BINS: usize = 1 << 16;
const MIN_CHUNK: usize = 8 * BLOCK;
const MAX_CHUNK: usize = 4 << 20;

/// Extra files of the output besides the tensors (config, tokenizer, model card).
pub struct ExtraFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A recipe merge ready to run.
pub struct RecipeJob<'a> {
    pub inputs: &'a [Input],
    pub program: &'a Program,
    pub dest: PathBuf,
    pub out_dtype: OutDType,
    pub max_shard_size: u64,
    pub force: bool,
    pub budget: u64,
    pub allow_nonfinite: bool,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub files: Vec<ExtraFile>,
}

/// What the job will do (`--dry-run`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecipePlan {
    pub tensors: Vec<PlannedOp>,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub chunk_elems: usize,
    pub budget: u64,
    pub floor_bytes: u64,
    pub peak_bytes: u64,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedOp {
    pub name: String,
    pub shape: Vec<usize>,
    pub out_dtype: DType,
    pub inputs: Vec<String>,
    /// Passes over the inputs: selection (2 per selection round), sums, combine.
    pub passes: usize,
}

/// Where input `m` reads tensor `name` (its base's file, or an adapter's for a full tensor).
fn source<'a>(job: &'a RecipeJob, m: usize, name: &str) -> Result<super::Source<'a>> {
    job.inputs[m]
        .source(name)
        .ok_or_else(|| Error::Internal(format!("tensor {name} vanished from input {m}")))
}

fn info<'a>(job: &'a RecipeJob, m: usize, name: &str) -> Result<&'a TensorInfo> {
    source(job, m, name).map(|s| s.info)
}

fn passes(op: &TensorOp) -> usize {
    match &op.kernel {
        None => 1,
        Some(k) => 1 + if k.selections() > 0 { 2 } else { 0 } + usize::from(k.sums_len() > 0),
    }
}

impl RecipePlan {
    pub fn new(job: &RecipeJob) -> Result<RecipePlan> {
        let threads = rayon::current_num_threads() as u64;
        let (mut read, mut write) = (0u64, 0u64);
        let (mut per_elem, mut max_n, mut max_sel) = (0u64, 1usize, 0usize);
        let mut tensors = Vec::new();
        for op in &job.program.ops {
            let out_dtype = job.out_dtype.resolve(op.dtype);
            let mut in_bytes = 0;
            let mut es = 0u64;
            for (m, name) in &op.inputs {
                let t = info(job, *m, name)?;
                in_bytes += t.nbytes;
                es += t.dtype.size() as u64;
            }
            let p = passes(op);
            read += in_bytes * p as u64;
            let numel: u64 = op.shape.iter().map(|&d| d as u64).product();
            write += numel * out_dtype.size() as u64;
            per_elem = per_elem.max(es + out_dtype.size() as u64);
            max_n = max_n.max(op.inputs.len());
            max_sel = max_sel.max(op.kernel.as_ref().map_or(0, |k| k.selections()));
            tensors.push(PlannedOp {
                name: op.name.clone(),
                shape: op.shape.clone(),
                out_dtype,
                inputs: op
                    .inputs
                    .iter()
                    .map(|(m, n)| format!("{}:{n}", job.inputs[*m].spec))
                    .collect(),
                passes: p,
            });
        }
        // Per thread: N decoded inputs, the key and output scratch, the selection masks and
        // (during selection) one histogram per selection.
        let scratch = threads
            * (BLOCK as u64 * (4 * (max_n as u64 + 2) + max_sel as u64)
                + (max_sel * BINS * 8) as u64);
        let fixed = scratch + 2 * RELEASE_GRAIN * max_n as u64 + (4 << 20);
        let per_elem = per_elem.max(1);
        let floor = fixed + MIN_CHUNK as u64 * per_elem;
        let budget = job.budget.max(floor);
        let chunk =
            (((budget - fixed) / per_elem) as usize / BLOCK * BLOCK).clamp(MIN_CHUNK, MAX_CHUNK);
        let mut notes = Vec::new();
        if job.budget < floor {
            notes.push(format!(
                "memory budget {} is below the least this merge can run in: using {}",
                human_bytes(job.budget),
                human_bytes(floor)
            ));
        }
        Ok(RecipePlan {
            tensors,
            read_bytes: read,
            write_bytes: write,
            chunk_elems: chunk,
            budget,
            floor_bytes: floor,
            peak_bytes: fixed + chunk as u64 * per_elem,
            notes,
        })
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<56} {:>6} {:>6}  {}\n",
            "tensor", "out", "passes", "inputs"
        );
        for t in &self.tensors {
            s += &format!(
                "{:<56} {:>6} {:>6}  {}\n",
                t.name,
                t.out_dtype.name(),
                t.passes,
                t.inputs.join(", ")
            );
        }
        s += &format!(
            "{} tensors; read {}, write {}; chunk {} elements; memory budget {} (least possible \
             {}); estimated peak working memory {}\n",
            self.tensors.len(),
            human_bytes(self.read_bytes),
            human_bytes(self.write_bytes),
            self.chunk_elems,
            human_bytes(self.budget),
            human_bytes(self.floor_bytes),
            human_bytes(self.peak_bytes)
        );
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        s
    }
}

/// One tensor's inputs, read front to back. An input that is a PEFT adapter's low-rank delta of
/// the tensor is read as base + s·B·A, computed chunk by chunk in f32 ([`Ins::load`]).
struct Ins<'a> {
    infos: Vec<&'a TensorInfo>,
    sweeps: Vec<Sweep<'a>>,
    ckpts: Vec<&'a crate::io::Checkpoint>,
    specs: Vec<&'a str>,
    /// Per input: the adapter's factors of this tensor and the f32 chunk computed from them.
    deltas: Vec<Option<(crate::io::lora::Factors, Vec<u8>)>>,
    /// Per input: the adapter file, when the input is an adapter (checked unchanged too).
    adapters: Vec<Option<&'a crate::io::Checkpoint>>,
}

impl<'a> Ins<'a> {
    fn new(job: &'a RecipeJob, op: &'a TensorOp) -> Result<Ins<'a>> {
        let mut ins = Ins {
            infos: Vec::new(),
            sweeps: Vec::new(),
            ckpts: Vec::new(),
            specs: Vec::new(),
            deltas: Vec::new(),
            adapters: Vec::new(),
        };
        for (m, name) in &op.inputs {
            let input = &job.inputs[*m];
            let s = source(job, *m, name)?;
            ins.infos.push(s.info);
            ins.sweeps.push(Sweep::new(s.ckpt, s.info));
            ins.ckpts.push(s.ckpt);
            ins.specs.push(&input.spec);
            ins.deltas.push(match (&input.adapter, s.low_rank) {
                (Some(a), true) => Some((a.factors(name)?, Vec::new())),
                _ => None,
            });
            ins.adapters.push(input.adapter.as_ref().map(|a| &a.file));
        }
        Ok(ins)
    }

    /// Keeps input 0 only.
    fn first_only(&mut self) {
        self.infos.truncate(1);
        self.sweeps.truncate(1);
        self.ckpts.truncate(1);
        self.specs.truncate(1);
        self.deltas.truncate(1);
        self.adapters.truncate(1);
    }

    /// The dtype input `n` is read in: f32 where a low-rank delta is added.
    fn dtype(&self, n: usize) -> DType {
        if self.deltas[n].is_some() {
            DType::F32
        } else {
            self.infos[n].dtype
        }
    }

    /// Prepares element range `r` of every input (the next `next` elements prefetched): the
    /// low-rank inputs' f32 values computed, for [`Ins::slices`].
    fn load(&mut self, r: &Range<u64>, next: u64) {
        for ((s, t), d) in self
            .sweeps
            .iter_mut()
            .zip(&self.infos)
            .zip(&mut self.deltas)
        {
            let es = t.dtype.size() as u64;
            s.prefetch(r.end * es..(r.end + next) * es);
            if let Some((f, buf)) = d {
                buf.resize(((r.end - r.start) * 4) as usize, 0);
                f.apply(t.dtype, s.bytes(r.start * es..r.end * es), r.start, buf);
            }
        }
    }

    /// The bytes of element range `r` in every input (after [`Ins::load`] of `r`), in the dtype
    /// of [`Ins::dtype`].
    fn slices(&self, r: &Range<u64>) -> Vec<&[u8]> {
        super::input::range_bytes(&self.sweeps, &self.infos, &self.deltas, r)
    }

    fn done(&mut self, upto: u64) {
        for (s, t) in self.sweeps.iter_mut().zip(&self.infos) {
            s.done(upto * t.dtype.size() as u64);
        }
    }

    fn finish(&mut self) -> Result<()> {
        for ((s, t), ck) in self.sweeps.iter_mut().zip(&self.infos).zip(&self.ckpts) {
            s.finish();
            ck.shards[t.shard].check_unchanged()?;
        }
        for a in self.adapters.iter().flatten() {
            for sh in &a.shards {
                sh.check_unchanged()?;
            }
        }
        Ok(())
    }

    /// The file input `n` reads the tensor from (the adapter's, for a low-rank delta).
    fn path(&self, n: usize) -> &std::path::Path {
        match (&self.deltas[n], self.adapters[n]) {
            (Some(_), Some(a)) => &a.path,
            _ => &self.ckpts[n].shards[self.infos[n].shard].path,
        }
    }
}

/// The element at ascending rank `rank` of a selection has key bits `bits`; `less` elements
/// have smaller keys.
#[derive(Debug, Clone, Copy)]
struct Cut {
    bits: u32,
    less: u64,
    rank: u64,
}

#[derive(Debug, Clone, Copy)]
/// An element is kept when its key lies strictly between the cuts' keys, or equals a cut's key
/// and its place among the elements of that key keeps it inside the rank window (see `select`).
struct Selection {
    window: RankWindow,
    lo: Option<Cut>,
    hi: Option<Cut>,
}

fn key_bits(k: f32) -> u32 {
    // Keys are ≥ 0; −0 and +0 are one value.
    if k == 0.0 {
        0
    } else {
        k.to_bits()
    }
}

/// Per-thread scratch of one block.
struct Scratch {
    xs: Vec<Vec<f32>>,
    key: Vec<f32>,
    sel: Vec<Vec<bool>>,
    out: Vec<f32>,
}

impl Scratch {
    fn new(n: usize, sels: usize, bl: usize) -> Scratch {
        Scratch {
            xs: vec![vec![0f32; bl]; n],
            key: vec![0f32; bl],
            sel: vec![vec![true; bl]; sels],
            out: vec![0f32; bl],
        }
    }
}

/// The first non-finite value of input `n` in a block.
struct NonFinite {
    input: usize,
    index: u64,
}

/// Decodes block `b` (elements `lo..lo+len` of the chunk) of every input into the scratch.
fn decode(
    ins: &Ins,
    slices: &[&[u8]],
    lo: usize,
    len: usize,
    start: u64,
    xs: &mut [Vec<f32>],
    check: bool,
) -> std::result::Result<(), NonFinite> {
    for (n, x) in xs.iter_mut().enumerate().take(ins.infos.len()) {
        let dt = ins.dtype(n);
        let es = dt.size();
        decode_f32(dt, &slices[n][lo * es..(lo + len) * es], &mut x[..len]);
        if check && x[..len].iter().any(|v| !v.is_finite()) {
            let i = x[..len].iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(NonFinite {
                input: n,
                index: start + i as u64,
            });
        }
    }
    Ok(())
}

fn nonfinite(ins: &Ins, op: &TensorOp, nf: NonFinite) -> Error {
    Error::tensor(
        ins.path(nf.input),
        &ins.infos[nf.input].name,
        format!(
            "non-finite value (NaN or Inf) at element {} (merging into '{}'): inputs with \
             NaN/Inf are merged only with --allow-nonfinite",
            nf.index, op.name
        ),
    )
}

/// Runs the job: every tensor in program order, written to one atomic output folder.
pub fn run(job: &RecipeJob, plan: &RecipePlan, reporter: &dyn Reporter) -> Result<PathBuf> {
    let out_tensors: Vec<OutTensor> = job
        .program
        .ops
        .iter()
        .map(|op| OutTensor {
            name: op.name.clone(),
            dtype: job.out_dtype.resolve(op.dtype),
            shape: op.shape.clone(),
        })
        .collect();
    let opts = WriterOptions {
        max_shard_size: job.max_shard_size,
        force: job.force,
        metadata: job.metadata.clone(),
        write_buffer: (4 << 20).min(plan.budget as usize / 8).max(64 << 10),
    };
    let mut w = CheckpointWriter::create(&job.dest, out_tensors, &opts)?;
    for r in w.reclaimed() {
        reporter.message(&format!(
            "removed {}, left by a warp process that no longer runs",
            r.display()
        ));
    }
    for f in &job.files {
        w.add_file(&f.name, &f.bytes)?;
    }
    let guard = ReadGuard::new(
        job.inputs
            .iter()
            .flat_map(|i| i.ckpt.shards.iter().map(|s| (s.mapped(), s.path.as_path()))),
    );
    reporter.start("merge", plan.read_bytes);
    for op in &job.program.ops {
        crate::interrupt::check()?;
        tensor(job, plan, op, &guard, &mut w, reporter)?;
    }
    reporter.finish();
    for i in job.inputs {
        for s in &i.ckpt.shards {
            s.check_unchanged()?;
        }
    }
    w.finish()
}

/// One float tensor's passes: what they all need.
struct Passes<'a> {
    job: &'a RecipeJob<'a>,
    op: &'a TensorOp,
    kernel: &'a dyn Kernel,
    guard: &'a ReadGuard,
    reporter: &'a dyn Reporter,
    numel: u64,
    /// Elements per chunk: a whole number of blocks.
    step: u64,
    /// Elements per block.
    bl: usize,
    /// Input bytes of one element, all inputs together (progress).
    bytes_per_elem: u64,
}

fn tensor(
    job: &RecipeJob,
    plan: &RecipePlan,
    op: &TensorOp,
    guard: &ReadGuard,
    w: &mut CheckpointWriter,
    reporter: &dyn Reporter,
) -> Result<()> {
    let out_dtype = job.out_dtype.resolve(op.dtype);
    let numel: u64 = op.shape.iter().map(|&d| d as u64).product();
    let step = plan.chunk_elems as u64;
    let Some(kernel) = op.kernel.as_deref() else {
        return copy(job, op, out_dtype, numel, step, guard, w, reporter);
    };
    // Blocks of whole rows for row-wise kernels; chunks a whole number of blocks.
    let bl = kernel.block_len().max(1);
    let p = Passes {
        job,
        op,
        kernel,
        guard,
        reporter,
        numel,
        step: (step / bl as u64).max(1) * bl as u64,
        bl,
        bytes_per_elem: op
            .inputs
            .iter()
            .map(|(m, n)| info(job, *m, n).map(|t| t.dtype.size() as u64))
            .sum::<Result<u64>>()?,
    };
    // The inputs are checked for NaN/Inf in the first pass that reads them.
    let check = !job.allow_nonfinite;
    let sels = p.selections(check)?;
    let mut check_inputs = check && sels.is_empty();
    let mut params = Vec::new();
    if kernel.sums_len() > 0 {
        params = p.sums(&sels, check_inputs)?;
        check_inputs = false;
    }
    p.combine(&sels, &params, check_inputs, out_dtype, w)
}

impl Passes<'_> {
    /// The cuts of every selection: the top 16 bits of each key, then the low 16 bits inside
    /// the bins that hold the cut ranks (two passes).
    fn selections(&self, check: bool) -> Result<Vec<Selection>> {
        let (kernel, numel) = (self.kernel, self.numel);
        let nsel = kernel.selections();
        let mut sels: Vec<Selection> = Vec::with_capacity(nsel);
        if nsel == 0 {
            return Ok(sels);
        }
        let (hist, zeros) = self.histogram(check, None)?;
        self.reporter.advance(numel * self.bytes_per_elem);
        let mut want: Vec<Vec<(u64, u32)>> = Vec::new(); // per selection: (rank, top bin)
        for s in 0..nsel {
            let window = kernel.window(s, numel, zeros[s]);
            let mut ranks = Vec::new();
            if window.lo < window.hi {
                if window.lo > 0 {
                    ranks.push(window.lo);
                }
                if window.hi < numel {
                    ranks.push(window.hi - 1);
                }
            }
            want.push(
                ranks
                    .iter()
                    .map(|&r| (r, bin_of(&hist[s], r).0 as u32))
                    .collect(),
            );
            sels.push(Selection {
                window,
                lo: None,
                hi: None,
            });
        }
        let bins: Vec<Vec<u32>> = want
            .iter()
            .map(|v| v.iter().map(|x| x.1).collect())
            .collect();
        let (low, _) = self.histogram(false, Some(&bins))?;
        self.reporter.advance(numel * self.bytes_per_elem);
        for s in 0..nsel {
            for (j, &(rank, top)) in want[s].iter().enumerate() {
                let below_top: u64 = hist[s][..top as usize].iter().sum();
                let sub = &low[s][j * BINS..(j + 1) * BINS];
                let (lowbin, below_low) = bin_of(sub, rank - below_top);
                let cut = Cut {
                    bits: (top << 16) | lowbin as u32,
                    less: below_top + below_low,
                    rank,
                };
                let wnd = sels[s].window;
                if wnd.lo > 0 && rank == wnd.lo && sels[s].lo.is_none() {
                    sels[s].lo = Some(cut);
                } else {
                    sels[s].hi = Some(cut);
                }
            }
        }
        Ok(sels)
    }

    /// The kernel's sums, folded block by block in order, and what it makes of them.
    fn sums(&self, sels: &[Selection], check: bool) -> Result<Vec<f64>> {
        let len = self.kernel.sums_len();
        let mut acc = vec![0f64; len];
        let mut ties = vec![[0u64; 2]; sels.len()];
        let mut ins = Ins::new(self.job, self.op)?;
        for r in chunks(self.numel, 1, self.step) {
            crate::interrupt::check()?;
            ins.load(&r, self.step);
            let slices = ins.slices(&r);
            let res = sums_chunk(&ins, &slices, &r, self, sels, &mut ties, check);
            self.guard.check()?;
            let partial = res.map_err(|nf| nonfinite(&ins, self.op, nf))?;
            for block in partial.chunks_exact(len) {
                for (a, b) in acc.iter_mut().zip(block) {
                    *a += b;
                }
            }
            ins.done(r.end);
            self.reporter
                .advance((r.end - r.start) * self.bytes_per_elem);
        }
        ins.finish()?;
        self.kernel.prepare(&acc).map_err(|e| match e {
            Error::Mismatch(m) => Error::tensor(ins.path(0), &self.op.name, m),
            e => e,
        })
    }

    /// The combine pass: every chunk's blocks merged, checked, encoded and written.
    fn combine(
        &self,
        sels: &[Selection],
        params: &[f64],
        check_inputs: bool,
        out_dtype: DType,
        w: &mut CheckpointWriter,
    ) -> Result<()> {
        let (kernel, bl, op) = (self.kernel, self.bl, self.op);
        let check = !self.job.allow_nonfinite;
        let n = op.inputs.len();
        let oes = out_dtype.size();
        let mut ties = vec![[0u64; 2]; sels.len()];
        let mut ins = Ins::new(self.job, op)?;
        let mut buf = Vec::new();
        for r in chunks(self.numel, 1, self.step) {
            crate::interrupt::check()?;
            ins.load(&r, self.step);
            let slices = ins.slices(&r);
            let len = (r.end - r.start) as usize;
            buf.resize(len * oes, 0u8);
            let counts = tie_counts(&ins, &slices, len, r.start, self, sels, &mut ties);
            let res = buf.par_chunks_mut(bl * oes).enumerate().try_for_each_init(
                || Scratch::new(n, sels.len(), bl),
                |sc, (b, out)| -> std::result::Result<(), NonFinite> {
                    let lo = b * bl;
                    let blen = bl.min(len - lo);
                    let start = r.start + lo as u64;
                    decode(&ins, &slices, lo, blen, start, &mut sc.xs, check_inputs)?;
                    let before = counts.get(b);
                    select(
                        kernel,
                        sels,
                        before,
                        &mut sc.xs,
                        &mut sc.key,
                        &mut sc.sel,
                        start,
                        blen,
                    );
                    let xs: Vec<&[f32]> = sc.xs.iter().map(|x| &x[..blen]).collect();
                    let sel: Vec<&[bool]> = sc.sel.iter().map(|x| &x[..blen]).collect();
                    let blk = Block {
                        start,
                        xs: &xs,
                        selected: &sel,
                        params,
                    };
                    kernel.combine(&blk, &mut sc.out[..blen]);
                    if check {
                        if let Some(i) = sc.out[..blen].iter().position(|v| !v.is_finite()) {
                            return Err(NonFinite {
                                input: usize::MAX,
                                index: start + i as u64,
                            });
                        }
                    }
                    encode_f32(out_dtype, &sc.out[..blen], &mut out[..blen * oes]);
                    Ok(())
                },
            );
            self.guard.check()?;
            if let Err(nf) = res {
                if nf.input == usize::MAX {
                    return Err(Error::tensor(
                        &self.job.dest,
                        &op.name,
                        format!(
                            "the merge gives a non-finite value (NaN or Inf) at element {}: the \
                             parameters are too large for this tensor (written only with \
                             --allow-nonfinite)",
                            nf.index
                        ),
                    ));
                }
                return Err(nonfinite(&ins, op, nf));
            }
            ins.done(r.end);
            w.write(&buf[..len * oes])?;
            self.reporter
                .advance((r.end - r.start) * self.bytes_per_elem);
        }
        ins.finish()
    }
}

/// The histogram bin holding ascending rank `rank` and the count below that bin.
fn bin_of(hist: &[u64], rank: u64) -> (usize, u64) {
    let mut below = 0;
    for (i, &c) in hist.iter().enumerate() {
        if below + c > rank {
            return (i, below);
        }
        below += c;
    }
    (hist.len() - 1, below)
}

type Hist = (Vec<Vec<u64>>, Vec<u64>);

/// One histogram pass over a tensor. Without `bins`: per selection, the top 16 bits of its key
/// (and how many keys are zero). With `bins`: per selection and per wanted top bin, the low 16
/// bits of the keys inside that bin.
impl Passes<'_> {
    fn histogram(&self, check: bool, bins: Option<&[Vec<u32>]>) -> Result<Hist> {
        let (kernel, op, bl, step) = (self.kernel, self.op, self.bl, self.step);
        let nsel = kernel.selections();
        let n = op.inputs.len();
        let width = |s: usize| bins.map_or(1, |b| b[s].len().max(1)) * BINS;
        let mut total: Vec<Vec<u64>> = (0..nsel).map(|s| vec![0u64; width(s)]).collect();
        let mut zeros = vec![0u64; nsel];
        let mut ins = Ins::new(self.job, op)?;
        for r in chunks(self.numel, 1, step) {
            crate::interrupt::check()?;
            ins.load(&r, step);
            let slices = ins.slices(&r);
            let len = (r.end - r.start) as usize;
            // One histogram per thread (at most): pieces of at least blocks/threads blocks.
            let blocks = len.div_ceil(bl);
            let res = (0..blocks)
                .into_par_iter()
                .with_min_len(blocks.div_ceil(rayon::current_num_threads()).max(1))
                .try_fold(
                    || {
                        (
                            Scratch::new(n, 0, bl),
                            (0..nsel).map(|s| vec![0u64; width(s)]).collect::<Vec<_>>(),
                            vec![0u64; nsel],
                        )
                    },
                    |(mut sc, mut h, mut z), b| {
                        let lo = b * bl;
                        let blen = bl.min(len - lo);
                        let start = r.start + lo as u64;
                        decode(&ins, &slices, lo, blen, start, &mut sc.xs, check)?;
                        let xs: Vec<&[f32]> = sc.xs.iter().map(|x| &x[..blen]).collect();
                        let blk = Block {
                            start,
                            xs: &xs,
                            selected: &[],
                            params: &[],
                        };
                        for s in 0..nsel {
                            kernel.key(s, &blk, &mut sc.key[..blen]);
                            let keys = &sc.key[..blen];
                            match bins {
                                None => {
                                    let hs = &mut h[s][..BINS];
                                    let mut zs = 0;
                                    for &k in keys {
                                        let bits = key_bits(k);
                                        hs[(bits >> 16) as usize] += 1;
                                        zs += u64::from(bits == 0);
                                    }
                                    z[s] += zs;
                                }
                                Some(want) => {
                                    for (j, &top) in want[s].iter().enumerate() {
                                        let hs = &mut h[s][j * BINS..(j + 1) * BINS];
                                        for &k in keys {
                                            let bits = key_bits(k);
                                            if bits >> 16 == top {
                                                hs[(bits & 0xffff) as usize] += 1;
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        Ok((sc, h, z))
                    },
                )
                .map(|r| r.map(|(_, h, z)| (h, z)))
                .try_reduce(
                    || {
                        (
                            (0..nsel).map(|s| vec![0u64; width(s)]).collect(),
                            vec![0u64; nsel],
                        )
                    },
                    |mut a, b| {
                        add_hist(&mut a, b);
                        Ok(a)
                    },
                );
            self.guard.check()?;
            let h = res.map_err(|nf: NonFinite| nonfinite(&ins, op, nf))?;
            let mut acc = (std::mem::take(&mut total), std::mem::take(&mut zeros));
            add_hist(&mut acc, h);
            (total, zeros) = acc;
            ins.done(r.end);
        }
        ins.finish()?;
        Ok((total, zeros))
    }
}

/// Adds histograms (and zero counts) `b` to `a`.
fn add_hist(a: &mut Hist, b: Hist) {
    for (x, y) in a.0.iter_mut().zip(b.0) {
        for (p, q) in x.iter_mut().zip(y) {
            *p += q;
        }
    }
    for (p, q) in a.1.iter_mut().zip(b.1) {
        *p += q;
    }
}

/// Per block of the chunk and per selection: how many elements before the block (in the whole
/// tensor) have the key of each cut. Advances `ties` past the chunk. Empty without cuts.
#[allow(clippy::too_many_arguments)]
fn tie_counts(
    ins: &Ins,
    slices: &[&[u8]],
    len: usize,
    start: u64,
    p: &Passes,
    sels: &[Selection],
    ties: &mut [[u64; 2]],
) -> Vec<Vec<[u64; 2]>> {
    let (bl, kernel) = (p.bl, p.kernel);
    if sels.iter().all(|s| s.lo.is_none() && s.hi.is_none()) {
        return Vec::new();
    }
    let n = ins.infos.len();
    let per_block: Vec<Vec<[u64; 2]>> = (0..len.div_ceil(bl))
        .into_par_iter()
        .map_init(
            || Scratch::new(n, 0, bl),
            |sc, b| {
                let lo = b * bl;
                let blen = bl.min(len - lo);
                let _ = decode(ins, slices, lo, blen, start + lo as u64, &mut sc.xs, false);
                let xs: Vec<&[f32]> = sc.xs.iter().map(|x| &x[..blen]).collect();
                let blk = Block {
                    start: start + lo as u64,
                    xs: &xs,
                    selected: &[],
                    params: &[],
                };
                sels.iter()
                    .enumerate()
                    .map(|(s, sel)| {
                        if sel.lo.is_none() && sel.hi.is_none() {
                            return [0, 0];
                        }
                        kernel.key(s, &blk, &mut sc.key[..blen]);
                        let count = |c: Option<Cut>| {
                            c.map_or(0, |c| {
                                sc.key[..blen]
                                    .iter()
                                    .filter(|&&k| key_bits(k) == c.bits)
                                    .count() as u64
                            })
                        };
                        [count(sel.lo), count(sel.hi)]
                    })
                    .collect()
            },
        )
        .collect();
    let mut out = Vec::with_capacity(per_block.len());
    for counts in per_block {
        out.push(ties.to_vec());
        for (t, c) in ties.iter_mut().zip(counts) {
            t[0] += c[0];
            t[1] += c[1];
        }
    }
    out
}

/// Fills the selection masks of one block.
#[allow(clippy::too_many_arguments)]
fn select(
    kernel: &dyn Kernel,
    sels: &[Selection],
    before: Option<&Vec<[u64; 2]>>,
    xs: &mut [Vec<f32>],
    key: &mut [f32],
    masks: &mut [Vec<bool>],
    start: u64,
    blen: usize,
) {
    if sels.is_empty() {
        return;
    }
    let xr: Vec<&[f32]> = xs.iter().map(|x| &x[..blen]).collect();
    let blk = Block {
        start,
        xs: &xr,
        selected: &[],
        params: &[],
    };
    for (s, sel) in sels.iter().enumerate() {
        kernel.key(s, &blk, &mut key[..blen]);
        let [mut blo, mut bhi] = before.map_or([0, 0], |b| b[s]);
        if sel.window.lo >= sel.window.hi {
            masks[s][..blen].fill(false);
            continue;
        }
        // `Selection::keeps` without branches on the cuts: a missing low cut is one that
        // keeps every key (bits 0, rank 0), a missing high cut likewise (bits and rank at
        // their maximum); the tie counts of a missing cut are never read.
        let lo = sel.lo.unwrap_or(Cut {
            bits: 0,
            less: 0,
            rank: 0,
        });
        let hi = sel.hi.unwrap_or(Cut {
            bits: u32::MAX,
            less: 0,
            rank: u64::MAX,
        });
        // Keys equal to a cut are rare: a first loop without the running tie counts (so it
        // vectorises) decides every other key and notes whether the block has such a key; only
        // then the exact loop below runs.
        // A missing cut keeps every key, equal to its bits or not.
        let (lo_all, hi_all) = (sel.lo.is_none(), sel.hi.is_none());
        let mut ties = false;
        for (m, &k) in masks[s][..blen].iter_mut().zip(&key[..blen]) {
            let bits = key_bits(k);
            *m = (lo_all | (bits > lo.bits)) & (hi_all | (bits < hi.bits));
            ties |= (!lo_all & (bits == lo.bits)) | (!hi_all & (bits == hi.bits));
        }
        if !ties {
            continue;
        }
        for (m, &k) in masks[s][..blen].iter_mut().zip(&key[..blen]) {
            let bits = key_bits(k);
            let (at_lo, at_hi) = (bits == lo.bits, bits == hi.bits);
            let keep_lo = bits > lo.bits || (at_lo && lo.less + blo >= lo.rank);
            let keep_hi = bits < hi.bits || (at_hi && hi.less + bhi <= hi.rank);
            *m = keep_lo & keep_hi;
            blo += u64::from(at_lo);
            bhi += u64::from(at_hi);
        }
    }
}

/// The sums of one chunk: one row of partials per block, in block order.
#[allow(clippy::too_many_arguments)]
fn sums_chunk(
    ins: &Ins,
    slices: &[&[u8]],
    r: &Range<u64>,
    p: &Passes,
    sels: &[Selection],
    ties: &mut [[u64; 2]],
    check: bool,
) -> std::result::Result<Vec<f64>, NonFinite> {
    let (bl, kernel) = (p.bl, p.kernel);
    let width = kernel.sums_len();
    let len = (r.end - r.start) as usize;
    let n = ins.infos.len();
    let counts = tie_counts(ins, slices, len, r.start, p, sels, ties);
    let mut out = vec![0f64; len.div_ceil(bl) * width];
    out.par_chunks_mut(width).enumerate().try_for_each_init(
        || Scratch::new(n, sels.len(), bl),
        |sc, (b, acc)| {
            let lo = b * bl;
            let blen = bl.min(len - lo);
            let start = r.start + lo as u64;
            decode(ins, slices, lo, blen, start, &mut sc.xs, check)?;
            select(
                kernel,
                sels,
                counts.get(b),
                &mut sc.xs,
                &mut sc.key,
                &mut sc.sel,
                start,
                blen,
            );
            let xs: Vec<&[f32]> = sc.xs.iter().map(|x| &x[..blen]).collect();
            let sel: Vec<&[bool]> = sc.sel.iter().map(|x| &x[..blen]).collect();
            let blk = Block {
                start,
                xs: &xs,
                selected: &sel,
                params: &[],
            };
            kernel.sums(&blk, acc);
            Ok(())
        },
    )?;
    Ok(out)
}

/// A tensor that is one input as it is: bytes copied, or converted to the output dtype.
#[allow(clippy::too_many_arguments)]
fn copy(
    job: &RecipeJob,
    op: &TensorOp,
    out_dtype: DType,
    numel: u64,
    step: u64,
    guard: &ReadGuard,
    w: &mut CheckpointWriter,
    reporter: &dyn Reporter,
) -> Result<()> {
    let mut ins = Ins::new(job, op)?;
    ins.first_only();
    let dt = ins.dtype(0);
    let mut buf = Vec::new();
    for r in chunks(numel, 1, step) {
        crate::interrupt::check()?;
        ins.load(&r, step);
        let slices = ins.slices(&r);
        let len = (r.end - r.start) as usize;
        if dt == out_dtype {
            guard.check()?;
            if dt.is_float() && !job.allow_nonfinite {
                if let Some(i) = crate::io::dtype::first_nonfinite_par(dt, slices[0]) {
                    return Err(nonfinite(
                        &ins,
                        op,
                        NonFinite {
                            input: 0,
                            index: r.start + i as u64,
                        },
                    ));
                }
            }
            w.write(slices[0])?;
        } else {
            let mut x = vec![0f32; len];
            decode_f32(dt, slices[0], &mut x);
            guard.check()?;
            if !job.allow_nonfinite {
                if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                    return Err(nonfinite(
                        &ins,
                        op,
                        NonFinite {
                            input: 0,
                            index: r.start + i as u64,
                        },
                    ));
                }
            }
            buf.resize(len * out_dtype.size(), 0);
            encode_f32(out_dtype, &x, &mut buf);
            w.write(&buf)?;
        }
        ins.done(r.end);
        reporter.advance((r.end - r.start) * ins.infos[0].dtype.size() as u64);
    }
    ins.finish()
}
