//! Statistics of evaluations: how sure a comparison between checkpoints is.
//!
//! Every checkpoint of a run is evaluated on the same prompts with the same random stream
//! ([`samples`]: the per-sample file `warp eval` writes), so a comparison between two checkpoints
//! is *paired*: it is computed prompt by prompt, and the noise the two share cancels. A statistic
//! is any function of the (mean KL, mean reward) of some checkpoints: a difference in reward, a
//! difference in KL, or the gap between two fronts at equal KL ([`front::gap`]).
//!
//! # One seed: bootstrap over prompts
//! The prompts are the unit of resampling: a replicate draws `P` prompts with replacement (the
//! same draw for every checkpoint, keeping the pairing) and all the samples of a drawn prompt go
//! with it (they share the prompt, so they are not independent). The statistic is recomputed on
//! every replicate; the interval is the 2.5–97.5 % percentile interval of the replicates.
//!
//! # Several seeds
//! A seed is one complete repetition of the experiment (its own RL runs, merges and evaluation);
//! all are evaluated on the same prompts. The estimate is the mean `T̄` over the `K` seeds of the
//! per-seed statistic `T_k`. With `σ²_seed` the variance from training randomness, `σ²_prompt`
//! from which prompts were drawn (shared by all seeds) and `σ²_noise` from each evaluation's own
//! sampling, `Var(T̄) = σ²_seed/K + σ²_prompt/P + σ²_noise/(K·P)`. A replicate resamples the
//! prompts once for all seeds, so these are measured as:
//! - `V_p`, the bootstrap variance of the seed mean: `σ²_prompt/P + σ²_noise/(K·P)`;
//! - `W`, the mean of the per-seed bootstrap variances: `σ²_prompt/P + σ²_noise/P`;
//! - `s²`, the variance of the `T_k` over seeds (the shared prompts cancel):
//!   `σ²_seed + σ²_noise/P`.
//!
//! `T̄ − θ` is the sum of two independent parts, each estimated where it is best known:
//! - the seeds' own part, `ā + ē̄` (training randomness and each seed's own evaluation noise),
//!   with variance `σ²_seed/K + σ²_noise/(K·P)`: `s²/K` estimates it without bias, with exactly
//!   `K − 1` degrees of freedom, so `(ā + ē̄)/√(s²/K)` is Student's t with `K − 1` degrees of
//!   freedom;
//! - the prompts shared by all seeds, `b̄`, with variance `σ²_prompt/P`, estimated from the `P`
//!   prompts as `V_shared = max(0, V_p − V_noise)` where `V_noise = max(0, (W − V_p)/(K − 1))`
//!   (that is `σ²_noise/(K·P)`; the method of moments of the crossed seeds × prompts
//!   random-effects model, computed from bootstrap variances so that it also holds for statistics
//!   that are not means, such as the gap between two fronts).
//!
//! The interval is `T̄ ± √(t²·s²/K + z²·V_shared)`, with `t` the quantile of Student's t at
//! `K − 1` degrees of freedom and `z` the normal quantile: each part's half-width at its own
//! distribution, added in quadrature. It is exact in the two limits (the seeds' part alone:
//! the t interval; the prompts alone: the normal one). A single t at Welch–Satterthwaite degrees
//! of freedom, which warp used before, under-covers with 2 or 3 seeds when the seeds differ
//! (about 89–93 % at a nominal 95 %): a small `s²` by chance makes the degrees of freedom large
//! exactly when the interval is already too short. The price is over-coverage when 2 seeds do
//! not differ (their 1 degree of freedom cannot tell a seed effect from none). The seeds are not
//! resampled: with 3 seeds a bootstrap over them has 10 distinct resamples and shrinks their
//! variance by `(K − 1)/K`. The coverage is checked on simulated data with a known truth
//! (tests/it/science.rs, tests/it/coverage.rs).
//!
//! # Choosing and measuring
//! A statistic that chooses checkpoints by their measured values (an upper envelope, the best
//! policy) is biased when it is measured on the same prompts: [`Statistic::CrossFit`] chooses on
//! one half of the prompts and measures on the other. [`Estimate::p_value`] and [`holm`] turn a
//! table of intervals into a family of tests with a family-wise error rate.

pub mod dist;
pub mod eval_table;
pub mod front;
pub mod samples;

pub use front::{cross_gap, gap, pareto, Envelope, Gap, Point};
pub use samples::{EvalSettings, SampleTable};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Per-prompt means (over the prompt's samples) of one checkpoint's KL and reward.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptMeans {
    pub kl: Vec<f64>,
    pub reward: Vec<f64>,
}

/// How to resample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootstrapOptions {
    /// Bootstrap replicates.
    pub replicates: usize,
    /// Seed of the resampling stream.
    pub seed: u64,
    /// Coverage of the intervals (0.95).
    pub level: f64,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions {
            replicates: 2000,
            seed: 0,
            level: 0.95,
        }
    }
}

/// The prompt draws of the replicates: replicate `b` is the `b`-th call of `next`, `n` indices
/// in `0..n`, from one SplitMix64 stream of `seed`.
pub struct Resampler(SplitMix64);

impl Resampler {
    pub fn new(seed: u64) -> Resampler {
        Resampler(SplitMix64::stream(seed, 0xB007))
    }

    /// The next replicate's `n` prompt indices.
    pub fn next_indices(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.0.below(n as u64) as u32).collect()
    }
}

/// One seed's part of an estimate: the checkpoints the statistic reads, and the statistic of
/// their (mean KL, mean reward), `None` where it is undefined (e.g. two fronts with no common
/// KL range).
pub struct SeedInput<'a> {
    pub points: Vec<&'a PromptMeans>,
    pub stat: Statistic<'a>,
}

/// A statistic of some checkpoints' (mean KL, mean reward); `None` where undefined.
pub type StatFn<'a> = dyn Fn(&[Point]) -> Option<f64> + 'a;

/// A statistic that selects checkpoints on one set of points (`select`: e.g. which are on an
/// envelope, which policy is best) and measures them on another (`measure`).
pub type CrossFn<'a> = dyn Fn(&[Point], &[Point]) -> Option<f64> + 'a;

/// How a seed's statistic is computed from its prompts.
pub enum Statistic<'a> {
    /// On the points' means over all the (resampled) prompts.
    Plain(Box<StatFn<'a>>),
    /// Cross-fitted: the prompts are split in two halves by index parity (fixed, so a bootstrap
    /// replicate weights each half by its draws); the statistic is
    /// `½ [f(half 0, half 1) + f(half 1, half 0)]`. Selecting on the data that is then measured
    /// biases a maximum upward (the upper envelope of noisy points lies above the envelope of
    /// their means, the more so the more points); selecting on independent prompts does not.
    CrossFit(Box<CrossFn<'a>>),
}

impl<'a> SeedInput<'a> {
    pub fn plain(points: Vec<&'a PromptMeans>, f: impl Fn(&[Point]) -> Option<f64> + 'a) -> Self {
        SeedInput {
            points,
            stat: Statistic::Plain(Box::new(f)),
        }
    }

    pub fn cross_fit(
        points: Vec<&'a PromptMeans>,
        f: impl Fn(&[Point], &[Point]) -> Option<f64> + 'a,
    ) -> Self {
        SeedInput {
            points,
            stat: Statistic::CrossFit(Box::new(f)),
        }
    }
}

/// A statistic with its interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// The statistic on all prompts (the mean over seeds).
    pub value: f64,
    /// The interval at the requested level.
    pub lo: f64,
    pub hi: f64,
    /// Standard error (one seed: of the bootstrap replicates; several: √V).
    pub se: f64,
    /// The statistic of each seed on all prompts.
    pub per_seed: Vec<f64>,
    /// Replicates used, and those left out because the statistic was undefined in some seed.
    pub replicates: usize,
    pub undefined: usize,
    /// Degrees of freedom of the seeds' part, `K − 1` (several seeds); `None` for one seed
    /// (percentiles).
    pub df: Option<f64>,
    /// The variance parts of the estimate (several seeds; see the module docs): the seeds' own
    /// (`s²/K`: training randomness and each seed's evaluation noise) and the prompts shared by
    /// all seeds. One seed: 0 and the bootstrap variance.
    pub var_seed: f64,
    pub var_prompt: f64,
    /// The bootstrap variance of the (seed-mean) statistic over prompt resamples alone, `V_p`:
    /// what an interval that ignored the spread between seeds would use.
    pub boot_var: f64,
    /// The mean over the replicates of the (seed-mean) statistic: `boot_mean − value` is the
    /// bootstrap's estimate of the statistic's bias.
    pub boot_mean: f64,
}

impl Estimate {
    pub fn seeds(&self) -> usize {
        self.per_seed.len()
    }

    /// The two-sided p-value of "the statistic is 0" that matches the interval (below the
    /// interval's α exactly when the interval excludes 0): the level at which the half-width
    /// `√(t²·var_seed + z²·var_prompt)` equals `|value|`. `None` for one seed: its percentile
    /// interval measures prompt noise only and is not a test of the experiment (see
    /// [`crate::report`]).
    pub fn p_value(&self) -> Option<f64> {
        let df = self.df?;
        Some(quadrature_p_value(
            self.value,
            self.var_seed,
            self.var_prompt,
            df,
        ))
    }

    /// Whether the interval lies above zero (`Greater`), below it (`Less`) or contains it.
    pub fn sign(&self) -> std::cmp::Ordering {
        if self.lo > 0.0 {
            std::cmp::Ordering::Greater
        } else if self.hi < 0.0 {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Equal
        }
    }
}

/// Two-sided p-value of a t statistic `value / se` with `df` degrees of freedom.
pub fn t_p_value(value: f64, se: f64, df: f64) -> f64 {
    if se <= 0.0 {
        return if value == 0.0 { 1.0 } else { 0.0 };
    }
    (2.0 * (1.0 - dist::t_cdf((value / se).abs(), df))).clamp(0.0, 1.0)
}

/// Holm's step-down adjustment of a family of p-values (same order as given): the `i`-th
/// smallest is multiplied by `m − i` (0-based `i`), capped at 1, and made non-decreasing. A
/// family whose adjusted p-values are compared with α has a family-wise error rate ≤ α
/// whatever the dependence between the tests.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (i, &k) in order.iter().enumerate() {
        running = running.max(((m - i) as f64 * p[k]).min(1.0));
        out[k] = running;
    }
    out
}

/// Mean and sample variance (divisor n − 1).
fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, v)
}

/// The `q` quantile of sorted data, interpolating linearly between order statistics (numpy's
/// default).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let k = h.floor() as usize;
    if k + 1 >= sorted.len() {
        return sorted[sorted.len() - 1];
    }
    sorted[k] + (h - k as f64) * (sorted[k + 1] - sorted[k])
}

/// The points' means over the prompts whose index has parity `half` (`None`: all), each
/// prompt weighted by its draws in the replicate (`None`: once). `None` when no prompt of the
/// half was drawn.
fn means(s: &SeedInput, counts: Option<&[u32]>, half: Option<usize>) -> Option<Vec<Point>> {
    let p = s.points.first()?.reward.len();
    let w: Vec<f64> = (0..p)
        .map(|i| {
            let c = counts.map_or(1.0, |c| c[i] as f64);
            match half {
                Some(h) if i % 2 != h => 0.0,
                _ => c,
            }
        })
        .collect();
    let total: f64 = w.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mean = |x: &[f64]| x.iter().zip(&w).map(|(v, w)| v * w).sum::<f64>() / total;
    Some(
        s.points
            .iter()
            .map(|m| Point {
                kl: mean(&m.kl),
                reward: mean(&m.reward),
            })
            .collect(),
    )
}

fn eval_stat(s: &SeedInput, counts: Option<&[u32]>) -> Option<f64> {
    let v = match &s.stat {
        Statistic::Plain(f) => f(&means(s, counts, None)?)?,
        Statistic::CrossFit(f) => {
            // The choice is made once, on the data's own halves; a replicate resamples only
            // what measures it.
            let (a0, b0) = (means(s, None, Some(0))?, means(s, None, Some(1))?);
            let (a, b) = (means(s, counts, Some(0))?, means(s, counts, Some(1))?);
            0.5 * (f(&a0, &b)? + f(&b0, &a)?)
        }
    };
    v.is_finite().then_some(v)
}

/// The number of prompts every checkpoint of `seeds` was measured on (the same for all, ≥ 2).
fn prompt_count(seeds: &[SeedInput]) -> Result<usize> {
    let p = seeds
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|m| m.reward.len())
        .next()
        .ok_or_else(|| Error::Internal("an estimate needs at least one seed and point".into()))?;
    let same = seeds
        .iter()
        .flat_map(|s| s.points.iter())
        .all(|m| m.reward.len() == p && m.kl.len() == p);
    if !same || p < 2 {
        return Err(Error::Mismatch(format!(
            "checkpoints compared prompt by prompt need the same prompts (at least 2); got \
             prompt counts {:?}",
            seeds
                .iter()
                .flat_map(|s| s.points.iter().map(|m| m.reward.len()))
                .collect::<Vec<_>>()
        )));
    }
    Ok(p)
}

/// Estimates a statistic over one or more seeds (see the module docs). `Ok(None)` when it is
/// undefined on the full data of some seed. Errors: no seed, checkpoints whose prompt counts
/// differ, fewer than 2 prompts, fewer than 2 usable replicates.
pub fn estimate(seeds: &[SeedInput], o: &BootstrapOptions) -> Result<Option<Estimate>> {
    let p = prompt_count(seeds)?;
    let mut per_seed = Vec::with_capacity(seeds.len());
    for s in seeds {
        match eval_stat(s, None) {
            Some(v) => per_seed.push(v),
            None => return Ok(None),
        }
    }
    let k = seeds.len();
    let mut rs = Resampler::new(o.seed);
    // reps[b][k]: the statistic of seed k in replicate b.
    let mut reps: Vec<Vec<f64>> = Vec::with_capacity(o.replicates);
    let mut undefined = 0;
    for _ in 0..o.replicates {
        let idx = rs.next_indices(p);
        let mut counts = vec![0u32; p];
        for i in idx {
            counts[i as usize] += 1;
        }
        let r: Option<Vec<f64>> = seeds.iter().map(|s| eval_stat(s, Some(&counts))).collect();
        match r {
            Some(r) => reps.push(r),
            None => undefined += 1,
        }
    }
    if reps.len() < 2 {
        return Err(Error::Mismatch(format!(
            "the statistic is undefined in {undefined} of {} bootstrap replicates",
            o.replicates
        )));
    }
    let alpha = (1.0 - o.level) / 2.0;
    if k == 1 {
        let mut v: Vec<f64> = reps.iter().map(|r| r[0]).collect();
        let (boot_mean, var) = mean_var(&v);
        v.sort_by(f64::total_cmp);
        return Ok(Some(Estimate {
            value: per_seed[0],
            lo: quantile_sorted(&v, alpha),
            hi: quantile_sorted(&v, 1.0 - alpha),
            se: var.sqrt(),
            per_seed,
            replicates: reps.len(),
            undefined,
            df: None,
            var_seed: 0.0,
            var_prompt: var,
            boot_var: var,
            boot_mean,
        }));
    }
    let kf = k as f64;
    let (value, s2) = mean_var(&per_seed);
    let means: Vec<f64> = reps.iter().map(|r| r.iter().sum::<f64>() / kf).collect();
    let (boot_mean, v_p) = mean_var(&means);
    let w = (0..k)
        .map(|j| mean_var(&reps.iter().map(|r| r[j]).collect::<Vec<_>>()).1)
        .sum::<f64>()
        / kf;
    let v_noise = ((w - v_p) / (kf - 1.0)).max(0.0);
    let var_seed = s2 / kf;
    let var_prompt = (v_p - v_noise).max(0.0);
    let h = half_width(var_seed, var_prompt, kf - 1.0, 2.0 * alpha);
    Ok(Some(Estimate {
        value,
        lo: value - h,
        hi: value + h,
        se: (var_seed + var_prompt).sqrt(),
        per_seed,
        replicates: reps.len(),
        undefined,
        df: Some(kf - 1.0),
        var_seed,
        var_prompt,
        boot_var: v_p,
        boot_mean,
    }))
}

/// The half-width of the several-seed interval at two-sided level `1 − a`:
/// `√(t²·var_seed + z²·var_prompt)` with `t` Student's at `df` and `z` the normal quantile.
fn half_width(var_seed: f64, var_prompt: f64, df: f64, a: f64) -> f64 {
    let t = dist::t_quantile(1.0 - a / 2.0, df);
    let z = dist::t_quantile(1.0 - a / 2.0, f64::INFINITY);
    (t * t * var_seed + z * z * var_prompt).sqrt()
}

/// The smallest p-value computed: smaller ones are reported as this bound.
pub const MIN_P: f64 = 1e-14;

/// The two-sided p-value that inverts [`half_width`]: the `a` at which the interval's
/// half-width equals `|value|` (it decreases with `a`), found by bisection on `ln a`.
fn quadrature_p_value(value: f64, var_seed: f64, var_prompt: f64, df: f64) -> f64 {
    let v = value.abs();
    if var_seed + var_prompt <= 0.0 {
        return if v == 0.0 { 1.0 } else { 0.0 };
    }
    if v == 0.0 {
        return 1.0;
    }
    // Quantiles are computed as 1 − a/2 in f64, exact to about 1e-16: below that, the bound.
    let (mut lo, mut hi) = (MIN_P.ln(), 0.0f64);
    if half_width(var_seed, var_prompt, df, MIN_P) <= v {
        return MIN_P;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if half_width(var_seed, var_prompt, df, mid.exp()) > v {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).exp().min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(reward: &[f64]) -> PromptMeans {
        PromptMeans {
            kl: vec![0.0; reward.len()],
            reward: reward.to_vec(),
        }
    }

    #[test]
    fn one_seed_paired_difference() {
        // B − A is exactly 1 on every prompt: every replicate gives 1, the interval is [1, 1].
        let a = pm(&[0.0, 0.5, 1.0, 0.25]);
        let b = pm(&[1.0, 1.5, 2.0, 1.25]);
        let s = SeedInput::plain(vec![&a, &b], |p: &[Point]| Some(p[1].reward - p[0].reward));
        let e = estimate(&[s], &BootstrapOptions::default())
            .unwrap()
            .unwrap();
        assert!((e.value - 1.0).abs() < 1e-12 && (e.lo - 1.0).abs() < 1e-12);
        assert!((e.hi - 1.0).abs() < 1e-12 && e.se < 1e-12);
        assert_eq!((e.replicates, e.undefined, e.df), (2000, 0, None));
    }

    #[test]
    fn undefined_statistics() {
        let a = pm(&[0.0, 1.0]);
        let none = SeedInput::plain(vec![&a], |_: &[Point]| None);
        assert_eq!(
            estimate(&[none], &BootstrapOptions::default()).unwrap(),
            None
        );
        // Defined on all prompts, undefined on replicates whose mean reward is 0 or 1.
        let partly = SeedInput::plain(vec![&a], |p: &[Point]| {
            (p[0].reward > 0.0 && p[0].reward < 1.0).then_some(1.0)
        });
        let e = estimate(&[partly], &BootstrapOptions::default())
            .unwrap()
            .unwrap();
        // Half of the replicates draw the same prompt twice.
        assert!(e.undefined > 800 && e.undefined < 1200, "{}", e.undefined);
        assert_eq!(e.replicates + e.undefined, 2000);
        let b = pm(&[0.0, 1.0, 2.0]);
        let mixed = SeedInput::plain(vec![&a, &b], |_: &[Point]| Some(0.0));
        assert!(estimate(&[mixed], &BootstrapOptions::default())
            .unwrap_err()
            .to_string()
            .contains("same prompts"));
    }

    #[test]
    fn resampler_is_deterministic_and_uniform() {
        let mut a = Resampler::new(3);
        let mut b = Resampler::new(3);
        assert_eq!(a.next_indices(50), b.next_indices(50));
        assert_ne!(a.next_indices(50), Resampler::new(4).next_indices(50));
        let mut counts = [0usize; 10];
        let mut r = Resampler::new(0);
        for _ in 0..10_000 {
            for i in r.next_indices(10) {
                counts[i as usize] += 1;
            }
        }
        // 10 000 draws per index expected; binomial sd ≈ 95.
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn holm_matches_its_closed_form() {
        // By hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04,
        // made non-decreasing: 0.02, 0.03, 0.06, 0.06 (R's p.adjust(, "holm") gives the same).
        let adj = holm(&[0.01, 0.04, 0.03, 0.005]);
        for (a, want) in adj.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            assert!((a - want).abs() < 1e-15, "{adj:?}");
        }
        assert_eq!(holm(&[0.5, 0.9]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn the_p_value_inverts_the_interval() {
        // One part alone: Student's t at K − 1 degrees of freedom, or the normal distribution.
        for v in [0.05, 0.2, 1.3] {
            let t_only = quadrature_p_value(v, 0.01, 0.0, 2.0);
            assert!((t_only - t_p_value(v, 0.1, 2.0)).abs() < 1e-9, "{v}");
            let z_only = quadrature_p_value(v, 0.0, 0.04, 1.0);
            assert!((z_only - t_p_value(v, 0.2, 1e6)).abs() < 1e-9, "{v}");
        }
        // Both parts: the half-width at the p-value's level is |value|, and the interval at
        // level a excludes 0 exactly when p < a.
        for (vs, vp, df) in [(0.01, 0.02, 1.0), (0.003, 0.0001, 2.0), (1e-4, 5e-3, 4.0)] {
            for a in [0.2, 0.05, 1e-3] {
                let h = half_width(vs, vp, df, a);
                let p = quadrature_p_value(h, vs, vp, df);
                assert!(
                    (p - a).abs() < 1e-9 * a.max(1e-3),
                    "{vs} {vp} {df} {a}: {p}"
                );
                assert!(quadrature_p_value(-1.01 * h, vs, vp, df) < a);
                assert!(quadrature_p_value(0.99 * h, vs, vp, df) > a);
            }
        }
        assert_eq!(quadrature_p_value(0.0, 0.0, 0.0, 1.0), 1.0);
        assert_eq!(quadrature_p_value(0.3, 0.0, 0.0, 1.0), 0.0);
        assert_eq!(quadrature_p_value(1e3, 1e-4, 1e-4, 3.0), MIN_P);
    }

    #[test]
    fn t_p_values_match_closed_forms() {
        // df 1 (Cauchy): p = 1 − (2/π)·atan|t|; df 2: p = 1 − |t|/√(2 + t²).
        for t in [0.3, 1.0, 2.5, 12.7] {
            let p1 = 1.0 - 2.0 / std::f64::consts::PI * f64::atan(t);
            let p2 = 1.0 - t / (2.0 + t * t).sqrt();
            assert!((t_p_value(t, 1.0, 1.0) - p1).abs() < 1e-9, "{t}");
            assert!((t_p_value(-2.0 * t, 2.0, 2.0) - p2).abs() < 1e-9, "{t}");
        }
        assert_eq!(t_p_value(0.0, 0.0, 3.0), 1.0);
        assert_eq!(t_p_value(0.1, 0.0, 3.0), 0.0);
    }

    #[test]
    fn cross_fitting_selects_on_one_half_and_measures_on_the_other() {
        // A is good on the even prompts, B on the odd ones: each half picks the checkpoint that
        // is bad on the other half, so the cross-fitted "best reward" is 0, while the best of
        // the means on all prompts is 0.5.
        let a = pm(&[1.0, 0.0, 1.0, 0.0]);
        let b = pm(&[0.0, 1.0, 0.0, 1.0]);
        let best = |sel: &[Point], mea: &[Point]| {
            let k = if sel[0].reward >= sel[1].reward { 0 } else { 1 };
            Some(mea[k].reward)
        };
        let o = BootstrapOptions {
            replicates: 50,
            ..Default::default()
        };
        let cf = estimate(&[SeedInput::cross_fit(vec![&a, &b], best)], &o)
            .unwrap()
            .unwrap();
        assert_eq!(cf.value, 0.0);
        let max = |p: &[Point]| Some(p[0].reward.max(p[1].reward));
        let plain = estimate(&[SeedInput::plain(vec![&a, &b], max)], &o)
            .unwrap()
            .unwrap();
        assert_eq!(plain.value, 0.5);
    }

    #[test]
    fn quantiles_match_numpy_linear() {
        let v = [1.0, 2.0, 4.0, 8.0];
        // numpy.quantile([1, 2, 4, 8], [0, 0.25, 0.5, 0.9, 1]) = [1, 1.75, 3, 6.8, 8].
        for (q, want) in [(0.0, 1.0), (0.25, 1.75), (0.5, 3.0), (0.9, 6.8), (1.0, 8.0)] {
            assert!((quantile_sorted(&v, q) - want).abs() < 1e-12, "{q}");
        }
    }
}
