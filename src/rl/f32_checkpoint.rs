//! Named libtorch tensors saved as one f32 safetensors checkpoint folder: the trainer's
//! optimizer state and reference copies, and a trained reward model.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::io::writer::{CheckpointWriter, OutTensor, WriterOptions};
use crate::io::DType;

/// Writes `named` as f32 tensors in one safetensors file of a new folder `dir`, with `files`
/// (name, contents) beside them (config.json, tokenizer files).
pub fn write_f32_tensors(
    dir: &Path,
    named: &[(String, Tensor)],
    files: &[(&str, Vec<u8>)],
) -> Result<()> {
    let out: Vec<OutTensor> = named
        .iter()
        .map(|(n, t)| OutTensor {
            name: n.clone(),
            dtype: DType::F32,
            shape: t.size().iter().map(|&d| d as usize).collect(),
        })
        .collect();
    let opts = WriterOptions {
        max_shard_size: u64::MAX,
        ..WriterOptions::default()
    };
    let mut w = CheckpointWriter::create(dir, out, &opts)?;
    for (_, t) in named {
        let t = tch::no_grad(|| {
            t.detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
        });
        let n = t.numel();
        let mut buf = vec![0u8; n * 4];
        t.f_copy_data_u8(&mut buf, n)
            .map_err(|e| Error::compute(format!("saving {}", dir.display()), e))?;
        w.write(&buf)?;
    }
    for (name, bytes) in files {
        w.add_file(name, bytes)?;
    }
    w.finish()?;
    Ok(())
}
