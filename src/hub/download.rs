//! Hub ids as checkpoint inputs: download the files a merge needs into the standard HF cache
//! (`models--org--name/{blobs,snapshots,refs}`, shared with the python client) through warp's
//! own blocking client (`fetch`), or find them there when offline.

use super::fetch::{fetch_file, FetchError, RepoCache};
use super::http::{encode_segment, CallError, Client, HttpFailure};
use super::repo_id::{is_commit_hash, HubId};
use super::{HubError, HubOptions};
use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::io::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::io::reader::{INDEX_FILE as INDEX, SINGLE_FILE as SINGLE};

/// Files fetched along with the weights when the repo has them: the same config and tokenizer
/// files the writer copies to every output.
pub const CHECKPOINT_FILES: &[&str] = crate::io::companion::COMPANION_FILES;

/// A checkpoint argument as a local path: an existing path is returned as is; a hub id
/// `org/name[@revision]` is fetched (weights: the index and its shards, or `model.safetensors`,
/// or for a repo holding a PEFT adapter and no model weights `adapter_config.json` and
/// `adapter_model.safetensors`; plus [`CHECKPOINT_FILES`] present in the repo) and its snapshot
/// folder returned (an adapter's snapshot is then read as a local adapter folder).
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

/// `models--org--name`: the repo's folder in the cache (and in its `.locks`).
fn repo_folder(id: &HubId) -> String {
    format!("models--{}", id.repo.replace('/', "--"))
}

/// `models--org--name` under the cache.
fn repo_cache(opts: &HubOptions, id: &HubId) -> PathBuf {
    opts.cache_dir.join(repo_folder(id))
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
    } else if snap.join(ADAPTER_CONFIG).is_file() {
        vec![ADAPTER_CONFIG.to_string(), ADAPTER_WEIGHTS.to_string()]
    } else {
        return Err(HubError::not_cached(format!(
            "{off}: {id}: neither {INDEX} nor {SINGLE} (nor a PEFT adapter's {ADAPTER_CONFIG}) is \
             in the cache ({})",
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

/// The shard file names of an index, by the reader's own rule (next to the index, nothing
/// that leaves the folder), so a download fetches exactly what the merge will then open.
fn index_shards(index: &Path) -> Result<BTreeSet<String>> {
    Ok(crate::io::reader::read_index(index)?
        .files
        .into_iter()
        .collect())
}

/// Read timeout of one download request (per read of the socket, not for the whole file).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

fn download(id: &HubId, opts: &HubOptions, reporter: &dyn Reporter) -> Result<PathBuf> {
    // warp's own client: the token goes to the hub's exact origin only, on every hop
    // (see `fetch`), so it can be sent from the start for public and private repos alike.
    let client = Client::new(
        &opts.endpoint,
        opts.token.clone(),
        opts.retry.clone(),
        DOWNLOAD_TIMEOUT,
    );
    let rev = id.revision().to_string();
    // The listing pins the commit; every file is then fetched at that commit so a push landing
    // meanwhile cannot mix two versions in one snapshot.
    let url = format!(
        "{}/api/models/{}/revision/{}",
        client.endpoint(),
        id.repo,
        encode_segment(&rev)
    );
    let listing = client
        .json(
            "GET",
            &url,
            None,
            "application/json",
            "list files",
            reporter,
        )
        .map_err(|e| call_error(id, "list files", e))?;
    let sha = listing
        .get("sha")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    if !is_commit_hash(&sha) {
        return Err(HubError::protocol(format!(
            "{id}: the hub answered an invalid commit '{sha}'"
        ))
        .into());
    }
    let present: BTreeSet<&str> = listing
        .get("siblings")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get("rfilename")?.as_str())
                .collect()
        })
        .unwrap_or_default();
    let cache = RepoCache {
        root: repo_cache(opts, id),
        locks: opts.cache_dir.join(".locks").join(repo_folder(id)),
    };
    let snap = cache.root.join("snapshots").join(&sha);
    let fetch = |file: &str| -> Result<PathBuf> {
        let cached = snap.join(file);
        if cached.is_file() {
            return Ok(cached);
        }
        fetch_file(&client, &id.repo, &sha, file, &cache, reporter).map_err(|e| match e {
            FetchError::Http(e, url) => call_error(
                id,
                &format!("download {file}"),
                CallError::Http(HttpFailure::of(*e, &url, false)),
            ),
            FetchError::Local(e) => e,
        })
    };

    let files = files_to_fetch(id, &present, &fetch)?;
    for f in &files {
        fetch(f)?;
    }

    // Cache refs as the python client keeps them: refs/<branch> → commit; none named by a hash.
    if rev != sha {
        write_ref(&cache.root.join("refs").join(&rev), &sha)?;
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
/// `fetch` to learn its shards, or the single file, or a PEFT adapter's config and weights when
/// the repo has no model weights) and the config and tokenizer files there.
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
    } else if present.contains(ADAPTER_CONFIG) {
        // A PEFT adapter: without its weights the folder would read as a broken adapter.
        if !present.contains(ADAPTER_WEIGHTS) {
            return Err(HubError::protocol(format!(
                "{id}: the repo holds a PEFT adapter's {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}"
            ))
            .into());
        }
        files.extend([ADAPTER_CONFIG.to_string(), ADAPTER_WEIGHTS.to_string()]);
    } else {
        let some: Vec<&str> = present.iter().take(8).copied().collect();
        return Err(HubError::protocol(format!(
            "{id}: no {SINGLE} or {INDEX} (nor a PEFT adapter's {ADAPTER_CONFIG}) in the repo \
             (it has: {})",
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

/// A failed hub request as the typed error, with the hints of a download: which revision or
/// file is missing, or that the repo may need a token.
fn call_error(id: &HubId, what: &str, e: CallError) -> Error {
    let f = match e {
        CallError::Http(f) => f,
        CallError::Local(e) => return e,
    };
    let hint = match (f.status, f.code.as_deref().unwrap_or("")) {
        (_, "RevisionNotFound") => format!(" (no revision '{}' in {})", id.revision(), id.repo),
        (_, "EntryNotFound") => " (no such file in the repo)".to_string(),
        (Some(401 | 403 | 404), _) => format!(
            " (repo {} not found on the hub, or private/gated: a token may be needed; \
             no local path of that name exists either)",
            id.repo
        ),
        _ => String::new(),
    };
    let mut e = f.to_hub_error(&format!("{id}: {what}"));
    e.hint = if hint.is_empty() { e.hint } else { hint };
    e.into()
}
