//! Reading checkpoints: a folder with `model.safetensors`, a folder with
//! `model.safetensors.index.json` + shards, or a single `.safetensors` file.
//!
//! Every shard is memory-mapped and its header fully validated at open; tensor data is then read
//! chunk by chunk straight from the mapping. `release` drops the pages of a processed range from
//! this process (MADV_DONTNEED), so peak RSS stays bounded however large the checkpoint is.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, UncheckedAdvice};
use sha2::{Digest, Sha256};

use super::dtype::DType;
use super::header::{self, Header};
use crate::error::{Error, IoContext, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Index into `Checkpoint::shards`.
    pub shard: usize,
    /// Absolute byte offset of the tensor's data in the shard file.
    pub offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.nbytes / self.dtype.size() as u64
    }
}

pub struct Shard {
    pub path: PathBuf,
    map: Mmap,
    pub header: Header,
}

impl Shard {
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }
    /// The raw header bytes (length prefix + JSON): what identifies a shard's layout.
    pub fn header_bytes(&self) -> &[u8] {
        &self.map[..self.header.data_start() as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// A folder with `model.safetensors`.
    Folder,
    /// A folder with `model.safetensors.index.json` and shards.
    Sharded,
    /// A single `.safetensors` file given directly.
    File,
}

pub struct Checkpoint {
    /// The path as given (folder or file).
    pub path: PathBuf,
    /// The folder holding config.json, tokenizer files, … (the file's folder for `Layout::File`).
    pub dir: PathBuf,
    pub layout: Layout,
    pub shards: Vec<Shard>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    /// Non-fatal findings (e.g. an index total_size that disagrees with the shards).
    pub warnings: Vec<String>,
}

impl Checkpoint {
    /// Opens and fully validates a checkpoint: every header, every offset, the index against the
    /// shards. Nothing of the tensor data is read.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).at(path)?;
        if meta.is_file() {
            let shard = open_shard(path)?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            return Checkpoint::assemble(path, dir, Layout::File, vec![shard], None);
        }
        let single = path.join(SINGLE_FILE);
        let index = path.join(INDEX_FILE);
        if single.is_file() {
            let shard = open_shard(&single)?;
            return Checkpoint::assemble(
                path,
                path.to_path_buf(),
                Layout::Folder,
                vec![shard],
                None,
            );
        }
        if index.is_file() {
            let (files, weight_map, total_size) = read_index(&index)?;
            let shards = files
                .iter()
                .map(|f| {
                    let p = path.join(f);
                    if !p.exists() {
                        return Err(Error::format(
                            &index,
                            format!(
                                "names shard '{f}' which does not exist in {}",
                                path.display()
                            ),
                        ));
                    }
                    open_shard(&p)
                })
                .collect::<Result<Vec<_>>>()?;
            let mut ck = Checkpoint::assemble(
                path,
                path.to_path_buf(),
                Layout::Sharded,
                shards,
                Some((&index, &files, &weight_map)),
            )?;
            if let Some(total) = total_size {
                let sum = ck.total_bytes();
                if total != sum {
                    ck.warnings.push(format!(
                        "{}: metadata.total_size is {total} but the tensors hold {sum} bytes",
                        index.display()
                    ));
                }
            }
            return Ok(ck);
        }
        Err(Error::format(
            path,
            format!("is a directory with neither {SINGLE_FILE} nor {INDEX_FILE}"),
        ))
    }

    fn assemble(
        path: &Path,
        dir: PathBuf,
        layout: Layout,
        shards: Vec<Shard>,
        index: Option<(&Path, &[String], &BTreeMap<String, String>)>,
    ) -> Result<Checkpoint> {
        let mut tensors: Vec<TensorInfo> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (si, shard) in shards.iter().enumerate() {
            for e in &shard.header.entries {
                if let Some(&prev) = by_name.get(&e.name) {
                    let other = &shards[tensors[prev].shard].path;
                    return Err(Error::tensor(
                        &shard.path,
                        &e.name,
                        format!("duplicate: also present in {}", other.display()),
                    ));
                }
                by_name.insert(e.name.clone(), tensors.len());
                tensors.push(TensorInfo {
                    name: e.name.clone(),
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    shard: si,
                    offset: shard.header.data_start() + e.begin,
                    nbytes: e.end - e.begin,
                });
            }
        }
        if let Some((index_path, files, weight_map)) = index {
            for (name, file) in weight_map {
                match by_name.get(name) {
                    None => {
                        return Err(Error::tensor(
                            index_path,
                            name,
                            format!("listed in the index but absent from its shard '{file}'"),
                        ))
                    }
                    Some(&i) => {
                        let actual = &files[tensors[i].shard];
                        if actual != file {
                            return Err(Error::tensor(
                                index_path,
                                name,
                                format!("the index says shard '{file}' but it is in '{actual}'"),
                            ));
                        }
                    }
                }
            }
            if let Some(t) = tensors.iter().find(|t| !weight_map.contains_key(&t.name)) {
                return Err(Error::tensor(
                    &shards[t.shard].path,
                    &t.name,
                    format!(
                        "present in the shard but missing from {}",
                        index_path.display()
                    ),
                ));
            }
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            dir,
            layout,
            shards,
            tensors,
            by_name,
            warnings: Vec::new(),
        })
    }

    /// Tensors in a stable order: shard by shard, by offset (the on-disk order).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes).sum()
    }

    /// `range` (relative to the tensor's data) of tensor `t`'s bytes, straight from the mapping.
    pub fn bytes(&self, t: &TensorInfo, range: Range<u64>) -> &[u8] {
        debug_assert!(range.end <= t.nbytes);
        let start = (t.offset + range.start) as usize;
        let end = (t.offset + range.end) as usize;
        &self.shards[t.shard].map[start..end]
    }

    /// Drops this process's pages for `range` of tensor `t` (they stay in the page cache). Purely
    /// a memory hint: a later read of the same range faults the pages back in from the file.
    pub fn release(&self, t: &TensorInfo, range: Range<u64>) {
        let map = &self.shards[t.shard].map;
        // SAFETY: the mapping is a private, read-only file mapping: DONTNEED only discards clean
        // pages, which are re-read from the file on the next access, so no data can change.
        // Pages shared with a live borrow are fine for the same reason.
        let _ = unsafe {
            map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                (t.offset + range.start) as usize,
                (range.end - range.start) as usize,
            )
        };
    }

    /// Asks the kernel to start reading `range` of tensor `t` now (MADV_WILLNEED), so the disk
    /// works on the next chunk while the current one is being computed.
    pub fn prefetch(&self, t: &TensorInfo, range: Range<u64>) {
        let map = &self.shards[t.shard].map;
        let _ = map.advise_range(
            Advice::WillNeed,
            (t.offset + range.start) as usize,
            (range.end - range.start) as usize,
        );
    }

    /// A short fingerprint of the checkpoint's layout: sha256 of the index file when sharded,
    /// else of the single file's header (dtype, shapes, offsets, metadata; not the data).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        if self.layout == Layout::Sharded {
            if let Ok(bytes) = std::fs::read(self.path.join(INDEX_FILE)) {
                h.update(&bytes);
            }
        }
        for s in &self.shards {
            h.update(s.header_bytes());
        }
        hex(&h.finalize())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `nbytes` of a tensor with elements of `elem` bytes into ranges of at most `max` bytes,
/// each a whole number of elements.
pub fn chunks(nbytes: u64, elem: usize, max: u64) -> impl Iterator<Item = Range<u64>> {
    let step = (max / elem as u64).max(1) * elem as u64;
    (0..nbytes.div_ceil(step)).map(move |i| i * step..((i + 1) * step).min(nbytes))
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).at(path)?;
    let len = file.metadata().at(path)?.len();
    if len < 8 {
        return Err(Error::format(
            path,
            format!("truncated file: {len} bytes, shorter than the 8-byte header length field"),
        ));
    }
    // SAFETY: the usual caveat of mmap: the file must not be truncated while we read it. We only
    // read, and a checkpoint being rewritten under a merge is outside what any tool can defend.
    let map = unsafe { Mmap::map(&file) }.at(path)?;
    let _ = map.advise(Advice::Sequential);
    let n = header::header_len(&map, len).map_err(|m| Error::format(path, m))?;
    let json = &map[8..(8 + n) as usize];
    let header = header::parse(json, n, len - 8 - n).map_err(|m| Error::format(path, m))?;
    // Second opinion from the reference implementation (reads only the header).
    if let Err(e) = safetensors::SafeTensors::read_metadata(&map) {
        return Err(Error::format(
            path,
            format!("rejected by the safetensors crate: {e}"),
        ));
    }
    Ok(Shard {
        path: path.to_path_buf(),
        map,
        header,
    })
}

type IndexParts = (Vec<String>, BTreeMap<String, String>, Option<u64>);

/// Reads an index file: the shard file names (sorted, unique), the weight map and total_size.
fn read_index(path: &Path) -> Result<IndexParts> {
    let text = std::fs::read_to_string(path).at(path)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(path, "missing 'weight_map' object"))?;
    let mut weight_map = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| Error::tensor(path, name, "weight_map value is not a string"))?;
        // Shards live next to the index; refuse paths that would escape the folder.
        if file.contains('/') || file.contains('\\') || file == ".." || file.is_empty() {
            return Err(Error::tensor(
                path,
                name,
                format!("invalid shard file name '{file}'"),
            ));
        }
        weight_map.insert(name.clone(), file.to_string());
    }
    if weight_map.is_empty() {
        return Err(Error::format(path, "weight_map is empty"));
    }
    let mut files: Vec<String> = weight_map.values().cloned().collect();
    files.sort();
    files.dedup();
    let total_size = v
        .get("metadata")
        .and_then(|m| m.get("total_size"))
        .and_then(|t| t.as_u64().or_else(|| t.as_f64().map(|f| f as u64)));
    Ok((files, weight_map, total_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_exactly_in_whole_elements() {
        let c: Vec<_> = chunks(10 * 4, 4, 12).collect();
        assert_eq!(c, vec![0..12, 12..24, 24..36, 36..40]);
        assert_eq!(chunks(0, 2, 8).count(), 0);
        // A budget smaller than one element still makes progress.
        assert_eq!(chunks(16, 8, 3).collect::<Vec<_>>(), vec![0..8, 8..16]);
    }
}
