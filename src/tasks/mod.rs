//! The built-in tasks, each defined once: a folder (`src/tasks/NAME/`: its data, its reward
//! verifier, its pipeline defaults) and one entry in [`TASKS`] that names its embedded files
//! (`fixtures/NAME/`, served as `builtin:NAME/…` by [`crate::builtin`]), the settings
//! `warp run --task NAME` starts from, and the `verify:NAME` reward when it has one.
//!
//! Below the RL code: a task is data and pure functions. The programs that train a task's
//! built-in model (`warp sft --task NAME`) use the RL code and live with it (`crate::rl::sft`,
//! `crate::rl::cipher`).

/// The files of `fixtures/DIR/` named in the list, embedded at compile time.
macro_rules! embed {
    ($dir:literal: $($file:literal),* $(,)?) => {
        &[$(($file, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/", $dir, "/", $file)) as &[u8])),*]
    };
}
pub(crate) use embed;

pub mod arith;
pub mod cipher;

/// One built-in task.
pub struct Task {
    pub name: &'static str,
    /// One line for listings (`warp run --task`).
    pub about: &'static str,
    /// Its files, paths relative to the task's folder (`model/config.json`, `train.jsonl`, …).
    pub files: &'static [(&'static str, &'static [u8])],
    /// The pipeline settings the task sets (`model`, `prompts`, `heldout`, `reward`, …; an `rl`
    /// table is merged key by key): a JSON object of `PipelineConfig` keys.
    pub pipeline: fn() -> serde_json::Value,
    /// `verify:NAME`: the reward of a (prompt, completion) pair, for a task with a verifiable
    /// answer.
    pub verifier: Option<fn(&str, &str) -> f64>,
}

/// Every built-in task; adding one is adding its folder and its entry here.
pub const TASKS: &[&Task] = &[&arith::TASK, &cipher::TASK];

/// The task named `name`.
pub fn task(name: &str) -> Option<&'static Task> {
    TASKS.iter().copied().find(|t| t.name == name)
}

/// The tasks' names, comma-separated.
pub fn names() -> String {
    TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// A plain-text prompt line of a task's prompt sets.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRecord {
    pub prompt: String,
    /// The reference answer, when the file has one (only used for reports).
    pub answer: Option<String>,
}
