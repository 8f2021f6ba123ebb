//! `warp report`: the WARP paper's claims measured on `warp run` folders, as Markdown tables
//! with intervals (the statistics are [`crate::stats`]).
//!
//! Run folders whose settings differ only in the seed (and in how they were executed: output,
//! jobs, threads, devices, launcher) are seeds of one experiment; each experiment gets one row
//! per claim. Every comparison is paired within a seed (the checkpoints of a run are evaluated
//! on the same prompts and random stream) and aggregated over the seeds as the stats module
//! says. The claims (paper, Sec. 5 and Fig. 1–6):
//!
//! 1. EMA anchor vs init anchor: iteration 1's EMA-anchored policy trajectory against the
//!    init-anchored one of the same run number, both starting at the SFT point, compared at
//!    equal KL over the whole KL range both cover (upper envelopes), averaged over the runs;
//! 2. SLERP vs its policies and LERP: the SLERP's reward minus the best final policy's, and minus
//!    the LERP's;
//! 3. LERP has the lower KL: KL of the SLERP minus KL of the LERP;
//! 4. task vectors nearly orthogonal: the whole-model angle between the runs' task vectors
//!    (from the merge's report), mean over seeds with a t interval (no prompt resampling: the
//!    angle does not depend on the evaluation);
//! 5. the LITI curve above the RL trajectories: iteration i's LITI curve against the envelope of
//!    its policy and EMA checkpoints (and its init), at equal KL;
//! 6. iterations help, then saturate: iteration i's SLERP interpolated toward the SFT against
//!    iteration i − 1's (iteration 1's is its LITI curve), at equal KL; and the final front
//!    against iteration 1's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::layout::RunLayout;
use crate::pipeline::PipelineConfig;
use crate::stats::eval_table::{EvalRow, EvalTable, PointKind};
use crate::stats::{
    self, dist, BootstrapOptions, Estimate, EvalSettings, Point, PromptMeans, SampleTable,
    SeedInput,
};

/// One `warp run` folder, loaded.
pub struct RunData {
    pub dir: PathBuf,
    pub config: PipelineConfig,
    pub rows: Vec<EvalRow>,
    pub settings: EvalSettings,
    /// Per-prompt means of every row.
    pub means: Vec<PromptMeans>,
    /// Iteration → the SLERP's report (`slerp-angles.json`).
    pub angles: BTreeMap<u32, Value>,
}

impl RunData {
    /// Reads `plan.json`, the evaluation (`eval.csv`, `eval-samples.csv` or its gzip copy
    /// `eval-samples.csv.gz`, `eval.json`) and the merges' angle reports of a run folder. Errors
    /// name the file.
    pub fn load(dir: &Path) -> Result<RunData> {
        let layout = RunLayout::new(dir);
        let plan = layout.plan_json();
        let text = std::fs::read_to_string(&plan).at(&plan)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&plan, format!("not valid JSON: {e}")))?;
        let config: PipelineConfig = serde_json::from_value(v["config"].clone())
            .map_err(|e| Error::format(&plan, format!("config: {e}")))?;
        let rows = EvalTable::from_csv(&layout.eval_csv())?.rows;
        let samples_csv = layout.eval_samples_csv();
        let samples = SampleTable::read_csv_or_gz(&samples_csv)?;
        let settings = EvalSettings::read(&layout.eval_json())?;
        if samples.points != rows.len()
            || samples.prompts != settings.n_prompts
            || samples.samples != settings.samples
        {
            return Err(Error::format(
                &samples_csv,
                format!(
                    "{} points × {} prompts × {} samples, but eval.csv has {} rows and eval.json \
                     says {} prompts × {} samples",
                    samples.points,
                    samples.prompts,
                    samples.samples,
                    rows.len(),
                    settings.n_prompts,
                    settings.samples
                ),
            ));
        }
        let means = (0..samples.points)
            .map(|k| samples.prompt_means(k))
            .collect();
        let mut angles = BTreeMap::new();
        for i in layout.iterations()? {
            let p = layout.slerp_angles(i);
            if p.is_file() {
                let text = std::fs::read_to_string(&p).at(&p)?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| Error::format(&p, format!("not valid JSON: {e}")))?;
                angles.insert(i, v);
            }
        }
        Ok(RunData {
            dir: dir.to_path_buf(),
            config,
            rows,
            settings,
            means,
            angles,
        })
    }

    fn find(&self, f: impl Fn(&EvalRow) -> bool) -> Vec<usize> {
        (0..self.rows.len()).filter(|&k| f(&self.rows[k])).collect()
    }

    fn sft(&self) -> Option<usize> {
        self.find(|r| r.point.kind == PointKind::Sft)
            .first()
            .copied()
    }

    /// The rows of `kind` in iteration `i` (any iteration when `None`), run `m`, by step.
    fn trajectory(&self, kind: PointKind, i: Option<u32>, m: u32) -> Vec<usize> {
        let mut v = self.find(|r| {
            r.point.kind == kind
                && r.point.run == Some(m)
                && (i.is_none() || r.point.iteration == i)
        });
        v.sort_by_key(|&k| self.rows[k].point.step);
        v
    }

    /// The run numbers of iteration `i`'s EMA-anchored runs.
    fn runs(&self, i: u32) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .rows
            .iter()
            .filter(|r| r.point.kind == PointKind::Policy && r.point.iteration == Some(i))
            .filter_map(|r| r.point.run)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn iterations(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .rows
            .iter()
            .filter(|r| r.point.kind == PointKind::Slerp)
            .filter_map(|r| r.point.iteration)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The one row of `kind` in iteration `i`.
    fn merge(&self, kind: PointKind, i: u32) -> Option<usize> {
        self.find(|r| r.point.kind == kind && r.point.iteration == Some(i))
            .first()
            .copied()
    }

    /// A curve over η of iteration `i`: the LITI curve, or the front toward the SFT (for
    /// iteration 1 its LITI curve, whose init is the SFT model).
    fn curve(&self, kind: PointKind, i: u32) -> Vec<usize> {
        let kind = if kind == PointKind::Front && i == 1 {
            PointKind::Liti
        } else {
            kind
        };
        self.find(|r| r.point.kind == kind && r.point.iteration == Some(i))
    }

    /// Where iteration `i` started: the SFT model, else the previous LITI point at `eta`.
    fn init_of(&self, i: u32) -> Option<usize> {
        if i == 1 {
            return self.sft();
        }
        let eta = self.config.eta;
        self.find(|r| {
            r.point.kind == PointKind::Liti
                && r.point.iteration == Some(i - 1)
                && r.point.eta.is_some_and(|e| (e - eta).abs() < 1e-9)
        })
        .first()
        .copied()
    }

    /// Whole-model angle between the task vectors of iteration `i` (mean of the pairs), and the
    /// median of the per-tensor angles.
    fn angle(&self, i: u32) -> Option<(f64, f64)> {
        let a = self.angles.get(&i)?;
        let global = mean_off_diagonal(&a["global"]["angles_deg"])?;
        let mut per: Vec<f64> = a["tensors"]
            .as_object()?
            .values()
            .filter_map(|t| mean_off_diagonal(&t["angles_deg"]))
            .collect();
        per.sort_by(f64::total_cmp);
        let median = *per.get(per.len() / 2)?;
        Some((global, median))
    }
}

/// Mean of the off-diagonal entries of an angle matrix (the pairs of task vectors).
fn mean_off_diagonal(m: &Value) -> Option<f64> {
    let rows = m.as_array()?;
    let mut v = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        for (j, x) in r.as_array()?.iter().enumerate() {
            if i < j {
                v.push(x.as_f64()?);
            }
        }
    }
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The settings that make two runs the same experiment (all but the seed and how it ran).
fn experiment_key(c: &PipelineConfig) -> String {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        for k in ["seed", "output", "jobs", "threads", "devices", "launcher"] {
            m.remove(k);
        }
    }
    v.to_string()
}

/// Run folders that are seeds of one experiment.
pub struct Experiment {
    /// "task, preset" and the settings that differ from them.
    pub name: String,
    pub runs: Vec<RunData>,
}

/// Groups runs into experiments, in the order of their first run. Runs of one experiment must
/// have comparable evaluations (same prompts, samples, temperature, reward).
pub fn experiments(runs: Vec<RunData>) -> Result<Vec<Experiment>> {
    let mut out: Vec<(String, Experiment)> = Vec::new();
    for r in runs {
        let key = experiment_key(&r.config);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, e)) => {
                if let Some(why) = e.runs[0].settings.comparable(&r.settings) {
                    return Err(Error::Mismatch(format!(
                        "{} and {} are seeds of one experiment but their evaluations differ: \
                         {why}",
                        e.runs[0].dir.display(),
                        r.dir.display()
                    )));
                }
                e.runs.push(r);
            }
            None => {
                let name = experiment_name(&r.config);
                out.push((
                    key,
                    Experiment {
                        name,
                        runs: vec![r],
                    },
                ));
            }
        }
    }
    Ok(out.into_iter().map(|(_, e)| e).collect())
}

/// "task, preset", then the settings that differ from what the two give.
fn experiment_name(c: &PipelineConfig) -> String {
    let mut name = format!("{}, {}", c.task, c.preset);
    let Ok(base) = crate::pipeline::presets::layered(Some(&c.task), Some(&c.preset), None) else {
        return name;
    };
    let (a, b) = (serde_json::to_value(c), serde_json::to_value(&base));
    if let (Ok(Value::Object(a)), Ok(Value::Object(b))) = (a, b) {
        for (k, v) in &a {
            let skip = ["seed", "output", "jobs", "threads", "devices", "launcher"];
            if !skip.contains(&k.as_str()) && b.get(k) != Some(v) {
                let _ = write!(name, ", {k} = {v}");
            }
        }
    }
    name
}

/// One claim's result for one experiment (and iteration, when it has one).
pub struct Row {
    pub experiment: String,
    pub what: String,
    pub estimate: Option<Estimate>,
    /// The verdict of this row's own interval.
    pub verdict: String,
    /// The verdict after Holm's adjustment over its table's family (set by [`adjust`]).
    pub adjusted: String,
}

/// The verdict of one seed: its interval resamples prompts only, so it says how much the
/// evaluation's prompts move the number, not whether another seed would agree (the coverage
/// simulation gives such intervals 67 % when seeds differ).
const ONE_SEED: &str = "1 seed: prompt noise only";

/// The cross-fitted mean gap between the envelopes of the first `split` points and of the rest.
fn envelope_gap(select: &[Point], measure: &[Point], split: usize) -> Option<f64> {
    stats::cross_gap(select, measure, split)
}

/// A statistic over the seeds of `e`: `pick` chooses each run's points (`None`: the run lacks
/// them, and the claim is not measured) and `make` the seed's statistic of them.
fn estimate_over<'a>(
    e: &'a Experiment,
    o: &BootstrapOptions,
    pick: impl Fn(&RunData) -> Option<Vec<usize>>,
    make: impl Fn(&'a RunData, Vec<&'a PromptMeans>) -> SeedInput<'a>,
) -> Result<Option<Estimate>> {
    let mut seeds = Vec::new();
    for r in &e.runs {
        let Some(idx) = pick(r) else { return Ok(None) };
        seeds.push(make(r, idx.iter().map(|&k| &r.means[k]).collect()));
    }
    stats::estimate(&seeds, o)
}

/// [`estimate_over`] of a statistic of the points' means on all prompts.
fn measure<'a>(
    e: &'a Experiment,
    o: &BootstrapOptions,
    pick: impl Fn(&RunData) -> Option<Vec<usize>>,
    stat: impl Fn(&RunData, &[Point]) -> Option<f64> + Copy + 'a,
) -> Result<Option<Estimate>> {
    estimate_over(e, o, pick, |r, pts| {
        SeedInput::plain(pts, move |p: &[Point]| stat(r, p))
    })
}

/// [`estimate_over`] of a cross-fitted statistic (`stat(r, select, measure)`): the statistics
/// that choose checkpoints (envelopes, the best policy) choose them on the other half of the
/// prompts.
fn measure_cross<'a>(
    e: &'a Experiment,
    o: &BootstrapOptions,
    pick: impl Fn(&RunData) -> Option<Vec<usize>>,
    stat: impl Fn(&RunData, &[Point], &[Point]) -> Option<f64> + Copy + 'a,
) -> Result<Option<Estimate>> {
    estimate_over(e, o, pick, |r, pts| {
        SeedInput::cross_fit(pts, move |s: &[Point], m: &[Point]| stat(r, s, m))
    })
}

/// "yes" when the interval is above 0, "reversed" when below, "not shown" when it holds 0;
/// one seed is never a verdict.
fn verdict(e: &Option<Estimate>) -> String {
    match e {
        None => "not measured".into(),
        Some(e) if e.seeds() < 2 => ONE_SEED.into(),
        Some(e) => match e.sign() {
            std::cmp::Ordering::Greater => "**yes**".into(),
            std::cmp::Ordering::Less => "**reversed**".into(),
            std::cmp::Ordering::Equal => "not shown".into(),
        },
    }
}

fn row(e: &Experiment, what: String, est: Option<Estimate>) -> Row {
    Row {
        experiment: e.name.clone(),
        verdict: verdict(&est),
        adjusted: "–".into(),
        what,
        estimate: est,
    }
}

/// Holm's adjustment over a table's family — its rows with at least 2 seeds — at the level of
/// the intervals: a row's adjusted verdict is its direction when its adjusted p-value is below
/// 1 − level, else "not shown". Returns the family's size.
fn adjust(rows: &mut [Row], level: f64) -> usize {
    let members: Vec<(usize, f64)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r.estimate.as_ref()?.p_value()?)))
        .collect();
    let p: Vec<f64> = members.iter().map(|m| m.1).collect();
    for ((i, _), adj) in members.iter().zip(stats::holm(&p)) {
        let r = &mut rows[*i];
        let value = r.estimate.as_ref().map_or(0.0, |e| e.value);
        r.adjusted = adjusted_verdict(adj, level, value > 0.0, "**yes**", "**reversed**");
    }
    members.len()
}

/// The verdict of an adjusted p-value: `up` or `down` by the estimate's side when significant.
fn adjusted_verdict(adj: f64, level: f64, above: bool, up: &str, down: &str) -> String {
    let p = if adj < 0.001 {
        "< 0.001".to_string()
    } else {
        format!("{adj:.3}")
    };
    if adj >= 1.0 - level {
        format!("not shown (p {p})")
    } else if above {
        format!("{up} (p {p})")
    } else {
        format!("{down} (p {p})")
    }
}

/// Claim 1: EMA- vs init-anchored trajectories of iteration 1 at equal KL.
fn claim_anchor(e: &Experiment, o: &BootstrapOptions) -> Result<Vec<Row>> {
    // Per run number m: SFT + EMA-anchored policy checkpoints, then SFT + init-anchored ones.
    let pick = |r: &RunData| {
        let sft = r.sft()?;
        let mut idx = Vec::new();
        for m in r.runs(1) {
            let ema = r.trajectory(PointKind::Policy, Some(1), m);
            let init = r.trajectory(PointKind::AnchorInit, None, m);
            if ema.is_empty() || init.is_empty() {
                return None;
            }
            idx.push(sft);
            idx.extend(ema);
            idx.push(sft);
            idx.extend(init);
        }
        (!idx.is_empty()).then_some(idx)
    };
    let stat = |r: &RunData, s: &[Point], p: &[Point]| {
        let mut gaps = Vec::new();
        let mut at = 0;
        for m in r.runs(1) {
            let (a, b) = (
                r.trajectory(PointKind::Policy, Some(1), m).len() + 1,
                r.trajectory(PointKind::AnchorInit, None, m).len() + 1,
            );
            gaps.push(envelope_gap(&s[at..at + a + b], &p[at..at + a + b], a)?);
            at += a + b;
        }
        Some(gaps.iter().sum::<f64>() / gaps.len() as f64)
    };
    let est = measure_cross(e, o, pick, stat)?;
    Ok(vec![row(
        e,
        "EMA-anchored minus init-anchored reward at equal KL (iteration 1)".into(),
        est,
    )])
}

/// Claims 2 and 3, per iteration: SLERP vs its final policies and vs LERP.
fn claim_merges(e: &Experiment, o: &BootstrapOptions) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for i in e.runs[0].iterations() {
        // SLERP, LERP, then each run's final policy.
        let pick = |r: &RunData| {
            let mut idx = vec![r.merge(PointKind::Slerp, i)?, r.merge(PointKind::Lerp, i)?];
            for m in r.runs(i) {
                idx.push(*r.trajectory(PointKind::Policy, Some(i), m).last()?);
            }
            (idx.len() > 2).then_some(idx)
        };
        // The best policy is chosen on the other half of the prompts (the best of noisy
        // rewards is biased upward).
        let best = |_: &RunData, s: &[Point], p: &[Point]| {
            let top = (2..s.len()).max_by(|&a, &b| s[a].reward.total_cmp(&s[b].reward))?;
            Some(p[0].reward - p[top].reward)
        };
        let vs_lerp = |_: &RunData, p: &[Point]| Some(p[0].reward - p[1].reward);
        let kl = |_: &RunData, p: &[Point]| Some(p[0].kl - p[1].kl);
        rows.push(row(
            e,
            format!("2a. iteration {i}: reward of SLERP minus the best final policy"),
            measure_cross(e, o, pick, best)?,
        ));
        rows.push(row(
            e,
            format!("2b. iteration {i}: reward of SLERP minus LERP"),
            measure(e, o, pick, vs_lerp)?,
        ));
        rows.push(row(
            e,
            format!("3. iteration {i}: KL of SLERP minus LERP (> 0: LERP lower)"),
            measure(e, o, pick, kl)?,
        ));
    }
    Ok(rows)
}

/// Claim 4: angles between the task vectors, per iteration (no resampling).
/// An angle row: its cells, its verdict, and (2 seeds or more) the two-sided p-value of "the
/// mean angle is 80°" with the side of 80° the mean is on.
struct AngleRow {
    cells: String,
    verdict: String,
    test: Option<(f64, bool)>,
}

fn claim_angles(e: &Experiment) -> Vec<AngleRow> {
    let mut out = Vec::new();
    for i in e.runs[0].iterations() {
        let v: Vec<(f64, f64)> = e.runs.iter().filter_map(|r| r.angle(i)).collect();
        if v.len() != e.runs.len() || v.is_empty() {
            continue;
        }
        let k = v.len() as f64;
        let mean = v.iter().map(|x| x.0).sum::<f64>() / k;
        let median = v.iter().map(|x| x.1).sum::<f64>() / k;
        let mut test = None;
        let (interval, verdict) = if v.len() >= 2 {
            let s2 = v.iter().map(|x| (x.0 - mean).powi(2)).sum::<f64>() / (k - 1.0);
            let h = dist::t_quantile(0.975, k - 1.0) * (s2 / k).sqrt();
            test = Some((
                stats::t_p_value(mean - 80.0, (s2 / k).sqrt(), k - 1.0),
                mean >= 80.0,
            ));
            let verdict = if mean - h >= 80.0 {
                "**yes** (≥ 80°)"
            } else if mean + h < 80.0 {
                "no (< 80°)"
            } else {
                "not shown"
            };
            (format!("[{:.1}°, {:.1}°]", mean - h, mean + h), verdict)
        } else {
            ("–".to_string(), "1 seed: no interval")
        };
        let seeds: Vec<String> = v.iter().map(|x| format!("{:.1}°", x.0)).collect();
        out.push(AngleRow {
            cells: format!(
                "{} | iteration {i} | {mean:.1}° {interval} | {median:.1}° | {} | {}",
                e.name,
                v.len(),
                seeds.join(", ")
            ),
            verdict: verdict.to_string(),
            test,
        });
    }
    out
}

/// Claim 5: each iteration's LITI curve against its RL checkpoints (and its init).
fn claim_liti(e: &Experiment, o: &BootstrapOptions) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for i in e.runs[0].iterations() {
        let pick = |r: &RunData| {
            let mut idx = r.curve(PointKind::Liti, i);
            if idx.len() < 2 {
                return None;
            }
            idx.push(r.init_of(i)?);
            for m in r.runs(i) {
                idx.extend(r.trajectory(PointKind::Policy, Some(i), m));
                idx.extend(r.trajectory(PointKind::Ema, Some(i), m));
            }
            Some(idx)
        };
        let stat = |r: &RunData, s: &[Point], p: &[Point]| {
            envelope_gap(s, p, r.curve(PointKind::Liti, i).len())
        };
        rows.push(row(
            e,
            format!("iteration {i}: LITI curve minus the RL checkpoints' envelope at equal KL"),
            measure_cross(e, o, pick, stat)?,
        ));
    }
    Ok(rows)
}

/// Claim 6: each iteration's front toward the SFT against the previous one's, and the last
/// against the first.
fn claim_iterations(e: &Experiment, o: &BootstrapOptions) -> Result<Vec<Row>> {
    let its = e.runs[0].iterations();
    let mut pairs: Vec<(u32, u32)> = its.windows(2).map(|w| (w[1], w[0])).collect();
    if its.len() > 2 {
        pairs.push((its[its.len() - 1], its[0]));
    }
    let mut rows = Vec::new();
    for (a, b) in pairs {
        let pick = |r: &RunData| {
            let (fa, fb) = (r.curve(PointKind::Front, a), r.curve(PointKind::Front, b));
            (fa.len() >= 2 && fb.len() >= 2).then(|| [fa, fb].concat())
        };
        let stat = |r: &RunData, s: &[Point], p: &[Point]| {
            envelope_gap(s, p, r.curve(PointKind::Front, a).len())
        };
        rows.push(row(
            e,
            format!("front of iteration {a} minus iteration {b} at equal KL"),
            measure_cross(e, o, pick, stat)?,
        ));
    }
    Ok(rows)
}

fn signed(x: f64) -> String {
    format!("{x:+.4}")
}

/// A Markdown table of claim rows, with Holm's adjustment over its family.
fn table(title: &str, rows: &mut [Row], level: f64) -> String {
    let m = adjust(rows, level);
    let mut s = format!(
        "### {title}\n\nFamily of Holm's adjustment: the {m} rows of this table with at least 2 \
         seeds.\n\n| experiment | comparison | estimate [95 % interval] | seeds | per seed | \
         verdict | Holm-adjusted |\n|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let (est, k, per) = match &r.estimate {
            None => ("–".to_string(), "–".to_string(), "–".to_string()),
            Some(e) => {
                let mut note = String::new();
                if e.undefined > 0 {
                    let _ = write!(note, " ({} replicates undefined)", e.undefined);
                }
                (
                    format!(
                        "{} [{}, {}]{note}",
                        signed(e.value),
                        signed(e.lo),
                        signed(e.hi)
                    ),
                    e.seeds().to_string(),
                    e.per_seed
                        .iter()
                        .map(|v| signed(*v))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {est} | {k} | {per} | {} | {} |",
            r.experiment, r.what, r.verdict, r.adjusted
        );
    }
    s
}

/// The claim tables of the experiments, as Markdown.
pub fn markdown(exps: &[Experiment], o: &BootstrapOptions) -> Result<String> {
    let mut anchor = Vec::new();
    let mut merges = Vec::new();
    let mut liti = Vec::new();
    let mut iters = Vec::new();
    let mut angles = Vec::new();
    for e in exps {
        anchor.extend(claim_anchor(e, o)?);
        merges.extend(claim_merges(e, o)?);
        liti.extend(claim_liti(e, o)?);
        iters.extend(claim_iterations(e, o)?);
        angles.extend(claim_angles(e));
    }
    let level = o.level;
    let mut s = String::new();
    let _ = writeln!(s, "{}", runs_table(exps));
    s += &table(
        "1. EMA anchor vs init anchor, at equal KL",
        &mut anchor,
        level,
    );
    s += "\n";
    s += &table("2, 3. SLERP vs its policies and LERP", &mut merges, level);
    s += "\n";
    s += &angles_table(&angles, level);
    s += "\n";
    s += &table(
        "5. LITI curve vs the RL trajectories, at equal KL",
        &mut liti,
        level,
    );
    s += "\n";
    s += &table(
        "6. Iterations: fronts toward the SFT, at equal KL",
        &mut iters,
        level,
    );
    let pct = 100.0 * o.level;
    let _ = write!(
        s,
        "\nIntervals: bootstrap over prompts ({} replicates, seed {}); with 2 or more seeds, \
         aggregated over the seeds: the seeds' own part of the variance (s²/K) at Student's t with \
         K − 1 degrees of freedom and the part of the prompts shared by the seeds at the normal \
         quantile, the two half-widths added in quadrature (src/stats). A verdict is **yes** when the \
         {pct:.0} % interval is above 0 (the claim's direction), **reversed** when below, *not \
         shown* when it holds 0. One seed gives no verdict: its interval resamples prompts only \
         and misses the spread between seeds. Each table is one family of tests: the \
         Holm-adjusted column keeps the chance of any false verdict in the table at most \
         {:.0} % (p: the adjusted two-sided p-value of the test matching the interval). \
         Comparisons that choose checkpoints from the data — the upper envelopes (claims 1, 5, 6) \
         and the best final policy (2a) — are cross-fitted: the prompts are split by index \
         parity, the checkpoints are chosen on one half and measured on the other, both ways, \
         and the two averaged; choosing and measuring on the same prompts biases an envelope \
         upward, the more so the more points it has.\n",
        o.replicates,
        o.seed,
        100.0 - pct
    );
    Ok(s)
}

/// Claim 4's table: the angle rows, with Holm's adjustment of their tests against 80°.
fn angles_table(angles: &[AngleRow], level: f64) -> String {
    let tested: Vec<(usize, f64, bool)> = angles
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.test.map(|(p, up)| (i, p, up)))
        .collect();
    let p: Vec<f64> = tested.iter().map(|t| t.1).collect();
    let mut adjusted = vec!["–".to_string(); angles.len()];
    for (&(i, _, up), adj) in tested.iter().zip(stats::holm(&p)) {
        adjusted[i] = adjusted_verdict(adj, level, up, "**yes** (≥ 80°)", "no (< 80°)");
    }
    let mut s = format!(
        "### 4. Angle between the task vectors\n\nFamily of Holm's adjustment: the {} rows of this \
         table with at least 2 seeds (each a t test of the mean angle against 80°).\n\n\
         | experiment | iteration | whole model: mean [95 % interval] | per tensor: median | \
         seeds | per seed | verdict | Holm-adjusted |\n|---|---|---|---|---|---|---|---|\n",
        tested.len()
    );
    for (a, adj) in angles.iter().zip(&adjusted) {
        let _ = writeln!(s, "| {} | {} | {adj} |", a.cells, a.verdict);
    }
    s
}

/// The experiments, their run folders and evaluation settings.
fn runs_table(exps: &[Experiment]) -> String {
    let mut s = String::from("| experiment | run folders (seed) | evaluation |\n|---|---|---|\n");
    for e in exps {
        let folders: Vec<String> = e
            .runs
            .iter()
            .map(|r| {
                let name = r.dir.file_name().map(|n| n.to_string_lossy().into_owned());
                format!("{} ({})", name.unwrap_or_default(), r.config.seed)
            })
            .collect();
        let st = &e.runs[0].settings;
        let _ = writeln!(
            s,
            "| {} | {} | {} prompts × {} samples, temperature {}, reward `{}` |",
            e.name,
            folders.join(", "),
            st.n_prompts,
            st.samples,
            st.temperature,
            st.reward
        );
    }
    s
}

/// Marks the generated part of a document.
pub const BEGIN: &str = "<!-- warp report: begin (generated; edit outside these lines) -->";
pub const END: &str = "<!-- warp report: end -->";

/// `doc` with the text between [`BEGIN`] and [`END`] replaced by `generated`.
pub fn splice(doc: &str, generated: &str, origin: &Path) -> Result<String> {
    let (Some(a), Some(b)) = (doc.find(BEGIN), doc.find(END)) else {
        return Err(Error::format(
            origin,
            format!("no generated section: expected the lines {BEGIN} and {END}"),
        ));
    };
    if b < a {
        return Err(Error::format(
            origin,
            "the end marker comes before the begin marker",
        ));
    }
    Ok(format!(
        "{}{BEGIN}\n\n{}\n{}",
        &doc[..a],
        generated.trim_end(),
        &doc[b..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_the_marked_section_only() {
        let doc = format!("intro\n{BEGIN}\nold\n{END}\noutro\n");
        let out = splice(&doc, "new\n", Path::new("d.md")).unwrap();
        assert_eq!(out, format!("intro\n{BEGIN}\n\nnew\n{END}\noutro\n"));
        let e = splice("nothing", "x", Path::new("d.md"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.md") && e.contains("no generated section"),
            "{e}"
        );
    }

    #[test]
    fn off_diagonal_means() {
        let m = serde_json::json!([[0.0, 30.0, 60.0], [30.0, 0.0, 90.0], [60.0, 90.0, 0.0]]);
        assert_eq!(mean_off_diagonal(&m), Some(60.0));
        assert_eq!(mean_off_diagonal(&serde_json::json!([[0.0]])), None);
    }
}
