//! Hub ids as checkpoint inputs: download the files a merge needs into the standard HF cache
//! (`models--org--name/{blobs,snapshots,refs}`, shared with the python client) through the
//! blocking `hf-hub` client, or find them there when offline.

use super::http::{encode_segment, judge_ureq, retry, Verdict};
use super::repo_id::{is_commit_hash, HubId};
use super::{HubError, HubOptions};
use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::io::reader::{INDEX_FILE as INDEX, SINGLE_FILE as SINGLE};

/// Files fetched along with the weights when the repo has them: the same config and tokenizer
/// files the writer copies to every output.
pub const CHECKPOINT_FILES: &[&str] = crate::io::companion::COMPANION_FILES;

/// A checkpoint argument as a local path: an existing path is returned as is; a hub id
/// `org/name[@revision]` is fetched (weights: the index and its shards, or `model.safetensors`;
/// plus [`CHECKPOINT_FILES`] present in the repo) and its snapshot folder returned.
/// Anything else is a usage error naming `spec`.
pub fn resolve_checkpoint(
    spec: &str,
    opts: &HubOptions,
    reporter: &dyn Reporter,
) -> Result<PathBuf> {
    let local = Path::new(spec);
    if local.exists() {
        return Ok(local.to_path_buf());
    }
    // A name that is there but cannot be followed (a symbolic link loop, a dangling link) is
    // that, not "neither a path nor a hub id".
    if std::fs::symlink_metadata(local).is_ok() {
        if let Err(e) = std::fs::metadata(local) {
            return Err(Error::io(local, e));
        }
    }
    let id = HubId::parse(spec).ok_or_else(|| {
        Error::from(HubError::invalid_id(format!(
            "'{spec}' is neither an existing path nor a hub id (org/name or org/name@revision)"
        )))
    })?;
    if opts.offline {
        offline_snapshot(&id, opts)
    } else {
        download(&id, opts, reporter)
    }
}

/// Opens a checkpoint named on the command line: a local folder or `.safetensors` file, or a hub
/// id `org/name[@revision]` downloaded into (or, offline, found in) the cache `opts` names.
pub fn open_checkpoint(
    spec: &str,
    opts: &HubOptions,
    reporter: &dyn Reporter,
) -> Result<crate::io::Checkpoint> {
    crate::io::Checkpoint::open(resolve_checkpoint(spec, opts, reporter)?)
}

/// `models--org--name` under the cache.
fn repo_cache(opts: &HubOptions, id: &HubId) -> PathBuf {
    opts.cache_dir
        .join(Repo::model(id.repo.clone()).folder_name())
}

fn offline_snapshot(id: &HubId, opts: &HubOptions) -> Result<PathBuf> {
    let root = repo_cache(opts, id);
    let rev = id.revision();
    let off = "offline (HF_HUB_OFFLINE=1)";
    let sha = if is_commit_hash(rev) {
        rev.to_string()
    } else {
        let r = root.join("refs").join(rev);
        match std::fs::read_to_string(&r) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                return Err(HubError::not_cached(format!(
                    "{off}: {id} is not in the cache: no {} (download it once online, or unset HF_HUB_OFFLINE)",
                    r.display()
                ))
                .into())
            }
        }
    };
    let snap = root.join("snapshots").join(&sha);
    if !snap.is_dir() {
        return Err(HubError::not_cached(format!(
            "{off}: {id}: the snapshot of commit {sha} is not in the cache ({} is missing)",
            snap.display()
        ))
        .into());
    }
    let weights = if snap.join(INDEX).is_file() {
        let mut w = vec![INDEX.to_string()];
        w.extend(index_shards(&snap.join(INDEX))?);
        w
    } else if snap.join(SINGLE).is_file() {
        vec![SINGLE.to_string()]
    } else {
        return Err(HubError::not_cached(format!(
            "{off}: {id}: neither {INDEX} nor {SINGLE} is in the cache ({})",
            snap.display()
        ))
        .into());
    };
    for f in &weights {
        let p = snap.join(f);
        if !p.is_file() {
            return Err(HubError::not_cached(format!(
                "{off}: {id}: {f} is not in the cache ({} is missing)",
                p.display()
            ))
            .into());
        }
    }
    Ok(snap)
}

/// The shard file names of an index (`weight_map` values), checked to stay inside the snapshot.
fn index_shards(index: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(index).at(index)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(index, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "no 'weight_map' object"))?;
    let mut shards = BTreeSet::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            Error::format(index, format!("weight_map['{tensor}'] is not a string"))
        })?;
        let safe = !shard.is_empty()
            && !shard.starts_with('/')
            && !shard.contains('\\')
            && shard
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !safe {
            return Err(Error::format(
                index,
                format!("shard name '{shard}' leaves the checkpoint folder"),
            ));
        }
        shards.insert(shard.to_string());
    }
    Ok(shards)
}

fn download(id: &HubId, opts: &HubOptions, reporter: &dyn Reporter) -> Result<PathBuf> {
    let build = |token: Option<String>| {
        ApiBuilder::from_cache(hf_hub::Cache::new(opts.cache_dir.clone()))
            .with_endpoint(opts.endpoint.clone())
            .with_token(token)
            .with_progress(false)
            .build()
            .map_err(|e| api_error(id, "connect", e))
    };
    if let Some(t) = &opts.token {
        super::http::register_secret(t);
    }
    let rev = id.revision().to_string();

    // The listing pins the commit; every file is then fetched at that commit so a push landing
    // meanwhile cannot mix two versions in one snapshot.
    let list = |api: &hf_hub::api::sync::Api| {
        with_retries(opts, reporter, "list", || {
            api.repo(Repo::with_revision(
                id.repo.clone(),
                RepoType::Model,
                encode_segment(&rev),
            ))
            .info()
        })
    };
    // hf-hub sends the token with every request of a download, the storage server's included
    // (it follows the hub's redirect with its own headers). So a repo that can be read without
    // the token is read without it; only a repo that refuses an anonymous reader gets it.
    let mut api = build(None)?;
    let listing = match list(&api) {
        Ok(l) => l,
        Err(e) if opts.token.is_some() && needs_token(&e) => {
            api = build(opts.token.clone())?;
            list(&api).map_err(|e| api_error(id, "list files", e))?
        }
        Err(e) => return Err(api_error(id, "list files", e)),
    };
    let sha = listing.sha.clone();
    if !is_commit_hash(&sha) {
        return Err(HubError::protocol(format!(
            "{id}: the hub answered an invalid commit '{sha}'"
        ))
        .into());
    }
    let present: BTreeSet<&str> = listing
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .collect();
    let root = repo_cache(opts, id);
    let snap = root.join("snapshots").join(&sha);
    let sha_ref = root.join("refs").join(&sha);
    let sha_ref_existed = sha_ref.exists();
    let at_commit = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        sha.clone(),
    ));
    let fetch = |file: &str| -> Result<PathBuf> {
        let cached = snap.join(file);
        if cached.is_file() {
            return Ok(cached);
        }
        with_retries(opts, reporter, file, || {
            at_commit.download_with_progress(file, ReporterProgress { reporter })
        })
        .map_err(|e| api_error(id, &format!("download {file}"), e))
    };

    let files = files_to_fetch(id, &present, &fetch)?;
    for f in &files {
        fetch(f)?;
    }

    // Cache refs as the python client keeps them: refs/<branch> → commit; none named by a hash.
    if rev != sha {
        write_ref(&root.join("refs").join(&rev), &sha)?;
        if !sha_ref_existed {
            // hf-hub records the commit we fetched at as a ref of its own; it is not a branch.
            let _ = std::fs::remove_file(&sha_ref);
        }
    }
    if !snap.is_dir() {
        return Err(HubError::protocol(format!(
            "{id}: nothing was downloaded into {}",
            snap.display()
        ))
        .into());
    }
    Ok(snap)
}

/// What a merge needs from a repo listing `present`: the weights (the index, fetched with
/// `fetch` to learn its shards, or the single file) and the config and tokenizer files there.
fn files_to_fetch(
    id: &HubId,
    present: &BTreeSet<&str>,
    fetch: &dyn Fn(&str) -> Result<PathBuf>,
) -> Result<Vec<String>> {
    let mut files: Vec<String> = Vec::new();
    if present.contains(INDEX) {
        let index = fetch(INDEX)?;
        let shards = index_shards(&index)?;
        if let Some(s) = shards.iter().find(|s| !present.contains(s.as_str())) {
            return Err(HubError::protocol(format!(
                "{id}: {INDEX} names {s}, which the repo does not contain"
            ))
            .into());
        }
        files.extend(shards);
    } else if present.contains(SINGLE) {
        files.push(SINGLE.to_string());
    } else {
        let some: Vec<&str> = present.iter().take(8).copied().collect();
        return Err(HubError::protocol(format!(
            "{id}: no {SINGLE} or {INDEX} in the repo (it has: {})",
            some.join(", ")
        ))
        .into());
    }
    files.extend(
        CHECKPOINT_FILES
            .iter()
            .filter(|f| present.contains(**f))
            .map(|f| f.to_string()),
    );
    Ok(files)
}

fn write_ref(path: &Path, sha: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|s| s.trim() == sha) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    // Written aside then renamed: a concurrent reader never sees a truncated ref.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, sha).at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

/// Progress of one file download, forwarded to the reporter.
struct ReporterProgress<'a> {
    reporter: &'a dyn Reporter,
}

impl hf_hub::api::Progress for ReporterProgress<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        // hf-hub calls init again on a resumed attempt, followed by update(bytes already there).
        self.reporter
            .start(&format!("download {filename}"), size as u64);
    }
    fn update(&mut self, size: usize) {
        self.reporter.advance(size as u64);
    }
    fn finish(&mut self) {
        self.reporter.finish();
    }
}

/// The hub's retry loop ([`retry`]: backoff, `Retry-After`) around one hf-hub call; hf-hub
/// resumes a partial file from where it stopped.
fn with_retries<T>(
    opts: &HubOptions,
    reporter: &dyn Reporter,
    what: &str,
    mut f: impl FnMut() -> std::result::Result<T, ApiError>,
) -> std::result::Result<T, ApiError> {
    retry(&opts.retry, what, reporter, |_| f(), judge_api).map_err(|(e, _)| e)
}

/// hf-hub's errors judged like ours: its HTTP errors as the upload's, its I/O failures (a
/// dropped download) and "too many retries" of its own as transient.
fn judge_api(e: &ApiError) -> Verdict {
    match e {
        ApiError::RequestError(inner) => judge_ureq(inner),
        ApiError::IoError(_) | ApiError::TooManyRetries(_) => Verdict {
            retry: true,
            retry_after: None,
            lost_response: false,
            reason: e.to_string(),
        },
        _ => Verdict {
            retry: false,
            retry_after: None,
            lost_response: false,
            reason: String::new(),
        },
    }
}

/// The hub refused an anonymous reader (a private or gated repo answers 401, 403 or 404).
fn needs_token(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(inner)
        if matches!(inner.as_ref(), ureq::Error::Status(401 | 403 | 404, _)))
}

fn api_error(id: &HubId, what: &str, e: ApiError) -> Error {
    let context = format!("{id}: {what}");
    if let ApiError::RequestError(inner) = &e {
        if let ureq::Error::Status(status, resp) = inner.as_ref() {
            let code = resp.header("X-Error-Code").map(str::to_string);
            // One line, scrubbed of the token (a server may echo it).
            let msg = super::http::one_line(resp.header("X-Error-Message").unwrap_or(""), 300);
            let hint = match (*status, code.as_deref().unwrap_or("")) {
                (_, "RevisionNotFound") => {
                    format!(" (no revision '{}' in {})", id.revision(), id.repo)
                }
                (_, "EntryNotFound") => " (no such file in the repo)".to_string(),
                (401 | 403 | 404, _) => format!(
                    " (repo {} not found on the hub, or private/gated: a token may be needed; \
                     no local path of that name exists either)",
                    id.repo
                ),
                _ => String::new(),
            };
            let e = HubError::status(*status, msg)
                .context(context)
                .hint(hint)
                .url(resp.get_url());
            return HubError { code, ..e }.into();
        }
        if let ureq::Error::Transport(t) = inner.as_ref() {
            let src = std::error::Error::source(t)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            let timed_out = src.contains("timed out");
            return HubError::network(format!("{}{src}", t.kind()), timed_out)
                .context(context)
                .into();
        }
    }
    HubError::network(e.to_string(), false)
        .context(context)
        .into()
}
