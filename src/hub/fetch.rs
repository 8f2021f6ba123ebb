//! One file of a hub repo into the hub cache, through warp's own client.
//!
//! Redirects are followed here one hop at a time, so the token is attached per hop by that
//! hop's exact origin: the hub's own redirects (a renamed repo) keep it, the storage server's
//! never gets it, for public and private repos alike. The cache layout is the python client's —
//! `blobs/<etag>`, `snapshots/<commit>/<file>` a relative link to it — and a blob is written
//! under the same per-blob lock file (`.locks/<repo folder>/<etag>.lock`, `flock`) that
//! huggingface_hub takes, so the two clients can fill one cache at the same time. A partial
//! blob (`<etag>.incomplete`) is resumed with a `Range` request, by the next attempt of the
//! retry loop or by the next run.

use super::http::{encode_path, judge_ureq, origin, retry, Client, Verdict};
use super::HubError;
use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Redirect hops followed for one file (the hub's, then the storage's).
const MAX_HOPS: usize = 5;

/// Where a repo's files go: `models--org--name` and its lock folder.
pub(crate) struct RepoCache {
    pub root: PathBuf,
    pub locks: PathBuf,
}

/// Why one attempt failed: the server (judged by status), the body cut short (transient,
/// resumed), or a local problem (final).
enum Failure {
    Http(Box<ureq::Error>),
    Body(String),
    Local(Error),
}

impl From<ureq::Error> for Failure {
    fn from(e: ureq::Error) -> Self {
        Failure::Http(Box::new(e))
    }
}

/// What the hub says of a file before its bytes: its cache key and size.
struct Meta {
    etag: String,
    size: Option<u64>,
}

/// `file` at `commit` linked into `snapshots/<commit>/`, fetched unless its blob is cached.
/// A failure of the hub comes back as its typed error with `what` as context.
pub(crate) fn fetch_file(
    client: &Client,
    repo: &str,
    commit: &str,
    file: &str,
    cache: &RepoCache,
    reporter: &dyn Reporter,
) -> std::result::Result<PathBuf, FetchError> {
    let url = format!(
        "{}/{repo}/resolve/{commit}/{}",
        client.endpoint(),
        encode_path(file)
    );
    let judge = |f: &Failure| match f {
        Failure::Http(e) => judge_ureq(e),
        Failure::Body(reason) => Verdict {
            retry: true,
            retry_after: None,
            lost_response: false,
            reason: reason.clone(),
        },
        Failure::Local(_) => Verdict::fatal(),
    };
    let policy = client.retry_policy();
    let blob = retry(
        policy,
        file,
        reporter,
        |_| attempt(client, &url, file, cache, reporter),
        judge,
    )
    .map_err(|(f, _)| match f {
        Failure::Http(e) => FetchError::Http(e, url.clone()),
        Failure::Body(reason) => {
            FetchError::Local(HubError::network(format!("{file}: {reason}"), false).into())
        }
        Failure::Local(e) => FetchError::Local(e),
    })?;
    let link = cache.root.join("snapshots").join(commit).join(file);
    link_blob(&blob, &link).map_err(FetchError::Local)?;
    Ok(link)
}

/// A file that could not be fetched: the hub's answer (with its URL) or a local error.
pub(crate) enum FetchError {
    Http(Box<ureq::Error>, String),
    Local(Error),
}

/// One attempt: follow the hops, then write (or resume) the blob.
fn attempt(
    client: &Client,
    start: &str,
    file: &str,
    cache: &RepoCache,
    reporter: &dyn Reporter,
) -> std::result::Result<PathBuf, Failure> {
    let first = client.get_one_hop(start).call()?;
    let meta = meta_of(&first, file)?;
    let blob = cache.root.join("blobs").join(&meta.etag);
    if blob.is_file() {
        return Ok(blob);
    }
    let _lock = BlobLock::take(cache, &meta.etag).map_err(Failure::Local)?;
    // Another process may have finished it while we waited for the lock.
    if blob.is_file() {
        return Ok(blob);
    }
    if !(300..400).contains(&first.status()) {
        // A regular file, served by the hub itself: small, written from its start.
        return write_blob(first, &meta, 0, file, cache, reporter);
    }
    let mut url = next_hop(start, &first, file)?;
    for _ in 0..MAX_HOPS {
        let partial = std::fs::metadata(incomplete(&blob)).map_or(0, |m| m.len());
        let mut req = client.get_one_hop(&url);
        if partial > 0 {
            req = req.set("Range", &format!("bytes={partial}-"));
        }
        let resp = req.call()?;
        if !(300..400).contains(&resp.status()) {
            return write_blob(resp, &meta, partial, file, cache, reporter);
        }
        url = next_hop(&url, &resp, file)?;
    }
    Err(Failure::Local(
        HubError::protocol(format!("{file}: more than {MAX_HOPS} redirects")).into(),
    ))
}

/// The blob key (`X-Linked-Etag` for a file in storage, else `ETag`, quotes and `W/` removed)
/// and the size, from the hub's first answer.
fn meta_of(resp: &ureq::Response, file: &str) -> std::result::Result<Meta, Failure> {
    let raw = resp
        .header("X-Linked-Etag")
        .or_else(|| resp.header("ETag"))
        .ok_or_else(|| {
            Failure::Local(
                HubError::protocol(format!("{file}: the hub's answer has no ETag")).into(),
            )
        })?;
    let etag = raw
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string();
    // The key becomes a file name: a hash, nothing that could leave the blobs folder.
    if etag.is_empty() || !etag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Failure::Local(
            HubError::protocol(format!("{file}: the hub answered an invalid ETag '{raw}'")).into(),
        ));
    }
    let size = resp
        .header("X-Linked-Size")
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| {
            (!(300..400).contains(&resp.status()))
                .then(|| resp.header("Content-Length")?.trim().parse().ok())
                .flatten()
        });
    Ok(Meta { etag, size })
}

/// The absolute URL of a redirect's `Location` (absolute, or relative to `url`'s origin).
fn next_hop(url: &str, resp: &ureq::Response, file: &str) -> std::result::Result<String, Failure> {
    let loc = resp.header("Location").unwrap_or("").trim();
    let bad = || {
        Failure::Local(
            HubError::protocol(format!(
                "{file}: HTTP {} without a usable Location",
                resp.status()
            ))
            .into(),
        )
    };
    if loc.starts_with("https://") || loc.starts_with("http://") {
        Ok(loc.to_string())
    } else if loc.starts_with('/') && !loc.starts_with("//") {
        Ok(format!("{}{loc}", origin(url).ok_or_else(bad)?))
    } else {
        Err(bad())
    }
}

fn incomplete(blob: &Path) -> PathBuf {
    let mut name = blob.as_os_str().to_os_string();
    name.push(".incomplete");
    PathBuf::from(name)
}

/// The body into `<blob>.incomplete` (appended on a `206` that continues it, else rewritten),
/// checked against the announced size, then renamed to the blob.
fn write_blob(
    resp: ureq::Response,
    meta: &Meta,
    partial: u64,
    file: &str,
    cache: &RepoCache,
    reporter: &dyn Reporter,
) -> std::result::Result<PathBuf, Failure> {
    let blobs = cache.root.join("blobs");
    std::fs::create_dir_all(&blobs)
        .at(&blobs)
        .map_err(Failure::Local)?;
    let blob = blobs.join(&meta.etag);
    let part = incomplete(&blob);
    let resumed = resp.status() == 206 && continues_at(&resp, partial);
    let offset = if resumed { partial } else { 0 };
    let total = meta.size.or_else(|| {
        let len: u64 = resp.header("Content-Length")?.trim().parse().ok()?;
        Some(offset + len)
    });
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .at(&part)
        .map_err(Failure::Local)?;
    reporter.start(&format!("download {file}"), total.unwrap_or(0));
    reporter.advance(offset);
    let mut got = offset;
    let mut body = resp.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let result = loop {
        if let Err(e) = crate::interrupt::check() {
            break Err(Failure::Local(e));
        }
        match body.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = out.write_all(&buf[..n]) {
                    break Err(Failure::Local(Error::io(&part, e)));
                }
                got += n as u64;
                reporter.advance(n as u64);
            }
            Err(e) => break Err(Failure::Body(format!("download cut short: {e}"))),
        }
    };
    reporter.finish();
    result?;
    if let Some(want) = total {
        if got != want {
            return Err(Failure::Body(format!(
                "download cut short at {got} of {want} bytes"
            )));
        }
    }
    out.sync_all().at(&part).map_err(Failure::Local)?;
    drop(out);
    std::fs::rename(&part, &blob)
        .at(&blob)
        .map_err(Failure::Local)?;
    Ok(blob)
}

/// A `206` whose `Content-Range` starts where the partial file ends.
fn continues_at(resp: &ureq::Response, partial: u64) -> bool {
    resp.header("Content-Range")
        .and_then(|r| r.trim().strip_prefix("bytes "))
        .and_then(|r| r.split('-').next())
        .and_then(|a| a.trim().parse::<u64>().ok())
        == Some(partial)
}

/// `link` (in a snapshot) pointing at `blob` by a relative path, as the python client makes
/// it; replaced atomically when it exists and points elsewhere.
fn link_blob(blob: &Path, link: &Path) -> Result<()> {
    let dir = link
        .parent()
        .ok_or_else(|| Error::Internal(format!("{}: no parent", link.display())))?;
    std::fs::create_dir_all(dir).at(dir)?;
    // From snapshots/<commit>/<a/b/file> up to the repo folder: one `..` per folder level.
    let depth = link
        .strip_prefix(blob.ancestors().nth(2).unwrap_or(Path::new("")))
        .map_or(0, |rel| rel.components().count().saturating_sub(1));
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = link.with_file_name(format!(
        ".{}.{}.warp-link",
        link.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).at(&tmp)?;
    std::fs::rename(&tmp, link).at(link)
}

/// The per-blob lock shared with huggingface_hub (its `filelock` is `flock` on the same file).
struct BlobLock {
    _file: File,
}

impl BlobLock {
    fn take(cache: &RepoCache, etag: &str) -> Result<BlobLock> {
        std::fs::create_dir_all(&cache.locks).at(&cache.locks)?;
        let path = cache.locks.join(format!("{etag}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        // Blocking: another client is writing this blob; it ends or dies (the kernel then
        // drops its lock). SAFETY: flock on a descriptor owned here, kept open with the lock.
        loop {
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(BlobLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(&path, e));
            }
            crate::interrupt::check()?;
        }
    }
}
