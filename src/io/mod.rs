//! Checkpoint I/O: reading (mmap, validated headers, chunks) and atomic sharded writing.
pub mod companion;
pub mod dtype;
pub mod guard;
pub mod header;
pub mod lock;
pub mod lora;
pub mod lora_writer;
pub mod reader;
pub mod synth;
pub mod verify;
pub mod writer;

use crate::error;

pub use dtype::{DType, OutDType};
pub use reader::{Checkpoint, Layout, Sweep, TensorInfo};
pub use writer::{write_file_atomic, CheckpointWriter, OutTensor, WriterOptions};

/// Lower-case hexadecimal of `bytes` (digests, git oids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Opens `path` for reading without ever blocking on it: opened with `O_NONBLOCK` (a FIFO
/// with no writer, a terminal or a device would otherwise wait forever in `open` or `read`),
/// then refused unless it is a regular file. Model folders come from anywhere.
pub fn open_regular(path: &std::path::Path) -> error::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| error::Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| error::Error::io(path, e))?;
    if meta.is_dir() {
        return Err(error::Error::format(path, "is a directory, not a file"));
    }
    if !meta.is_file() {
        return Err(error::Error::format(
            path,
            "is not a regular file (a device, pipe or socket); refused rather than waited on",
        ));
    }
    Ok(file)
}

/// The text of a regular file (see [`open_regular`]) of at most `max` bytes.
pub fn read_text(path: &std::path::Path, max: u64) -> error::Result<String> {
    use std::io::Read;
    let file = open_regular(path)?;
    let len = file
        .metadata()
        .map_err(|e| error::Error::io(path, e))?
        .len();
    if len > max {
        return Err(error::Error::format(
            path,
            format!("is {len} bytes, more than the {max} bytes such a file can need"),
        ));
    }
    let mut text = String::new();
    file.take(max)
        .read_to_string(&mut text)
        .map_err(|e| error::Error::io(path, e))?;
    Ok(text)
}
