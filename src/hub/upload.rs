//! `push_folder`: one folder → one commit, with the hub's commit protocol:
//! create repo → parent commit → preupload (LFS or regular, remote oid) → hashes → LFS batch →
//! transfers + verify → NDJSON commit. Files identical on the hub are left out; LFS objects the
//! hub already stores are not sent again, so re-running an interrupted push sends only what is
//! missing.

use super::http::{encode_path, encode_segment, CallError, Client};
use super::lfs::{self, parse_batch, transfer_all, Upload, LFS_CONTENT_TYPE};
use super::repo_id::check_repo_id;
use super::{HubError, PushOptions, RetryPolicy};
use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Files per preupload / LFS batch request (the python client's chunking).
const BATCH_FILES: usize = 256;
/// Bytes of each file the hub looks at to decide LFS vs regular.
const SAMPLE_BYTES: usize = 512;

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushOutcome {
    /// URL of the new commit, or of the current head when nothing had changed.
    pub commit_url: String,
    pub commit_oid: String,
    /// False when every file was already identical on the hub (no empty commit is made).
    pub committed: bool,
    /// Files in the folder.
    pub files: usize,
    /// Files left out of the commit because the hub has them unchanged.
    pub unchanged: usize,
    /// LFS objects sent / already stored by the hub.
    pub lfs_uploaded: usize,
    pub lfs_already_stored: usize,
    /// LFS bytes sent (each byte once, whatever the retries).
    pub bytes_uploaded: u64,
}

struct LocalFile {
    path_in_repo: String,
    abs: PathBuf,
    size: u64,
    sample: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Regular,
    Lfs,
}

struct Remote {
    mode: Mode,
    ignore: bool,
    oid: Option<String>,
}

/// What a file contributes to the commit once hashed.
enum Hashed {
    /// sha256 hex of the content.
    Lfs(String),
    /// The content (small by the hub's decision) and its git blob sha1.
    Regular(Vec<u8>, String),
}

/// Push the files of `dir` to the model repo `repo_id` as one commit on `opts.revision`.
pub fn push_folder(
    dir: &Path,
    repo_id: &str,
    opts: &PushOptions,
    reporter: &dyn Reporter,
) -> Result<PushOutcome> {
    let token = check_push(repo_id, opts)?;
    let files = scan_folder(dir)?;
    if files.is_empty() {
        return Err(Error::format(dir, "no files to push"));
    }
    let client = Client::new(
        &opts.endpoint,
        Some(token),
        opts.retry.clone(),
        opts.timeout,
    );
    let push = Push {
        client: &client,
        repo_id,
        opts,
        reporter,
        files: &files,
    };
    create_repo(&client, repo_id, opts.private, reporter)?;
    let parent = ensure_revision(&client, repo_id, &opts.revision, reporter)?;
    let remote = push.preupload()?;
    let hashed = hash_files(&files, &remote, opts.parallelism, reporter)?;
    // Ignored and unchanged files are left out; the rest become commit operations.
    let mut ops: Vec<(usize, &Hashed)> = Vec::new();
    let mut unchanged = 0;
    for (i, h) in hashed.iter().enumerate() {
        let Some(h) = h else { continue };
        let local_oid = match h {
            Hashed::Lfs(sha) => sha,
            Hashed::Regular(_, sha1) => sha1,
        };
        if remote[i].1.oid.as_deref() == Some(local_oid.as_str()) {
            unchanged += 1;
        } else {
            ops.push((i, h));
        }
    }
    let (uploads, already) = push.lfs_batch(&ops)?;
    let sent = push.transfer(&uploads)?;
    let done = PushOutcome {
        commit_url: String::new(),
        commit_oid: String::new(),
        committed: false,
        files: files.len(),
        unchanged,
        lfs_uploaded: uploads.len(),
        lfs_already_stored: already,
        bytes_uploaded: sent,
    };
    if ops.is_empty() {
        reporter.message("every file is already on the hub unchanged: nothing to commit");
        let head = parent.unwrap_or_default();
        return Ok(PushOutcome {
            commit_url: format!("{}/{repo_id}/commit/{head}", client.endpoint()),
            commit_oid: head,
            ..done
        });
    }
    let (url, oid) = commit(&client, repo_id, opts, parent, &files, &ops, reporter)?;
    Ok(PushOutcome {
        commit_url: url,
        commit_oid: oid,
        committed: true,
        ..done
    })
}

/// The arguments of a push, checked before anything is read or sent; returns the token.
fn check_push(repo_id: &str, opts: &PushOptions) -> Result<String> {
    check_repo_id(repo_id)?;
    if opts.revision.trim().is_empty() {
        return Err(Error::setting(
            "revision",
            "the revision to push to must not be empty",
        ));
    }
    opts.token.clone().ok_or_else(|| {
        Error::from(HubError::no_token(
            "pushing needs a hub token: give one, set HF_TOKEN, or log in with `hf auth login`",
        ))
    })
}

/// One push in progress: the phases after the repo and its revision are known.
struct Push<'a> {
    client: &'a Client,
    repo_id: &'a str,
    opts: &'a PushOptions,
    reporter: &'a dyn Reporter,
    files: &'a [LocalFile],
}

impl<'a> Push<'a> {
    /// Preupload: the hub decides LFS or regular for each file and tells the oid it has at
    /// that path. Empty files are always regular (storage refuses empty PUTs).
    fn preupload(&self) -> Result<Vec<(Mode, Remote)>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let rev = encode_segment(&self.opts.revision);
        let url = format!(
            "{}/api/models/{}/preupload/{rev}",
            self.client.endpoint(),
            self.repo_id
        );
        let what = format!("preupload to {}", self.repo_id);
        let mut remote: BTreeMap<String, Remote> = BTreeMap::new();
        for chunk in self.files.chunks(BATCH_FILES) {
            let body = json!({"files": chunk.iter().map(|f| json!({
                "path": f.path_in_repo,
                "sample": b64.encode(&f.sample),
                "size": f.size,
            })).collect::<Vec<_>>()});
            let answer = self
                .client
                .json(
                    "POST",
                    &url,
                    Some(&body),
                    "application/json",
                    &what,
                    self.reporter,
                )
                .map_err(|e| e.into_error(&what))?;
            parse_preupload(&answer, &mut remote)?;
        }
        self.files
            .iter()
            .map(|f| {
                let r = remote.remove(&f.path_in_repo).ok_or_else(|| {
                    HubError::protocol(format!(
                        "preupload: the hub did not answer for '{}'",
                        f.path_in_repo
                    ))
                })?;
                let mode = if f.size == 0 { Mode::Regular } else { r.mode };
                Ok((mode, r))
            })
            .collect()
    }

    /// The LFS batch for the distinct objects to commit: what to send where; objects the hub
    /// already stores are counted and not sent.
    fn lfs_batch(&self, ops: &[(usize, &Hashed)]) -> Result<(Vec<Upload<'a>>, usize)> {
        let mut wanted: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
        for (i, h) in ops {
            if let Hashed::Lfs(sha) = h {
                wanted
                    .entry(sha.as_str())
                    .or_insert((self.files[*i].size, *i));
            }
        }
        let wanted: Vec<(&str, u64, usize)> =
            wanted.into_iter().map(|(o, (s, i))| (o, s, i)).collect();
        let ep = self.client.endpoint();
        let url = format!("{ep}/{}.git/info/lfs/objects/batch", self.repo_id);
        let what = format!("LFS batch for {}", self.repo_id);
        let mut uploads = Vec::new();
        let mut already = 0;
        for chunk in wanted.chunks(BATCH_FILES) {
            let body = json!({
                "operation": "upload",
                "transfers": ["basic", "multipart"],
                "objects": chunk.iter().map(|(oid, size, _)| json!({"oid": oid, "size": size})).collect::<Vec<_>>(),
                "hash_algo": "sha256",
                "ref": {"name": self.opts.revision},
            });
            let answer = self
                .client
                .json(
                    "POST",
                    &url,
                    Some(&body),
                    LFS_CONTENT_TYPE,
                    &what,
                    self.reporter,
                )
                .map_err(|e| e.into_error(&what))?;
            let objects = parse_batch(&answer, ep)?;
            for (oid, size, i) in chunk {
                let obj = objects.iter().find(|o| o.oid == *oid).ok_or_else(|| {
                    HubError::protocol(format!("LFS batch: no answer for object {oid}"))
                })?;
                if obj.size != *size {
                    return Err(HubError::protocol(format!(
                        "LFS batch: size mismatch for object {oid}"
                    ))
                    .into());
                }
                if obj.upload.is_none() {
                    already += 1;
                    continue;
                }
                uploads.push(Upload {
                    object: obj.clone(),
                    path: &self.files[*i].abs,
                    label: &self.files[*i].path_in_repo,
                });
            }
        }
        if already > 0 {
            self.reporter.message(&format!(
                "{already} LFS file(s) already on the hub, not sent again"
            ));
        }
        Ok((uploads, already))
    }

    /// Sends the LFS objects (basic or multipart, `parallelism` PUTs at once); returns the
    /// bytes sent.
    fn transfer(&self, uploads: &[Upload]) -> Result<u64> {
        if uploads.is_empty() {
            return Ok(0);
        }
        let total: u64 = uploads.iter().map(|u| u.object.size).sum();
        self.reporter.start("upload", total);
        let res = transfer_all(self.client, uploads, self.opts.parallelism, self.reporter);
        self.reporter.finish();
        res
    }
}

/// Files under `dir`, sorted, `/`-separated; `.git/` and `.cache/huggingface/` are skipped (as the
/// python client does), symlinked files are followed, symlinked folders are not.
fn scan_folder(dir: &Path) -> Result<Vec<LocalFile>> {
    let meta = std::fs::metadata(dir).at(dir)?;
    if !meta.is_dir() {
        return Err(Error::format(dir, "not a folder"));
    }
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&abs).at(&abs)? {
            let entry = entry.at(&abs)?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| Error::format(&path, "file name is not UTF-8"))?;
            let rel_child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type().at(&path)?;
            if ft.is_dir() {
                if name == ".git"
                    || rel_child.ends_with(".cache/huggingface")
                    || rel_child == ".cache"
                {
                    continue;
                }
                stack.push((path, rel_child));
                continue;
            }
            let meta = std::fs::metadata(&path).at(&path)?;
            if !meta.is_file() {
                continue;
            }
            let mut sample = Vec::with_capacity(SAMPLE_BYTES);
            File::open(&path)
                .at(&path)?
                .take(SAMPLE_BYTES as u64)
                .read_to_end(&mut sample)
                .at(&path)?;
            out.push(LocalFile {
                path_in_repo: rel_child,
                abs: path,
                size: meta.len(),
                sample,
            });
        }
    }
    out.sort_by(|a, b| a.path_in_repo.cmp(&b.path_in_repo));
    Ok(out)
}

fn create_repo(
    client: &Client,
    repo_id: &str,
    private: bool,
    reporter: &dyn Reporter,
) -> Result<()> {
    let (org, name) = repo_id.split_once('/').unwrap_or(("", repo_id));
    let mut body = json!({"name": name, "organization": org, "type": "model"});
    if private {
        body["visibility"] = json!("private");
        body["private"] = json!(true);
    }
    let url = format!("{}/api/repos/create", client.endpoint());
    let what = format!("create repo {repo_id}");
    match client.json(
        "POST",
        &url,
        Some(&body),
        "application/json",
        &what,
        reporter,
    ) {
        Ok(_) => {
            reporter.message(&format!("created repo {repo_id}"));
            Ok(())
        }
        Err(CallError::Http(f)) if f.status == Some(409) => {
            if private {
                reporter.message(&format!(
                    "{repo_id} exists: its visibility is left as it is"
                ));
            }
            Ok(())
        }
        // No right to create in this namespace: fine if the repo exists (and we can write it).
        Err(CallError::Http(f)) if matches!(f.status, Some(401..=403)) => {
            match revision_sha(client, repo_id, "main", reporter) {
                Ok(_) => Ok(()),
                Err(_) => Err(f.into_error(&what)),
            }
        }
        Err(e) => Err(e.into_error(&what)),
    }
}

/// The head commit of `rev` (`None` when the repo has no commit yet); a missing branch other than
/// `main` is created from `main`.
fn ensure_revision(
    client: &Client,
    repo_id: &str,
    rev: &str,
    reporter: &dyn Reporter,
) -> Result<Option<String>> {
    let what = format!("read {repo_id}@{rev}");
    match revision_sha(client, repo_id, rev, reporter) {
        Ok(sha) => Ok(sha),
        Err(CallError::Http(f)) if f.status == Some(404) && rev == "main" => Ok(None),
        Err(CallError::Http(f))
            if f.status == Some(404) && f.code.as_deref() != Some("RepoNotFound") =>
        {
            let url = format!(
                "{}/api/models/{repo_id}/branch/{}",
                client.endpoint(),
                encode_segment(rev)
            );
            let what_b = format!("create branch {rev} in {repo_id}");
            match client.json(
                "POST",
                &url,
                Some(&json!({})),
                "application/json",
                &what_b,
                reporter,
            ) {
                Ok(_) => reporter.message(&format!("created branch {rev}")),
                Err(CallError::Http(f)) if f.status == Some(409) => {}
                Err(e) => return Err(e.into_error(&what_b)),
            }
            revision_sha(client, repo_id, rev, reporter).map_err(|e| e.into_error(&what))
        }
        Err(e) => Err(e.into_error(&what)),
    }
}

fn revision_sha(
    client: &Client,
    repo_id: &str,
    rev: &str,
    reporter: &dyn Reporter,
) -> std::result::Result<Option<String>, CallError> {
    let url = format!(
        "{}/api/models/{repo_id}/revision/{}",
        client.endpoint(),
        encode_segment(rev)
    );
    let info = client.json(
        "GET",
        &url,
        None,
        "application/json",
        &format!("read {repo_id}@{rev}"),
        reporter,
    )?;
    Ok(info.get("sha").and_then(Value::as_str).map(str::to_string))
}

fn parse_preupload(answer: &Value, out: &mut BTreeMap<String, Remote>) -> Result<()> {
    let files = answer
        .get("files")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Error::from(HubError::protocol(
                "preupload: malformed answer (no 'files')",
            ))
        })?;
    for f in files {
        let path = f.get("path").and_then(Value::as_str);
        let mode = match f.get("uploadMode").and_then(Value::as_str) {
            Some("lfs") => Mode::Lfs,
            Some("regular") => Mode::Regular,
            other => {
                return Err(Error::from(HubError::protocol(format!(
                    "preupload: unsupported upload mode {other:?} (only 'lfs' and 'regular' are spoken)"
                ))))
            }
        };
        let Some(path) = path else {
            return Err(Error::from(HubError::protocol(
                "preupload: malformed answer (file without path)",
            )));
        };
        out.insert(
            path.to_string(),
            Remote {
                mode,
                ignore: f
                    .get("shouldIgnore")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                oid: f.get("oid").and_then(Value::as_str).map(str::to_string),
            },
        );
    }
    Ok(())
}

/// sha256 of LFS files (streamed) and content + git sha1 of regular ones, `parallelism` files at
/// once. `None` for files the hub says to ignore.
fn hash_files(
    files: &[LocalFile],
    modes: &[(Mode, Remote)],
    parallelism: usize,
    reporter: &dyn Reporter,
) -> Result<Vec<Option<Hashed>>> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    reporter.start("hash", total);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Hashed>>> = Mutex::new((0..files.len()).map(|_| None).collect());
    let error: Mutex<Option<Error>> = Mutex::new(None);
    let workers = parallelism.clamp(1, files.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= files.len() || lock(&error).is_some() {
                    break;
                }
                let (mode, remote) = &modes[i];
                if remote.ignore {
                    reporter.advance(files[i].size);
                    continue;
                }
                let res = match mode {
                    Mode::Lfs => lfs::sha256_file(&files[i].abs, reporter).map(Hashed::Lfs),
                    Mode::Regular => read_regular(&files[i].abs, reporter),
                };
                match res {
                    Ok(h) => lock(&results)[i] = Some(h),
                    Err(e) => {
                        lock(&error).get_or_insert(e);
                    }
                }
            });
        }
    });
    reporter.finish();
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(|e| e.into_inner()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_regular(path: &Path, reporter: &dyn Reporter) -> Result<Hashed> {
    use sha1::{Digest, Sha1};
    let content = std::fs::read(path).at(path)?;
    reporter.advance(content.len() as u64);
    // The oid git gives a blob: sha1("blob <len>\0" + content).
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(&content);
    let oid = crate::io::hex(&h.finalize());
    Ok(Hashed::Regular(content, oid))
}

/// One NDJSON commit. Retried only when the parent commit is pinned: then a retry of a commit
/// whose answer was lost cannot apply twice (the hub refuses it as a conflict).
fn commit(
    client: &Client,
    repo_id: &str,
    opts: &PushOptions,
    parent: Option<String>,
    files: &[LocalFile],
    ops: &[(usize, &Hashed)],
    reporter: &dyn Reporter,
) -> Result<(String, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut header =
        json!({"summary": opts.commit_message, "description": opts.commit_description});
    if let Some(p) = &parent {
        header["parentCommit"] = json!(p);
    }
    let mut lines = vec![json!({"key": "header", "value": header})];
    for (i, h) in ops {
        let f = &files[*i];
        lines.push(match h {
            Hashed::Regular(content, _) => json!({"key": "file", "value": {
                "content": b64.encode(content), "path": f.path_in_repo, "encoding": "base64"}}),
            Hashed::Lfs(sha) => json!({"key": "lfsFile", "value": {
                "path": f.path_in_repo, "algo": "sha256", "oid": sha, "size": f.size}}),
        });
    }
    let mut body = Vec::new();
    for l in &lines {
        body.extend_from_slice(l.to_string().as_bytes());
        body.push(b'\n');
    }
    let url = format!(
        "{}/api/models/{repo_id}/commit/{}",
        client.endpoint(),
        encode_segment(&opts.revision)
    );
    let what = format!("commit to {repo_id}@{}", opts.revision);
    let policy = if parent.is_some() {
        opts.retry.clone()
    } else {
        RetryPolicy {
            max_retries: 0,
            ..opts.retry.clone()
        }
    };
    reporter.message(&format!(
        "committing {} file(s) to {repo_id}@{}",
        ops.len(),
        opts.revision
    ));
    let resp = client
        .call_with(&policy, &what, &url, reporter, |_| {
            Ok(client
                .request("POST", &url)
                .set("Content-Type", "application/x-ndjson")
                .set("Accept", "application/json")
                .send_bytes(&body)?)
        })
        .map_err(|e| match e {
            CallError::Http(f)
                if f.ambiguous_earlier_attempt && matches!(f.status, Some(409 | 412)) =>
            {
                Error::from(f.to_hub_error(&what).hint(format!(
                    " (an earlier attempt whose answer was lost may have been applied: check \
                     {}/{repo_id}/commits/{})",
                    client.endpoint(),
                    encode_path(&opts.revision)
                )))
            }
            e => e.into_error(&what),
        })?;
    let answer = super::http::read_json(resp, &url).map_err(|f| f.into_error(&what))?;
    let oid = answer
        .get("commitOid")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::from(HubError::protocol(format!(
                "{what}: answer without commitOid"
            )))
        })?
        .to_string();
    let url = answer
        .get("commitUrl")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}/{repo_id}/commit/{oid}", client.endpoint()));
    Ok((url, oid))
}
