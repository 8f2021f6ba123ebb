//! The batch script of a unit of submission, and quoting for bash.

use std::collections::HashMap;
use std::path::Path;

use super::{absolute, Slurm, Step};
use crate::error::{Error, Result};

/// A path for the batch script (which is text). A path with a control character (a line
/// break, a tab, an escape) is refused: no quoting makes it safe everywhere it appears (comment
/// lines, Slurm's own `#SBATCH` scan, log lines), so the error names it instead.
pub(super) fn text(p: &Path) -> Result<String> {
    let p = absolute(p)?;
    let s = p.to_str().ok_or_else(|| {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a path that is not UTF-8 cannot go into a batch script",
        );
        Error::io(&p, e)
    })?;
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(Error::setting(
            "path",
            format!(
                "{s:?} holds the control character {:?}; a path with control characters \
                 cannot go into a Slurm batch script (rename it)",
                c
            ),
        ));
    }
    Ok(s.to_string())
}

/// `s` for a comment line of the script: control characters (which would end the comment and
/// start a command) escaped as Rust escapes them. Every value written into a comment goes
/// through here, even those already checked.
pub(super) fn comment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
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

pub(super) fn quote_all(words: &[String]) -> Result<String> {
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
pub(super) fn slug(s: &str) -> String {
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

impl Slurm {
    /// The batch script: picks the step of its array task, appends to the step's log, checks
    /// the step is not complete and its predecessors are, runs the prelude, then `exec`s the
    /// command (the resume command once an attempt has started) so that Slurm's signals reach it.
    pub(super) fn render(
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
             # Submitted with: {}\n\
             # The step's output goes to its log; Slurm's own messages to --output.\n\
             case \"${{SLURM_ARRAY_TASK_ID:-0}}\" in\n",
            comment(&ids.join(", ")),
            comment(&shell_quote(&text(&self.run_dir)?)),
            comment(sbatch),
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
}
