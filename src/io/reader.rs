//! Reading checkpoints: a folder with `model.safetensors`, a folder with
//! `model.safetensors.index.json` + shards, or a single `.safetensors` file.
//!
//! Every shard is memory-mapped and its header fully validated at open; tensor data is then read
//! chunk by chunk straight from the mapping. A [`Sweep`] reads one tensor front to back and drops
//! the pages behind it from this process (MADV_DONTNEED), so peak RSS stays bounded however large
//! the checkpoint is.
//!
//! A file that changes while it is read is detected, not trusted: [`Shard::check_unchanged`]
//! compares its size and modification time with those it had when it was opened, and reads of a
//! file truncated under its mapping are caught by [`super::guard::ReadGuard`].

use std::collections::{BTreeMap, HashMap};
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
    /// The file as it was when mapped.
    stamp: FileStamp,
}

/// What identifies a file's contents cheaply: which file (device, inode), its size and its
/// modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

impl Shard {
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }
    /// The raw header bytes (length prefix + JSON): what identifies a shard's layout.
    pub fn header_bytes(&self) -> &[u8] {
        &self.map[..self.header.data_start() as usize]
    }
    /// The whole mapped file.
    pub fn mapped(&self) -> &[u8] {
        &self.map
    }

    /// Errors when the file was changed in place since it was opened (another size or
    /// modification time): data read from it may then mix two versions. A file replaced by
    /// another one (rename, delete) is fine: the mapping still holds the one that was opened.
    ///
    /// The guarantee has the file system's limits: the modification time has its granularity
    /// (a write in the same clock tick as the open, without a size change, is not seen), and a
    /// change made through another process's writable mapping shows only when that process's
    /// pages are written back.
    pub fn check_unchanged(&self) -> Result<()> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Ok(());
        };
        let now = FileStamp::of(&meta);
        if (now.dev, now.ino) != (self.stamp.dev, self.stamp.ino) || now == self.stamp {
            return Ok(());
        }
        let what = if now.len < self.stamp.len {
            format!("truncated from {} to {} bytes", self.stamp.len, now.len)
        } else if now.len > self.stamp.len {
            format!("grown from {} to {} bytes", self.stamp.len, now.len)
        } else {
            "it was modified in place".to_string()
        };
        Err(Error::format(
            &self.path,
            format!(
                "changed while it was being read ({what}): the result would mix two versions of \
                 the file, so nothing was written; retry once it is complete"
            ),
        ))
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
    pub warnings: Vec<Finding>,
}

/// A problem with a file that a merge only warns about: printed as `path: message`.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub path: PathBuf,
    pub msg: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.msg)
    }
}

impl serde::Serialize for Finding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Checkpoint {
    /// Opens and fully validates a checkpoint: every header, every offset, the index against the
    /// shards. Nothing of the tensor data is read.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).at(path)?;
        if !meta.is_dir() {
            let shard = open_shard(path)?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            return Checkpoint::assemble(path, dir, Layout::File, vec![shard], None);
        }
        // `symlink_metadata`: a link that cannot be followed (a loop) is opened, and so reported
        // as what it is, rather than taken for a missing file.
        let single = path.join(SINGLE_FILE);
        if std::fs::symlink_metadata(&single).is_ok() {
            let shard = open_shard(&single)?;
            let dir = path.to_path_buf();
            return Checkpoint::assemble(path, dir, Layout::Folder, vec![shard], None);
        }
        let index = path.join(INDEX_FILE);
        if std::fs::symlink_metadata(&index).is_ok() {
            return Checkpoint::open_sharded(path, &index);
        }
        Err(Error::format(
            path,
            format!("is a directory with neither {SINGLE_FILE} nor {INDEX_FILE}"),
        ))
    }

    fn open_sharded(path: &Path, index: &Path) -> Result<Checkpoint> {
        let idx = read_index(index)?;
        let shards = idx
            .files
            .iter()
            .map(|f| {
                let p = path.join(f);
                if std::fs::symlink_metadata(&p).is_err() {
                    return Err(Error::format(
                        index,
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
            Some((index, &idx.files, &idx.weight_map)),
        )?;
        ck.warnings.extend(idx.warnings);
        if let Some(total) = idx.total_size {
            let sum = ck.total_bytes();
            if total != sum {
                ck.warnings.push(Finding {
                    path: index.to_path_buf(),
                    msg: format!("metadata.total_size is {total} but the tensors hold {sum} bytes"),
                });
            }
        }
        Ok(ck)
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
    /// Releasing a range smaller than a page-cache folio may not last (see [`RELEASE_GRAIN`]):
    /// [`Sweep`] is the way to read a tensor with bounded memory.
    pub fn release(&self, t: &TensorInfo, range: Range<u64>) {
        self.release_file_range(t.shard, t.offset + range.start..t.offset + range.end);
    }

    /// [`release`](Self::release) of a range of shard `shard`'s file offsets.
    fn release_file_range(&self, shard: usize, range: Range<u64>) {
        let map = &self.shards[shard].map;
        let end = range.end.min(map.len() as u64);
        if range.start >= end {
            return;
        }
        // SAFETY: the mapping is a private, read-only file mapping: DONTNEED only discards clean
        // pages, which are re-read from the file on the next access, so no data can change.
        // Pages shared with a live borrow are fine for the same reason.
        let _ = unsafe {
            map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                range.start as usize,
                (end - range.start) as usize,
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
        super::hex(&h.finalize())
    }

    /// Errors when this checkpoint has findings that a merge only warns about (an index whose
    /// `metadata.total_size` disagrees with the shards): for tools that validate completely.
    pub fn check_strict(&self) -> Result<()> {
        match self.warnings.first() {
            None => Ok(()),
            Some(w) => Err(Error::format(&w.path, &w.msg)),
        }
    }
}

/// Granularity of page release: the largest page-cache folio (a 2 MiB huge page on x86-64).
/// A fault on any page of a large folio maps the whole folio into the process, so pages released
/// one chunk at a time inside a folio come back with the next chunk's fault and pile up
/// (`bench/folio_release.py` shows it: 16 KiB chunks released one by one left 407 of 512 MiB
/// mapped). Releasing only whole aligned 2 MiB blocks behind the reader cannot be undone that
/// way.
pub const RELEASE_GRAIN: u64 = 2 << 20;

/// Reads one tensor of one checkpoint front to back, giving the mapped pages behind the reader
/// back to the system: at most the current chunk plus [`RELEASE_GRAIN`] on each side of it stay
/// mapped. Pages leave this process only; they stay in the page cache.
pub struct Sweep<'a> {
    ck: &'a Checkpoint,
    t: &'a TensorInfo,
    /// File offset up to which pages were released (a multiple of the grain).
    released: u64,
    /// Tensor offset up to which a read-ahead was asked for.
    prefetched: u64,
}

impl<'a> Sweep<'a> {
    pub fn new(ck: &'a Checkpoint, t: &'a TensorInfo) -> Sweep<'a> {
        Sweep {
            ck,
            t,
            released: t.offset / RELEASE_GRAIN * RELEASE_GRAIN,
            prefetched: 0,
        }
    }

    /// `range` of the tensor's bytes (relative to its data).
    pub fn bytes(&self, range: Range<u64>) -> &'a [u8] {
        self.ck.bytes(self.t, range)
    }

    /// Asks the kernel to start reading `range` now (MADV_WILLNEED: page cache only, nothing is
    /// mapped), so the disk works on the next chunk while this one is computed. Ranges already
    /// asked for are not asked again, and small ones are widened to a grain (one system call per
    /// grain at most).
    pub fn prefetch(&mut self, range: Range<u64>) {
        let start = range.start.max(self.prefetched);
        if start >= range.end.min(self.t.nbytes) {
            return;
        }
        let end = range.end.max(start + RELEASE_GRAIN).min(self.t.nbytes);
        self.ck.prefetch(self.t, start..end);
        self.prefetched = end;
    }

    /// The tensor's bytes before `upto` (relative) are processed: releases the whole grains
    /// behind them.
    pub fn done(&mut self, upto: u64) {
        let to = (self.t.offset + upto) / RELEASE_GRAIN * RELEASE_GRAIN;
        self.release_to(to);
    }

    /// The whole tensor is processed: releases everything up to its end. (Its last grain may be
    /// shared with the next tensor, whose sweep starts at that grain and releases it again.)
    pub fn finish(&mut self) {
        self.release_to(self.t.offset + self.t.nbytes);
    }

    fn release_to(&mut self, to: u64) {
        if to > self.released {
            self.ck.release_file_range(self.t.shard, self.released..to);
            self.released = to;
        }
    }
}

/// Splits `nbytes` of a tensor with elements of `elem` bytes into ranges of at most `max` bytes,
/// each a whole number of elements.
pub fn chunks(nbytes: u64, elem: usize, max: u64) -> impl Iterator<Item = Range<u64>> {
    let step = (max / elem as u64).max(1) * elem as u64;
    (0..nbytes.div_ceil(step)).map(move |i| i * step..((i + 1) * step).min(nbytes))
}

fn open_shard(path: &Path) -> Result<Shard> {
    // Never blocks: a FIFO or device named as a shard is refused below, not waited on.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .at(path)?
    };
    let meta = file.metadata().at(path)?;
    if meta.is_dir() {
        return Err(Error::format(
            path,
            "is a directory, not a safetensors file",
        ));
    }
    if !meta.is_file() {
        return Err(Error::format(
            path,
            "is not a regular file (a device, pipe or socket cannot be a safetensors file)",
        ));
    }
    let len = meta.len();
    if len < 8 {
        return Err(Error::format(
            path,
            format!("truncated file: {len} bytes, shorter than the 8-byte header length field"),
        ));
    }
    // SAFETY: the usual caveat of mmap: the file must not be truncated while we read it. Readers
    // that must survive that hold a ReadGuard and check the shard (see the module docs).
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
        stamp: FileStamp::of(&meta),
    })
}

/// What an index file says.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    /// The shard file names (sorted, unique).
    pub files: Vec<String>,
    /// Tensor name → shard file name.
    pub weight_map: BTreeMap<String, String>,
    /// `metadata.total_size`, when present and a byte count.
    pub total_size: Option<u64>,
    /// Findings that are not errors for a merge (a total_size that is not a byte count).
    pub warnings: Vec<Finding>,
}

/// Reads an index file: the shard file names (sorted, unique), the weight map and total_size.
/// Largest index file read (a weight map of a million tensors is well below).
const MAX_INDEX_BYTES: u64 = 256 << 20;

pub fn read_index(path: &Path) -> Result<Index> {
    let text = super::read_text(path, MAX_INDEX_BYTES)?;
    parse_index(&text, path)
}

/// Parses the text of an index file (`path` names it in errors).
pub fn parse_index(text: &str, path: &Path) -> Result<Index> {
    let v: serde_json::Value = serde_json::from_str(text)
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
        if file.contains('/')
            || file.contains('\\')
            || file == ".."
            || file == "."
            || file.is_empty()
        {
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
    let mut warnings = Vec::new();
    let total_size = match v.get("metadata").and_then(|m| m.get("total_size")) {
        None | Some(serde_json::Value::Null) => None,
        Some(t) => match t.as_u64().or_else(|| {
            // Some writers store it as a float; an exact non-negative integer is a byte count.
            t.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }) {
            Some(n) => Some(n),
            None => {
                warnings.push(Finding {
                    path: path.to_path_buf(),
                    msg: format!("metadata.total_size is {t}, not a byte count"),
                });
                None
            }
        },
    };
    Ok(Index {
        files,
        weight_map,
        total_size,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with three small shards (tensors a, b | c | d) for index files to point into.
    fn shard_folder() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let shard = |file: &str, names: &[&str]| {
            let entries: Vec<header::Entry> = names
                .iter()
                .enumerate()
                .map(|(i, n)| header::Entry {
                    name: n.to_string(),
                    dtype: DType::F32,
                    shape: vec![2],
                    begin: 8 * i as u64,
                    end: 8 * i as u64 + 8,
                })
                .collect();
            let mut f = header::serialize(&entries, &BTreeMap::new());
            f.extend(std::iter::repeat_n(1u8, 8 * names.len()));
            std::fs::write(d.path().join(file), f).unwrap();
        };
        shard("s1.safetensors", &["a", "b"]);
        shard("s2.safetensors", &["c"]);
        shard("s3.safetensors", &["d"]);
        d
    }

    const VALID_INDEX: &str = r#"{"metadata": {"total_size": 32}, "weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors", "d": "s3.safetensors"}}"#;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(600))]

        // Mutated index files over real shards: never a panic; whatever opens is consistent —
        // every tensor of the weight map is in the shard it names, every tensor of the opened
        // shards is in the weight map, and a total_size that disagrees is reported.
        #[test]
        fn mutated_index_files_open_consistently_or_not_at_all(
            edits in proptest::collection::vec(
                (0u8..5, proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()),
                1..4),
        ) {
            thread_local!(static DIR: tempfile::TempDir = shard_folder());
            let mut text = VALID_INDEX.as_bytes().to_vec();
            for (kind, pos, byte) in edits {
                let at = pos % text.len().max(1);
                match kind {
                    0 => text[at] = byte,
                    1 => text.insert(at, byte),
                    2 => { text.remove(at); }
                    3 => {
                        // Point a tensor at another shard, or a shard at another name.
                        if let Some(i) = (at..text.len()).find(|&i| text[i].is_ascii_digit()) {
                            text[i] = b'0' + byte % 5;
                        }
                    }
                    _ => text[at] = b"{}[],:\"ab"[usize::from(byte) % 9],
                }
            }
            DIR.with(|d| {
                let dir = d.path();
                std::fs::write(dir.join(INDEX_FILE), &text).unwrap();
                if let Ok(ck) = Checkpoint::open(dir) {
                    let idx = parse_index(std::str::from_utf8(&text).unwrap(), dir).unwrap();
                    proptest::prop_assert_eq!(ck.tensors().len(), idx.weight_map.len());
                    for (name, file) in &idx.weight_map {
                        let t = ck.get(name);
                        proptest::prop_assert!(t.is_some(), "{name} missing");
                        let shard = &ck.shards[t.unwrap().shard].path;
                        proptest::prop_assert_eq!(shard.file_name().unwrap().to_str().unwrap(), file);
                    }
                    let sum = ck.total_bytes();
                    let warned = ck.warnings.iter().any(|w| w.msg.contains("total_size"));
                    proptest::prop_assert_eq!(
                        warned,
                        idx.total_size.is_some_and(|t| t != sum) || !idx.warnings.is_empty()
                    );
                    proptest::prop_assert_eq!(ck.check_strict().is_err(), warned);
                }
                Ok(())
            })?;
        }
    }

    #[test]
    fn the_valid_index_opens() {
        let d = shard_folder();
        std::fs::write(d.path().join(INDEX_FILE), VALID_INDEX).unwrap();
        let ck = Checkpoint::open(d.path()).unwrap();
        assert_eq!(ck.tensors().len(), 4);
        assert!(ck.warnings.is_empty() && ck.check_strict().is_ok());
    }

    #[test]
    fn chunks_cover_exactly_in_whole_elements() {
        let c: Vec<_> = chunks(10 * 4, 4, 12).collect();
        assert_eq!(c, vec![0..12, 12..24, 24..36, 36..40]);
        assert_eq!(chunks(0, 2, 8).count(), 0);
        // A budget smaller than one element still makes progress.
        assert_eq!(chunks(16, 8, 3).collect::<Vec<_>>(), vec![0..8, 8..16]);
    }
}
