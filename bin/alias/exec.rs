//! What every alias program (`warp-slerp`, `warp-rl`, …) is: it runs `warp`, the program
//! installed in the same folder, with its own name as argv[0], so that `warp` behaves as the
//! alias (help, usage and error lines say `warp-slerp`; see `warp::cli::main`). It uses nothing
//! of the library, so an alias is a small program and the code (and its debug info) is
//! installed once, in `warp` — as uv's `uvx` runs `uv`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// Replaces this process by `warp` (same pid, arguments and environment) as alias `warp-NAME`;
/// returns only on failure, with exit code 1 and a one-line error.
pub fn run(name: &str) -> ! {
    let prog = format!("warp-{name}");
    let warp = std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(|d| d.join("warp")));
    let Some(warp) = warp.filter(|w| w.is_file()) else {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|me| me.parent().map(PathBuf::from))
            .map_or_else(
                || "this program's folder".into(),
                |d| d.display().to_string(),
            );
        eprintln!(
            "{prog}: error: `warp` is not installed beside this program (in {beside}); \
             {prog} runs it: install both (cargo install warp installs them together)"
        );
        std::process::exit(1);
    };
    let err = Command::new(&warp)
        .arg0(&prog)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("{prog}: error: cannot run {}: {err}", warp.display());
    std::process::exit(1)
}
