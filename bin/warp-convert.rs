//! `warp-convert`: the same command as `warp convert` (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::alias("convert")
}
