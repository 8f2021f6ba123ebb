//! `warp-sft`: the same command as `warp sft` (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::alias("sft")
}
