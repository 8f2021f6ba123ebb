//! `warp merge RECIPE.yaml -o OUT`: a mergekit recipe (its configuration language as of
//! mergekit 0.1.5), streamed by warp's engine. See docs/RECIPES.md.
//! The run itself is the library's [`crate::engine::recipe_job::merge_recipe`].

use std::path::PathBuf;

use super::common::{finish, options, EngineArgs, OutputArgs};
use super::lora_merge::OutputKind;
use super::progress::Progress;
use super::Ctx;
use crate::engine::recipe_job::merge_recipe_as;
use crate::engine::recipe_lora::OutputForm;
use crate::error::{IoContext, Result};

/// Merge models as a mergekit recipe (YAML) says: TIES, DARE, breadcrumbs, SLERP, model stock,
/// passthrough slices (depth up-scaling), … streamed tensor by tensor within the memory budget.
///
/// Reads mergekit's configuration language (0.1.5): models or slices/sources with layer_range,
/// base_model, merge_method, parameters (scalars, gradients, filtered conditionals), dtype,
/// out_dtype, tokenizer_source, chat_template. Computes in f32 whatever `dtype` says; writes
/// `out_dtype` (else `dtype`, else --dtype). Models are HF folders, .safetensors files or hub
/// ids org/name[@revision], PEFT LoRA adapter folders or BASE+ADAPTER; a linear or
/// task_arithmetic recipe over adapters of one base is written as an adapter (`--as`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recipe (mergekit YAML).
    #[arg(value_name = "RECIPE.yaml")]
    recipe: PathBuf,
    /// With PEFT LoRA adapter models: write a PEFT adapter (`adapter`: rank Σr, the exact merge
    /// computed from the adapters' factors; for recipes affine in the models, such as linear and
    /// task_arithmetic, over adapters of one base) or a full checkpoint (`full`). Default
    /// `auto`: an adapter when the recipe has one, else a full checkpoint (a note says why).
    #[arg(long = "as", value_enum, default_value_t = OutputKind::Auto, value_name = "KIND")]
    kind: OutputKind,
    /// Seed of the random methods (dare_ties, dare_linear): each keep/drop decision is a
    /// function of (seed, tensor, model, element), whatever the threads, budget or chunking.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run_cmd(a: &Args, _: &Ctx) -> Result<()> {
    let text = std::fs::read_to_string(&a.recipe).at(&a.recipe)?;
    let file = a.recipe.display().to_string();
    let progress = Progress::new(a.engine.quiet);
    let o = options(&a.out, &a.engine, None);
    let form = match a.kind {
        OutputKind::Auto => OutputForm::Auto,
        OutputKind::Adapter => OutputForm::Adapter,
        OutputKind::Full => OutputForm::Full,
    };
    let outcome = merge_recipe_as(&text, &file, a.seed, form, &o, &progress)?;
    finish(outcome, &a.out, &a.engine, &progress)
}
