//! Push and download against the loopback hub server: full round trip, retries under injected
//! faults, resumption, offline mode, and the error messages a user sees.

use crate::hub_server;

use hub_server::{bytes, write_checkpoint, Fault, HubServer, TOKEN};
use sha2::Digest;
use std::path::Path;
use std::time::Duration;
use warp::hub::{
    push_folder, resolve_checkpoint, HubErrorKind, HubOptions, PushOptions, RetryPolicy,
};
use warp::progress::Silent;
use warp::Error;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
    }
}

fn push_opts(server: &HubServer) -> PushOptions {
    PushOptions {
        endpoint: server.url.clone(),
        token: Some(TOKEN.to_string()),
        retry: fast_retry(),
        parallelism: 4,
        timeout: Duration::from_secs(20),
        ..PushOptions::default()
    }
}

fn hub_opts(server: &HubServer, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: server.url.clone(),
        cache_dir: cache.to_path_buf(),
        token: Some(TOKEN.to_string()),
        offline: false,
        retry: fast_retry(),
    }
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn assert_same_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (p, c) in files {
        let got = std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(got == *c, "{p} differs");
    }
}

#[test]
fn push_then_download_round_trip() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 1);
    let out = push_folder(src.path(), "org/model", &push_opts(&server), &Silent).unwrap();

    assert!(out.committed);
    let head = server.head("org/model", "main").unwrap();
    assert_eq!(out.commit_oid, head);
    assert_eq!(
        out.commit_url,
        format!("{}/org/model/commit/{head}", server.url)
    );
    assert_eq!((out.files, out.unchanged, out.lfs_uploaded), (5, 0, 2));
    assert_eq!(
        out.bytes_uploaded,
        (files[0].1.len() + files[1].1.len()) as u64
    );
    for (p, c) in &files {
        assert_eq!(server.file("org/model", "main", p).as_ref(), Some(c), "{p}");
    }
    assert_eq!(server.is_lfs("org/model", "main", &files[0].0), Some(true));
    assert_eq!(
        server.is_lfs("org/model", "main", "config.json"),
        Some(false)
    );
    // The 2.5 MB shard went up in 3 parts of 1 MiB, the 0.7 MB one in a single PUT.
    let log = server.log();
    let parts = log.iter().filter(|l| l.path.starts_with("/part/")).count();
    let whole = log
        .iter()
        .filter(|l| l.path.starts_with("/upload/"))
        .count();
    assert_eq!((parts, whole), (3, 1), "{}", server.dump_log());
    assert!(
        log.iter()
            .filter(|l| l.server == "cdn")
            .all(|l| !l.has_auth),
        "token sent to storage"
    );
    assert_eq!(server.commit_count("org/model"), 2);

    let cache = tempfile::tempdir().unwrap();
    let snap = resolve_checkpoint("org/model", &hub_opts(&server, cache.path()), &Silent).unwrap();
    assert!(
        snap.ends_with(format!("models--org--model/snapshots/{head}")),
        "{}",
        snap.display()
    );
    assert_same_files(&snap, &files);
    let refs = cache.path().join("models--org--model/refs");
    assert_eq!(std::fs::read_to_string(refs.join("main")).unwrap(), head);
    assert!(
        !refs.join(&head).exists(),
        "a ref named by a commit hash was left"
    );

    // A second resolve is served from the cache: no file is fetched again.
    let fetched = |s: &HubServer| {
        s.log()
            .iter()
            .filter(|l| l.path.contains("/resolve/"))
            .count()
    };
    let before = fetched(&server);
    let again = resolve_checkpoint("org/model", &hub_opts(&server, cache.path()), &Silent).unwrap();
    assert_eq!(again, snap);
    assert_eq!(fetched(&server), before);
    // A pinned commit resolves to the same snapshot.
    let pinned = format!("org/model@{head}");
    assert_eq!(
        resolve_checkpoint(&pinned, &hub_opts(&server, cache.path()), &Silent).unwrap(),
        snap
    );
}

#[test]
fn pushing_the_same_folder_again_sends_nothing() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    write_checkpoint(src.path(), 2);
    let first = push_folder(src.path(), "org/same", &push_opts(&server), &Silent).unwrap();
    let sent = server.cdn_bytes();
    let second = push_folder(src.path(), "org/same", &push_opts(&server), &Silent).unwrap();
    assert!(!second.committed);
    assert_eq!(
        (second.unchanged, second.lfs_uploaded, second.bytes_uploaded),
        (5, 0, 0)
    );
    assert_eq!(second.commit_oid, first.commit_oid);
    assert_eq!(server.cdn_bytes(), sent);
    assert_eq!(server.commit_count("org/same"), 2);

    // One changed file: only it is committed; the unchanged LFS shards are not sent.
    std::fs::write(src.path().join("config.json"), b"{\"changed\": true}").unwrap();
    let third = push_folder(src.path(), "org/same", &push_opts(&server), &Silent).unwrap();
    assert!(third.committed);
    assert_eq!((third.unchanged, third.lfs_uploaded), (4, 0));
    assert_eq!(server.cdn_bytes(), sent);
    assert_eq!(
        server.file("org/same", "main", "config.json").unwrap(),
        b"{\"changed\": true}"
    );
}

#[test]
fn a_500_on_one_part_is_retried() {
    let server = HubServer::start();
    server.fail(
        "PUT",
        "/part/",
        Fault::Status {
            code: 500,
            retry_after: None,
        },
        1,
    );
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 3);
    let out = push_folder(src.path(), "org/m500", &push_opts(&server), &Silent).unwrap();
    assert!(out.committed);
    let log = server.log();
    assert_eq!(
        log.iter()
            .filter(|l| l.path.starts_with("/part/") && l.status == 500)
            .count(),
        1
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.path.starts_with("/part/") && l.status == 200)
            .count(),
        3
    );
    for (p, c) in &files {
        assert_eq!(server.file("org/m500", "main", p).as_ref(), Some(c), "{p}");
    }
}

#[test]
fn a_connection_dropped_mid_put_is_retried() {
    let server = HubServer::start();
    server.fail("PUT", "/part/", Fault::DropMidBody, 1);
    server.fail("PUT", "/upload/", Fault::DropMidBody, 1);
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 4);
    let out = push_folder(src.path(), "org/drop", &push_opts(&server), &Silent).unwrap();
    assert!(out.committed);
    let dropped = server
        .log()
        .iter()
        .filter(|l| l.server == "cdn" && l.status == 0)
        .count();
    assert_eq!(dropped, 2, "{}", server.dump_log());
    // Each byte counted once in the outcome, although the server received some twice.
    let lfs_bytes = (files[0].1.len() + files[1].1.len()) as u64;
    assert_eq!(out.bytes_uploaded, lfs_bytes);
    assert!(server.cdn_bytes() > lfs_bytes);
    for (p, c) in &files {
        assert_eq!(server.file("org/drop", "main", p).as_ref(), Some(c), "{p}");
    }
}

#[test]
fn a_429_retry_after_is_honoured() {
    let server = HubServer::start();
    let batch = "/info/lfs/objects/batch";
    server.fail(
        "POST",
        batch,
        Fault::Status {
            code: 429,
            retry_after: Some(1),
        },
        1,
    );
    let src = tempfile::tempdir().unwrap();
    write_checkpoint(src.path(), 5);
    push_folder(src.path(), "org/slow", &push_opts(&server), &Silent).unwrap();
    let log = server.log();
    let tries: Vec<_> = log.iter().filter(|l| l.path.ends_with(batch)).collect();
    assert_eq!(tries.len(), 2);
    assert_eq!((tries[0].status, tries[1].status), (429, 200));
    // The backoff alone would be ~10 ms; Retry-After asked for a second.
    assert!(tries[1].at - tries[0].at >= Duration::from_millis(950));
}

#[test]
fn gives_up_after_the_retries_and_commits_nothing() {
    let server = HubServer::start();
    server.fail(
        "PUT",
        "/part/",
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        100,
    );
    let src = tempfile::tempdir().unwrap();
    write_checkpoint(src.path(), 6);
    let err = push_folder(src.path(), "org/down", &push_opts(&server), &Silent).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Hub(_)), "{msg}");
    assert!(msg.contains("part") && msg.contains("503"), "{msg}");
    assert!(
        !msg.contains("X-Amz-Signature"),
        "presigned URL leaked: {msg}"
    );
    assert_eq!(
        server.commit_count("org/down"),
        1,
        "only the initial commit"
    );
    let part_tries = server
        .log()
        .iter()
        .filter(|l| l.path.starts_with("/part/"))
        .count();
    assert!(part_tries >= 5, "first try + 4 retries, got {part_tries}");
}

#[test]
fn a_failed_push_rerun_sends_only_what_is_missing() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 7);
    // The basic upload fails for good (403 is not retried); whatever was stored stays stored.
    server.fail(
        "PUT",
        "/upload/",
        Fault::Status {
            code: 403,
            retry_after: None,
        },
        1,
    );
    let opts = PushOptions {
        parallelism: 1,
        ..push_opts(&server)
    };
    assert!(push_folder(src.path(), "org/resume", &opts, &Silent).is_err());
    assert_eq!(server.commit_count("org/resume"), 1);
    let missing: u64 = files[..2]
        .iter()
        .filter(|(_, c)| !server.has_object(&sha256(c)))
        .map(|(_, c)| c.len() as u64)
        .sum();
    assert!(missing > 0);
    let before = server.cdn_bytes();
    let out = push_folder(src.path(), "org/resume", &opts, &Silent).unwrap();
    assert!(out.committed);
    assert_eq!(
        server.cdn_bytes() - before,
        missing,
        "re-sent bytes already stored"
    );
    assert_eq!(out.bytes_uploaded, missing);
    for (p, c) in &files {
        assert_eq!(
            server.file("org/resume", "main", p).as_ref(),
            Some(c),
            "{p}"
        );
    }
}

#[test]
fn branch_private_and_message() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 8);
    let opts = PushOptions {
        private: true,
        revision: "dev/exp-1".into(),
        commit_message: "WARP iteration 1".into(),
        ..push_opts(&server)
    };
    let out = push_folder(src.path(), "org/priv", &opts, &Silent).unwrap();
    assert_eq!(server.is_private("org/priv"), Some(true));
    assert_eq!(
        server.head("org/priv", "dev/exp-1").as_deref(),
        Some(out.commit_oid.as_str())
    );
    assert_eq!(server.files("org/priv", "main"), vec![".gitattributes"]);
    assert_eq!(
        server
            .commit_summary("org/priv", &out.commit_oid)
            .as_deref(),
        Some("WARP iteration 1")
    );
    // A private repo needs the token to be read.
    let cache = tempfile::tempdir().unwrap();
    let mut anon = hub_opts(&server, cache.path());
    anon.token = None;
    let err = resolve_checkpoint("org/priv@dev/exp-1", &anon, &Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("401") && err.contains("token"), "{err}");
    let snap = resolve_checkpoint(
        "org/priv@dev/exp-1",
        &hub_opts(&server, cache.path()),
        &Silent,
    )
    .unwrap();
    assert_same_files(&snap, &files);
    assert!(cache
        .path()
        .join("models--org--priv/refs/dev/exp-1")
        .is_file());
}

#[test]
fn token_missing_or_wrong() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("config.json"), b"{}").unwrap();
    let none = PushOptions {
        token: None,
        ..push_opts(&server)
    };
    // The caller's mistake (exit 2), typed as the hub's: no token.
    let e = push_folder(src.path(), "org/t", &none, &Silent).unwrap_err();
    assert!(
        matches!(&e, Error::Hub(h) if h.kind == HubErrorKind::NoToken) && e.exit_code() == 2,
        "{e:?}"
    );
    let wrong = PushOptions {
        token: Some("hf_wrong_secret".into()),
        ..push_opts(&server)
    };
    let msg = push_folder(src.path(), "org/t", &wrong, &Silent)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("401") && !msg.contains("hf_wrong_secret"),
        "{msg}"
    );
    let bad_id = push_folder(src.path(), "not a repo", &push_opts(&server), &Silent).unwrap_err();
    assert!(
        matches!(&bad_id, Error::Hub(h) if h.kind == HubErrorKind::InvalidId)
            && bad_id.exit_code() == 2,
        "{bad_id:?}"
    );
}

#[test]
fn empty_and_nested_files() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("sub/dir")).unwrap();
    std::fs::create_dir_all(src.path().join(".git")).unwrap();
    std::fs::write(src.path().join(".git/HEAD"), b"ref").unwrap();
    std::fs::write(src.path().join("empty.bin"), b"").unwrap();
    std::fs::write(src.path().join("sub/dir/x.safetensors"), bytes(3000, 9)).unwrap();
    std::fs::write(src.path().join("sub/notes.txt"), b"hello").unwrap();
    push_folder(src.path(), "org/nested", &push_opts(&server), &Silent).unwrap();
    assert_eq!(
        server.files("org/nested", "main"),
        vec![
            ".gitattributes",
            "empty.bin",
            "sub/dir/x.safetensors",
            "sub/notes.txt"
        ]
    );
    assert_eq!(server.file("org/nested", "main", "empty.bin").unwrap(), b"");
    assert_eq!(
        server.is_lfs("org/nested", "main", "sub/dir/x.safetensors"),
        Some(true)
    );
}

#[test]
fn offline_mode_uses_the_cache_and_names_what_is_missing() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    write_checkpoint(src.path(), 10);
    push_folder(src.path(), "org/off", &push_opts(&server), &Silent).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut offline = hub_opts(&server, cache.path());
    offline.offline = true;

    let msg = resolve_checkpoint("org/off", &offline, &Silent)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("HF_HUB_OFFLINE") && msg.contains("org/off") && msg.contains("refs"),
        "{msg}"
    );

    let online = resolve_checkpoint("org/off", &hub_opts(&server, cache.path()), &Silent).unwrap();
    let requests = server.log().len();
    assert_eq!(
        resolve_checkpoint("org/off", &offline, &Silent).unwrap(),
        online
    );
    assert_eq!(
        server.log().len(),
        requests,
        "offline mode touched the network"
    );

    std::fs::remove_file(online.join("model-00002-of-00002.safetensors")).unwrap();
    let msg = resolve_checkpoint("org/off", &offline, &Silent)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("model-00002-of-00002.safetensors") && msg.contains("offline"),
        "{msg}"
    );
    // Online, the missing shard is fetched again.
    let again = resolve_checkpoint("org/off", &hub_opts(&server, cache.path()), &Silent).unwrap();
    assert!(again.join("model-00002-of-00002.safetensors").is_file());
}

#[test]
fn inputs_that_are_not_checkpoints() {
    let server = HubServer::start();
    let cache = tempfile::tempdir().unwrap();
    let opts = hub_opts(&server, cache.path());
    let err = resolve_checkpoint("./no/such/dir", &opts, &Silent).unwrap_err();
    assert!(
        matches!(&err, Error::Hub(h) if h.kind == HubErrorKind::InvalidId
            && h.message.contains("./no/such/dir"))
            && err.exit_code() == 2,
        "{err}"
    );
    let err = resolve_checkpoint("org/absent", &opts, &Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("org/absent") && err.contains("404") && err.contains("not found"),
        "{err}"
    );
    // An existing local path is returned untouched, even if it also looks like a hub id.
    let local = tempfile::tempdir().unwrap();
    let p = local.path().to_str().unwrap();
    assert_eq!(resolve_checkpoint(p, &opts, &Silent).unwrap(), local.path());
    // A repo without weights.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("config.json"), b"{}").unwrap();
    push_folder(src.path(), "org/noweights", &push_opts(&server), &Silent).unwrap();
    let err = resolve_checkpoint("org/noweights", &opts, &Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    let err = resolve_checkpoint("org/noweights@nobranch", &opts, &Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nobranch"), "{err}");
}

#[test]
fn downloads_retry_server_errors() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 11);
    push_folder(src.path(), "org/flaky", &push_opts(&server), &Silent).unwrap();
    server.fail(
        "GET",
        "/api/models/org/flaky/revision/",
        Fault::Status {
            code: 502,
            retry_after: None,
        },
        1,
    );
    server.fail(
        "GET",
        "/config.json",
        Fault::Status {
            code: 500,
            retry_after: None,
        },
        1,
    );
    server.fail(
        "GET",
        "/lfs/",
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        1,
    );
    let cache = tempfile::tempdir().unwrap();
    let snap = resolve_checkpoint("org/flaky", &hub_opts(&server, cache.path()), &Silent).unwrap();
    assert_same_files(&snap, &files);
    assert_eq!(
        server
            .log()
            .iter()
            .filter(|l| (500..600).contains(&l.status))
            .count(),
        3
    );
}

#[test]
fn hub_errors_are_typed_a_401_is_not_a_timeout() {
    use warp::hub::HubErrorKind;
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("config.json"), b"{}").unwrap();
    // A refused token: the status, its kind and the URL (no query) are there to match on.
    let wrong = PushOptions {
        token: Some("hf_wrong_secret".into()),
        ..push_opts(&server)
    };
    let Err(Error::Hub(h)) = push_folder(src.path(), "org/t", &wrong, &Silent) else {
        panic!("expected a hub error")
    };
    assert_eq!((h.kind, h.status), (HubErrorKind::Status, Some(401)));
    assert!(!h.timed_out());
    assert!(
        h.url.as_deref().is_some_and(|u| u.starts_with(&server.url)),
        "{h:?}"
    );
    // A server that never answers: a timeout, no status.
    server.fail(
        "POST",
        "/preupload/",
        Fault::Stall(Duration::from_secs(3)),
        10,
    );
    let impatient = PushOptions {
        timeout: Duration::from_millis(300),
        retry: RetryPolicy {
            max_retries: 0,
            ..fast_retry()
        },
        ..push_opts(&server)
    };
    let Err(Error::Hub(h)) = push_folder(src.path(), "org/t", &impatient, &Silent) else {
        panic!("expected a hub error")
    };
    assert!(h.timed_out() && h.status.is_none(), "{h:?}");
    // Offline and not cached: its own kind.
    let cache = tempfile::tempdir().unwrap();
    let mut offline = hub_opts(&server, cache.path());
    offline.offline = true;
    let Err(Error::Hub(h)) = resolve_checkpoint("org/t", &offline, &Silent) else {
        panic!("expected a hub error")
    };
    assert_eq!(h.kind, HubErrorKind::NotCached);
}

#[test]
fn downloads_honour_retry_after_too() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 12);
    push_folder(src.path(), "org/busy", &push_opts(&server), &Silent).unwrap();
    let listing = "/api/models/org/busy/revision/";
    let before = server.log().len();
    server.fail(
        "GET",
        listing,
        Fault::Status {
            code: 429,
            retry_after: Some(1),
        },
        1,
    );
    let cache = tempfile::tempdir().unwrap();
    let snap = resolve_checkpoint("org/busy", &hub_opts(&server, cache.path()), &Silent).unwrap();
    assert_same_files(&snap, &files);
    let log = server.log();
    let tries: Vec<_> = log[before..]
        .iter()
        .filter(|l| l.path.contains(listing))
        .collect();
    assert_eq!((tries[0].status, tries[1].status), (429, 200));
    // The backoff alone would be ~10 ms; Retry-After asked for a second.
    assert!(tries[1].at - tries[0].at >= Duration::from_millis(950));
}

/// A file whose body is cut short resumes where it stopped: in the same run (the retry asks
/// for the rest with `Range` and the storage answers 206), and in the next run when the first
/// gave up (the partial blob `blobs/<etag>.incomplete` stays in the cache for it).
#[test]
fn a_download_cut_short_resumes_with_a_range_request() {
    let server = HubServer::start();
    let src = tempfile::tempdir().unwrap();
    let files = write_checkpoint(src.path(), 13);
    push_folder(src.path(), "org/cut", &push_opts(&server), &Silent).unwrap();
    let resumed = |s: &HubServer, from: usize| -> Vec<(String, u16)> {
        s.log()[from..]
            .iter()
            .filter(|l| l.server == "cdn")
            .filter_map(|l| Some((l.range.clone()?, l.status)))
            .collect()
    };

    // Same run: one cut, then the retry continues from the bytes already written.
    server.fail("GET", "/lfs/", Fault::CutAnswer, 1);
    let start = server.log().len();
    let cache = tempfile::tempdir().unwrap();
    let snap = resolve_checkpoint("org/cut", &hub_opts(&server, cache.path()), &Silent).unwrap();
    assert_same_files(&snap, &files);
    let ranges = resumed(&server, start);
    assert_eq!(ranges.len(), 1, "{}", server.dump_log());
    assert_eq!(ranges[0].1, 206);
    let from: u64 = ranges[0].0["bytes=".len()..]
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0, "{ranges:?}");

    // Next run: no retries, so the cut ends the first run; the second resumes the partial blob.
    let cache = tempfile::tempdir().unwrap();
    let mut once = hub_opts(&server, cache.path());
    once.retry.max_retries = 0;
    server.fail("GET", "/lfs/", Fault::CutAnswer, 1);
    let err = resolve_checkpoint("org/cut", &once, &Silent).unwrap_err();
    assert!(err.to_string().contains("cut short"), "{err}");
    let blobs = cache.path().join("models--org--cut/blobs");
    let partial: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert_eq!(
        partial.len(),
        1,
        "one partial blob is kept for the next run"
    );
    let start = server.log().len();
    let snap = resolve_checkpoint("org/cut", &once, &Silent).unwrap();
    assert_same_files(&snap, &files);
    let ranges = resumed(&server, start);
    assert_eq!(ranges.len(), 1, "{}", server.dump_log());
    assert_eq!(ranges[0].1, 206);
    assert!(std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".incomplete")));
}
