//! Build script. The alias programs (bin/warp-*.rs: each runs the `warp` beside it) are linked
//! without debug info: std's line tables alone would make each about 4 MB, and the debug info
//! that matters is kept once, in `warp`.
//!
//! With `rl`, tch links libtorch dynamically from the torch Python package (see
//! scripts/setup-torch.sh). So that the binaries and tests run without LD_LIBRARY_PATH, this puts
//! torch's lib dir in their rpath. The dir is, in order: `$WARP_TORCH_LIB`; `$LIBTORCH/lib`; or
//! asked from the same Python torch-sys uses (`python` inside a venv, else `python3`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The alias programs; `rl` and `sft` exist with the `rl` feature only.
const ALIASES: [&str; 7] = [
    "inspect", "convert", "fixture", "ema", "liti", "lerp", "slerp",
];
const RL_ALIASES: [&str; 2] = ["rl", "sft"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let rl = env::var_os("CARGO_FEATURE_RL").is_some();
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let rl_names = if rl { &RL_ALIASES[..] } else { &[] };
        for name in ALIASES.iter().chain(rl_names) {
            println!("cargo:rustc-link-arg-bin=warp-{name}=-Wl,--strip-debug");
        }
    }
    if !rl {
        return;
    }
    for var in [
        "WARP_TORCH_LIB",
        "LIBTORCH",
        "LIBTORCH_USE_PYTORCH",
        "VIRTUAL_ENV",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    match torch_lib_dir() {
        Some(dir) => {
            if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
                println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
            }
        }
        None => println!(
            "cargo:warning=feature `rl`: torch's lib dir not found (source scripts/setup-torch.sh); \
             binaries will need LD_LIBRARY_PATH"
        ),
    }
}

fn torch_lib_dir() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("WARP_TORCH_LIB").map(PathBuf::from) {
        return Some(dir);
    }
    if let Some(dir) = env::var_os("LIBTORCH").map(|d| PathBuf::from(d).join("lib")) {
        return Some(dir);
    }
    let python = if env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.is_dir().then_some(dir)
}
