//! `warp-lerp`: the same command as `warp lerp` (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::alias("lerp")
}
