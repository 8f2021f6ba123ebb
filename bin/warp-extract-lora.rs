//! `warp-extract-lora`: the same command as `warp extract-lora` (see `warp::cli`): runs the
//! `warp` installed beside it (bin/alias/exec.rs), so this program does not carry a copy of warp.
#[path = "alias/exec.rs"]
mod exec;

fn main() {
    exec::run("extract-lora")
}
