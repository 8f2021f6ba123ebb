//! Checkpoint I/O: reading (mmap, validated headers, chunks) and atomic sharded writing.
pub mod companion;
pub mod dtype;
pub mod guard;
pub mod header;
pub mod lora;
pub mod reader;
pub mod synth;
pub mod verify;
pub mod writer;

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
