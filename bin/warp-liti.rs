//! `warp-liti`: the same command as `warp liti` (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::alias("liti")
}
