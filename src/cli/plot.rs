//! `warp plot`: the KL–reward front of an evaluation as an SVG.

use std::path::PathBuf;

use super::common::{check_new_file, out_line};
use super::progress::Progress;
use super::Ctx;
use crate::pipeline::EvalTable;
use crate::progress::Reporter;

/// Draw the KL–reward Pareto front of an evaluation CSV (from `warp eval`) as an SVG.
///
/// LITI curves (one per WARP iteration, η at the markers), RL trajectories (policy solid, EMA
/// dashed, init-anchored dotted), SLERP (stars) and LERP (squares) merges and the SFT point, with
/// error bars where the CSV has standard errors. Rows with non-finite KL or reward are skipped
/// with a warning. The file is written whole or not at all; its path is printed on stdout.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Evaluation CSV: label,kind,iteration,run,step,eta,kl,kl_se,reward,reward_se,path.
    eval: PathBuf,
    /// Output SVG file (replaced if it exists).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Title above the plot.
    #[arg(long, default_value = "KL–reward Pareto front")]
    title: String,
    /// No warnings on stderr (errors are still printed).
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    check_new_file("-o", &a.output)?;
    let reporter = Progress::new(a.quiet);
    let table = EvalTable::from_csv(&a.eval)?;
    let skipped = table.skipped();
    if skipped > 0 {
        reporter.message(&format!(
            "warning: {skipped} row(s) with a non-finite kl or reward not drawn"
        ));
    }
    crate::io::write_file_atomic(
        &a.output,
        crate::plot::pareto_svg(&table, &a.title).as_bytes(),
    )?;
    out_line(&a.output.display().to_string())
}
