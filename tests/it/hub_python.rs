//! Fidelity of the test hub and of our client against the official python client
//! (`huggingface_hub`, Xet disabled): what we push, `snapshot_download` gets byte-identical; what
//! `upload_folder` pushes, `resolve_checkpoint` gets byte-identical.
//!
//! Needs `python3` (or `$WARP_PYTHON`, which scripts/test sets to its venv) with `huggingface_hub` installed; fails with a clear message if not.

use crate::hub_server;

use hub_server::{write_checkpoint, HubServer, TOKEN};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use warp::hub::{push_folder, resolve_checkpoint, HubOptions, PushOptions, RetryPolicy};
use warp::progress::Silent;

fn python() -> String {
    let py = std::env::var("WARP_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&py)
        .args([
            "-c",
            "import huggingface_hub; print(huggingface_hub.__version__)",
        ])
        .output();
    match probe {
        Ok(o) if o.status.success() => py,
        Ok(o) => panic!(
            "these tests need the python package huggingface_hub: `{py} -m pip install \
             'huggingface_hub>=0.30'` ({})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => panic!("these tests need {py} (set $WARP_PYTHON to another interpreter; scripts/test sets up one): {e}"),
    }
}

/// Run a python snippet against the test hub; returns its stdout.
fn run_python(server: &HubServer, home: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .env("HF_ENDPOINT", &server.url)
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_TOKEN", TOKEN)
        .env("HF_HOME", home)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.dump_log()
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
    }
}

#[test]
fn what_we_push_snapshot_download_gets_identical() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 31);
    let opts = PushOptions {
        endpoint: server.url.clone(),
        token: Some(TOKEN.into()),
        retry: fast_retry(),
        ..PushOptions::default()
    };
    push_folder(src.path(), "org/ours", &opts, &Silent).unwrap();

    let home = tempfile::tempdir().unwrap();
    let script = "import sys; from huggingface_hub import snapshot_download\n\
                  print(snapshot_download(sys.argv[1]))";
    let snap = PathBuf::from(
        run_python(&server, home.path(), script, &["org/ours"])
            .trim()
            .to_string(),
    );
    let head = server.head("org/ours", "main").unwrap();
    assert!(
        snap.ends_with(format!("models--org--ours/snapshots/{head}")),
        "{}",
        snap.display()
    );
    for (p, c) in &files {
        assert_eq!(&std::fs::read(snap.join(p)).unwrap(), c, "{p}");
    }
    assert!(snap.join(".gitattributes").is_file());
}

#[test]
fn what_upload_folder_pushes_we_download_identical() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 32);
    let home = tempfile::tempdir().unwrap();
    let script = "import sys; from huggingface_hub import HfApi\n\
                  api = HfApi()\n\
                  api.create_repo(sys.argv[2], exist_ok=True)\n\
                  info = api.upload_folder(folder_path=sys.argv[1], repo_id=sys.argv[2])\n\
                  print(info.oid)";
    let oid = run_python(
        &server,
        home.path(),
        script,
        &[src.path().to_str().unwrap(), "org/theirs"],
    );
    let head = server.head("org/theirs", "main").unwrap();
    assert_eq!(oid.trim(), head);
    // The python client used the multipart protocol for the large shard.
    assert!(
        server.log().iter().any(|l| l.path.starts_with("/part/")),
        "{}",
        server.dump_log()
    );

    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        endpoint: server.url.clone(),
        cache_dir: cache.path().to_path_buf(),
        token: Some(TOKEN.into()),
        offline: false,
        retry: fast_retry(),
    };
    let snap = resolve_checkpoint("org/theirs", &opts, &Silent).unwrap();
    for (p, c) in &files {
        assert_eq!(&std::fs::read(snap.join(p)).unwrap(), c, "{p}");
    }
    // The cache we wrote is one the python client reads offline.
    let script = "import sys; from huggingface_hub import snapshot_download\n\
                  print(snapshot_download(sys.argv[1], cache_dir=sys.argv[2], local_files_only=True, \
                  allow_patterns=['*.safetensors', '*.json']))";
    let py_snap = run_python(
        &server,
        home.path(),
        script,
        &["org/theirs", cache.path().to_str().unwrap()],
    );
    assert_eq!(PathBuf::from(py_snap.trim()), snap);
}
