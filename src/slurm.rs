//! The Slurm launcher's library side: the steps of a plan as `sbatch` jobs.
//!
//! Each step becomes a batch job running its command; the steps of one array group (the M RL
//! runs of an iteration) become ONE job array; a step waits for its predecessors with
//! `--dependency=afterok:…` and `--kill-on-invalid-dep=yes`, so when a step fails Slurm cancels
//! everything downstream of it. The job ids go to `RUN/slurm.json` (written atomically after
//! every submission); the batch scripts and Slurm's own output files to `RUN/slurm/`.
//!
//! Job state comes from `squeue`/`scontrol` (no accounting database is assumed, so `sacct` is
//! not used), but **completion is read from the run folder only**: a step is done when its
//! completion marker exists, whatever Slurm says. Slurm forgets finished jobs after `MinJobAge`,
//! and a dependency on a job it no longer knows counts as satisfied, so a submitted step only
//! ever depends on jobs that are queued or running, and every batch script checks itself that
//! the markers of its predecessors exist before it runs its command.
//!
//! Stopping: Slurm stops a job (scancel, time limit, preemption, node shutdown) by sending
//! SIGTERM to its processes, waiting `KillWait` seconds (30 by default) and sending SIGKILL. The
//! script `exec`s the command, so the command itself receives the SIGTERM. Every warp command
//! writes its output atomically (a temporary folder renamed into place), and an RL run keeps its
//! periodic checkpoints, so a stopped step leaves its folder resumable even when SIGKILL follows;
//! a requeued job (preemption with `PreemptMode=REQUEUE`) runs the same script again, which then
//! takes the step's resume command because the step's start marker exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;

/// What a step does; each kind has its own resources (`[slurm.rl]`, `[slurm.merge]`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Rl,
    Merge,
    Eval,
    Plot,
}

impl StepKind {
    pub const ALL: [StepKind; 4] = [
        StepKind::Rl,
        StepKind::Merge,
        StepKind::Eval,
        StepKind::Plot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StepKind::Rl => "rl",
            StepKind::Merge => "merge",
            StepKind::Eval => "eval",
            StepKind::Plot => "plot",
        }
    }
}

/// How to continue an attempt of a step that was stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// Exists once an attempt has started; the batch script then runs `argv` below instead of
    /// the step's own command.
    pub started: PathBuf,
    pub argv: Vec<String>,
}

/// One step of a plan, as the launcher needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    /// Ids of the steps that must be complete first (they come earlier in the plan).
    pub after: Vec<String>,
    /// The command (program first).
    pub argv: Vec<String>,
    pub resume: Option<Resume>,
    /// Exists once the step is complete (the command writes it atomically, last).
    pub done: PathBuf,
    /// The command's stdout and stderr (appended to, one header line per attempt).
    pub log: PathBuf,
    pub kind: StepKind,
    /// Steps with the same group are submitted together as one job array (they must share
    /// their kind and may not depend on each other).
    pub array: Option<String>,
}

/// sbatch resources and settings of one kind of step; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// `--partition`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `--account`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `--qos`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// `--time`: minutes, or a Slurm time such as "12:00:00" or "1-00:00:00".
    #[serde(
        deserialize_with = "text_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub time: Option<String>,
    /// `--gpus`: a count, or "type:count".
    #[serde(
        deserialize_with = "text_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub gpus: Option<String>,
    /// `--cpus-per-task`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `--mem`: megabytes, or with a unit such as "64G".
    #[serde(
        deserialize_with = "text_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub mem: Option<String>,
    /// More sbatch arguments, one per item (e.g. ["--gres=gpu:a100:1", "--exclusive"]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Shell lines run before the command (e.g. "module load cuda/12.4",
    /// "source ~/venv/bin/activate"), under `set -e`: a failing line fails the step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prelude: Vec<String>,
}

fn text_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a quoted string (such as \"12:00:00\" or \"64G\") or a whole number")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
            u64::try_from(v)
                .map(|v| Some(v.to_string()))
                .map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// The `[slurm]` section: resources of every job at the top, overridden per kind in
/// `[slurm.rl]`, `[slurm.merge]`, `[slurm.eval]` and `[slurm.plot]` (a kind's value replaces
/// the top one; `args` and `prelude` are the top lines followed by the kind's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct SlurmConfig {
    #[serde(flatten)]
    pub all: Resources,
    #[serde(skip_serializing_if = "is_empty")]
    pub rl: Resources,
    #[serde(skip_serializing_if = "is_empty")]
    pub merge: Resources,
    #[serde(skip_serializing_if = "is_empty")]
    pub eval: Resources,
    #[serde(skip_serializing_if = "is_empty")]
    pub plot: Resources,
    /// Seconds between two looks at the queue while waiting for the jobs.
    pub poll_seconds: f64,
    /// How long a job that ended successfully may take for its completion marker to become
    /// visible here (shared file systems cache directory listings) before the step counts as
    /// failed.
    pub marker_grace_seconds: f64,
}

fn is_empty(r: &Resources) -> bool {
    r == &Resources::default()
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            all: Resources::default(),
            rl: Resources::default(),
            merge: Resources::default(),
            eval: Resources::default(),
            plot: Resources::default(),
            poll_seconds: 5.0,
            marker_grace_seconds: 60.0,
        }
    }
}

// A flattened struct cannot reject unknown keys, so the section is split by hand: the kind
// sub-tables and the two settings, and the rest must be `Resources`' own keys.
impl TryFrom<serde_json::Map<String, serde_json::Value>> for SlurmConfig {
    type Error = String;
    fn try_from(mut m: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let mut c = SlurmConfig::default();
        let resources = |v: serde_json::Value, at: &str| {
            serde_json::from_value::<Resources>(v).map_err(|e| format!("{at}: {e}"))
        };
        for kind in StepKind::ALL {
            if let Some(v) = m.remove(kind.name()) {
                *c.kind_mut(kind) = resources(v, kind.name())?;
            }
        }
        for (key, slot) in [
            ("poll_seconds", &mut c.poll_seconds),
            ("marker_grace_seconds", &mut c.marker_grace_seconds),
        ] {
            if let Some(v) = m.remove(key) {
                *slot = v
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("{key}: expected a number of seconds ≥ 0, got {v}"))?;
            }
        }
        c.all = serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| {
            let e = e.to_string();
            if e.starts_with("unknown field") {
                let more = "rl, merge, eval, plot (tables), poll_seconds, marker_grace_seconds";
                format!("{e}, {more}")
            } else {
                e
            }
        })?;
        Ok(c)
    }
}

impl SlurmConfig {
    fn kind_mut(&mut self, kind: StepKind) -> &mut Resources {
        match kind {
            StepKind::Rl => &mut self.rl,
            StepKind::Merge => &mut self.merge,
            StepKind::Eval => &mut self.eval,
            StepKind::Plot => &mut self.plot,
        }
    }

    fn kind(&self, kind: StepKind) -> &Resources {
        match kind {
            StepKind::Rl => &self.rl,
            StepKind::Merge => &self.merge,
            StepKind::Eval => &self.eval,
            StepKind::Plot => &self.plot,
        }
    }

    /// The resources of a kind of step: its own values over the top ones.
    pub fn resources(&self, kind: StepKind) -> Resources {
        let (a, k) = (&self.all, self.kind(kind));
        let pick = |k: &Option<String>, a: &Option<String>| k.clone().or_else(|| a.clone());
        let chain = |a: &[String], k: &[String]| a.iter().chain(k).cloned().collect();
        Resources {
            partition: pick(&k.partition, &a.partition),
            account: pick(&k.account, &a.account),
            qos: pick(&k.qos, &a.qos),
            time: pick(&k.time, &a.time),
            gpus: pick(&k.gpus, &a.gpus),
            cpus: k.cpus.or(a.cpus),
            mem: pick(&k.mem, &a.mem),
            args: chain(&a.args, &k.args),
            prelude: chain(&a.prelude, &k.prelude),
        }
    }

    /// Values that would break the batch script or the sbatch command line.
    pub fn check(&self) -> Result<()> {
        let sections = std::iter::once(("slurm".to_string(), &self.all)).chain(
            StepKind::ALL
                .iter()
                .map(|k| (format!("slurm.{}", k.name()), self.kind(*k))),
        );
        for (at, r) in sections {
            let single = [
                ("partition", &r.partition),
                ("account", &r.account),
                ("qos", &r.qos),
                ("time", &r.time),
                ("gpus", &r.gpus),
                ("mem", &r.mem),
            ];
            for (key, v) in single {
                if let Some(v) = v {
                    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '\0') {
                        return Err(Error::setting(
                            format!("{at}.{key}"),
                            format!("'{v}' is not a valid sbatch value (empty or with blanks)"),
                        ));
                    }
                }
            }
            if r.cpus == Some(0) {
                return Err(Error::setting(format!("{at}.cpus"), "must be > 0"));
            }
            for (key, lines) in [("args", &r.args), ("prelude", &r.prelude)] {
                if let Some(l) = lines.iter().find(|l| l.contains(['\n', '\r', '\0'])) {
                    return Err(Error::setting(
                        format!("{at}.{key}"),
                        format!("{l:?} holds a line break; give one item per line"),
                    ));
                }
            }
            if let Some(a) = r.args.iter().find(|a| !a.starts_with('-')) {
                return Err(Error::setting(
                    format!("{at}.args"),
                    format!("'{a}' is not an option (each item is one sbatch option, such as \"--exclusive\" or \"--gres=gpu:1\")"),
                ));
            }
        }
        Ok(())
    }
}

impl Resources {
    /// The sbatch options these resources stand for.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut opt = |flag: &str, val: &Option<String>| {
            if let Some(val) = val {
                v.push(format!("--{flag}={val}"));
            }
        };
        opt("partition", &self.partition);
        opt("account", &self.account);
        opt("qos", &self.qos);
        opt("time", &self.time);
        opt("gpus", &self.gpus);
        opt("cpus-per-task", &self.cpus.map(|c| c.to_string()));
        opt("mem", &self.mem);
        v.extend(self.args.iter().cloned());
        v
    }
}

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

/// What Slurm says about a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    /// PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, …
    pub state: String,
    /// Why it is pending or how it ended (Dependency, Priority, NonZeroExitCode, …).
    pub reason: String,
}

impl JobInfo {
    fn active(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "NODE_FAIL"
                | "PREEMPTED"
                | "OUT_OF_MEMORY"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "SPECIAL_EXIT"
                | "REVOKED"
        )
    }
    fn running(&self) -> bool {
        matches!(
            self.state.as_str(),
            "RUNNING" | "COMPLETING" | "CONFIGURING" | "SIGNALING" | "STAGE_OUT"
        )
    }
    /// Pending on a dependency that can no longer be met (a predecessor failed) — where the
    /// cluster does not cancel such jobs itself.
    fn stuck(&self) -> bool {
        self.reason == "DependencyNeverSatisfied"
    }
}

/// Where a step stands.
#[derive(Debug, Clone, PartialEq)]
pub enum StepState {
    /// Its completion marker exists.
    Done,
    /// Never submitted, nor started.
    Missing,
    /// Not complete, not submitted, but an attempt started (it resumes when run again): a
    /// step of the local launcher, or one run before the run folder went to Slurm.
    Started,
    /// Queued; Slurm's reason (Dependency, Priority, Resources, …).
    Pending(String),
    Running,
    /// Not complete, and its job is over or gone: how it ended.
    Failed(String),
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            StepState::Done => f.write_str("done"),
            StepState::Missing => f.write_str("missing"),
            StepState::Started => f.write_str("started (not complete)"),
            StepState::Pending(r) if r.is_empty() || r == "None" => f.write_str("pending"),
            StepState::Pending(r) => write!(f, "pending ({r})"),
            StepState::Running => f.write_str("running"),
            StepState::Failed(why) => write!(f, "failed ({why})"),
        }
    }
}

/// A step's state with what `warp status` shows beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStatus {
    pub id: String,
    pub state: StepState,
    /// The recorded job, if the step was submitted.
    pub job: Option<String>,
    /// Slurm's state of that job, when Slurm still knows it.
    pub slurm_state: Option<String>,
    /// Slurm still holds the job (queued or running) — also a failed step's job that waits
    /// forever for a failed predecessor.
    pub queued: bool,
    pub log: PathBuf,
}

/// What [`Slurm::submit`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Submission {
    /// Step ids whose completion marker exists.
    pub done: Vec<String>,
    /// Step ids whose job is still queued or running (left as they are).
    pub queued: Vec<String>,
    /// Step ids submitted now, with their job ids.
    pub submitted: Vec<(String, String)>,
    /// Jobs cancelled before their steps are submitted again: they waited for a predecessor
    /// that is submitted again, or forever for one that failed.
    pub cancelled: Vec<String>,
}

/// Submits, follows and cancels the steps of one run folder.
#[derive(Debug, Clone)]
pub struct Slurm {
    pub config: SlurmConfig,
    /// The run folder (absolute): `slurm.json` and `slurm/` go there.
    run_dir: PathBuf,
    /// The directory the jobs start in (absolute): where this process runs, so relative paths
    /// in commands mean the same in the jobs.
    workdir: PathBuf,
    /// Added to the environment of the Slurm commands (and so, through sbatch's default
    /// `--export=ALL`, of the jobs), e.g. `SLURM_CONF` of a private cluster.
    env: Vec<(OsString, OsString)>,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).at(p)
}

/// A path for the batch script (which is text).
fn text(p: &Path) -> Result<String> {
    let p = absolute(p)?;
    p.to_str().map(String::from).ok_or_else(|| {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a path that is not UTF-8 cannot go into a batch script",
        );
        Error::io(&p, e)
    })
}

/// One word for bash: as is when it is plain, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b);
    if !s.is_empty() && s.bytes().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn quote_all(words: &[String]) -> Result<String> {
    if let Some(w) = words.iter().find(|w| w.contains('\0')) {
        return Err(Error::setting(
            "command",
            format!("{w:?}: a NUL byte cannot be passed to a command"),
        ));
    }
    Ok(words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" "))
}

/// A job name and file name from a step id or array group.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The last `n` lines of a text file (empty when it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn started_or_missing(st: &Step) -> StepState {
    match &st.resume {
        Some(r) if r.started.exists() => StepState::Started,
        _ => StepState::Missing,
    }
}

/// Where each step stands from the run folder alone (no scheduler): done, started or missing.
pub fn folder_status(steps: &[Step]) -> Vec<StepStatus> {
    steps
        .iter()
        .map(|st| StepStatus {
            id: st.id.clone(),
            state: if st.done.exists() {
                StepState::Done
            } else {
                started_or_missing(st)
            },
            job: None,
            slurm_state: None,
            queued: false,
            log: st.log.clone(),
        })
        .collect()
}

/// Checks what the launcher relies on: unique ids, predecessors earlier in the plan, array
/// groups of one kind whose members do not wait for each other.
fn check_plan(steps: &[Step]) -> Result<()> {
    let mut seen: HashMap<&str, &Step> = HashMap::new();
    let bad = |m: String| Err(Error::Internal(format!("plan for Slurm: {m}")));
    for st in steps {
        if st.argv.is_empty() {
            return bad(format!("step {} has no command", st.id));
        }
        for a in &st.after {
            let Some(pred) = seen.get(a.as_str()) else {
                return bad(format!(
                    "step {} waits for {a}, which does not come before it",
                    st.id
                ));
            };
            if st.array.is_some() && pred.array == st.array {
                return bad(format!(
                    "step {} waits for {a} of the same job array",
                    st.id
                ));
            }
        }
        if let Some(g) = &st.array {
            if let Some(other) = seen.values().find(|o| o.array.as_ref() == Some(g)) {
                if other.kind != st.kind {
                    return bad(format!(
                        "array {g} mixes kinds ({} and {})",
                        other.id, st.id
                    ));
                }
            }
        }
        if seen.insert(&st.id, st).is_some() {
            return bad(format!("step id {} appears twice", st.id));
        }
    }
    Ok(())
}

/// What submit decided for a step.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Done,
    /// Its queued or running job stays.
    Keep(String),
    /// To submit (with the job it gets once submitted).
    Submit(Option<String>),
}

impl Slurm {
    /// A launcher for the run folder `run_dir`; jobs start in the current directory.
    pub fn new(config: SlurmConfig, run_dir: &Path) -> Result<Slurm> {
        config.check()?;
        let workdir = std::env::current_dir().at(".")?;
        Ok(Slurm {
            config,
            run_dir: absolute(run_dir)?,
            workdir,
            env: Vec::new(),
        })
    }

    /// Adds a variable to the environment of the Slurm commands and the jobs.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Slurm {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn record_path(&self) -> PathBuf {
        self.run_dir.join("slurm.json")
    }

    /// The batch scripts and Slurm's output files.
    pub fn slurm_dir(&self) -> PathBuf {
        self.run_dir.join("slurm")
    }

    /// The recorded jobs (empty when nothing was submitted yet).
    pub fn record(&self) -> Result<Record> {
        let path = self.record_path();
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| Error::format(&path, format!("{e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Holds `RUN/slurm.lock` while submitting, so that two submissions for one run folder
    /// cannot both submit the same steps. Released when the returned file is dropped (also if
    /// the process dies).
    fn lock(&self) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.run_dir).at(&self.run_dir)?;
        let path = self.run_dir.join("slurm.lock");
        let f = std::fs::File::create(&path).at(&path)?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own and keep open while the lock is needed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            let msg = if e.kind() == std::io::ErrorKind::WouldBlock {
                "another warp is submitting the jobs of this run".to_string()
            } else {
                e.to_string()
            };
            return Err(Error::io(&path, std::io::Error::new(e.kind(), msg)));
        }
        Ok(f)
    }

    fn save(&self, record: &Record) -> Result<()> {
        let text = serde_json::to_string_pretty(record)
            .map_err(|e| Error::Internal(format!("slurm.json: {e}")))?;
        crate::io::write_file_atomic(&self.record_path(), (text + "\n").as_bytes())
    }

    fn command(&self, program: &str, args: &[String]) -> Result<Output> {
        Command::new(program)
            .args(args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("Slurm command {program}"), e))
    }

    /// Slurm's view of these jobs; jobs it no longer knows are absent from the map.
    pub fn query(&self, jobs: &[String]) -> Result<HashMap<String, JobInfo>> {
        let mut map = HashMap::new();
        for chunk in jobs.chunks(200) {
            let args: Vec<String> = ["-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j"]
                .iter()
                .map(|s| s.to_string())
                .chain([chunk.join(",")])
                .collect();
            let out = self.command("squeue", &args)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                // squeue fails when none of the ids is known any more.
                if stderr.contains("Invalid job id") {
                    continue;
                }
                return Err(Error::io(
                    "squeue",
                    std::io::Error::other(format!("{} ({})", stderr.trim(), out.status)),
                ));
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let f: Vec<&str> = line.trim().splitn(3, '|').collect();
                if let [id, state, reason] = f[..] {
                    map.insert(
                        id.to_string(),
                        JobInfo {
                            state: state.to_string(),
                            reason: reason.to_string(),
                        },
                    );
                }
            }
        }
        Ok(map)
    }

    /// How a job ended, from the exit code Slurm recorded ("3:0": code 3; "0:15": signal 15),
    /// as ", exit code 3" / ", signal 15"; empty when unknown or 0.
    fn exit_code(&self, job: &str) -> String {
        let args = ["-o", "show", "job", job].map(String::from);
        let Ok(out) = self.command("scontrol", &args) else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ExitCode="))
            .and_then(|c| c.split_once(':'));
        match code {
            None | Some(("0", "0")) => String::new(),
            Some((c, "0")) => format!(", exit code {c}"),
            Some(("0", s)) => format!(", signal {s}"),
            Some((c, s)) => format!(", exit code {c}, signal {s}"),
        }
    }

    /// Where each step stands: done from its marker, else from its recorded job.
    pub fn status(&self, steps: &[Step]) -> Result<Vec<StepStatus>> {
        let record = self.record()?;
        self.status_of(steps, &record)
    }

    fn status_of(&self, steps: &[Step], record: &Record) -> Result<Vec<StepStatus>> {
        let open: Vec<String> = steps
            .iter()
            .filter(|st| !st.done.exists())
            .filter_map(|st| record.steps.get(&st.id).map(|s| s.job.clone()))
            .collect();
        let jobs = self.query(&open)?;
        let mut v = Vec::new();
        for st in steps {
            let sub = record.steps.get(&st.id);
            let info = sub.and_then(|s| jobs.get(&s.job));
            let state = match (st.done.exists(), sub, info) {
                (true, _, _) => StepState::Done,
                (false, None, _) => started_or_missing(st),
                (false, Some(s), None) => StepState::Failed(format!(
                    "job {} is over and no longer known to Slurm",
                    s.job
                )),
                (false, Some(_), Some(j)) if j.active() && j.stuck() => StepState::Failed(
                    "a step it waits for failed (DependencyNeverSatisfied)".into(),
                ),
                (false, Some(_), Some(j)) if j.running() => StepState::Running,
                (false, Some(_), Some(j)) if j.active() => StepState::Pending(j.reason.clone()),
                (false, Some(s), Some(j)) => {
                    let mut why = j.state.clone();
                    if j.reason != "None" && !j.reason.is_empty() {
                        why += &format!(" ({})", j.reason);
                    }
                    if j.state == "COMPLETED" {
                        why += ", but the step's output is missing";
                    } else {
                        why += &self.exit_code(&s.job);
                    }
                    StepState::Failed(why)
                }
            };
            v.push(StepStatus {
                id: st.id.clone(),
                state,
                job: sub.map(|s| s.job.clone()),
                slurm_state: info.map(|j| j.state.clone()),
                queued: info.is_some_and(JobInfo::active),
                log: st.log.clone(),
            });
        }
        Ok(v)
    }

    /// Submits the steps that are neither complete nor queued: the members of an array group
    /// together as one job array, each with `afterok` dependencies on the jobs of its
    /// predecessors that are not complete yet. A queued job is kept unless a step it waits for
    /// has to be submitted again (then it is cancelled and submitted again too). Returns at
    /// once; Slurm runs the jobs.
    pub fn submit(&self, steps: &[Step], reporter: &dyn Reporter) -> Result<Submission> {
        check_plan(steps)?;
        let _lock = self.lock()?;
        let mut record = self.record()?;
        let status = self.status_of(steps, &record)?;
        let mut decision: HashMap<&str, Decision> = HashMap::new();
        let mut sub = Submission::default();
        let mut stale = Vec::new();
        for (st, s) in steps.iter().zip(&status) {
            let preds_stay = st.after.iter().all(|a| {
                matches!(
                    decision.get(a.as_str()),
                    Some(Decision::Done | Decision::Keep(_))
                )
            });
            let d = match (&s.state, &s.job) {
                (StepState::Done, _) => {
                    sub.done.push(st.id.clone());
                    Decision::Done
                }
                (StepState::Pending(_) | StepState::Running, Some(job)) if preds_stay => {
                    sub.queued.push(st.id.clone());
                    Decision::Keep(job.clone())
                }
                (StepState::Pending(_) | StepState::Running, Some(job)) => {
                    stale.push(job.clone());
                    Decision::Submit(None)
                }
                // A job pending forever on a failed predecessor is cancelled, then resubmitted.
                (StepState::Failed(_), Some(job)) if s.queued => {
                    stale.push(job.clone());
                    Decision::Submit(None)
                }
                _ => Decision::Submit(None),
            };
            decision.insert(&st.id, d);
        }
        if !stale.is_empty() {
            self.scancel(&stale)?;
            reporter.message(&format!("cancelled stale job(s) {}", stale.join(", ")));
            sub.cancelled = stale;
        }
        std::fs::create_dir_all(self.slurm_dir()).at(self.slurm_dir())?;
        // Units of submission in plan order: an array group, or one step.
        let mut units: Vec<Vec<&Step>> = Vec::new();
        let mut unit_of_group: HashMap<&str, usize> = HashMap::new();
        for st in steps {
            if decision[st.id.as_str()] != Decision::Submit(None) {
                continue;
            }
            match &st.array {
                Some(g) => match unit_of_group.get(g.as_str()) {
                    Some(&u) => units[u].push(st),
                    None => {
                        unit_of_group.insert(g, units.len());
                        units.push(vec![st]);
                    }
                },
                None => units.push(vec![st]),
            }
        }
        let by_id: HashMap<&str, &Step> = steps.iter().map(|s| (s.id.as_str(), s)).collect();
        for unit in units {
            let mut deps = BTreeSet::new();
            for st in &unit {
                for a in &st.after {
                    match &decision[a.as_str()] {
                        Decision::Done => {}
                        Decision::Keep(job) | Decision::Submit(Some(job)) => {
                            deps.insert(job.clone());
                        }
                        Decision::Submit(None) => {
                            return Err(Error::Internal(format!(
                                "plan for Slurm: {} is submitted before {a}, which it waits for",
                                st.id
                            )))
                        }
                    }
                }
            }
            let jobs = self.submit_unit(&unit, &by_id, &deps, &mut record)?;
            for (st, job) in unit.iter().zip(jobs) {
                sub.submitted.push((st.id.clone(), job.clone()));
                decision.insert(&st.id, Decision::Submit(Some(job)));
            }
        }
        Ok(sub)
    }

    /// Writes the batch script of `unit`, runs sbatch, records the jobs; returns them.
    fn submit_unit(
        &self,
        unit: &[&Step],
        by_id: &HashMap<&str, &Step>,
        deps: &BTreeSet<String>,
        record: &mut Record,
    ) -> Result<Vec<String>> {
        let first = unit[0];
        let array = first.array.is_some();
        let name = slug(first.array.as_deref().unwrap_or(&first.id));
        let res = self.config.resources(first.kind);
        let dir = self.slurm_dir();
        let script = dir.join(format!("{name}.sbatch"));
        let pattern = if array { "%A_%a" } else { "%j" };
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=warp-{name}"),
            format!(
                "--output={}",
                text(&dir.join(format!("{name}-{pattern}.out")))?
            ),
            "--open-mode=append".into(),
            format!("--chdir={}", text(&self.workdir)?),
        ];
        if array {
            args.push(format!("--array=0-{}", unit.len() - 1));
        }
        if !deps.is_empty() {
            let list: Vec<&str> = deps.iter().map(String::as_str).collect();
            args.push(format!("--dependency=afterok:{}", list.join(":")));
            args.push("--kill-on-invalid-dep=yes".into());
        }
        args.extend(res.sbatch_args());
        args.push(text(&script)?);
        let mut sbatch = vec!["sbatch".to_string()];
        sbatch.extend(args.iter().cloned());
        let body = self.render(unit, by_id, &res.prelude, &quote_all(&sbatch)?)?;
        crate::io::write_file_atomic(&script, body.as_bytes())?;

        let ids = unit
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let out = self.command("sbatch", &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let job = stdout
            .lines()
            .next()
            .and_then(|l| l.split(';').next())
            .map(str::trim)
            .filter(|j| !j.is_empty() && j.bytes().all(|b| b.is_ascii_digit()));
        let job = match (out.status.success(), job) {
            (true, Some(j)) => j.to_string(),
            _ => {
                return Err(Error::Step {
                    id: ids,
                    status: format!("not submitted: sbatch {}", out.status),
                    log: script,
                    tail: format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stderr).trim(),
                        stdout.trim()
                    ),
                })
            }
        };
        let mut jobs = Vec::new();
        for (k, st) in unit.iter().enumerate() {
            let (id, out_file) = if array {
                (format!("{job}_{k}"), format!("{name}-{job}_{k}.out"))
            } else {
                (job.clone(), format!("{name}-{job}.out"))
            };
            let n = record.steps.get(&st.id).map_or(0, |s| s.submissions);
            record.steps.insert(
                st.id.clone(),
                Submitted {
                    job: id.clone(),
                    script: script.clone(),
                    slurm_output: dir.join(out_file),
                    submissions: n + 1,
                    sbatch: sbatch.clone(),
                },
            );
            jobs.push(id);
        }
        // Recorded after every sbatch: an error later on still leaves these jobs cancellable.
        self.save(record)?;
        Ok(jobs)
    }

    /// The batch script: picks the step of its array task, appends to the step's log, checks
    /// the step is not complete and its predecessors are, runs the prelude, then `exec`s the
    /// command (the resume command once an attempt has started) so that Slurm's signals reach it.
    fn render(
        &self,
        unit: &[&Step],
        by_id: &HashMap<&str, &Step>,
        prelude: &[String],
        sbatch: &str,
    ) -> Result<String> {
        let ids: Vec<&str> = unit.iter().map(|s| s.id.as_str()).collect();
        let mut s = format!(
            "#!/bin/bash\n\
             # warp: step(s) {} of the run in {}.\n\
             # Submitted with: {sbatch}\n\
             # The step's output goes to its log; Slurm's own messages to --output.\n\
             case \"${{SLURM_ARRAY_TASK_ID:-0}}\" in\n",
            ids.join(", "),
            text(&self.run_dir)?,
        );
        for (k, st) in unit.iter().enumerate() {
            let needs: Vec<String> = st
                .after
                .iter()
                .map(|a| {
                    by_id
                        .get(a.as_str())
                        .ok_or_else(|| Error::Internal(format!("plan for Slurm: no step {a}")))
                        .and_then(|p| text(&p.done))
                })
                .collect::<Result<_>>()?;
            let (started, resume) = match &st.resume {
                Some(r) => (text(&r.started)?, r.argv.clone()),
                None => (String::new(), Vec::new()),
            };
            s += &format!(
                "{k})\n  warp_step={}\n  warp_log={}\n  warp_done={}\n  warp_needs=({})\n  \
                 warp_started={}\n  warp_resume=({})\n  warp_argv=({})\n  ;;\n",
                shell_quote(&st.id),
                shell_quote(&text(&st.log)?),
                shell_quote(&text(&st.done)?),
                quote_all(&needs)?,
                shell_quote(&started),
                quote_all(&resume)?,
                quote_all(&st.argv)?,
            );
        }
        s += r#"*)
  echo "warp: no step for array task ${SLURM_ARRAY_TASK_ID:-}" >&2
  exit 1
  ;;
esac
mkdir -p -- "${warp_log%/*}" || exit 1
exec >>"$warp_log" 2>&1
echo "== warp: step $warp_step, Slurm job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID:-?} task $SLURM_ARRAY_TASK_ID)} on $(hostname) at $(date '+%Y-%m-%dT%H:%M:%S')"
if [ -e "$warp_done" ]; then
  echo "warp: $warp_step is already complete ($warp_done exists)"
  exit 0
fi
for warp_need in "${warp_needs[@]}"; do
  if [ ! -e "$warp_need" ]; then
    echo "warp: $warp_step cannot start: $warp_need, the output of a step it waits for, is missing" >&2
    exit 1
  fi
done
set -e
"#;
        for line in prelude {
            s += line;
            s.push('\n');
        }
        s += r#"set +e
if [ -n "$warp_started" ] && [ -e "$warp_started" ]; then
  echo "warp: an earlier attempt started ($warp_started exists): resuming it"
  exec "${warp_resume[@]}"
fi
exec "${warp_argv[@]}"
"#;
        Ok(s)
    }

    /// scancel of these jobs. A job that ended meanwhile is not an error.
    fn scancel(&self, jobs: &[String]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let out = self.command("scancel", jobs)?;
        if out.status.success() {
            return Ok(());
        }
        let left: Vec<String> = self
            .query(jobs)?
            .into_iter()
            .filter(|(_, j)| j.active() && j.state != "COMPLETING")
            .map(|(id, _)| id)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::io(
                "scancel",
                std::io::Error::other(format!(
                    "jobs {} still queued: {}",
                    left.join(", "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            ))
        }
    }

    /// Cancels the recorded jobs that are still queued or running; returns (step, job) pairs
    /// in the order they were submitted.
    pub fn cancel(&self) -> Result<Vec<(String, String)>> {
        let record = self.record()?;
        let all: Vec<String> = record.steps.values().map(|s| s.job.clone()).collect();
        let jobs = self.query(&all)?;
        let mut active: Vec<(String, String)> = record
            .steps
            .iter()
            .filter(|(_, s)| jobs.get(&s.job).is_some_and(JobInfo::active))
            .map(|(id, s)| (id.clone(), s.job.clone()))
            .collect();
        // Job ids count up: "12_1" is array 12, task 1.
        let order = |job: &str| -> (u64, u64) {
            let (a, t) = job.split_once('_').unwrap_or((job, "0"));
            (a.parse().unwrap_or(u64::MAX), t.parse().unwrap_or(0))
        };
        active.sort_by_key(|(_, job)| order(job));
        let ids: Vec<String> = active.iter().map(|(_, j)| j.clone()).collect();
        self.scancel(&ids)?;
        Ok(active)
    }

    /// Follows the jobs until every step is complete, with a progress bar of the steps done
    /// and a line when a step starts running or completes. A step that fails: the jobs of the
    /// steps that (transitively) wait for it are cancelled and the error names the step, how
    /// its job ended and its log. On cancellation ([`crate::interrupt`]: Ctrl-C, SIGTERM, SIGHUP)
    /// every recorded job still queued or running is cancelled.
    pub fn wait(&self, steps: &[Step], reporter: &dyn Reporter) -> Result<()> {
        reporter.start_steps("steps", steps.len() as u64);
        let r = self.follow(steps, reporter);
        reporter.finish();
        r
    }

    fn follow(&self, steps: &[Step], reporter: &dyn Reporter) -> Result<()> {
        let poll = Duration::from_secs_f64(self.config.poll_seconds.max(0.05));
        let grace = Duration::from_secs_f64(self.config.marker_grace_seconds);
        let mut shown: HashMap<String, &str> = HashMap::new();
        let mut unconfirmed: HashMap<String, Instant> = HashMap::new();
        let mut first = true;
        loop {
            if crate::interrupt::check().is_err() {
                let cancelled = self.cancel()?;
                let jobs: Vec<&str> = cancelled.iter().map(|(_, j)| j.as_str()).collect();
                if !jobs.is_empty() {
                    reporter.message(&format!("cancelled job(s) {}", jobs.join(", ")));
                }
                return Err(Error::Interrupted);
            }
            let status = self.status(steps)?;
            let (mut done, mut running, mut queued) = (0, 0, 0);
            let mut failed = None;
            for s in &status {
                let label = match &s.state {
                    StepState::Done => "done",
                    StepState::Running => "running",
                    StepState::Pending(_) => "queued",
                    StepState::Failed(_) | StepState::Missing | StepState::Started => {
                        // A job that ended well gets time for its marker to show up here.
                        let since = *unconfirmed.entry(s.id.clone()).or_insert_with(Instant::now);
                        if s.slurm_state.as_deref() != Some("COMPLETED") || since.elapsed() >= grace
                        {
                            failed.get_or_insert(s);
                        }
                        continue;
                    }
                };
                let job = s.job.as_deref().unwrap_or("-");
                match label {
                    "done" => done += 1,
                    "running" => running += 1,
                    _ => queued += 1,
                }
                if shown.insert(s.id.clone(), label) == Some(label) {
                    continue;
                }
                match label {
                    "done" => {
                        reporter.advance(1);
                        if !first {
                            reporter.message(&format!("done    {}", s.id));
                        }
                    }
                    "running" => reporter.message(&format!(
                        "running {}  (job {job}; log: {})",
                        s.id,
                        s.log.display()
                    )),
                    _ => {}
                }
            }
            first = false;
            if let Some(f) = failed {
                let cancelled = self.cancel_dependants(steps, &status, &f.id)?;
                if !cancelled.is_empty() {
                    reporter.message(&format!(
                        "{} failed; the steps waiting for it are cancelled: {}",
                        f.id,
                        cancelled.join(", ")
                    ));
                }
                return Err(self.failure(f));
            }
            reporter.status(&format!("{running} running, {queued} queued"));
            if done == status.len() {
                return Ok(());
            }
            let until = Instant::now() + poll;
            while Instant::now() < until && crate::interrupt::check().is_ok() {
                std::thread::sleep(Duration::from_millis(50).min(poll));
            }
        }
    }

    /// Cancels the queued jobs of the steps that wait, directly or not, for `failed`; returns
    /// those steps (that are not complete), whether this cancelled them or Slurm already had.
    fn cancel_dependants(
        &self,
        steps: &[Step],
        status: &[StepStatus],
        failed: &str,
    ) -> Result<Vec<String>> {
        let mut down: BTreeSet<&str> = BTreeSet::from([failed]);
        for st in steps {
            if st.after.iter().any(|a| down.contains(a.as_str())) {
                down.insert(&st.id);
            }
        }
        let waiting: Vec<&StepStatus> = status
            .iter()
            .filter(|s| s.id != failed && down.contains(s.id.as_str()))
            .filter(|s| s.state != StepState::Done)
            .collect();
        let jobs: Vec<String> = waiting
            .iter()
            .filter(|s| s.queued)
            .filter_map(|s| s.job.clone())
            .collect();
        self.scancel(&jobs)?;
        Ok(waiting.iter().map(|s| s.id.clone()).collect())
    }

    /// The error for a failed step: how it ended, its log and the last lines of the log (and of
    /// Slurm's own output, which says why Slurm stopped a job).
    fn failure(&self, s: &StepStatus) -> Error {
        let status = match (&s.state, &s.job) {
            (StepState::Failed(why), Some(job)) => format!("Slurm job {job}: {why}"),
            (StepState::Missing | StepState::Started, _) => "never submitted".into(),
            (state, _) => state.to_string(),
        };
        let mut tail_text = tail(&s.log, 5);
        if let Some(sub) = self.record().ok().and_then(|r| r.steps.get(&s.id).cloned()) {
            let slurm = tail(&sub.slurm_output, 3);
            if !slurm.trim().is_empty() {
                tail_text += &format!("\n[{}]\n{slurm}", sub.slurm_output.display());
            }
        }
        Error::Step {
            id: s.id.clone(),
            status,
            log: s.log.clone(),
            tail: tail_text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> std::result::Result<SlurmConfig, String> {
        #[derive(Deserialize)]
        struct Top {
            slurm: SlurmConfig,
        }
        toml::from_str::<Top>(t)
            .map(|t| t.slurm)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn kind_sections_override_the_top_and_append_lines() {
        let c = parse(
            r#"
            [slurm]
            partition = "cpu"
            account = "proj"
            time = 60
            mem = "8G"
            args = ["--exclusive"]
            prelude = ["module load gcc"]
            [slurm.rl]
            partition = "gpu"
            gpus = 1
            time = "12:00:00"
            prelude = ["source venv/bin/activate"]
            "#,
        )
        .unwrap();
        c.check().unwrap();
        let rl = c.resources(StepKind::Rl);
        assert_eq!(
            rl.sbatch_args(),
            [
                "--partition=gpu",
                "--account=proj",
                "--time=12:00:00",
                "--gpus=1",
                "--mem=8G",
                "--exclusive"
            ]
        );
        assert_eq!(rl.prelude, ["module load gcc", "source venv/bin/activate"]);
        let merge = c.resources(StepKind::Merge);
        assert_eq!(
            merge.sbatch_args(),
            [
                "--partition=cpu",
                "--account=proj",
                "--time=60",
                "--mem=8G",
                "--exclusive"
            ]
        );
        assert_eq!(c.poll_seconds, 5.0);
    }

    #[test]
    fn bad_sections_name_the_key() {
        let e = parse("[slurm]\npartitio = \"x\"\n").unwrap_err();
        assert!(e.contains("partitio"), "{e}");
        let e = parse("[slurm.rl]\ngpu = 1\n").unwrap_err();
        assert!(e.contains("rl") && e.contains("gpu"), "{e}");
        // An unquoted TOML time is a time of day, not text.
        let e = parse("[slurm]\ntime = 12:00:00\n").unwrap_err();
        assert!(e.contains("quoted string"), "{e}");
        let e = parse("[slurm]\npoll_seconds = -1\n").unwrap_err();
        assert!(e.contains("poll_seconds"), "{e}");
        let c = parse("[slurm.eval]\nmem = \"8 G\"\n").unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("slurm.eval.mem"), "{e}");
        let c = parse("[slurm]\nargs = [\"exclusive\"]\n").unwrap();
        assert!(c.check().unwrap_err().to_string().contains("slurm.args"));
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = parse("[slurm]\nqos = \"high\"\n[slurm.plot]\ncpus = 1\n").unwrap();
        let j = serde_json::to_string(&c).unwrap();
        let back: SlurmConfig = serde_json::from_str(&j).unwrap();
        assert_eq!(back, c);
    }

    /// bash itself (the reference) reads back the words the script quotes.
    #[test]
    fn quoting_survives_bash() {
        let words: Vec<String> = [
            "plain",
            "with space",
            "it's",
            "$HOME",
            "`id`",
            "a\"b",
            "",
            "new\nline",
            "*",
            "--eta=0.5",
            "ümlaut",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let script = format!(
            "w=({})\nprintf '%s\\0' \"${{w[@]}}\"",
            quote_all(&words).unwrap()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success());
        let got: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|w| String::from_utf8(w.to_vec()).unwrap())
            .collect();
        assert_eq!(got[..words.len()], words[..]);
        assert!(quote_all(&["a\0b".to_string()]).is_err());
    }

    fn step(id: &str, after: &[&str], array: Option<&str>) -> Step {
        Step {
            id: id.into(),
            after: after.iter().map(|s| s.to_string()).collect(),
            argv: vec!["true".into()],
            resume: None,
            done: PathBuf::from(format!("/r/{id}.done")),
            log: PathBuf::from(format!("/r/{id}.log")),
            kind: if array.is_some() {
                StepKind::Rl
            } else {
                StepKind::Merge
            },
            array: array.map(String::from),
        }
    }

    #[test]
    fn plans_are_checked() {
        let ok = [
            step("a", &[], Some("g")),
            step("b", &[], Some("g")),
            step("m", &["a", "b"], None),
        ];
        check_plan(&ok).unwrap();
        let later = [step("m", &["a"], None), step("a", &[], None)];
        assert!(check_plan(&later)
            .unwrap_err()
            .to_string()
            .contains("m waits for a"));
        let same = [step("a", &[], Some("g")), step("b", &["a"], Some("g"))];
        assert!(check_plan(&same)
            .unwrap_err()
            .to_string()
            .contains("same job array"));
        let twice = [step("a", &[], None), step("a", &[], None)];
        assert!(check_plan(&twice).is_err());
    }

    #[test]
    fn one_submission_at_a_time_per_run_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let slurm = Slurm::new(SlurmConfig::default(), tmp.path()).unwrap();
        let held = slurm.lock().unwrap();
        let steps = [step("a", &[], None)];
        let e = slurm
            .submit(&steps, &crate::progress::Silent)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("slurm.lock") && e.contains("another warp is submitting"),
            "{e}"
        );
        drop(held);
        // Released on drop. (A fork by a test running alongside may briefly share the open
        // file, and with it the lock, until its exec closes it: hence the retries.)
        let mut again = slurm.lock();
        for _ in 0..50 {
            if again.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            again = slurm.lock();
        }
        again.unwrap();
    }
}
