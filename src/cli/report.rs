//! `warp report`: the paper's claims measured on `warp run` folders.

use std::path::PathBuf;

use super::common::{check_new_file, out_line};
use super::Ctx;
use crate::report;
use crate::stats::BootstrapOptions;

/// The WARP paper's claims measured on `warp run` folders, as Markdown tables with intervals.
///
/// Reads each folder's plan.json, eval.csv, eval-samples.csv, eval.json and merge reports.
/// Folders whose settings differ only in the seed are seeds of one experiment. Each claim is a
/// paired comparison within a seed (bootstrap over prompts, the samples of a prompt kept
/// together), aggregated over the seeds with the crossed seeds × prompts variance and a t
/// interval: EMA vs init anchor at equal KL, SLERP vs its policies and LERP, LERP's KL, the
/// angles between task vectors, the LITI curve vs the RL trajectories, and iterations (fronts
/// toward the SFT). Prints the tables, or writes them to FILE, or replaces the generated section
/// of a document (--update).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `warp run` folders.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Write the tables to this file (replaced atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE", conflicts_with = "update")]
    output: Option<PathBuf>,
    /// Replace the generated section of this Markdown file (between the `warp report` marker
    /// lines) with the tables.
    #[arg(long, value_name = "FILE")]
    update: Option<PathBuf>,
    /// Bootstrap replicates.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..))]
    replicates: u64,
    /// Seed of the resampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    if let Some(o) = &a.output {
        check_new_file("-o", o)?;
    }
    let runs = a
        .runs
        .iter()
        .map(|d| report::RunData::load(d))
        .collect::<crate::Result<Vec<_>>>()?;
    let exps = report::experiments(runs)?;
    let o = BootstrapOptions {
        replicates: a.replicates as usize,
        seed: a.seed,
        level: 0.95,
    };
    let text = report::markdown(&exps, &o)?;
    match (&a.output, &a.update) {
        (Some(path), _) => {
            crate::io::write_file_atomic(path, text.as_bytes())?;
            out_line(&path.display().to_string())
        }
        (None, Some(doc)) => {
            let old = std::fs::read_to_string(doc).map_err(|e| crate::Error::io(doc, e))?;
            let new = report::splice(&old, &text, doc)?;
            crate::io::write_file_atomic(doc, new.as_bytes())?;
            out_line(&doc.display().to_string())
        }
        (None, None) => out_line(text.trim_end()),
    }
}
