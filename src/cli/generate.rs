//! `warp generate`: completions of a checkpoint for prompts, as JSONL on stdout — to look at what
//! a model says before and after RL or a merge.

use std::path::PathBuf;

use super::common::parse_threads;
use super::Ctx;
use crate::device::Device;
use crate::rl::chat::TemplateChoice;

/// Completions of a checkpoint for prompts, as JSONL on stdout.
///
/// Prompts come from --prompt (repeatable: plain text, or with --chat a one-turn conversation)
/// and --prompts FILE (JSONL lines {"prompt": "…"}, plain, or {"messages": [{"role": …,
/// "content": …}, …]}, rendered with the chat template with the generation prompt added). Each
/// completion is one line on stdout: {"index", "sample", "prompt" or "messages", "completion",
/// "token_ids", "finish_reason" ("eos" or "length"), "prompt_tokens"}, in prompt order. Sampling
/// stops at any EOS id of generation_config.json and config.json. Progress goes to stderr. Needs
/// the `rl` feature.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model: a checkpoint folder, a hub id org/name[@rev], or builtin:arith/model.
    #[arg(value_name = "MODEL")]
    model: String,
    /// A prompt (repeatable): plain text encoded with the tokenizer's special tokens, or with
    /// --chat a user message rendered with the chat template.
    #[arg(long = "prompt", value_name = "TEXT")]
    prompt: Vec<String>,
    /// Prompt file (JSONL, plain and/or conversation lines), after the --prompt ones.
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Each --prompt is a one-turn conversation (a user message) rendered with the chat template.
    #[arg(long)]
    chat: bool,
    /// Chat template of conversations: auto (the model's own), none (refuse them), or a Jinja
    /// file (or the name of one of the model's named templates).
    #[arg(long, value_name = "auto|none|FILE", default_value_t = TemplateChoice::Auto)]
    chat_template: TemplateChoice,
    /// Greedy decoding (temperature 0).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    greedy: bool,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Sample among the K most likely tokens only (0: all).
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens that hold this much probability (1: all).
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    top_p: f64,
    /// Longest completion, in tokens.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_new_tokens: usize,
    /// Completions per prompt.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1)]
    samples: usize,
    /// Seed of the samples: the same seed, prompts, batch size and model give the same output.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sequences per generation batch.
    #[arg(long, value_name = "N", default_value_t = 16)]
    batch_size: usize,
    /// Compute in bfloat16 (weights converted when loaded) instead of f32.
    #[arg(long)]
    bf16: bool,
    /// auto (a GPU when libtorch sees one, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value_t = Device::Auto)]
    device: Device,
    /// libtorch threads (default: libtorch's choice).
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
    /// No progress on stderr.
    #[arg(short, long)]
    quiet: bool,
}

#[cfg(not(feature = "rl"))]
pub fn run(_: &Args, _: &Ctx) -> crate::Result<()> {
    Err(super::common::needs_rl("warp generate"))
}

#[cfg(feature = "rl")]
pub fn run(a: &Args, ctx: &Ctx) -> crate::Result<()> {
    use crate::progress::Reporter;
    use crate::rl::textgen::generate_texts;
    use crate::rl::{CausalLm, Tokenizer};

    let mut o = options(a)?;
    if let Some(t) = a.threads {
        tch::set_num_threads(t as i32);
    }
    let progress = super::Progress::new(a.quiet);
    let spec = crate::builtin::resolve_spec(&a.model)?;
    let ck = crate::hub::open_checkpoint(&spec, &crate::hub::HubOptions::from_env(), &progress)?;
    let mut tok = Tokenizer::from_dir(&ck.dir)?;
    tok.set_chat_template(&a.chat_template)?;
    let (prompts, ids) = prompts(a, &tok)?;
    let device = crate::rl::tch_device(a.device)?;
    let kind = if a.bf16 {
        tch::Kind::BFloat16
    } else {
        tch::Kind::Float
    };
    let config = crate::rl::ModelConfig::from_dir(&ck.dir)?;
    fit_new_tokens(&mut o, &ids, config.max_position_embeddings, a, ctx)?;
    let model = CausalLm::from_checkpoint(&ck, config, device, kind)?;
    let total = (prompts.len() * a.samples) as u64;
    progress.start_steps("generate", total);
    generate_texts(&model, &tok, &ids, &o, |c| {
        progress.advance(1);
        super::common::out_line(&c.to_json(&prompts[c.prompt_index]).to_string())
    })?;
    progress.finish();
    Ok(())
}

#[cfg(feature = "rl")]
fn bad<T>(flag: &str, msg: String) -> crate::Result<T> {
    Err(crate::Error::Usage(format!("{flag}: {msg}")))
}

#[cfg(feature = "rl")]
/// The sampling options, checked before anything is loaded.
fn options(a: &Args) -> crate::Result<crate::rl::textgen::TextGenOptions> {
    let o = crate::rl::textgen::TextGenOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: if a.greedy { 0.0 } else { a.temperature },
        top_k: a.top_k,
        top_p: a.top_p,
        samples: a.samples,
        seed: a.seed,
        batch_size: a.batch_size,
    };
    for (flag, v) in [
        ("--max-new-tokens", a.max_new_tokens),
        ("--samples", a.samples),
        ("--batch-size", a.batch_size),
    ] {
        if v == 0 {
            return bad(flag, "must be at least 1".into());
        }
        let max = crate::limits::MAX_BATCH;
        if v > max {
            return bad(flag, format!("must be at most {max}, got {v}"));
        }
    }
    if !(o.temperature.is_finite() && o.temperature >= 0.0) {
        return bad(
            "--temperature",
            format!("must be ≥ 0, got {}", a.temperature),
        );
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return bad("--top-p", format!("must be in (0, 1], got {}", a.top_p));
    }
    if a.prompt.is_empty() && a.prompts.is_none() {
        return Err(crate::Error::Usage(
            "no prompts: give --prompt TEXT (repeatable) and/or --prompts FILE".into(),
        ));
    }
    Ok(o)
}

#[cfg(feature = "rl")]
/// The --prompt ones, then the --prompts file's lines, with their token ids.
type Encoded = (Vec<crate::rl::data::Prompt>, Vec<Vec<i64>>);
#[cfg(feature = "rl")]
fn prompts(a: &Args, tok: &crate::rl::Tokenizer) -> crate::Result<Encoded> {
    use crate::rl::data::{read_prompt_lines, Prompt};
    let mut prompts: Vec<Prompt> = a
        .prompt
        .iter()
        .map(|p| {
            if a.chat {
                Prompt::user(p.clone())
            } else {
                Prompt::Text(p.clone())
            }
        })
        .collect();
    let mut ids = crate::rl::textgen::encode_prompts(tok, &prompts)?;
    if let Some(file) = &a.prompts {
        let file = crate::builtin::resolve_path(file)?;
        let lines = read_prompt_lines(&file)?;
        ids.extend(tok.encode_prompt_lines(&file, &lines)?);
        prompts.extend(lines.into_iter().map(|l| l.prompt));
    }
    Ok((prompts, ids))
}

#[cfg(feature = "rl")]
/// Completions must fit the model's positions after the longest prompt: the default limit
/// shrinks to fit (small models have few positions), a given one that does not fit is an error.
fn fit_new_tokens(
    o: &mut crate::rl::textgen::TextGenOptions,
    ids: &[Vec<i64>],
    positions: usize,
    a: &Args,
    ctx: &Ctx,
) -> crate::Result<()> {
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let room = positions.saturating_sub(longest);
    if room == 0 {
        return Err(crate::Error::Usage(format!(
            "a prompt of {longest} tokens leaves no room in the model's max_position_embeddings \
             {positions}"
        )));
    }
    if o.max_new_tokens > room {
        let given = ctx.matches.value_source("max_new_tokens")
            == Some(clap::parser::ValueSource::CommandLine);
        if given {
            return bad(
                "--max-new-tokens",
                format!(
                    "{} new tokens after a prompt of {longest} exceed the model's \
                     max_position_embeddings {positions}",
                    o.max_new_tokens
                ),
            );
        }
        if !a.quiet {
            eprintln!(
                "{}: at most {room} new tokens (the model has {positions} positions, the longest \
                 prompt {longest} tokens)",
                ctx.prog
            );
        }
        o.max_new_tokens = room;
    }
    Ok(())
}
