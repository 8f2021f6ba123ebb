//! `warp-inspect`: the same command as `warp inspect` (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::alias("inspect")
}
