//! The one `warp` command tree: `warp <command> …`, one module per command, and one `main`
//! with one policy for signals, errors and exit codes.
//!
//! The named tools (`warp-slerp`, `warp-rl`, …) are aliases, as uv's `uvx` is of `uv tool
//! run`: each is a small program (bin/alias/exec.rs, without the library) that runs the `warp`
//! installed beside it with its own name as argv[0]; [`main`] then runs [`alias`], the same
//! command as `warp slerp …` with the same flags, output and exit codes (only the program name
//! in help, usage and error lines differs).
//!
//! Exit codes: 0 success, 1 failure, 2 bad arguments or settings, 128 + N when stopped by signal
//! N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP). Data goes to stdout, everything else (progress,
//! logs, the one-line error) to stderr; a closed stdout (`| head`) is not an error.
//!
//! This layer holds the terminal concerns (indicatif progress, signals, flag names in messages);
//! the library below knows none of them.

mod cancel;
mod common;
mod completions;
mod convert;
mod download;
mod ema;
mod eval;
mod extract_lora;
mod fixture;
mod generate;
mod hub_args;
mod inspect;
mod lerp;
mod liti;
mod lora_merge;
mod merge;
mod plot;
mod progress;
mod push;
mod report;
mod rl;
mod run;
mod sft;
pub mod signals;
mod slerp;
mod status;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::error::Error;
pub use progress::Progress;

/// WARP at checkpoint level: RL with an EMA anchor, SLERP of task vectors, LITI towards the
/// init, iterated — over Hugging Face safetensors checkpoints.
///
/// Every command is also installed as its own program: `warp-slerp` is `warp slerp`, and so on.
/// Exit codes: 0 success, 1 failure, 2 bad arguments, 128+N stopped by signal N.
#[derive(Parser)]
#[command(name = "warp", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Every command. The doc comments of the argument structs are their help.
// One value per process, parsed once: the size of the largest variant (the RL settings) costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    Slerp(slerp::Args),
    Liti(liti::Args),
    Lerp(lerp::Args),
    Ema(ema::Args),
    Merge(merge::Args),
    Convert(convert::Args),
    ExtractLora(extract_lora::Args),
    Inspect(inspect::Args),
    Fixture(fixture::Args),
    Rl(rl::Args),
    Sft(sft::Args),
    Run(run::Args),
    Status(status::Args),
    Cancel(cancel::Args),
    Eval(eval::Args),
    Generate(generate::Args),
    Plot(plot::Args),
    Report(report::Args),
    Push(push::Args),
    Download(download::Args),
    Completions(completions::Args),
}

/// The commands that are also programs of their own, `warp-NAME`.
pub const ALIASES: [&str; 10] = [
    "slerp",
    "liti",
    "lerp",
    "ema",
    "convert",
    "inspect",
    "fixture",
    "rl",
    "sft",
    "extract-lora",
];

/// What a command's code gets besides its arguments.
pub struct Ctx<'a> {
    /// The program name for messages: `warp` or the alias (`warp-slerp`).
    pub prog: &'a str,
    /// The command's own parsed arguments (which were given on the command line).
    pub matches: &'a ArgMatches,
}

/// `warp`'s main. Run as `warp-NAME` (argv[0]; the alias programs of bin/ run `warp` so, and
/// so does a link of that name), it is alias NAME.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Some(name) = args.first().and_then(|a0| alias_named(a0)) {
        return alias(name);
    }
    run_main(Cli::command(), args, "warp")
}

/// The alias command `warp-NAME` names by its file name, if it is one.
fn alias_named(argv0: &OsString) -> Option<&'static str> {
    let file = std::path::Path::new(argv0).file_name()?.to_str()?;
    let name = file.strip_prefix("warp-")?;
    ALIASES.iter().copied().find(|a| *a == name)
}

/// The main of alias `warp-NAME`: runs `warp NAME` with this process's arguments.
pub fn alias(name: &str) -> ExitCode {
    let prog = format!("warp-{name}");
    let Some(sub) = Cli::command().find_subcommand(name).cloned() else {
        eprintln!("{prog}: error: internal error (a bug in warp): no command '{name}'");
        return ExitCode::from(1);
    };
    // Parsed once as a program of its own, so help, usage and argument errors name `warp-NAME`;
    // the same arguments then parse as `warp NAME …` for the one dispatch below.
    let sub = sub
        .name(prog.clone())
        .bin_name(prog.clone())
        .display_name(prog.clone())
        .version(env!("CARGO_PKG_VERSION"));
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let _ = sub.get_matches_from(args.clone());
    if args.is_empty() {
        args.push(OsString::from(&prog));
    }
    args.splice(0..1, [OsString::from("warp"), OsString::from(name)]);
    run_main(Cli::command(), args, &prog)
}

fn run_main(cmd: clap::Command, args: Vec<OsString>, prog: &str) -> ExitCode {
    let matches = cmd.get_matches_from(args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let Some((name, sub)) = matches.subcommand() else {
        eprintln!("{prog}: error: no command given (see --help)");
        return ExitCode::from(2);
    };
    signals::install(cooperative(&cli.command));
    // A full disk (or a file-size limit) must be an error, not a signal.
    // SAFETY: setting a signal disposition to SIG_IGN; no handler runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let ctx = Ctx { prog, matches: sub };
    let result = dispatch(&cli.command, &ctx);
    let note = interrupt_note(&cli.command);
    finish(prog, result.map_err(|e| flag_names(e, name, sub)), note)
}

/// What an interruption leaves behind, for the error line.
fn interrupt_note(c: &Command) -> &'static str {
    match c {
        // It printed how to resume.
        Command::Rl(_) => "",
        Command::Run(_) => "; the running steps were stopped: run it again to continue",
        Command::Generate(_) => "; the lines already printed are complete",
        _ => "; nothing was written at the destination",
    }
}

/// Whether a command stops at its own checks on a signal (cleaning up) rather than dying at
/// once: those that write large outputs or run long loops do; the others have nothing to clean
/// (or, like push, resume by design) and keep the default disposition.
fn cooperative(c: &Command) -> bool {
    !matches!(
        c,
        Command::Inspect(_)
            | Command::Status(_)
            | Command::Cancel(_)
            | Command::Plot(_)
            | Command::Report(_)
            | Command::Push(_)
            | Command::Download(_)
            | Command::Completions(_)
    )
}

fn dispatch(c: &Command, ctx: &Ctx) -> crate::Result<()> {
    match c {
        Command::Slerp(a) => slerp::run(a, ctx),
        Command::Liti(a) => liti::run(a, ctx),
        Command::Lerp(a) => lerp::run(a, ctx),
        Command::Ema(a) => ema::run(a, ctx),
        Command::Merge(a) => merge::run_cmd(a, ctx),
        Command::Convert(a) => convert::run(a, ctx),
        Command::ExtractLora(a) => extract_lora::run(a, ctx),
        Command::Inspect(a) => inspect::run(a, ctx),
        Command::Fixture(a) => fixture::run(a, ctx),
        Command::Rl(a) => rl::run(a, ctx),
        Command::Sft(a) => sft::run(a, ctx),
        Command::Run(a) => run::run(a, ctx),
        Command::Status(a) => status::run(a, ctx),
        Command::Cancel(a) => cancel::run(a, ctx),
        Command::Eval(a) => eval::run(a, ctx),
        Command::Generate(a) => generate::run(a, ctx),
        Command::Plot(a) => plot::run(a, ctx),
        Command::Report(a) => report::run(a, ctx),
        Command::Push(a) => push::run(a, ctx),
        Command::Download(a) => download::run(a, ctx),
        Command::Completions(a) => completions::run(a, ctx),
    }
}

/// A setting error about a field that is one of the command's flags and was given on the
/// command line is reported with the flag's name (`--steps: must be > 0`).
fn flag_names(e: Error, name: &str, sub: &ArgMatches) -> Error {
    let Error::Setting { field, msg } = &e else {
        return e;
    };
    let given = sub.try_contains_id(field).unwrap_or(false)
        && sub.value_source(field) == Some(clap::parser::ValueSource::CommandLine);
    if !given {
        return e;
    }
    let cmd = Cli::command();
    let flag = cmd
        .find_subcommand(name)
        .and_then(|s| s.get_arguments().find(|a| a.get_id() == field.as_str()))
        .map(common::flag_display);
    match flag {
        Some(f) => Error::Usage(format!("{f}: {msg}")),
        None => e,
    }
}

/// Prints the error (one line, with the program's name) and maps it to the exit code.
fn finish(prog: &str, result: crate::Result<()>, interrupt_note: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (e.g. `| head`) is not a failure.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            match (&e, crate::interrupt::signal()) {
                (Error::Interrupted, Some(sig)) => eprintln!(
                    "{prog}: error: interrupted by {}{interrupt_note}",
                    signals::name(sig)
                ),
                (Error::Interrupted, None) => eprintln!("{prog}: error: {e}{interrupt_note}"),
                _ => eprintln!("{prog}: error: {e}"),
            }
            ExitCode::from(e.exit_code().clamp(1, 255) as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_valid_and_every_alias_is_a_command() {
        Cli::command().debug_assert();
        let cmd = Cli::command();
        for a in ALIASES {
            assert!(cmd.find_subcommand(a).is_some(), "{a}");
        }
    }
}
