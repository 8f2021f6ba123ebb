//! The per-sample data of an evaluation, which the statistics resample: `eval-samples.csv`,
//! written by `warp eval` beside its `eval.csv`, and the evaluation's settings, `eval.json`.
//!
//! # `eval-samples.csv`
//! The header `point,prompt,sample,reward,kl,len,completion`, then one row per sampled
//! completion, ordered by point, then prompt, then sample, every combination present once:
//! - `point`: 0-based index of the checkpoint's row in `eval.csv` (0 is the SFT model);
//! - `prompt`: 0-based index into the evaluation's prompt list (the first `n_prompts` prompts of
//!   the prompt file), the same list for every point;
//! - `sample`: 0-based index of the completion among its prompt's `samples`. Completion `s` of
//!   prompt `p` draws from the same random stream for every point (common random numbers): that
//!   is what pairs the points' measurements;
//! - `reward`: its reward; `kl`: Σ over its tokens of KL(π(·|prefix) ‖ π_sft(·|prefix)) at the
//!   evaluation temperature (its term of the KL estimate); both to 6 significant digits;
//! - `len`: its number of tokens, EOS included;
//! - `completion`: the decoded text (special tokens skipped), in double quotes (inner quotes
//!   doubled, RFC 4180) when it holds a comma, a quote or a line break.
//!
//! The mean of `reward` (of `kl`) over a point's rows is the `reward` (`kl`) of its `eval.csv` row.
//!
//! # `eval.json`
//! The settings every row shares ([`EvalSettings`]): prompt file and a hash of the prompts used,
//! their number, samples per prompt, temperature, maximum completion length, seed, reward spec,
//! SFT model, number of points. Two evaluations can be compared prompt by prompt only when their
//! prompts, sample counts, temperatures and rewards agree ([`EvalSettings::comparable`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::PromptMeans;
use crate::error::{Error, IoContext, Result};

/// The per-sample file and the settings file that go with an evaluation CSV: `X.csv` →
/// (`X-samples.csv`, `X.json`).
pub fn sidecars(eval_csv: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let stem = eval_csv
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        eval_csv.with_file_name(format!("{stem}-samples.csv")),
        eval_csv.with_file_name(format!("{stem}.json")),
    )
}

/// The header of `eval-samples.csv`.
pub const HEADER: &str = "point,prompt,sample,reward,kl,len,completion";

/// The settings of one evaluation (`eval.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSettings {
    /// The prompt file.
    pub prompts: String,
    /// SHA-256 (hex) of the prompts used, each (as its JSON record, `{"prompt": …}` or
    /// `{"messages": …}`) followed by a newline.
    pub prompts_sha256: String,
    pub n_prompts: usize,
    pub samples: usize,
    pub temperature: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// The reward spec (`verify:arith`, `model:PATH`, …).
    pub reward: String,
    /// The KL reference.
    pub sft: String,
    /// Rows of eval.csv (checkpoints evaluated).
    pub points: usize,
}

impl EvalSettings {
    /// The hash recorded in `prompts_sha256`.
    pub fn hash_prompts(prompts: &[String]) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for p in prompts {
            h.update(p.as_bytes());
            h.update(b"\n");
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn read(path: &Path) -> Result<EvalSettings> {
        let text = std::fs::read_to_string(path).at(path)?;
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("{e}")))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Internal(format!("eval settings as JSON: {e}")))?;
        crate::io::write_file_atomic(path, (text + "\n").as_bytes())
    }

    /// Why two evaluations cannot be compared prompt by prompt (`None`: they can): the prompts,
    /// their number, the samples per prompt, the temperature and the reward must agree.
    pub fn comparable(&self, other: &EvalSettings) -> Option<String> {
        let diff = |what: &str, a: String, b: String| {
            (a != b).then(|| format!("different {what} ({a} vs {b})"))
        };
        diff(
            "prompts",
            self.prompts_sha256.clone(),
            other.prompts_sha256.clone(),
        )
        .or_else(|| {
            diff(
                "prompt counts",
                self.n_prompts.to_string(),
                other.n_prompts.to_string(),
            )
        })
        .or_else(|| {
            diff(
                "samples per prompt",
                self.samples.to_string(),
                other.samples.to_string(),
            )
        })
        .or_else(|| {
            diff(
                "temperatures",
                self.temperature.to_string(),
                other.temperature.to_string(),
            )
        })
        .or_else(|| diff("rewards", self.reward.clone(), other.reward.clone()))
    }
}

/// Every sampled completion of an evaluation: `points × prompts × samples` values of each field,
/// stored point-major, then prompt, then sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleTable {
    pub points: usize,
    pub prompts: usize,
    pub samples: usize,
    pub reward: Vec<f64>,
    pub kl: Vec<f64>,
    pub len: Vec<u32>,
    pub completion: Vec<String>,
}

/// The shortest decimal that gives back `x` rounded to 6 significant digits.
pub fn short_number(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let r: f64 = format!("{x:.5e}").parse().unwrap_or(x);
    if r == 0.0 {
        "0".into()
    } else if r.abs() >= 1e-4 && r.abs() < 1e15 {
        format!("{r}")
    } else {
        format!("{r:e}")
    }
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A CSV record and the line it starts on.
type Record = (usize, Vec<String>);

/// Splits CSV text into records (RFC 4180: quoted fields may hold commas, doubled quotes and line
/// breaks); an error is the line of the record and what is wrong.
fn records(text: &str) -> std::result::Result<Vec<Record>, (usize, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        loop {
            match chars.next() {
                None => {
                    if quoted {
                        return Err((start, "a quoted field is not closed".into()));
                    }
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                Some('"') if quoted => {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                }
                Some('"') if field.is_empty() => quoted = true,
                Some(c) if quoted => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
                Some(',') => fields.push(std::mem::take(&mut field)),
                Some('\r') if chars.peek() == Some(&'\n') => {}
                Some('\n') => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                Some(c) => field.push(c),
            }
        }
        out.push((start, fields));
    }
    Ok(out)
}

impl SampleTable {
    /// A table of zeros and empty completions.
    pub fn new(points: usize, prompts: usize, samples: usize) -> SampleTable {
        let n = points * prompts * samples;
        SampleTable {
            points,
            prompts,
            samples,
            reward: vec![0.0; n],
            kl: vec![0.0; n],
            len: vec![0; n],
            completion: vec![String::new(); n],
        }
    }

    /// Position of (point, prompt, sample) in the value vectors.
    pub fn index(&self, point: usize, prompt: usize, sample: usize) -> usize {
        (point * self.prompts + prompt) * self.samples + sample
    }

    /// The CSV text (see the module docs).
    pub fn to_csv(&self) -> String {
        let mut s = String::with_capacity(32 * self.reward.len() + HEADER.len() + 1);
        s.push_str(HEADER);
        s.push('\n');
        for point in 0..self.points {
            for prompt in 0..self.prompts {
                for sample in 0..self.samples {
                    let i = self.index(point, prompt, sample);
                    s.push_str(&format!(
                        "{point},{prompt},{sample},{},{},{},{}\n",
                        short_number(self.reward[i]),
                        short_number(self.kl[i]),
                        self.len[i],
                        quote(&self.completion[i])
                    ));
                }
            }
        }
        s
    }

    /// Writes the CSV atomically.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        crate::io::write_file_atomic(path, self.to_csv().as_bytes())
    }

    /// Reads an `eval-samples.csv`; errors name the file and the line.
    pub fn read_csv(path: &Path) -> Result<SampleTable> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::parse(&text, path)
    }

    /// Reads `path`, or, when it does not exist, its gzip-compressed copy `path.gz` (how the
    /// committed run artefacts of docs/results keep their size down).
    pub fn read_csv_or_gz(path: &Path) -> Result<SampleTable> {
        let gz = path.with_file_name(format!(
            "{}.gz",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        if path.exists() || !gz.exists() {
            return Self::read_csv(path);
        }
        let file = std::fs::File::open(&gz).at(&gz)?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text)
            .map_err(|e| Error::format(&gz, format!("not a gzip-compressed text file: {e}")))?;
        Self::parse(&text, &gz)
    }

    /// Parses CSV text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<SampleTable> {
        let at = |line: usize, msg: String| Error::format(origin, format!("line {line}: {msg}"));
        let recs =
            records(text.strip_prefix('\u{feff}').unwrap_or(text)).map_err(|(l, m)| at(l, m))?;
        let mut recs = recs
            .into_iter()
            .filter(|(_, f)| !(f.len() == 1 && f[0].trim().is_empty()));
        let header_ok = matches!(recs.next(), Some((_, h)) if h.join(",") == HEADER);
        if !header_ok {
            return Err(at(1, format!("expected the header {HEADER}")));
        }
        let mut rows = Vec::new();
        for (line, f) in recs {
            if f.len() != 7 {
                return Err(at(
                    line,
                    format!("{} fields, expected 7 ({HEADER})", f.len()),
                ));
            }
            let int = |k: usize, name: &str| {
                f[k].trim().parse::<usize>().map_err(|_| {
                    at(
                        line,
                        format!("{name} '{}' is not a non-negative integer", f[k]),
                    )
                })
            };
            let num = |k: usize, name: &str| {
                f[k].trim()
                    .parse::<f64>()
                    .map_err(|_| at(line, format!("{name} '{}' is not a number", f[k])))
            };
            let len = int(5, "len")?;
            rows.push((
                line,
                [int(0, "point")?, int(1, "prompt")?, int(2, "sample")?],
                num(3, "reward")?,
                num(4, "kl")?,
                u32::try_from(len).map_err(|_| at(line, format!("len {len} is too large")))?,
                f[6].clone(),
            ));
        }
        if rows.is_empty() {
            return Err(Error::format(origin, "no rows after the header"));
        }
        let max = |k: usize| rows.iter().map(|r| r.1[k]).max().unwrap_or(0) + 1;
        let (points, prompts, samples) = (max(0), max(1), max(2));
        let n = points
            .checked_mul(prompts)
            .and_then(|v| v.checked_mul(samples))
            .filter(|&n| n == rows.len())
            .ok_or_else(|| {
                Error::format(
                    origin,
                    format!(
                        "{} rows, but the indices span {points} points × {prompts} prompts × \
                         {samples} samples: every (point, prompt, sample) must appear once",
                        rows.len()
                    ),
                )
            })?;
        let mut t = SampleTable::new(points, prompts, samples);
        for (i, (line, ix, reward, kl, len, completion)) in rows.into_iter().enumerate() {
            if t.index(ix[0], ix[1], ix[2]) != i {
                return Err(at(
                    line,
                    format!(
                        "row (point {}, prompt {}, sample {}) out of order: rows go by point, \
                         then prompt, then sample",
                        ix[0], ix[1], ix[2]
                    ),
                ));
            }
            t.reward[i] = reward;
            t.kl[i] = kl;
            t.len[i] = len;
            t.completion[i] = completion;
        }
        debug_assert_eq!(t.reward.len(), n);
        Ok(t)
    }

    /// Per-prompt means (over the prompt's samples) of one point's KL and reward.
    pub fn prompt_means(&self, point: usize) -> PromptMeans {
        let s = self.samples as f64;
        let mean = |v: &[f64], p: usize| {
            let i = self.index(point, p, 0);
            v[i..i + self.samples].iter().sum::<f64>() / s
        };
        PromptMeans {
            kl: (0..self.prompts).map(|p| mean(&self.kl, p)).collect(),
            reward: (0..self.prompts).map(|p| mean(&self.reward, p)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_to_six_digits() {
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_number(1.0), "1");
        assert_eq!(short_number(-0.5), "-0.5");
        assert_eq!(short_number(0.012345678901), "0.0123457");
        assert_eq!(short_number(123456789.0), "123457000");
        assert_eq!(short_number(1.5e-7), "1.5e-7");
        assert_eq!(short_number(f64::NAN), "nan");
        assert_eq!(short_number(f64::NEG_INFINITY), "-inf");
        for x in [0.1, 2.0 / 3.0, -7.25e-9, 3.0e20] {
            let back: f64 = short_number(x).parse().unwrap();
            assert!((back - x).abs() <= 5e-6 * x.abs(), "{x}");
        }
    }

    #[test]
    fn csv_round_trip_with_awkward_completions() {
        let mut t = SampleTable::new(2, 3, 2);
        for (i, c) in ["", "a,b", "say \"hi\"", "two\nlines", "x\r\ny", " 95 "]
            .iter()
            .cycle()
            .take(12)
            .enumerate()
        {
            t.reward[i] = i as f64 / 7.0;
            t.kl[i] = (i as f64).sqrt() * 1e-3;
            t.len[i] = i as u32;
            t.completion[i] = c.to_string();
        }
        let text = t.to_csv();
        let back = SampleTable::parse(&text, Path::new("x.csv")).unwrap();
        assert_eq!((back.points, back.prompts, back.samples), (2, 3, 2));
        assert_eq!(back.completion, t.completion);
        assert_eq!(back.len, t.len);
        for i in 0..12 {
            assert!((back.reward[i] - t.reward[i]).abs() <= 5e-6 * t.reward[i].abs());
            assert!((back.kl[i] - t.kl[i]).abs() <= 5e-6 * t.kl[i].abs());
        }
        let m = back.prompt_means(1);
        let i = back.index(1, 2, 0);
        assert!((m.reward[2] - (back.reward[i] + back.reward[i + 1]) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn bad_files_name_the_line() {
        let p = Path::new("s.csv");
        let err = |text: &str| SampleTable::parse(text, p).unwrap_err().to_string();
        assert!(err("").contains("header"));
        assert!(err("a,b\n").contains("s.csv: line 1: expected the header"));
        let h = format!("{HEADER}\n");
        assert!(err(&h).contains("no rows"));
        assert!(err(&format!("{h}0,0,0,1,0,2\n")).contains("line 2: 6 fields"));
        assert!(err(&format!("{h}0,0,0,x,0,2,a\n")).contains("line 2: reward 'x' is not a number"));
        assert!(err(&format!("{h}0,0,-1,1,0,2,a\n")).contains("line 2: sample '-1'"));
        assert!(
            err(&format!("{h}0,0,0,1,0,2,\"a\n")).contains("line 2: a quoted field is not closed")
        );
        // A missing combination, then a row out of order.
        assert!(err(&format!("{h}0,0,0,1,0,2,a\n0,1,1,1,0,2,a\n")).contains("must appear once"));
        let swapped = format!("{h}0,1,0,1,0,2,a\n0,0,0,1,0,2,a\n");
        assert!(err(&swapped).contains("line 2: row (point 0, prompt 1, sample 0) out of order"));
    }

    #[test]
    fn settings_comparable() {
        let a = EvalSettings {
            prompts: "h.jsonl".into(),
            prompts_sha256: EvalSettings::hash_prompts(&["1+1=".into()]),
            n_prompts: 1,
            samples: 2,
            temperature: 0.9,
            max_new_tokens: 8,
            seed: 0,
            reward: "verify:arith".into(),
            sft: "m".into(),
            points: 3,
        };
        assert_eq!(a.comparable(&a.clone()), None);
        let b = EvalSettings {
            seed: 5,
            points: 9,
            sft: "other".into(),
            ..a.clone()
        };
        assert_eq!(a.comparable(&b), None);
        let c = EvalSettings {
            temperature: 1.0,
            ..a.clone()
        };
        assert!(a
            .comparable(&c)
            .unwrap()
            .contains("temperatures (0.9 vs 1)"));
        let d = EvalSettings {
            prompts_sha256: EvalSettings::hash_prompts(&["1+2=".into()]),
            ..a.clone()
        };
        assert!(a.comparable(&d).unwrap().contains("different prompts"));
    }
}
