//! `warp-rl`: the same command as `warp rl` (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::alias("rl")
}
