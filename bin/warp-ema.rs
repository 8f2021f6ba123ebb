//! `warp-ema`: the same command as `warp ema` (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::alias("ema")
}
