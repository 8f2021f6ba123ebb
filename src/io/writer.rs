//! Writing checkpoints: shards planned up front from the full tensor list, each shard's header
//! written first and the data streamed after it in order, all inside a temporary sibling folder
//! that is fsynced and renamed into place only when everything is complete. Dropping an
//! unfinished writer (error, Ctrl-C) removes the temporary folder: the destination is untouched.
//!
//! A process killed outright (SIGKILL, power loss) cannot clean up: its temporary folder
//! `.NAME.warp-tmp-PID-N` stays. The next writer into the same parent folder removes it: each
//! temporary folder holds a lock file that its process keeps locked (flock) while it lives, so a
//! folder whose lock can be taken belongs to a dead process.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::dtype::DType;
use super::header::{self, Entry};
use super::reader::{INDEX_FILE, SINGLE_FILE};
use crate::error::{Error, IoContext, Result};

/// HF's default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_MAX_SHARD: u64 = 5_000_000_000;

/// An output tensor's description, known before any data is written.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl OutTensor {
    pub fn nbytes(&self) -> u64 {
        header::numel(&self.shape).unwrap_or(0) * self.dtype.size() as u64
    }
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub max_shard_size: u64,
    /// Replace an existing destination folder (only at the final rename; never a file).
    pub force: bool,
    /// `__metadata__` of every shard (`format: pt` is always added).
    pub metadata: BTreeMap<String, String>,
    /// Bytes buffered before each write to the shard file.
    pub write_buffer: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_shard_size: DEFAULT_MAX_SHARD,
            force: false,
            metadata: BTreeMap::new(),
            write_buffer: WRITE_BUF,
        }
    }
}

struct ShardPlan {
    file: String,
    /// Indices into the writer's tensor list.
    tensors: std::ops::Range<usize>,
}

/// Parses sizes like "5GB" (decimal, as HF), "2GiB" (binary), "500MB", "1048576".
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}' (examples: 500MB, 2GiB, 5GB, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size unit in '{s}' (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    // Whole numbers are exact (u64::MAX itself is a valid size); fractions go through f64.
    if let Ok(n) = num.parse::<u128>() {
        let bytes = n.saturating_mul(u128::from(mult));
        if bytes < 1 {
            return Err(format!("size '{s}' must be at least 1 byte"));
        }
        return u64::try_from(bytes)
            .map_err(|_| format!("size '{s}' is too large (at most {} bytes)", u64::MAX));
    }
    let bytes = value * mult as f64;
    if bytes.is_nan() || bytes < 1.0 {
        return Err(format!("size '{s}' must be at least 1 byte"));
    }
    // u64::MAX as f64 rounds up to 2^64, which is not a u64.
    if bytes >= u64::MAX as f64 {
        return Err(format!(
            "size '{s}' is too large (at most {} bytes, about 1.8e19)",
            u64::MAX
        ));
    }
    Ok(bytes as u64)
}

/// Human-readable byte count (binary units).
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

/// Refuses a destination that is, contains or lies inside one of the inputs: writing there could
/// clobber the files being read.
pub fn check_destination(dest: &Path, inputs: &[&Path]) -> Result<()> {
    let abs_dest = absolute(dest)?;
    for input in inputs {
        let Ok(inp) = fs::canonicalize(input) else {
            continue;
        };
        // A folder input may not hold the output; a file input only must not be replaced.
        let inside = if inp.is_dir() {
            abs_dest.starts_with(&inp)
        } else {
            abs_dest == inp
        };
        if inside || inp.starts_with(&abs_dest) {
            return Err(Error::setting(
                "output",
                format!(
                    "{} is inside (or contains) input {}: choose another destination",
                    dest.display(),
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Absolute form of a path that may not exist yet: its nearest existing ancestor canonicalized.
fn absolute(p: &Path) -> Result<PathBuf> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().at(".")?.join(p)
    };
    let mut rest = Vec::new();
    let mut cur = p.as_path();
    loop {
        if let Ok(c) = fs::canonicalize(cur) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return Ok(out);
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return Ok(p),
        }
    }
}

/// A temporary sibling folder of `dest` that becomes `dest` on [`commit`](Self::commit) and is
/// removed if dropped before: the way a run with several outputs stays all-or-nothing. Parent
/// folders it had to create for `dest` are removed again (when empty) if it is dropped.
pub struct Staging {
    dest: PathBuf,
    tmp: PathBuf,
    force: bool,
    done: bool,
    /// The lock file inside `tmp`, locked while this process lives (see the module docs).
    lock: Option<File>,
    /// Ancestors of `dest` created here, outermost first.
    created: Vec<PathBuf>,
    reclaimed: Vec<PathBuf>,
}

/// The lock file inside a temporary folder; removed before the folder is renamed into place.
const LOCK_FILE: &str = ".warp-lock";
const TMP_TAG: &str = ".warp-tmp-";
const OLD_TAG: &str = ".warp-old-";

impl Staging {
    pub fn new(dest: &Path, force: bool) -> Result<Staging> {
        check_replaceable(dest, force)?;
        let name = dest.file_name().ok_or_else(|| {
            Error::setting("output", format!("invalid destination {}", dest.display()))
        })?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let created = create_parents(&parent)?;
        let mut staging = Staging {
            dest: dest.to_path_buf(),
            tmp: PathBuf::new(),
            force,
            done: false,
            lock: None,
            created,
            reclaimed: reclaim_stale(&parent),
        };
        let tag = format!("{}-{}", std::process::id(), unique());
        staging.tmp = parent.join(format!(".{}{TMP_TAG}{tag}", name.to_string_lossy()));
        // Errors name the destination (what the user asked for), not the temporary folder.
        fs::create_dir(&staging.tmp).at(dest)?;
        // The lock file appears already locked (made aside, then renamed): a reclaimer never
        // finds it unlocked while this process lives. Until then, the folder has no lock file
        // and is judged by its pid, which is alive.
        let aside = staging.tmp.join(format!("{LOCK_FILE}.new"));
        let lock = File::create(&aside).at(dest)?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(Error::io(dest, std::io::Error::last_os_error()));
        }
        let lock_path = staging.tmp.join(LOCK_FILE);
        fs::rename(&aside, &lock_path).at(dest)?;
        staging.lock = Some(lock);
        Ok(staging)
    }

    /// The temporary folder to fill.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Temporary folders of dead processes removed from the parent folder when this was created.
    pub fn reclaimed(&self) -> &[PathBuf] {
        &self.reclaimed
    }

    /// fsyncs and renames the temporary folder into place (replacing `dest` only with force).
    pub fn commit(mut self) -> Result<PathBuf> {
        // The lock file must not end up in the output; the descriptor keeps the lock until the
        // rename is done (a folder without lock file is judged by its pid meanwhile).
        let lock_path = self.tmp.join(LOCK_FILE);
        fs::remove_file(&lock_path).at(&self.dest)?;
        File::open(&self.tmp)
            .and_then(|d| d.sync_all())
            .at(&self.dest)?;
        let parent = self.tmp.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut old = None;
        if fs::symlink_metadata(&self.dest).is_ok() {
            // A race: someone else created it after the checks.
            check_replaceable(&self.dest, self.force).map_err(|_| {
                Error::io(
                    &self.dest,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "appeared while writing; not replacing it",
                    ),
                )
            })?;
            let name = self.dest.file_name().unwrap_or_default().to_string_lossy();
            let o = parent.join(format!(
                ".{name}{OLD_TAG}{}-{}",
                std::process::id(),
                unique()
            ));
            fs::rename(&self.dest, &o).at(&self.dest)?;
            old = Some(o);
        }
        if let Err(e) = fs::rename(&self.tmp, &self.dest) {
            if let Some(o) = &old {
                let _ = fs::rename(o, &self.dest);
            }
            return Err(Error::io(&self.dest, e));
        }
        self.done = true;
        sync_dir(&parent)?;
        if let Some(o) = old {
            let _ = fs::remove_dir_all(&o);
        }
        Ok(self.dest.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
        for dir in self.created.iter().rev() {
            if fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// Refuses a destination that exists and is not a folder (a file, a link, a device: never
/// replaced), or a folder when `force` is not set.
fn check_replaceable(dest: &Path, force: bool) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(dest) else {
        return Ok(());
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        if force {
            return Ok(());
        }
        return Err(Error::setting(
            "output",
            format!(
                "destination {} exists (it is replaced only when forced)",
                dest.display()
            ),
        ));
    }
    let kind = if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a file"
    } else {
        "a device, pipe or socket"
    };
    Err(Error::setting(
        "output",
        format!(
            "destination {} exists and is {kind}, not a folder: only an output folder is ever \
             replaced",
            dest.display()
        ),
    ))
}

/// Creates `dir` and its missing ancestors; returns the ones created, outermost first.
fn create_parents(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || fs::symlink_metadata(d).is_ok() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    let mut created = Vec::with_capacity(missing.len());
    for d in missing {
        match fs::create_dir(&d) {
            Ok(()) => created.push(d),
            // Created meanwhile by someone else: theirs, not ours to remove.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                for c in created.iter().rev() {
                    let _ = fs::remove_dir(c);
                }
                return Err(Error::io(&d, e));
            }
        }
    }
    Ok(created)
}

/// Removes the temporary folders that dead writers left in `parent` (see the module docs) and
/// returns them. A folder is left alone when its lock is held, or, without a lock file, while
/// the process named in it lives. A replaced destination set aside by a writer that died while
/// swapping it (`.NAME.warp-old-PID-N`) is put back when NAME is missing (returned as NAME),
/// removed otherwise.
pub fn reclaim_stale(parent: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = fs::read_dir(parent) else {
        return removed;
    };
    for entry in rd.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some((dest_name, tag, pid)) = parse_temp_name(name) else {
            continue;
        };
        let path = entry.path();
        // Only real folders: never follow a link somewhere else.
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let dead = if tag == TMP_TAG {
            match lock_is_free(&path.join(LOCK_FILE)) {
                Some(free) => free,
                None => !pid_alive(pid),
            }
        } else {
            !pid_alive(pid)
        };
        if !dead {
            continue;
        }
        let dest = parent.join(dest_name);
        if tag == OLD_TAG && fs::symlink_metadata(&dest).is_err() {
            if fs::rename(&path, &dest).is_ok() {
                // Put back: reported under its own name (see `reclaimed_message`).
                removed.push(dest);
            }
        } else if fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// What the log says about a folder [`reclaim_stale`] returned: a temporary folder removed, or a
/// replaced destination put back in place.
pub fn reclaimed_message(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match parse_temp_name(name) {
        Some(_) => format!(
            "removed {}, left by a warp process that no longer runs",
            path.display()
        ),
        None => format!(
            "restored {}, which a warp process that no longer runs had set aside to replace it",
            path.display()
        ),
    }
}

/// `.NAME.warp-tmp-PID-N` or `.NAME.warp-old-PID-N` → (NAME, tag, PID).
fn parse_temp_name(name: &str) -> Option<(&str, &'static str, i32)> {
    let rest = name.strip_prefix('.')?;
    for tag in [TMP_TAG, OLD_TAG] {
        if let Some((dest, id)) = rest.rsplit_once(tag) {
            let (pid, n) = id.split_once('-')?;
            if dest.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.is_empty() {
                return None;
            }
            return Some((dest, tag, pid.parse().ok().filter(|p| *p > 0)?));
        }
    }
    None
}

/// Whether the lock on `path` can be taken now (its holder is gone); None without a lock file.
fn lock_is_free(path: &Path) -> Option<bool> {
    let f = File::open(path).ok()?;
    // SAFETY: flock on a descriptor owned here; closing it releases the lock again.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    Some(r == 0)
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Streams a checkpoint into `dest` atomically. Call [`write`](Self::write) with the data of the
/// tensors in the order given at creation, then [`finish`](Self::finish).
pub struct CheckpointWriter {
    dest: PathBuf,
    tmp: PathBuf,
    tensors: Vec<OutTensor>,
    shards: Vec<ShardPlan>,
    metadata: BTreeMap<String, String>,
    staging: Option<Staging>,
    // Streaming state.
    cur_shard: usize,
    cur_tensor: usize,
    written_in_tensor: u64,
    out: Option<(BufWriter<File>, PathBuf)>,
    write_buffer: usize,
}

/// Default write buffer of each shard file.
pub const WRITE_BUF: usize = 8 << 20;

impl CheckpointWriter {
    pub fn create(dest: &Path, tensors: Vec<OutTensor>, opts: &WriterOptions) -> Result<Self> {
        let staging = Staging::new(dest, opts.force)?;
        let tmp = staging.path().to_path_buf();
        let write_buffer = opts.write_buffer.max(4096);
        let mut metadata = opts.metadata.clone();
        metadata.insert("format".into(), "pt".into());
        let shards = plan_shards(&tensors, opts.max_shard_size);
        let mut w = CheckpointWriter {
            dest: dest.to_path_buf(),
            tmp,
            tensors,
            shards,
            metadata,
            staging: Some(staging),
            cur_shard: 0,
            cur_tensor: 0,
            written_in_tensor: 0,
            out: None,
            write_buffer,
        };
        w.open_shard()?;
        Ok(w)
    }

    /// Temporary folders of dead processes removed when this writer was created.
    pub fn reclaimed(&self) -> &[PathBuf] {
        self.staging.as_ref().map_or(&[], |s| s.reclaimed())
    }

    pub fn tensors(&self) -> &[OutTensor] {
        &self.tensors
    }

    /// Where a file of the output is reported to the user: under the final destination.
    fn shown(&self, file: &str) -> PathBuf {
        self.dest.join(file)
    }

    fn open_shard(&mut self) -> Result<()> {
        let Some(plan) = self.shards.get(self.cur_shard) else {
            return Ok(());
        };
        let mut entries = Vec::with_capacity(plan.tensors.len());
        let mut off = 0u64;
        for t in &self.tensors[plan.tensors.clone()] {
            let n = t.nbytes();
            entries.push(Entry {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                begin: off,
                end: off + n,
            });
            off += n;
        }
        let head = header::serialize(&entries, &self.metadata);
        let shown = self.shown(&plan.file);
        let path = self.tmp.join(&plan.file);
        let f = File::create(&path).at(&shown)?;
        let mut bw = BufWriter::with_capacity(self.write_buffer, f);
        bw.write_all(&head).at(&shown)?;
        self.out = Some((bw, shown));
        self.cur_tensor = plan.tensors.start;
        self.written_in_tensor = 0;
        self.skip_empty_tensors()
    }

    /// Moves past tensors with no data (and across shard boundaries) so `write` always appends
    /// to a tensor that still expects bytes.
    fn skip_empty_tensors(&mut self) -> Result<()> {
        loop {
            let Some(plan) = self.shards.get(self.cur_shard) else {
                return Ok(());
            };
            if self.cur_tensor < plan.tensors.end {
                if self.written_in_tensor < self.tensors[self.cur_tensor].nbytes() {
                    return Ok(());
                }
                self.cur_tensor += 1;
                self.written_in_tensor = 0;
                continue;
            }
            self.close_shard()?;
            self.cur_shard += 1;
            if self.cur_shard < self.shards.len() {
                return self.open_shard();
            }
        }
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some((bw, shown)) = self.out.take() {
            let f = bw
                .into_inner()
                .map_err(|e| Error::io(&shown, e.into_error()))?;
            f.sync_all().at(&shown)?;
        }
        Ok(())
    }

    /// Appends data to the output: the bytes of the current tensor, continuing from where the
    /// previous call stopped. A call may not run past the end of the current tensor.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some(t) = self
                .tensors
                .get(self.cur_tensor)
                .filter(|_| self.cur_shard < self.shards.len())
            else {
                return Err(Error::Internal("write past the last tensor".into()));
            };
            let left = t.nbytes() - self.written_in_tensor;
            let n = (bytes.len() as u64).min(left) as usize;
            let Some((bw, shown)) = self.out.as_mut() else {
                return Err(Error::Internal("no shard open while tensors remain".into()));
            };
            bw.write_all(&bytes[..n]).at(&*shown)?;
            self.written_in_tensor += n as u64;
            bytes = &bytes[n..];
            self.skip_empty_tensors()?;
        }
        Ok(())
    }

    /// Name of the tensor the next `write` appends to (None when all data is written).
    pub fn current_tensor(&self) -> Option<&str> {
        (self.cur_shard < self.shards.len()).then(|| self.tensors[self.cur_tensor].name.as_str())
    }

    /// Adds a small file (config, model card, …) to the output folder.
    pub fn add_file(&mut self, name: &str, contents: &[u8]) -> Result<()> {
        let shown = self.shown(name);
        let mut f = File::create(self.tmp.join(name)).at(&shown)?;
        f.write_all(contents).at(&shown)?;
        f.sync_all().at(&shown)
    }

    /// Checks that every tensor is complete, writes the index, fsyncs and renames into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if let Some(t) = self.current_tensor() {
            return Err(Error::Internal(format!(
                "output incomplete at tensor '{t}'"
            )));
        }
        self.close_shard()?;
        if self.shards.len() > 1 {
            let mut weight_map = serde_json::Map::new();
            for plan in &self.shards {
                for t in &self.tensors[plan.tensors.clone()] {
                    weight_map.insert(t.name.clone(), plan.file.clone().into());
                }
            }
            let total: u64 = self.tensors.iter().map(OutTensor::nbytes).sum();
            let index = serde_json::json!({
                "metadata": { "total_size": total },
                "weight_map": weight_map,
            });
            let text = serde_json::to_string_pretty(&index)
                .map_err(|e| Error::Internal(format!("index: {e}")))?;
            self.add_file(INDEX_FILE, text.as_bytes())?;
        }
        let staging = self
            .staging
            .take()
            .ok_or_else(|| Error::Internal("writer finished twice".into()))?;
        staging.commit()
    }
}

fn plan_shards(tensors: &[OutTensor], max: u64) -> Vec<ShardPlan> {
    let mut ranges = Vec::new();
    let (mut start, mut size) = (0usize, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        let n = t.nbytes();
        // A tensor larger than the limit gets a shard of its own, as HF does.
        if i > start && size + n > max {
            ranges.push(start..i);
            start = i;
            size = 0;
        }
        size += n;
    }
    ranges.push(start..tensors.len());
    let count = ranges.len();
    ranges
        .into_iter()
        .enumerate()
        .map(|(i, r)| ShardPlan {
            file: if count == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
            },
            tensors: r,
        })
        .collect()
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Writes a small file (a plan, a CSV, a JSON record) completely or not at all: a temporary
/// sibling, then a rename; the temporary file is removed on failure.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path");
        Error::io(path, e)
    })?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Errors name `path` (a full disk is reported for the file asked for, not the temporary).
    let res = fs::write(&tmp, bytes)
        .map_err(|e| Error::io(path, e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_hf() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
        let e = parse_size("99999999999999999999").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(parse_size("0").unwrap_err().contains("at least 1 byte"));
    }

    #[test]
    fn temp_names() {
        assert_eq!(
            parse_temp_name(".out.warp-tmp-123-456"),
            Some(("out", TMP_TAG, 123))
        );
        assert_eq!(
            parse_temp_name(".a.b.warp-old-9-1"),
            Some(("a.b", OLD_TAG, 9))
        );
        for bad in [
            "out.warp-tmp-1-2",
            ".out.warp-tmp-x-2",
            ".out.warp-tmp-1-",
            ".warp-tmp-1-2",
            ".out.warp-tmp-0-2",
        ] {
            assert_eq!(parse_temp_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn stale_folders_of_dead_processes_are_reclaimed_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        // A live writer of this process: locked.
        let live = Staging::new(&p.join("live"), false).unwrap();
        // A dead one with a lock file nobody holds, one without lock file and a dead pid, and one
        // without lock file whose pid (ours) lives.
        let locked = p.join(format!(".x.warp-tmp-{}-1", std::process::id()));
        fs::create_dir(&locked).unwrap();
        fs::write(locked.join(LOCK_FILE), b"").unwrap();
        let dead_pid = p.join(".y.warp-tmp-2147483000-1");
        fs::create_dir(&dead_pid).unwrap();
        let alive_pid = p.join(format!(".z.warp-tmp-{}-7", std::process::id()));
        fs::create_dir(&alive_pid).unwrap();
        // A destination set aside by a dead writer: restored when it is missing.
        let old = p.join(".kept.warp-old-2147483000-3");
        fs::create_dir(&old).unwrap();
        fs::write(old.join("f"), b"v").unwrap();
        let mut got = reclaim_stale(p);
        got.sort();
        // The restored one under its own name, and the log says so.
        let mut want = vec![locked.clone(), dead_pid, p.join("kept")];
        want.sort();
        assert_eq!(got, want);
        assert!(live.path().is_dir() && alive_pid.is_dir() && !old.exists());
        assert_eq!(fs::read(p.join("kept/f")).unwrap(), b"v");
        assert!(reclaimed_message(&p.join("kept")).starts_with("restored "));
        assert!(reclaimed_message(&locked).starts_with("removed "));
    }

    #[test]
    fn only_folders_are_replaced_and_created_parents_go_away() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        fs::write(&file, b"x").unwrap();
        for force in [false, true] {
            let e = Staging::new(&file, force).err().unwrap().to_string();
            assert!(e.contains("is a file, not a folder"), "{e}");
        }
        let e = Staging::new(Path::new("/dev/null"), true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("device"), "{e}");
        let deep = d.path().join("a/b/c/out");
        let s = Staging::new(&deep, false).unwrap();
        assert!(d.path().join("a/b/c").is_dir());
        drop(s);
        assert!(!d.path().join("a").exists());
        let s = Staging::new(&deep, false).unwrap();
        s.commit().unwrap();
        assert!(deep.is_dir() && !deep.join(LOCK_FILE).exists());
    }

    #[test]
    fn shard_plan_is_greedy_and_oversized_tensors_stand_alone() {
        let t = |n: usize| OutTensor {
            name: format!("t{n}"),
            dtype: DType::U8,
            shape: vec![n],
        };
        let plan = plan_shards(&[t(4), t(4), t(10), t(1), t(1)], 8);
        let r: Vec<_> = plan.iter().map(|p| p.tensors.clone()).collect();
        assert_eq!(r, vec![0..2, 2..3, 3..5]);
        assert_eq!(plan[0].file, "model-00001-of-00003.safetensors");
        let one = plan_shards(&[t(4)], 8);
        assert_eq!(one[0].file, SINGLE_FILE);
    }
}
