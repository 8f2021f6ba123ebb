//! The `[slurm]` section of a pipeline config: sbatch resources per kind of step.

use serde::{Deserialize, Serialize};

use super::StepKind;
use crate::error::{Error, Result};

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
                    .filter(|s| crate::limits::seconds(key, *s, false).is_ok())
                    .ok_or_else(|| {
                        format!(
                            "{key}: expected a number of seconds ≥ 0 and at most {} (a week), \
                             got {v}",
                            crate::limits::MAX_SECONDS
                        )
                    })?;
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
