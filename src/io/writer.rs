//! Writing checkpoints: shards planned up front from the full tensor list, each shard's header
//! written first and the data streamed after it in order, all inside a temporary sibling folder
//! that is fsynced and renamed into place only when everything is complete. Dropping an
//! unfinished writer (error, Ctrl-C) removes the temporary folder: the destination is untouched.

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
    /// Replace an existing destination (only at the final rename).
    pub force: bool,
    /// `__metadata__` of every shard (`format: pt` is always added).
    pub metadata: BTreeMap<String, String>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_shard_size: DEFAULT_MAX_SHARD,
            force: false,
            metadata: BTreeMap::new(),
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
    let bytes = value * mult as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("size '{s}' must be at least 1 byte"));
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
            return Err(Error::Usage(format!(
                "output {} is inside (or contains) input {}: choose another destination",
                dest.display(),
                input.display()
            )));
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
/// removed if dropped before: the way a run with several outputs stays all-or-nothing.
pub struct Staging {
    dest: PathBuf,
    tmp: PathBuf,
    force: bool,
    done: bool,
}

impl Staging {
    pub fn new(dest: &Path, force: bool) -> Result<Staging> {
        if dest.exists() && !force {
            return Err(Error::Usage(format!(
                "destination {} exists (use --force to replace it)",
                dest.display()
            )));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Usage(format!("invalid destination {}", dest.display())))?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).at(&parent)?;
        let tmp = parent.join(format!(
            ".{}.warp-tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            unique()
        ));
        fs::create_dir(&tmp).at(&tmp)?;
        Ok(Staging {
            dest: dest.to_path_buf(),
            tmp,
            force,
            done: false,
        })
    }

    /// The temporary folder to fill.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// fsyncs and renames the temporary folder into place (replacing `dest` only with force).
    pub fn commit(mut self) -> Result<PathBuf> {
        sync_dir(&self.tmp)?;
        let parent = self.tmp.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut old = None;
        if self.dest.exists() {
            if !self.force {
                return Err(Error::Usage(format!(
                    "destination {} appeared while writing; not replacing it without --force",
                    self.dest.display()
                )));
            }
            let o = parent.join(format!(".warp-old-{}-{}", std::process::id(), unique()));
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
            let _ = if o.is_dir() {
                fs::remove_dir_all(&o)
            } else {
                fs::remove_file(&o)
            };
        }
        Ok(self.dest.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
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
}

const WRITE_BUF: usize = 8 << 20;

impl CheckpointWriter {
    pub fn create(dest: &Path, tensors: Vec<OutTensor>, opts: &WriterOptions) -> Result<Self> {
        let staging = Staging::new(dest, opts.force)?;
        let tmp = staging.path().to_path_buf();
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
        };
        w.open_shard()?;
        Ok(w)
    }

    pub fn tensors(&self) -> &[OutTensor] {
        &self.tensors
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
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
        let mut bw = BufWriter::with_capacity(WRITE_BUF, f);
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
                return Err(Error::Usage("internal: write past the last tensor".into()));
            };
            let left = t.nbytes() - self.written_in_tensor;
            let n = (bytes.len() as u64).min(left) as usize;
            let (bw, shown) = self
                .out
                .as_mut()
                .expect("a shard is open while tensors remain");
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
            return Err(Error::Usage(format!(
                "internal: output incomplete at tensor '{t}'"
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
            let text = serde_json::to_string_pretty(&index).expect("index serializes");
            self.add_file(INDEX_FILE, text.as_bytes())?;
        }
        let staging = self.staging.take().expect("staging lives until finish");
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
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = fs::write(&tmp, bytes)
        .map_err(|e| Error::io(&tmp, e))
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
