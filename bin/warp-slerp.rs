//! `warp-slerp`: the same command as `warp slerp` (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::alias("slerp")
}
