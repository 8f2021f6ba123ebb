//! Checkpoint I/O: reading (mmap, validated headers, chunks) and atomic sharded writing.
pub mod companion;
pub mod dtype;
pub mod header;
pub mod reader;
pub mod synth;
pub mod writer;

pub use dtype::{DType, OutDType};
pub use reader::{Checkpoint, Layout, TensorInfo};
pub use writer::{CheckpointWriter, OutTensor, WriterOptions};

/// Opens a checkpoint named on the command line: a local folder or `.safetensors` file.
pub fn open_spec(spec: &str) -> crate::Result<Checkpoint> {
    Checkpoint::open(spec)
}
