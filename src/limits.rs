//! Stated limits on sizes and times that come from settings or from files: each is far above
//! any real use and far below what would exhaust memory or overflow a conversion, so a typo
//! (`1e20`, an extra zero) or a hostile file is refused up front with an error naming the
//! setting, instead of a panic, an endless loop or an allocation that takes the machine down.

use std::time::Duration;

use crate::error::{Error, Result};

/// The longest time any setting in seconds may ask for (timeouts, polling, grace periods): a
/// week.
pub const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// WARP iterations of one `warp run`.
pub const MAX_ITERATIONS: u32 = 1000;
/// RL runs per iteration.
pub const MAX_RUNS: u32 = 1000;
/// Steps of one plan in all (iterations × (runs + merges + evaluations)).
pub const MAX_PLAN_STEPS: u64 = 100_000;
/// Prompts per RL step (`batch`), and completions per prompt (`samples`).
pub const MAX_BATCH: usize = 1 << 16;
/// One line of a prompt file (bytes).
pub const MAX_PROMPT_LINE_BYTES: usize = 1 << 20;

/// `secs` (a setting named `field`) as a [`Duration`]: finite, ≥ 0 (> 0 when `positive`) and at
/// most [`MAX_SECONDS`]; never a panic.
pub fn seconds(field: &str, secs: f64, positive: bool) -> Result<Duration> {
    let ok = secs.is_finite() && secs >= 0.0 && (!positive || secs > 0.0) && secs <= MAX_SECONDS;
    if !ok {
        let low = if positive { "> 0" } else { "≥ 0" };
        return Err(Error::setting(
            field,
            format!(
                "must be a number of seconds {low} and at most {MAX_SECONDS} (a week), got {secs}"
            ),
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| Error::setting(field, format!("{secs}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_bounded_not_panicking() {
        assert_eq!(
            seconds("t", 1.5, true).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(seconds("t", 0.0, false).unwrap(), Duration::ZERO);
        for bad in [1e20, f64::INFINITY, f64::NAN, -1.0, MAX_SECONDS + 1.0] {
            let e = seconds("reward_timeout", bad, true).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().starts_with("reward_timeout: "), "{e}");
        }
        assert!(seconds("t", 0.0, true).is_err());
    }
}
