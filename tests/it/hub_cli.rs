//! The `warp` binary: `warp push` and `warp download` against the loopback hub, exit codes, and
//! a push killed mid-upload whose re-run sends only what the hub does not have yet.

use crate::hub_server;

use hub_server::{write_checkpoint, Fault, HubServer, TOKEN};
use sha2::Digest;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn warp(server: &HubServer, home: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warp"));
    c.env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN_PATH")
        .env("HF_TOKEN", TOKEN);
    c
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn push_prints_the_commit_url_then_download_prints_the_snapshot() {
    let server = HubServer::start();
    let home = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 21);
    let out = warp(&server, home.path())
        .args(["push", "-q"])
        .arg(src.path())
        .arg("org/cli")
        .args(["--commit-message", "from the cli"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = server.head("org/cli", "main").unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("{}/org/cli/commit/{head}", server.url)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains(TOKEN));

    let out = warp(&server, home.path())
        .args(["download", "org/cli"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(
        snap,
        home.path()
            .join(format!("hub/models--org--cli/snapshots/{head}"))
    );
    for (p, c) in &files {
        assert_eq!(&std::fs::read(snap.join(p)).unwrap(), c, "{p}");
    }
    // Offline, from the cache; and a clear one-line error for what is not cached.
    let out = warp(&server, home.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["download", "org/cli"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = warp(&server, home.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["download", "org/other"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("offline") && err.contains("org/other"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_and_the_token_comes_from_the_token_file() {
    let server = HubServer::start();
    let home = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("config.json"), b"{}").unwrap();
    let out = warp(&server, home.path())
        .arg("push")
        .arg(src.path())
        .arg("bad id")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad id"));
    let out = warp(&server, home.path())
        .args(["download", "./nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // No HF_TOKEN: the token stored by `hf auth login` in $HF_HOME/token is used.
    std::fs::write(home.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let out = warp(&server, home.path())
        .env_remove("HF_TOKEN")
        .arg("push")
        .arg(src.path())
        .arg("org/tokfile")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong --token wins over the file, and fails with exit code 1.
    let out = warp(&server, home.path())
        .arg("push")
        .arg(src.path())
        .arg("org/tokfile")
        .args(["--token", "hf_wrong"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("401") && !err.contains("hf_wrong"), "{err}");
}

#[test]
fn a_killed_push_rerun_reuploads_nothing_already_stored() {
    let server = HubServer::start();
    let home = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 22);
    // With one job, objects go up in oid order: stall the last one so the first is stored.
    let (big, small) = (&files[0].1, &files[1].1);
    let (first, last) = if sha256(big) < sha256(small) {
        (big, small)
    } else {
        (small, big)
    };
    let stall = if last == big {
        format!("/part/{}/2", sha256(big))
    } else {
        format!("/upload/{}", sha256(small))
    };
    server.fail("PUT", &stall, Fault::Stall(Duration::from_secs(60)), 1);
    let mut child = warp(&server, home.path())
        .args(["push", "-q", "--jobs", "1"])
        .arg(src.path())
        .arg("org/killed")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server
        .log()
        .iter()
        .any(|l| l.path == stall && l.status == 0)
    {
        assert!(
            Instant::now() < deadline,
            "the push never reached the stalled PUT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(server.has_object(&sha256(first)));
    assert!(!server.has_object(&sha256(last)));
    assert_eq!(server.commit_count("org/killed"), 1);

    let before = server.cdn_bytes();
    let out = warp(&server, home.path())
        .arg("push")
        .arg(src.path())
        .arg("org/killed")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server.cdn_bytes() - before,
        last.len() as u64,
        "{}",
        server.dump_log()
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already on the hub"));
    for (p, c) in &files {
        assert_eq!(
            server.file("org/killed", "main", p).as_ref(),
            Some(c),
            "{p}"
        );
    }
}
