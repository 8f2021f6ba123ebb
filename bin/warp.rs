//! `warp`: every command of the toolkit (see `warp::cli`).
fn main() -> std::process::ExitCode {
    warp::cli::main()
}
