//! Generated tokens/s of `warp::rl::generate` on the CPU (f32), the counterpart of
//! `bench/hf_generate.py` (transformers' `generate`); `bench/generate.sh` runs both interleaved.
//!
//!     cargo run --release --features rl --example gen_bench -- MODEL_DIR \
//!         [--batch 1] [--n 1] [--gen-batch 0] [--prompt-len 16] [--new-tokens 64] [--reps 5] \
//!         [--threads N] [--seed 0]
//!
//! Pure sampling (temperature 1, no top-k / top-p) with no EOS stop, so every row yields exactly
//! `--new-tokens` tokens. `--n N` samples N completions of each of the `--batch` prompts as the
//! RL trainer does (`generate_batched`: each prompt prefilled once, `--gen-batch` sequences at a
//! time, 0 = all), against transformers' `num_return_sequences`; without it, plain `generate`. One untimed warm-up call, then one JSON line per timed call and a last
//! line with the median. Prompt ids are `prompt_ids` below, the same formula as the Python side.

use std::error::Error;
use std::process::ExitCode;
use std::time::Instant;

use tch::Device;
use warp::rl::{generate, generate_batched, Batching, CausalLm, GenerateOptions};

struct Args {
    model: String,
    batch: usize,
    n: Option<usize>,
    gen_batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    reps: usize,
    threads: Option<i32>,
    seed: u64,
}

const USAGE: &str = "usage: gen_bench MODEL_DIR [--batch B] [--n N] [--gen-batch G] \
                     [--prompt-len P] [--new-tokens N] [--reps R] [--threads T] [--seed S]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: String::new(),
        batch: 1,
        n: None,
        gen_batch: 0,
        prompt_len: 16,
        new_tokens: 64,
        reps: 5,
        threads: None,
        seed: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if !arg.starts_with("--") {
            if !a.model.is_empty() {
                return Err(USAGE.into());
            }
            a.model = arg;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
        let bad = |_| format!("{arg}: not a number: {value}");
        match arg.as_str() {
            "--batch" => a.batch = value.parse().map_err(bad)?,
            "--n" => a.n = Some(value.parse().map_err(bad)?),
            "--gen-batch" => a.gen_batch = value.parse().map_err(bad)?,
            "--prompt-len" => a.prompt_len = value.parse().map_err(bad)?,
            "--new-tokens" => a.new_tokens = value.parse().map_err(bad)?,
            "--reps" => a.reps = value.parse().map_err(bad)?,
            "--threads" => a.threads = Some(value.parse().map_err(bad)?),
            "--seed" => a.seed = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown flag {arg}\n{USAGE}")),
        }
    }
    if a.model.is_empty() || a.batch == 0 || a.n == Some(0) || a.prompt_len == 0 || a.reps == 0 {
        return Err(USAGE.into());
    }
    Ok(a)
}

/// Deterministic prompts avoiding ids 0–2 (pad / bos / eos in our fixtures); the Python side
/// uses the same formula, so both runs see identical inputs.
fn prompt_ids(batch: usize, len: usize, vocab: usize) -> Vec<Vec<i64>> {
    (0..batch)
        .map(|i| {
            (0..len)
                .map(|j| (3 + (i * 131 + j * 17) % (vocab - 3)) as i64)
                .collect()
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn main() -> ExitCode {
    // Display, not the Debug that returning the error from main would print.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let a = parse_args()?;
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let threads = tch::get_num_threads();
    let model = CausalLm::load(&a.model, Device::Cpu)?;
    let prompts = prompt_ids(a.batch, a.prompt_len, model.config.vocab_size);
    // With --n: each prompt repeated for its samples, as a training step lays them out.
    let rows: Vec<Vec<i64>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat(p.clone()).take(a.n.unwrap_or(1)))
        .collect();
    let how = Batching {
        batch: a.gen_batch,
        ..Batching::default()
    };
    let sample = |opts: &GenerateOptions| -> Result<Vec<Vec<i64>>, Box<dyn Error>> {
        Ok(match a.n {
            None => generate(&model, &prompts, opts)?.completions,
            Some(_) => generate_batched(&model, &rows, opts, &how)?.completions,
        })
    };
    let opts = GenerateOptions {
        max_new_tokens: a.new_tokens,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: a.seed,
        eos_ids: Vec::new(),
        pad_id: 0,
        record_logits: false,
    };
    let tokens = (rows.len() * a.new_tokens) as f64;
    let header = format!(
        r#""impl":"warp","model":{},"batch":{},"n":{},"gen_batch":{},"prompt_len":{},"new_tokens":{},"threads":{threads}"#,
        serde_json::to_string(&a.model)?,
        a.batch,
        a.n.unwrap_or(1),
        a.gen_batch,
        a.prompt_len,
        a.new_tokens
    );
    // Warm-up: first-call allocations and libtorch's lazy initialisation stay out of the timings.
    sample(&opts)?;
    let mut rates = Vec::with_capacity(a.reps);
    for rep in 0..a.reps {
        let start = Instant::now();
        let out = sample(&opts)?;
        let secs = start.elapsed().as_secs_f64();
        if out.len() != rows.len() || out.iter().any(|c| c.len() != a.new_tokens) {
            return Err("a row produced fewer tokens than --new-tokens".into());
        }
        rates.push(tokens / secs);
        println!(
            r#"{{{header},"rep":{rep},"seconds":{secs:.6},"tokens_per_s":{:.2}}}"#,
            tokens / secs
        );
    }
    println!(
        r#"{{{header},"reps":{},"median_tokens_per_s":{:.2}}}"#,
        a.reps,
        median(&rates)
    );
    Ok(())
}
