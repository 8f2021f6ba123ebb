//! The merge tools end to end through the hub: inputs given as hub ids (downloaded from the
//! loopback hub into the HF cache) and the output pushed with --push-to-hub, byte-identical to the
//! same merge of local folders.

use crate::common;
use crate::hub_server;

use hub_server::{HubServer, TOKEN};
use std::path::Path;
use std::process::Command;

fn with_hub(cmd: &mut Command, server: &HubServer, home: &Path) {
    cmd.env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", home)
        .env("HF_TOKEN", TOKEN)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN_PATH");
}

fn run_ok(name: &str, args: &[&str], cwd: &Path, server: &HubServer, home: &Path) -> String {
    let mut c = Command::new(common::bin(name));
    c.args(args).current_dir(cwd);
    with_hub(&mut c, server, home);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} {args:?}:\n{stderr}");
    assert!(!stderr.contains(TOKEN), "token leaked");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three fixtures (base and two fine-tunes) on the hub as org/base, org/ft1, org/ft2 (one
/// pushed by the fixture tool itself, the others by `warp push`), and in `w`.
fn publish_inputs(w: &Path, server: &HubServer, home: &Path) {
    for (name, extra) in [
        ("base", vec![]),
        ("ft1", vec!["--base-seed", "0", "--seed", "1"]),
        ("ft2", vec!["--base-seed", "0", "--seed", "2"]),
    ] {
        let mut args = vec![
            "--size",
            "3MB",
            "--dtype",
            "bf16",
            "-o",
            name,
            "-q",
            "--max-shard-size",
            "1MB",
        ];
        args.extend(extra);
        if name == "ft2" {
            // One input is pushed by the fixture tool itself.
            args.extend(["--push-to-hub", "org/ft2"]);
        }
        run_ok("warp-fixture", &args, w, server, home);
    }
    run_ok("warp", &["push", "-q", "base", "org/base"], w, server, home);
    run_ok("warp", &["push", "-q", "ft1", "org/ft1"], w, server, home);
}

#[test]
fn slerp_from_hub_ids_and_push_the_merge() {
    let server = HubServer::start();
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let w = d.path();
    publish_inputs(w, &server, home.path());

    // Local merge (reference) and the hub merge, pushed.
    common::ok(
        "warp-slerp",
        &[
            "ft1", "ft2", "--init", "base", "--eta", "0.3", "-o", "local", "-q",
        ],
        w,
    );
    let out = run_ok(
        "warp-slerp",
        &[
            "org/ft1",
            "org/ft2@main",
            "--init",
            "org/base",
            "--eta",
            "0.3",
            "-o",
            "remote",
            "-q",
            "--push-to-hub",
            "org/merged",
        ],
        w,
        &server,
        home.path(),
    );
    assert!(out.contains("/org/merged/commit/"), "{out}");
    common::assert_same_tensors(&w.join("local"), &w.join("remote"));
    let pushed = server
        .file("org/merged", "main", "model.safetensors")
        .unwrap();
    assert!(pushed == std::fs::read(w.join("remote/model.safetensors")).unwrap());
    assert_eq!(
        server.is_lfs("org/merged", "main", "model.safetensors"),
        Some(true)
    );
    let card = String::from_utf8(server.file("org/merged", "main", "README.md").unwrap()).unwrap();
    assert!(card.contains("base_model: \"org/base\""), "{card}");
    assert!(server.file("org/merged", "main", "config.json").is_some());

    // Offline, the cached inputs are enough; a repo never downloaded is named as missing.
    let mut c = Command::new(common::bin("warp-slerp"));
    c.args([
        "org/ft1", "org/ft2", "--init", "org/base", "-o", "offline", "-q",
    ])
    .current_dir(w);
    with_hub(&mut c, &server, home.path());
    assert!(c.env("HF_HUB_OFFLINE", "1").status().unwrap().success());
    let mut c = Command::new(common::bin("warp-slerp"));
    c.args([
        "org/ft1", "org/nope", "--init", "org/base", "-o", "offline2", "-q",
    ])
    .current_dir(w);
    with_hub(&mut c, &server, home.path());
    let out = c.env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("org/nope"));
    assert!(!w.join("offline2").exists());
}
