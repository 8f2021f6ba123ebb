//! `RUN/slurm.json`: the jobs submitted for the steps of a run folder.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Slurm;
use crate::error::{Error, Result};

/// The job of a submitted step, as recorded in `RUN/slurm.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    /// The Slurm job id: `JOB`, or `ARRAY_TASK` for a task of a job array.
    pub job: String,
    /// The batch script.
    pub script: PathBuf,
    /// Slurm's own output for this job (cancellation, time limit, errors before the step's log
    /// is opened).
    pub slurm_output: PathBuf,
    /// How many times the step has been submitted.
    pub submissions: u32,
    /// The sbatch command line.
    pub sbatch: Vec<String>,
}

/// `RUN/slurm.json`: the jobs of the run's steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub steps: BTreeMap<String, Submitted>,
}

impl Slurm {
    /// The recorded jobs (empty when nothing was submitted yet).
    pub fn record(&self) -> Result<Record> {
        let path = self.record_path();
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| Error::format(&path, format!("{e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    pub(super) fn save(&self, record: &Record) -> Result<()> {
        let text = serde_json::to_string_pretty(record)
            .map_err(|e| Error::Internal(format!("slurm.json: {e}")))?;
        crate::io::write_file_atomic(&self.record_path(), (text + "\n").as_bytes())
    }
}
