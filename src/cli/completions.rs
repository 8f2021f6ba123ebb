//! `warp completions`: shell completion scripts.

use clap::CommandFactory;

use super::Ctx;
use super::{Cli, ALIASES};

/// Print a shell completion script for `warp` and its aliases (`warp-slerp`, …) on stdout.
///
/// E.g. `warp completions bash > ~/.local/share/bash-completion/completions/warp`, or
/// `warp completions zsh > "${fpath[1]}/_warp"`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "warp", &mut buf);
    // Aliases whose command the build has (warp-rl and warp-sft are installed with `rl` only,
    // but completing them does no harm).
    for name in ALIASES {
        let prog = format!("warp-{name}");
        if let Some(sub) = Cli::command().find_subcommand(name) {
            let mut cmd = sub.clone().name(prog.clone()).bin_name(prog.clone());
            clap_complete::generate(a.shell, &mut cmd, &prog, &mut buf);
        }
    }
    super::common::out(&String::from_utf8_lossy(&buf))
}
