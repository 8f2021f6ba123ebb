//! The memory plan of a `warp-rl` run: what the run will hold at its peak, by category, from the
//! model's config.json and checkpoint headers alone (nothing is loaded), so a run that cannot fit
//! is refused before it starts, with the micro-batch that would fit.
//!
//! What a step holds (the trainer's order of work; K = micro-batch in sequences, T = longest
//! prompt + new tokens, P = parameters, e = bytes per element of the compute dtype):
//!
//! - **resident for the whole run**: policy weights P·e; f32 master copy 4P (bf16 only);
//!   gradients P·e, plus an f32 accumulator 4P when bf16 gradients are summed over several
//!   micro-batches; Adam moments 8P; EMA 4P (f32) and, in bf16, a bf16 copy 2P that the anchor
//!   forward uses; the frozen init P·e (scored for `kl_init`, or the anchor with `--anchor init`);
//!   a reward model R·e_r;
//! - **generation of one generation batch** (G sequences, `--gen-batch`, independent of K; no
//!   graph): the preallocated KV cache 2·L·G·kv_heads·T·head_dim·e; when a batch's U distinct
//!   prompts are fewer than its sequences, the cache of their prefill, 2·L·U·kv_heads·W·head_dim·e
//!   (W = longest prompt), copied to each prompt's samples; the prefill's largest layer
//!   temporaries for U prompts; one step's f32 logits and the sampler's temporaries
//!   (G·V·28 B: logits, tempered logits, probabilities, the f64 CDF, a comparison, slack);
//! - **training on one micro-batch**: the activations the backward pass needs, an explicit model
//!   below; the no-graph hidden states of the anchor and init forwards (K·T·H·e each); the LM-head
//!   chunks of `super::chunked` (a few `[chunk, vocab]` f32 tensors).
//!
//! A LoRA run (`--lora R`) holds instead the frozen base once (P·e, shared by the policy, the EMA
//! and the init) and, for the adapters' Σ r·(in + out) elements, f32 factors, gradients, Adam
//! moments and EMA; its activations add A·x per adapted module and, with a bf16 base, the f32
//! copy of each adapted module's input.
//!
//! Activation model (saved for backward, per token and layer, compute dtype e, as the decoder in
//! `super::model` computes a layer): the two RMSNorms keep their f32 input and normalised output
//! (2·(4H + 2eH)); the q/k/v projections their outputs, RoPE a rotated copy of q and k, and
//! scaled-dot-product attention q, k, v, its output and a copy for o_proj
//! (e·(5·nh·hd + 5·kv·hd)); the gated MLP gate, up, SiLU(gate) and their product (4·e·I); and
//! the attention's per-head log-sum-exp (4·nh). Eager attention would add the [nh, T] score and
//! probability rows per token; the plan assumes fused attention (SDPA). The run's peak is the
//! runtime's own footprint plus the resident part plus the larger of generation and training;
//! on the CPU, loading also maps the checkpoint file (counted in RSS while it is read).

use std::path::Path;

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::io::Checkpoint;

/// The numbers of a model the plan needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    /// Trainable parameters (elements), a tied head counted once.
    pub parameters: u64,
    /// Bytes of the checkpoint's tensors on disk.
    pub checkpoint_bytes: u64,
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub intermediate: u64,
    pub vocab: u64,
}

impl ModelShape {
    /// From an open checkpoint (headers only) and its parsed config.json ([`ModelConfig`], the
    /// one reading of it that the model itself loads with).
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<ModelShape> {
        let c = ModelConfig::from_dir(&ck.dir)?;
        let mut parameters = 0u64;
        let mut checkpoint_bytes = 0u64;
        for t in ck.tensors() {
            let n: u64 = t.shape.iter().map(|&d| d as u64).product();
            checkpoint_bytes += n * t.dtype.size() as u64;
            // A tied model's file may carry a copy of the embedding as lm_head; it is not a
            // parameter of its own.
            if !(c.tie_word_embeddings && t.name == "lm_head.weight") {
                parameters += n;
            }
        }
        Ok(ModelShape {
            parameters,
            checkpoint_bytes,
            hidden: c.hidden_size as u64,
            layers: c.num_hidden_layers as u64,
            heads: c.num_attention_heads as u64,
            kv_heads: c.num_key_value_heads as u64,
            head_dim: c.head_dim as u64,
            intermediate: c.intermediate_size as u64,
            vocab: c.vocab_size as u64,
        })
    }

    /// As [`from_checkpoint`](Self::from_checkpoint), from a checkpoint folder or file.
    pub fn from_path(path: &Path) -> Result<ModelShape> {
        Self::from_checkpoint(&Checkpoint::open(path)?)
    }

    /// Bytes saved for the backward pass per token and layer (see the module docs).
    pub fn activation_bytes_per_token_layer(&self, e: u64) -> u64 {
        let (h, i) = (self.hidden, self.intermediate);
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        2 * (4 * h + 2 * e * h) + e * (5 * q + 5 * kv) + 4 * e * i + 4 * self.heads
    }

    /// Largest no-graph temporaries of one layer, per token (a forward without gradients keeps
    /// only the current layer's): the MLP's gate, up and product, and the residual stream.
    fn transient_bytes_per_token(&self, e: u64) -> u64 {
        e * (3 * self.intermediate + 4 * self.hidden) + 4 * self.hidden
    }
}

/// Compute dtype of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }
}

/// Where the run's memory is: host RAM (CPU, measured as peak RSS) or the GPU's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
    Cuda,
}

/// The run settings the plan depends on.
#[derive(Debug, Clone)]
pub struct PlanInput {
    pub model: ModelShape,
    pub target: Target,
    pub precision: Precision,
    /// Prompts per step.
    pub prompts: u64,
    /// Completions per prompt.
    pub n: u64,
    /// Longest prompt, in tokens.
    pub prompt_tokens: u64,
    pub max_new_tokens: u64,
    /// Sequences per micro-batch (scoring and backward).
    pub micro_batch: u64,
    /// Sequences per generation batch (0 counts as 1).
    pub gen_batch: u64,
    /// Whether the frozen init is held (the `--anchor init` anchor, or the `kl_init` metric).
    pub init: bool,
    /// Whether the anchor is the EMA (else the init).
    pub ema_anchor: bool,
    /// A reward model, its compute bytes per element and its batch size.
    pub reward_model: Option<(ModelShape, u64, u64)>,
    /// Bytes of one LM-head chunk (`super::chunked::DEFAULT_CHUNK_BYTES`).
    pub chunk_bytes: u64,
    /// A LoRA run (`--lora R`): only the adapters train.
    pub lora: Option<LoraShape>,
}

/// The adapters of a LoRA run, as the plan counts them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraShape {
    pub rank: u64,
    /// Σ r·(in + out) over the target modules.
    pub parameters: u64,
    /// Target modules per layer (the most of any layer).
    pub modules_per_layer: u64,
    /// Σ in over one layer's target modules (the most of any layer).
    pub inputs_per_layer: u64,
}

impl LoraShape {
    /// From the targets (path "model.layers.N.…", [out, in]).
    pub fn of(rank: u64, targets: &[(String, [i64; 2])]) -> LoraShape {
        let mut per_layer: std::collections::HashMap<&str, (u64, u64)> = Default::default();
        for (m, [_, i]) in targets {
            let layer = m.splitn(4, '.').take(3).last().unwrap_or("");
            let e = per_layer.entry(layer).or_default();
            e.0 += 1;
            e.1 += *i as u64;
        }
        LoraShape {
            rank,
            parameters: targets
                .iter()
                .map(|(_, [o, i])| rank * (*o as u64 + *i as u64))
                .sum(),
            modules_per_layer: per_layer.values().map(|v| v.0).max().unwrap_or(0),
            inputs_per_layer: per_layer.values().map(|v| v.1).max().unwrap_or(0),
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub what: &'static str,
    pub bytes: u64,
    /// How it was counted.
    pub how: String,
    pub phase: Phase,
}

/// When an item is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The whole run.
    Resident,
    /// While a generation batch is sampled.
    Generation,
    /// While a micro-batch is scored and back-propagated.
    Training,
    /// While the checkpoints are read (CPU: the mapped file counts in RSS).
    Loading,
}

/// The plan: its items and the peak they add up to.
#[derive(Debug, Clone)]
pub struct Plan {
    pub items: Vec<Item>,
    pub micro_batch: u64,
    pub gen_batch: u64,
}

/// The runtime's own footprint, outside the tensors: libtorch and the process on the CPU (a
/// 2-step `warp-rl` run of the built-in model, whose tensors take ~20 MB, peaked at 217 MiB RSS;
/// docs/PERFORMANCE.md); the CUDA context, cuBLAS workspaces and the caching allocator's slack
/// on a GPU (an estimate).
pub fn runtime_bytes(target: Target) -> u64 {
    match target {
        Target::Cpu => 200 << 20,
        Target::Cuda => 1 << 30,
    }
}

fn gib(b: u64) -> String {
    crate::io::writer::human_bytes(b)
}

/// The plan for `input` (see the module docs): what the whole run holds, the reward model, then
/// what a micro-batch's generation, its training and the loading of the checkpoint add.
pub fn plan(input: &PlanInput) -> Plan {
    let mut items = Items(Vec::new());
    let s = Sizes::of(input);
    resident_items(input, &s, &mut items);
    reward_items(input, &s, &mut items);
    generation_items(input, &s, &mut items);
    training_items(input, &s, &mut items);
    if input.target == Target::Cpu {
        items.add(
            "checkpoint mapping",
            input.model.checkpoint_bytes,
            "the file's pages while it is read (RSS)".into(),
            Phase::Loading,
        );
    }
    Plan {
        items: items.0,
        micro_batch: s.k,
        gen_batch: s.g,
    }
}

/// The plan's lines, in order.
struct Items(Vec<Item>);

impl Items {
    fn add(&mut self, what: &'static str, bytes: u64, how: String, phase: Phase) {
        self.0.push(Item {
            what,
            bytes,
            how,
            phase,
        });
    }
}

/// The sizes every part of the plan uses.
struct Sizes {
    /// Bytes per element of the compute dtype, and its name.
    e: u64,
    dt: &'static str,
    bf16: bool,
    /// Parameters.
    p: u64,
    /// Sequences per micro-batch, and micro-batches per step.
    k: u64,
    micro_batches: u64,
    /// Sequences per generation batch, and the most distinct prompts one of them holds.
    g: u64,
    u: u64,
    /// Positions of a sequence (prompt and completion).
    t: u64,
}

impl Sizes {
    fn of(input: &PlanInput) -> Sizes {
        let k = input.micro_batch.max(1);
        let total = (input.prompts * input.n).max(1);
        let g = input.gen_batch.clamp(1, total);
        let bf16 = input.precision == Precision::Bf16;
        Sizes {
            e: input.precision.bytes(),
            dt: if bf16 { "bf16" } else { "f32" },
            bf16,
            p: input.model.parameters,
            k,
            micro_batches: (input.prompts * input.n).div_ceil(k).max(1),
            g,
            u: prompt_groups_per_batch(total, input.n.max(1), g),
            t: input.prompt_tokens + input.max_new_tokens,
        }
    }
}

/// What the whole run holds: the runtime, the policy and its training state, the EMA, the init.
fn resident_items(input: &PlanInput, s: &Sizes, items: &mut Items) {
    let (p, e, dt) = (s.p, s.e, s.dt);
    use Phase::Resident;
    items.add(
        "runtime",
        runtime_bytes(input.target),
        match input.target {
            Target::Cpu => "libtorch and the process (measured)".into(),
            Target::Cuda => "CUDA context, workspaces, allocator slack (estimate)".into(),
        },
        Resident,
    );
    if let Some(l) = &input.lora {
        lora_items(l, s, items);
        return;
    }
    items.add(
        "policy weights",
        p * e,
        format!("{p} parameters × {e} B ({dt})"),
        Resident,
    );
    if s.bf16 {
        items.add("f32 master weights", 4 * p, format!("{p} × 4 B"), Resident);
    }
    items.add("gradients", p * e, format!("{p} × {e} B"), Resident);
    if s.bf16 && s.micro_batches > 1 {
        let mb = s.micro_batches;
        items.add(
            "f32 gradient sum",
            4 * p,
            format!("{p} × 4 B (bf16 gradients of {mb} micro-batches summed in f32)"),
            Resident,
        );
    }
    items.add(
        "Adam moments",
        8 * p,
        format!("{p} × 2 × 4 B (f32)"),
        Resident,
    );
    items.add("EMA", 4 * p, format!("{p} × 4 B (f32)"), Resident);
    if s.bf16 && input.ema_anchor {
        items.add(
            "EMA bf16 copy",
            2 * p,
            format!("{p} × 2 B, for the anchor forward"),
            Resident,
        );
    }
    if input.init {
        items.add("init", p * e, format!("{p} × {e} B, frozen"), Resident);
    }
}

/// A LoRA run's resident state: the frozen base once (the policy, the EMA and the init are
/// the base with their own adapters, or none), and the adapters' f32 factors, gradients, Adam
/// moments and EMA.
fn lora_items(l: &LoraShape, s: &Sizes, items: &mut Items) {
    let (p, e, dt) = (s.p, s.e, s.dt);
    let a = l.parameters;
    use Phase::Resident;
    items.add(
        "base weights",
        p * e,
        format!("{p} parameters × {e} B ({dt}), frozen; shared by the policy, EMA and init"),
        Resident,
    );
    let r = l.rank;
    items.add(
        "LoRA factors",
        4 * a,
        format!("{a} adapter parameters (rank {r}) × 4 B (f32)"),
        Resident,
    );
    items.add("LoRA gradients", 4 * a, format!("{a} × 4 B"), Resident);
    items.add(
        "Adam moments",
        8 * a,
        format!("{a} × 2 × 4 B (f32)"),
        Resident,
    );
    items.add(
        "EMA",
        4 * a,
        format!("{a} × 4 B (f32, the EMAs of A and B)"),
        Resident,
    );
}

/// A reward model: its weights for the whole run, its forward while a batch is scored.
fn reward_items(input: &PlanInput, s: &Sizes, items: &mut Items) {
    let Some((r, re, rb)) = &input.reward_model else {
        return;
    };
    let t = s.t;
    items.add(
        "reward model",
        r.parameters * re,
        format!("{} parameters × {re} B", r.parameters),
        Phase::Resident,
    );
    items.add(
        "reward model forward",
        rb * t * (r.transient_bytes_per_token(*re) + r.hidden * re),
        format!("{rb} sequences × {t} tokens, one layer at a time"),
        Phase::Training,
    );
}

/// The most prompt groups (runs of n sequences) that one of the batches of `g` consecutive
/// sequences out of `total` touches: the distinct prompts it prefills when the step's prompts
/// are distinct (`generate_batched` shares equal prompts).
fn prompt_groups_per_batch(total: u64, n: u64, g: u64) -> u64 {
    (0..total)
        .step_by(g.max(1) as usize)
        .map(|a| ((a + g).min(total) - 1) / n - a / n + 1)
        .max()
        .unwrap_or(1)
}

/// A generation batch: its KV cache, the shared prompts' cache, the prefill's temporaries and
/// one step's logits with the sampler's temporaries.
fn generation_items(input: &PlanInput, s: &Sizes, items: &mut Items) {
    let m = &input.model;
    let (g, u, t, e, w) = (s.g, s.u, s.t, s.e, input.prompt_tokens);
    let kv = 2 * m.layers * g * m.kv_heads * t * m.head_dim * e;
    use Phase::Generation;
    items.add(
        "KV cache",
        kv,
        format!(
            "2 × {} layers × {g} seqs × {} kv heads × {t} positions × {} × {e} B",
            m.layers, m.kv_heads, m.head_dim
        ),
        Generation,
    );
    if u < g {
        items.add(
            "shared prompts' KV cache",
            2 * m.layers * u * m.kv_heads * w * m.head_dim * e,
            format!("{u} distinct prompts × {w} positions, prefilled once for their samples"),
            Generation,
        );
    }
    let rows = u.min(g);
    items.add(
        "prefill temporaries",
        rows * w * m.transient_bytes_per_token(e) + 4 * rows * m.vocab,
        format!("{rows} prompts × {w} tokens, one layer at a time"),
        Generation,
    );
    items.add(
        "step logits and sampling",
        28 * g * m.vocab,
        format!(
            "[{g}, {}] × 28 B (logits, tempered, softmax, f64 CDF, comparison, allocator slack)",
            m.vocab
        ),
        Generation,
    );
}

/// A micro-batch's scoring and backward pass.
fn training_items(input: &PlanInput, s: &Sizes, items: &mut Items) {
    let m = &input.model;
    let (k, t, e) = (s.k, s.t, s.e);
    use Phase::Training;
    let per = m.activation_bytes_per_token_layer(e);
    items.add(
        "activations",
        k * t * m.layers * per + k * t * m.hidden * (4 + 2 * e),
        format!(
            "{k} seqs × {t} tokens × {} layers × {per} B (saved for backward), + embeddings",
            m.layers
        ),
        Training,
    );
    if let Some(l) = &input.lora {
        // Saved for backward by each adapter: A·x (r values, f32) and, when the base is not
        // f32, the input cast to f32.
        let cast = if s.bf16 { 4 * l.inputs_per_layer } else { 0 };
        let per_l = 4 * l.rank * l.modules_per_layer + cast;
        items.add(
            "LoRA activations",
            k * t * m.layers * per_l,
            format!(
                "{k} seqs × {t} tokens × {} layers × {per_l} B (A·x, f32 inputs)",
                m.layers
            ),
            Training,
        );
    }
    let others = 1 + u64::from(input.init && input.ema_anchor);
    items.add(
        "anchor/init hidden states",
        others * k * t * m.hidden * e + k * t * m.transient_bytes_per_token(e),
        format!("{others} no-graph forward(s) of {k} seqs × {t} tokens"),
        Training,
    );
    items.add(
        "backward temporaries",
        k * t * per + 2 * k * t * m.hidden * e,
        "one layer's activation gradients, the hidden-state gradient".into(),
        Training,
    );
    // A chunk is at most the micro-batch's completion positions.
    let chunk = input
        .chunk_bytes
        .min(4 * k * input.max_new_tokens * m.vocab);
    items.add(
        "LM-head chunks",
        6 * chunk,
        format!(
            "6 × {} ([chunk, vocab] f32 logits and temporaries)",
            gib(chunk)
        ),
        Training,
    );
}

impl Plan {
    fn sum(&self, phase: Phase) -> u64 {
        self.items
            .iter()
            .filter(|i| i.phase == phase)
            .map(|i| i.bytes)
            .sum()
    }

    /// Bytes held for the whole run.
    pub fn resident(&self) -> u64 {
        self.sum(Phase::Resident)
    }

    /// The estimated peak: the resident part plus the largest of generation, training and
    /// loading.
    pub fn peak(&self) -> u64 {
        self.resident()
            + self
                .sum(Phase::Generation)
                .max(self.sum(Phase::Training))
                .max(self.sum(Phase::Loading))
    }

    /// The plan as an aligned text table (for `--dry-run`).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let section = |phase: Phase, title: &str, s: &mut String| {
            let rows: Vec<&Item> = self.items.iter().filter(|i| i.phase == phase).collect();
            if rows.is_empty() {
                return;
            }
            s.push_str(&format!("{title} ({}):\n", gib(self.sum(phase))));
            for i in rows {
                s.push_str(&format!(
                    "  {:<26} {:>12}   {}\n",
                    i.what,
                    gib(i.bytes),
                    i.how
                ));
            }
        };
        section(Phase::Resident, "resident", &mut s);
        section(
            Phase::Generation,
            &format!("generation, per generation batch of {}", self.gen_batch),
            &mut s,
        );
        section(
            Phase::Training,
            &format!("training, per micro-batch of {}", self.micro_batch),
            &mut s,
        );
        section(Phase::Loading, "loading", &mut s);
        s.push_str(&format!("estimated peak: {}\n", gib(self.peak())));
        s
    }
}

/// Checks `input`'s plan against `limit` bytes; when it does not fit, the error says by how much
/// and which micro-batch would fit (the largest that does, preferring multiples of n), or that
/// none would.
pub fn check_fits(input: &PlanInput, limit: u64) -> Result<Plan> {
    let p = plan(input);
    if p.peak() <= limit {
        return Ok(p);
    }
    // A smaller micro-batch with a generation batch no larger (what `--gen-batch 0` resolves
    // to at that micro-batch takes no more than training it or generating it).
    let at = |k: u64| {
        plan(&PlanInput {
            micro_batch: k,
            gen_batch: input.gen_batch.min(k),
            ..input.clone()
        })
    };
    let fits = |k: u64| at(k).peak() <= limit;
    let ks: Vec<u64> = (1..input.micro_batch.max(1)).rev().collect();
    let best = ks
        .iter()
        .copied()
        .find(|&k| k % input.n.max(1) == 0 && fits(k))
        .or_else(|| ks.iter().copied().find(|&k| fits(k)));
    let msg = match best {
        Some(k) => format!(
            "the run needs about {} at micro-batch {} (see the plan), more than the {} allowed; \
             micro-batch {k} would fit (about {}, with --gen-batch 0 or at most {k})",
            gib(p.peak()),
            p.micro_batch,
            gib(limit),
            gib(at(k).peak())
        ),
        None => format!(
            "the run needs about {} at micro-batch {}, more than the {} allowed, and no \
             micro-batch fits: the resident part alone (weights, master copy, gradients, Adam, \
             EMA, init, reward model) is {}",
            gib(p.peak()),
            p.micro_batch,
            gib(limit),
            gib(p.resident())
        ),
    };
    Err(Error::setting("max_memory", msg))
}

/// Activations (generation or training, whichever is larger) that an automatic micro-batch may
/// take: 512 MiB on the CPU, 16 GiB on a GPU.
pub fn auto_activation_budget(target: Target) -> u64 {
    match target {
        Target::Cpu => 512 << 20,
        Target::Cuda => 16 << 30,
    }
}

/// The micro-batch `--micro-batch 0` stands for: the largest multiple of n (up to the whole
/// batch) whose per-micro-batch part of the plan fits [`auto_activation_budget`]; if not even n
/// sequences fit, the largest smaller micro-batch that does (at least 1).
pub fn auto_micro_batch(input: &PlanInput) -> u64 {
    let total = (input.prompts * input.n).max(1);
    let budget = auto_activation_budget(input.target);
    let per_micro_batch = |k: u64| {
        let p = plan(&PlanInput {
            micro_batch: k,
            ..input.clone()
        });
        p.sum(Phase::Generation).max(p.sum(Phase::Training))
    };
    let n = input.n.max(1);
    let mut k = total - total % n;
    while k >= n {
        if per_micro_batch(k) <= budget {
            return k;
        }
        k -= n;
    }
    (1..n.min(total))
        .rev()
        .find(|&k| per_micro_batch(k) <= budget)
        .unwrap_or(1)
}

/// The generation batch `--gen-batch 0` stands for, at `input`'s micro-batch: the largest
/// multiple of n (up to the whole batch) whose generation part of the plan takes no more than
/// the larger of training one micro-batch and generating it (so the plan's peak does not grow),
/// and at most [`auto_activation_budget`]; if not even n sequences fit, the largest smaller
/// batch that does (at least 1).
pub fn auto_gen_batch(input: &PlanInput) -> u64 {
    let total = (input.prompts * input.n).max(1);
    let at = |g: u64| {
        plan(&PlanInput {
            gen_batch: g,
            ..input.clone()
        })
    };
    let k = at(input.micro_batch.max(1).min(total));
    let limit = k
        .sum(Phase::Training)
        .max(k.sum(Phase::Generation))
        .min(auto_activation_budget(input.target));
    let fits = |g: u64| at(g).sum(Phase::Generation) <= limit;
    let n = input.n.max(1);
    let mut g = total - total % n;
    while g >= n {
        if fits(g) {
            return g;
        }
        g -= n;
    }
    (1..n.min(total)).rev().find(|&g| fits(g)).unwrap_or(1)
}

/// What a run's settings come to before anything is loaded: the plan, and the device, dtype and
/// micro-batch that `auto` / 0 resolve to.
pub struct RunPlan {
    pub input: PlanInput,
    pub plan: Plan,
    pub device: tch::Device,
    pub dtype: super::settings::TrainDtype,
    pub micro_batch: usize,
    pub gen_batch: usize,
}

impl RunPlan {
    /// The plan with the settings it resolved, as text (what `warp rl --dry-run` prints).
    pub fn report(&self) -> String {
        let i = &self.input;
        format!(
            "model: {} parameters, {} layers, hidden {}, vocab {}\n\
             device: {}, dtype: {}, micro-batch: {} of {} sequences ({} prompts × {}), \
             generation batch: {}, {} prompt + {} new tokens\n{}{}",
            i.model.parameters,
            i.model.layers,
            i.model.hidden,
            i.model.vocab,
            match self.device {
                tch::Device::Cuda(n) => format!("cuda:{n}"),
                _ => "cpu".to_string(),
            },
            match self.dtype {
                super::settings::TrainDtype::Bf16 => "bf16",
                _ => "f32",
            },
            self.micro_batch,
            i.prompts * i.n,
            i.prompts,
            i.n,
            self.gen_batch,
            i.prompt_tokens,
            i.max_new_tokens,
            match &i.lora {
                None => String::new(),
                Some(l) => format!(
                    "LoRA: rank {}, {} adapter parameters (the base is frozen)\n",
                    l.rank, l.parameters
                ),
            },
            self.plan.table()
        )
    }
}

/// The plan of the run `cfg` describes, from config.json and the checkpoint headers of the
/// model (and of a `model:` reward), its tokenizer and the prompt file; no weights are loaded.
/// Hub ids are resolved (downloaded into the cache) first.
pub fn for_run(
    cfg: &super::settings::RlConfig,
    reporter: &dyn crate::progress::Reporter,
) -> Result<RunPlan> {
    use super::settings::{Anchor, TrainDtype};
    let device = super::tch_device(cfg.device)?;
    let cuda = device.is_cuda();
    let dtype = cfg.dtype.resolve(cuda);
    let spec = crate::builtin::resolve_spec(&cfg.model)?;
    let ck = crate::hub::open_checkpoint(&spec, &crate::hub::HubOptions::from_env(), reporter)?;
    let model = ModelShape::from_checkpoint(&ck)?;
    let mut tok = super::tokenizer::Tokenizer::from_dir(&ck.dir)?;
    tok.set_chat_template(&cfg.chat_template)?;
    let prompts = crate::builtin::resolve_path(&cfg.prompts)?;
    // Encoded as the trainer encodes them (conversation lines through the chat template).
    let lines = super::data::read_prompt_lines(&prompts)?;
    let prompt_tokens = tok
        .encode_prompt_lines(&cfg.prompts, &lines)?
        .iter()
        .map(|ids| ids.len() as u64)
        .max()
        .unwrap_or(0);
    let reward_model = match cfg.reward.split_once(':') {
        Some(("model", path)) if !path.is_empty() => {
            let path = crate::builtin::resolve_spec(path)?;
            let p = crate::hub::resolve_checkpoint(
                &path,
                &crate::hub::HubOptions::from_env(),
                reporter,
            )?;
            Some((
                ModelShape::from_path(&p)?,
                if cuda { 2 } else { 4 },
                cfg.reward_batch as u64,
            ))
        }
        _ => None,
    };
    let mut input = PlanInput {
        model,
        target: if cuda { Target::Cuda } else { Target::Cpu },
        precision: match dtype {
            TrainDtype::Bf16 => Precision::Bf16,
            _ => Precision::F32,
        },
        prompts: cfg.batch as u64,
        n: cfg.n as u64,
        prompt_tokens,
        max_new_tokens: cfg.max_new_tokens as u64,
        micro_batch: cfg.micro_batch as u64,
        gen_batch: cfg.gen_batch as u64,
        init: cfg.anchor == Anchor::Init || cfg.metrics_every > 0,
        ema_anchor: cfg.anchor == Anchor::Ema,
        reward_model,
        chunk_bytes: super::chunked::DEFAULT_CHUNK_BYTES,
        lora: match cfg.lora {
            None => None,
            Some(r) => {
                let config = ModelConfig::from_dir(&ck.dir)?;
                let targets = super::model::lora_targets(&config, &cfg.lora_target_names())?;
                Some(LoraShape::of(r as u64, &targets))
            }
        },
    };
    if input.micro_batch == 0 {
        input.micro_batch = auto_micro_batch(&input);
    }
    input.micro_batch = input.micro_batch.min(input.prompts * input.n).max(1);
    if input.gen_batch == 0 {
        input.gen_batch = auto_gen_batch(&input);
    }
    input.gen_batch = input.gen_batch.min(input.prompts * input.n).max(1);
    Ok(RunPlan {
        plan: plan(&input),
        micro_batch: input.micro_batch as usize,
        gen_batch: input.gen_batch as usize,
        input,
        device,
        dtype,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ModelShape {
        ModelShape {
            parameters: 1_000_000,
            checkpoint_bytes: 4_000_000,
            hidden: 128,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            intermediate: 352,
            vocab: 32,
        }
    }

    fn input(k: u64, precision: Precision) -> PlanInput {
        PlanInput {
            model: shape(),
            target: Target::Cpu,
            precision,
            prompts: 16,
            n: 4,
            prompt_tokens: 10,
            max_new_tokens: 6,
            micro_batch: k,
            gen_batch: k,
            init: true,
            ema_anchor: true,
            reward_model: None,
            chunk_bytes: 1 << 20,
            lora: None,
        }
    }

    fn item(p: &Plan, what: &str) -> Option<u64> {
        p.items.iter().find(|i| i.what == what).map(|i| i.bytes)
    }

    #[test]
    fn resident_states_follow_the_precision() {
        let f = plan(&input(64, Precision::F32));
        assert_eq!(item(&f, "policy weights"), Some(4_000_000));
        assert_eq!(item(&f, "f32 master weights"), None);
        assert_eq!(item(&f, "Adam moments"), Some(8_000_000));
        assert_eq!(item(&f, "EMA"), Some(4_000_000));
        let b = plan(&input(16, Precision::Bf16));
        assert_eq!(item(&b, "policy weights"), Some(2_000_000));
        assert_eq!(item(&b, "f32 master weights"), Some(4_000_000));
        // 64 sequences in micro-batches of 16: bf16 gradients summed in f32.
        assert_eq!(item(&b, "f32 gradient sum"), Some(4_000_000));
        assert_eq!(item(&b, "EMA bf16 copy"), Some(2_000_000));
    }

    #[test]
    fn lora_counts_the_adapters_state_and_the_base_once() {
        // 4 layers × (q [128, 128] and v [64, 128]), rank 8.
        let targets: Vec<(String, [i64; 2])> = (0..4)
            .flat_map(|i| {
                [
                    (format!("model.layers.{i}.self_attn.q_proj"), [128, 128]),
                    (format!("model.layers.{i}.self_attn.v_proj"), [64, 128]),
                ]
            })
            .collect();
        let l = LoraShape::of(8, &targets);
        assert_eq!(l.parameters, 4 * 8 * (256 + 192));
        assert_eq!((l.modules_per_layer, l.inputs_per_layer), (2, 256));
        for precision in [Precision::F32, Precision::Bf16] {
            let mut i = input(16, precision);
            i.lora = Some(l.clone());
            let p = plan(&i);
            let a = l.parameters;
            assert_eq!(
                item(&p, "base weights"),
                Some(1_000_000 * precision.bytes())
            );
            assert_eq!(item(&p, "LoRA factors"), Some(4 * a));
            assert_eq!(item(&p, "LoRA gradients"), Some(4 * a));
            assert_eq!(item(&p, "Adam moments"), Some(8 * a));
            assert_eq!(item(&p, "EMA"), Some(4 * a));
            for gone in ["policy weights", "f32 master weights", "gradients", "init"] {
                assert_eq!(item(&p, gone), None, "{gone}");
            }
            assert!(item(&p, "LoRA activations").unwrap() > 0);
            assert!(p.resident() < plan(&input(16, precision)).resident());
        }
    }

    #[test]
    fn kv_cache_is_counted_exactly() {
        // 2 × 4 layers × 8 seqs × 2 kv heads × 16 positions × 32 × 4 B.
        let p = plan(&input(8, Precision::F32));
        assert_eq!(item(&p, "KV cache"), Some(2 * 4 * 8 * 2 * 16 * 32 * 4));
    }

    #[test]
    fn generation_has_its_own_batch_and_shares_prompts() {
        // Generation items follow the generation batch, not the micro-batch.
        let at = |k, g| {
            plan(&PlanInput {
                gen_batch: g,
                ..input(k, Precision::F32)
            })
        };
        assert_eq!(item(&at(8, 32), "KV cache"), item(&at(64, 32), "KV cache"));
        assert_eq!(
            item(&at(8, 32), "KV cache"),
            Some(2 * 4 * 32 * 2 * 16 * 32 * 4)
        );
        // 32 sequences = 8 prompts × 4 samples: 8 prompts of 10 tokens prefilled once.
        assert_eq!(
            item(&at(8, 32), "shared prompts' KV cache"),
            Some(2 * 4 * 8 * 2 * 10 * 32 * 4)
        );
        // One sample per prompt: nothing shared.
        let single = plan(&PlanInput {
            n: 1,
            ..input(8, Precision::F32)
        });
        assert_eq!(item(&single, "shared prompts' KV cache"), None);
        // Distinct prompts a batch of g consecutive sequences touches (groups of n = 4).
        assert_eq!(prompt_groups_per_batch(20, 4, 3), 2);
        assert_eq!(prompt_groups_per_batch(8, 4, 8), 2);
        assert_eq!(prompt_groups_per_batch(12, 4, 10), 3);
        assert_eq!(prompt_groups_per_batch(16, 4, 5), 2);
        assert_eq!(prompt_groups_per_batch(5, 1, 5), 5);
        // Auto: the largest multiple of n whose generation takes at most the larger of training
        // and generating one micro-batch; here (a tiny model) the whole batch.
        let mut auto = input(8, Precision::F32);
        auto.gen_batch = 0;
        let g = auto_gen_batch(&auto);
        assert_eq!(g, 64);
        let limit = {
            let p = at(8, 8);
            p.sum(Phase::Training).max(p.sum(Phase::Generation))
        };
        assert!(at(8, g).sum(Phase::Generation) <= limit);
        // A vocabulary large enough that the step logits dominate: fewer sequences, still a
        // multiple of n, and the next multiple would not fit.
        auto.model.vocab = 4_000_000;
        let g = auto_gen_batch(&auto);
        let gen = |g| {
            plan(&PlanInput {
                gen_batch: g,
                ..auto.clone()
            })
            .sum(Phase::Generation)
        };
        let lim = {
            let p = plan(&PlanInput {
                gen_batch: 8,
                ..auto.clone()
            });
            p.sum(Phase::Training)
                .max(p.sum(Phase::Generation))
                .min(512 << 20)
        };
        assert!(g < 64 && g % 4 == 0, "{g}");
        assert!(gen(g) <= lim && gen(g + 4) > lim, "{g}");
    }

    #[test]
    fn activations_scale_with_the_micro_batch() {
        let a = |k| item(&plan(&input(k, Precision::F32)), "activations").unwrap();
        assert_eq!(a(16), 2 * a(8));
        assert!(plan(&input(64, Precision::F32)).peak() > plan(&input(8, Precision::F32)).peak());
    }

    #[test]
    fn auto_micro_batch_is_the_largest_multiple_of_n_within_the_budget() {
        // Tiny model: the whole batch fits.
        assert_eq!(auto_micro_batch(&input(0, Precision::F32)), 64);
        // A model whose activations per sequence are ~100 MB: only a few sequences fit.
        let mut big = input(0, Precision::F32);
        big.model.hidden = 4096;
        big.model.intermediate = 16384;
        big.model.layers = 24;
        big.model.heads = 32;
        big.model.kv_heads = 8;
        big.model.head_dim = 128;
        let per = |m: &PlanInput, k| {
            let p = plan(&PlanInput {
                micro_batch: k,
                ..m.clone()
            });
            p.sum(Phase::Generation).max(p.sum(Phase::Training))
        };
        let budget = 512 << 20;
        // The rule, checked against the plan itself: the largest multiple of n that fits, else
        // (not even one prompt group fits) the largest smaller micro-batch that does.
        for layers in [2, 6, 24, 96] {
            big.model.layers = layers;
            let k = auto_micro_batch(&big);
            assert!(k < 64, "{layers} layers: {k}");
            if k >= 4 {
                assert_eq!(k % 4, 0, "{layers} layers: {k}");
                assert!(
                    per(&big, k) <= budget && per(&big, k + 4) > budget,
                    "{layers}: {k}"
                );
            } else {
                assert!(per(&big, 4) > budget, "{layers} layers: {k}");
                assert!(k == 1 || per(&big, k) <= budget, "{layers} layers: {k}");
                assert!(per(&big, k + 1) > budget, "{layers} layers: {k}");
            }
        }
    }

    #[test]
    fn check_fits_names_a_micro_batch_that_fits() {
        let big = input(64, Precision::F32);
        let need = plan(&big).peak();
        let at8 = plan(&input(8, Precision::F32)).peak();
        assert!(check_fits(&big, need).is_ok());
        let err = check_fits(&big, at8).unwrap_err().to_string();
        assert!(err.contains("micro-batch 8 would fit"), "{err}");
        let none = check_fits(&big, 1000).unwrap_err().to_string();
        assert!(none.contains("no micro-batch fits"), "{none}");
    }
}

/// The settings the plan of an evaluation (`warp eval`) depends on.
#[derive(Debug, Clone)]
pub struct EvalPlanInput {
    /// The SFT model's shape (every evaluated checkpoint has the same).
    pub model: ModelShape,
    pub target: Target,
    /// Longest prompt, in tokens.
    pub prompt_tokens: u64,
    pub max_new_tokens: u64,
    /// Sequences sampled and scored at a time.
    pub batch: u64,
    /// Samples per prompt (consecutive: a batch's rows share their prompts' prefill).
    pub samples: u64,
    /// Bytes of one LM-head chunk of the KL scoring.
    pub chunk_bytes: u64,
    /// Bytes of tokenizer.json (the tokenizer's maps in memory are counted as 16 times that).
    pub tokenizer_bytes: u64,
    /// The largest PEFT adapter evaluated (on its base: the base takes the evaluated model's
    /// place), if any.
    pub adapter: Option<crate::rl::eval_lora::AdapterSize>,
}

/// The plan of an evaluation (f32 models): the reference (SFT) model and the checkpoint being
/// measured for the whole run; per batch, its sampling (KV cache, prefill, the `[batch, vocab]`
/// logits of a step and the sampler's temporaries) or its KL scoring (a no-graph forward of
/// each model, their completion-position hidden states, the LM-head chunks of
/// `super::chunked`: no `[batch, length, vocab]` tensor).
pub fn eval_plan(input: &EvalPlanInput) -> Plan {
    let m = &input.model;
    let (b, e) = (input.batch.max(1), 4);
    let t = input.prompt_tokens + input.max_new_tokens;
    let mut items = Items(Vec::new());
    items.add(
        "runtime",
        runtime_bytes(input.target),
        "libtorch and the process".into(),
        Phase::Resident,
    );
    items.add(
        "SFT model",
        m.parameters * e,
        format!("{} parameters × 4 B (KL reference)", m.parameters),
        Phase::Resident,
    );
    items.add(
        "evaluated model",
        m.parameters * e,
        format!("{} parameters × 4 B", m.parameters),
        Phase::Resident,
    );
    items.add(
        "tokenizer",
        16 * input.tokenizer_bytes,
        "16 × tokenizer.json".into(),
        Phase::Resident,
    );
    items.add(
        "KV cache",
        2 * m.layers * b * m.kv_heads * t * m.head_dim * e,
        format!("{b} seqs × {t} positions"),
        Phase::Generation,
    );
    // A batch of b consecutive rows spans at most ⌈(b − 1)/n⌉ + 1 prompts, each prefilled once
    // and its cache copied to its samples (`generate_batched`).
    let w = input.prompt_tokens;
    let n = input.samples.max(1);
    let u = b.min((b - 1).div_ceil(n) + 1);
    if u < b {
        items.add(
            "shared prompts' KV cache",
            2 * m.layers * u * m.kv_heads * w * m.head_dim * e,
            format!("{u} distinct prompts × {w} positions, prefilled once for their samples"),
            Phase::Generation,
        );
    }
    items.add(
        "sampling temporaries",
        u * w * m.transient_bytes_per_token(e) + 28 * b * m.vocab,
        format!(
            "the prefill of {u} prompts, one layer at a time; [{b}, {}] × 28 B (logits, \
             tempered, softmax, f64 CDF, comparison, allocator slack)",
            m.vocab
        ),
        Phase::Generation,
    );
    items.add(
        "scoring forwards",
        b * t * m.transient_bytes_per_token(e) + 2 * b * t * m.hidden * e,
        format!("{b} seqs × {t} tokens, one layer at a time, both models' hidden states"),
        Phase::Training,
    );
    let chunk = input
        .chunk_bytes
        .min(4 * b * input.max_new_tokens * m.vocab);
    items.add(
        "LM-head chunks",
        8 * chunk,
        format!("8 × {} ([chunk, vocab] f32, both models)", gib(chunk)),
        Phase::Training,
    );
    if let Some(a) = input.adapter {
        eval_adapter_items(&mut items, m, a, b, input.prompt_tokens, t);
    }
    if input.target == Target::Cpu {
        items.add(
            "checkpoint mapping",
            m.checkpoint_bytes,
            "the file's pages while it is read (RSS)".into(),
            Phase::Loading,
        );
    }
    Plan {
        items: items.0,
        micro_batch: b,
        gen_batch: b,
    }
}

/// An evaluated PEFT adapter: its f32 factors, resident with its base (counted as the evaluated
/// model), and the forward's extra temporaries in the widest adapted module, one module at a
/// time: A·x `[seqs, tokens, r]` and s·B·(A·x) and the sum `[seqs, tokens, out]`, f32.
fn eval_adapter_items(
    items: &mut Items,
    m: &ModelShape,
    a: crate::rl::eval_lora::AdapterSize,
    b: u64,
    prompt_tokens: u64,
    t: u64,
) {
    items.add(
        "adapter factors",
        4 * a.parameters,
        format!("{} LoRA parameters × 4 B (rank {})", a.parameters, a.rank),
        Phase::Resident,
    );
    let out = m.intermediate.max(m.hidden).max(m.heads * m.head_dim);
    let per_token = 4 * (a.rank + 2 * out);
    items.add(
        "LoRA temporaries (sampling)",
        b * prompt_tokens * per_token,
        format!("{b} seqs × {prompt_tokens} prompt tokens × (r + 2·{out}) × 4 B"),
        Phase::Generation,
    );
    items.add(
        "LoRA temporaries (scoring)",
        b * t * per_token,
        format!("{b} seqs × {t} tokens × (r + 2·{out}) × 4 B"),
        Phase::Training,
    );
}

/// The evaluation batch: the largest up to `max_batch` whose per-batch part of [`eval_plan`]
/// fits [`auto_activation_budget`] and, with `limit`, whose peak fits `limit` (at least 1);
/// an error on the setting `max_memory` when not even one sequence fits the limit.
pub fn eval_batch(input: &EvalPlanInput, max_batch: u64, limit: Option<u64>) -> Result<Plan> {
    let budget = auto_activation_budget(input.target);
    let at = |b: u64| {
        eval_plan(&EvalPlanInput {
            batch: b,
            ..input.clone()
        })
    };
    let fits = |p: &Plan| limit.map_or(true, |l| p.peak() <= l);
    let mut b = max_batch.max(1);
    loop {
        let p = at(b);
        let per_batch = p.sum(Phase::Generation).max(p.sum(Phase::Training));
        if (per_batch <= budget && fits(&p)) || (b == 1 && fits(&p)) {
            return Ok(p);
        }
        if b == 1 {
            return Err(Error::setting(
                "max_memory",
                format!(
                    "the evaluation needs about {} with one sequence at a time (the two models \
                     alone take {}), more than the {} allowed",
                    gib(p.peak()),
                    gib(p.resident()),
                    gib(limit.unwrap_or(0))
                ),
            ));
        }
        b = (b * 3 / 4).max(1).min(b - 1);
    }
}

#[cfg(test)]
mod eval_lora_tests {
    use super::*;
    use crate::rl::eval_lora::AdapterSize;

    /// An adapter among the evaluated points adds its f32 factors to the resident part and, per
    /// sequence and token, (r + 2·widest output) × 4 B to sampling and scoring: closed forms.
    #[test]
    fn an_evaluated_adapter_adds_its_factors_and_temporaries() {
        let m = ModelShape {
            parameters: 1_000_000,
            checkpoint_bytes: 4_000_000,
            hidden: 128,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            intermediate: 352,
            vocab: 32,
        };
        let full = EvalPlanInput {
            model: m,
            target: Target::Cpu,
            prompt_tokens: 10,
            max_new_tokens: 6,
            batch: 8,
            samples: 1,
            chunk_bytes: 1 << 20,
            tokenizer_bytes: 0,
            adapter: None,
        };
        let a = AdapterSize {
            parameters: 40_000,
            rank: 16,
        };
        let (p0, p1) = (
            eval_plan(&full),
            eval_plan(&EvalPlanInput {
                adapter: Some(a),
                ..full.clone()
            }),
        );
        assert_eq!(p1.resident() - p0.resident(), 4 * 40_000);
        let per_token = 4 * (16 + 2 * 352);
        assert_eq!(
            p1.sum(Phase::Generation) - p0.sum(Phase::Generation),
            8 * 10 * per_token
        );
        assert_eq!(
            p1.sum(Phase::Training) - p0.sum(Phase::Training),
            8 * 16 * per_token
        );
    }
}
