//! The outputs of a job: one atomic writer per output, each on its own thread fed through a
//! bounded channel (computing chunk i+1 overlaps writing chunk i), all inside one staging folder
//! when there are several.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::{MergeJob, Plan};
use crate::error::{Error, Result};
use crate::io::companion::{copy_companions_as, ModelCard};
use crate::io::writer::{CheckpointWriter, OutTensor, Staging, WriterOptions};

/// Sends chunks to one output's writer thread; buffers come back for reuse.
pub(super) struct Sink {
    tx: Option<SyncSender<(Vec<u8>, usize)>>,
    back: Receiver<Vec<u8>>,
    handle: Option<JoinHandle<Result<CheckpointWriter>>>,
    /// Buffers made so far; at most [`super::plan::BUFS_PER_OUTPUT`], then they are reused.
    made: u64,
}

impl Sink {
    fn spawn(mut w: CheckpointWriter) -> Sink {
        let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(1);
        let (back_tx, back) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            for (buf, len) in rx {
                w.write(&buf[..len])?;
                let _ = back_tx.send(buf);
            }
            Ok(w)
        });
        Sink {
            tx: Some(tx),
            back,
            handle: Some(handle),
            made: 0,
        }
    }

    /// A buffer of at least `len` bytes: one the writer is done with (waiting for one when all
    /// are in use, so memory stays what the plan says), or a new one while there are fewer.
    pub(super) fn buffer(&mut self, len: usize) -> Vec<u8> {
        let reused = match self.back.try_recv() {
            Ok(b) => Some(b),
            Err(_) if self.made >= super::plan::BUFS_PER_OUTPUT => self.back.recv().ok(),
            Err(_) => None,
        };
        match reused {
            Some(mut b) => {
                if b.len() < len {
                    b.resize(len, 0);
                }
                b
            }
            None => {
                // Also when the writer stopped: the next send reports its error.
                self.made += 1;
                vec![0u8; len]
            }
        }
    }

    pub(super) fn send(&mut self, buf: Vec<u8>, len: usize) -> Result<()> {
        let ok = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send((buf, len)).is_ok());
        if ok {
            return Ok(());
        }
        // The writer stopped: its error explains why.
        self.finish().map(|_| ())?;
        Err(Error::Internal("the writer thread stopped".into()))
    }

    fn finish(&mut self) -> Result<CheckpointWriter> {
        self.tx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Internal("the writer thread panicked".into())),
            None => Err(Error::Internal("writer already finished".into())),
        }
    }
}

/// Every output of a job, being written.
pub(super) struct Outputs {
    /// Several outputs live in one staging folder renamed into place at the end.
    staging: Option<Staging>,
    pub(super) sinks: Vec<Sink>,
    /// Temporary folders of dead processes removed while creating these.
    pub(super) reclaimed: Vec<PathBuf>,
}

impl Outputs {
    /// Creates the writers (headers planned, companion files and model card written).
    pub(super) fn open(job: &MergeJob, plan: &Plan) -> Result<Outputs> {
        let method = job.method;
        let names = method.outputs();
        let base = &job.inputs[0];
        let staging = if names.len() > 1 {
            Some(Staging::new(&job.dest, job.force)?)
        } else {
            None
        };
        let targets: Vec<PathBuf> = match &staging {
            Some(s) => names.iter().map(|nm| s.path().join(nm)).collect(),
            None => vec![job.dest.clone()],
        };
        let mut reclaimed: Vec<PathBuf> = staging
            .as_ref()
            .map(|s| s.reclaimed().to_vec())
            .unwrap_or_default();
        let recipe_inputs: Vec<serde_json::Value> = job
            .inputs
            .iter()
            .map(|i| serde_json::json!({"role": i.role, "path": i.spec, "header_sha256": i.fingerprint(), "lora_adapter": i.adapter.is_some()}))
            .collect();
        let out_tensors: Vec<OutTensor> = plan
            .tensors
            .iter()
            .map(|t| OutTensor {
                name: t.name.clone(),
                dtype: t.out_dtype,
                shape: t.shape.clone(),
            })
            .collect();
        let mut sinks = Vec::with_capacity(names.len());
        for (k, target) in targets.iter().enumerate() {
            let mut recipe = method.recipe();
            recipe["output"] = names[k].clone().into();
            recipe["inputs"] = recipe_inputs.clone().into();
            recipe["dtype"] = job.out_dtype.to_string().into();
            let mut metadata = BTreeMap::new();
            metadata.insert("warp_version".into(), env!("CARGO_PKG_VERSION").into());
            metadata.insert("warp_recipe".into(), recipe.to_string());
            let opts = WriterOptions {
                max_shard_size: job.max_shard_size,
                force: job.force,
                metadata,
                write_buffer: plan.write_buffer,
            };
            // A failure here drops the writers made so far and the staging: nothing is left.
            let mut w = CheckpointWriter::create(target, out_tensors.clone(), &opts)?;
            reclaimed.extend(w.reclaimed().iter().cloned());
            copy_companions_as(&base.ckpt.dir, &mut w, job.out_dtype)?;
            let card = ModelCard {
                title: &format!("{} ({})", names[k], method.name()),
                base_model: &base.spec,
                method: method.name(),
                recipe: &recipe,
                notes: method.notes(k),
            };
            w.add_file("README.md", card.render().as_bytes())?;
            sinks.push(Sink::spawn(w));
        }
        Ok(Outputs {
            staging,
            sinks,
            reclaimed,
        })
    }

    /// Stops the writers; dropping them (and the staging) removes every temporary folder.
    pub(super) fn abort(&mut self) {
        for s in &mut self.sinks {
            let _ = s.finish();
        }
    }

    /// Completes every output and renames them into place together.
    pub(super) fn finish(mut self) -> Result<()> {
        let mut writers = Vec::with_capacity(self.sinks.len());
        for s in &mut self.sinks {
            writers.push(s.finish()?);
        }
        for w in writers {
            w.finish()?;
        }
        if let Some(s) = self.staging.take() {
            s.commit()?;
        }
        Ok(())
    }
}
