//! Checkpoint I/O: reading (mmap, validated headers, chunks) and atomic sharded writing.
pub mod companion;
pub mod dtype;
pub mod header;
pub mod reader;
pub mod synth;
pub mod writer;

pub use dtype::{DType, OutDType};
pub use reader::{Checkpoint, Layout, TensorInfo};
pub use writer::{write_file_atomic, CheckpointWriter, OutTensor, WriterOptions};

/// Opens a checkpoint named on the command line: a local folder or `.safetensors` file, or a hub
/// id `org/name[@revision]` downloaded into (or, offline, found in) the standard HF cache.
pub fn open_spec(
    spec: &str,
    reporter: &dyn crate::progress::Reporter,
) -> crate::Result<Checkpoint> {
    let path = crate::hub::resolve_checkpoint(spec, &crate::hub::HubOptions::from_env(), reporter)?;
    Checkpoint::open(path)
}
