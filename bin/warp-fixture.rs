//! `warp-fixture`: the same command as `warp fixture` (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::alias("fixture")
}
