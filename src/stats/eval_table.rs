//! The evaluation CSV, defined once: what `warp eval` writes, `warp plot` draws and `warp run`
//! prints. One [`Point`] per checkpoint (what it is and where it sits in a WARP run), one
//! [`EvalRow`] per measured point.
//!
//! A header row naming the [`COLUMNS`] (any order; extra columns are ignored), then one row per
//! evaluated model. `kind` is a [`PointKind`]; cells that do not apply are empty. `kl` and
//! `reward` are required (`nan`/`inf` are accepted: such a point is not drawn); `liti` and
//! `front` need `iteration` and `eta`, `policy`/`ema` need `iteration`, `run` and `step`, `slerp`/`lerp` need
//! `iteration`, `anchor_init` needs `run` and `step`. Fields are split on commas (no quoting:
//! the writer replaces commas in labels and paths by semicolons), so a row whose field count
//! differs from the header's is an error, as is any bad cell: each names the file, line and
//! column.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The columns of the CSV, in the order the writer uses.
pub const COLUMNS: [&str; 11] = [
    "label",
    "kind",
    "iteration",
    "run",
    "step",
    "eta",
    "kl",
    "kl_se",
    "reward",
    "reward_se",
    "path",
];

/// What an evaluated model is. The order is the plot legend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PointKind {
    /// The starting model (KL 0).
    Sft,
    /// A point of the LITI curve of one WARP iteration.
    Liti,
    /// A point of iteration i's SLERP interpolated toward the SFT model,
    /// (1 − η)·θ_sft + η·θ_slerp^i: the paper's output front when i is the last iteration.
    /// (Iteration 1's is its LITI curve, whose init is the SFT model.)
    Front,
    /// The SLERP merge of an iteration.
    Slerp,
    /// The LERP merge of an iteration (baseline).
    Lerp,
    /// A checkpoint of an RL policy.
    Policy,
    /// A checkpoint of the EMA of an RL policy (its anchor).
    Ema,
    /// A checkpoint of an RL run anchored to the frozen init (the ablation).
    AnchorInit,
    /// Any other checkpoint (e.g. given to `warp eval` by path).
    Model,
}

impl PointKind {
    pub const ALL: [PointKind; 9] = [
        PointKind::Sft,
        PointKind::Liti,
        PointKind::Front,
        PointKind::Slerp,
        PointKind::Lerp,
        PointKind::Policy,
        PointKind::Ema,
        PointKind::AnchorInit,
        PointKind::Model,
    ];
    /// The name in the CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            PointKind::Sft => "sft",
            PointKind::Liti => "liti",
            PointKind::Front => "front",
            PointKind::Slerp => "slerp",
            PointKind::Lerp => "lerp",
            PointKind::Policy => "policy",
            PointKind::Ema => "ema",
            PointKind::AnchorInit => "anchor_init",
            PointKind::Model => "model",
        }
    }
    /// A checkpoint along an RL run (drawn as a trajectory).
    pub fn is_trajectory(self) -> bool {
        matches!(
            self,
            PointKind::Policy | PointKind::Ema | PointKind::AnchorInit
        )
    }
}

impl std::str::FromStr for PointKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        PointKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = PointKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown kind '{s}' (expected one of {})", all.join(", "))
            })
    }
}

impl std::fmt::Display for PointKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checkpoint to evaluate and where it sits in a WARP run.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Free text for the plot (empty: the kind names it).
    pub label: String,
    pub kind: PointKind,
    pub iteration: Option<u32>,
    pub run: Option<u32>,
    pub step: Option<u64>,
    pub eta: Option<f64>,
    pub path: PathBuf,
}

impl Point {
    /// A point of `kind` at `path`, everything else empty.
    pub fn new(kind: PointKind, path: impl Into<PathBuf>) -> Point {
        Point {
            label: String::new(),
            kind,
            iteration: None,
            run: None,
            step: None,
            eta: None,
            path: path.into(),
        }
    }
}

/// One row of the evaluation: a point and what was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    pub point: Point,
    /// Estimated KL(π ‖ π_sft), nats.
    pub kl: f64,
    pub kl_se: Option<f64>,
    /// Mean reward on held-out prompts.
    pub reward: f64,
    pub reward_se: Option<f64>,
}

impl EvalRow {
    /// Both coordinates finite (the row can be drawn).
    pub fn is_finite(&self) -> bool {
        self.kl.is_finite() && self.reward.is_finite()
    }
}

/// An evaluation: its rows in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalTable {
    pub rows: Vec<EvalRow>,
}

impl EvalTable {
    /// Reads an evaluation CSV; errors name the file, the line and the column.
    pub fn from_csv(path: &Path) -> Result<EvalTable> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        EvalTable::parse(&text, path)
    }

    /// Parses CSV text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<EvalTable> {
        let at = |line: usize, msg: String| Error::format(origin, format!("line {line}: {msg}"));
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.trim().is_empty());
        let (hline, header) = lines.next().ok_or_else(|| {
            Error::format(
                origin,
                format!("empty file: expected the header row {}", COLUMNS.join(",")),
            )
        })?;
        let names: Vec<&str> = header.split(',').map(str::trim).collect();
        let mut col = [0usize; COLUMNS.len()];
        for (c, want) in col.iter_mut().zip(COLUMNS) {
            *c = names.iter().position(|n| *n == want).ok_or_else(|| {
                at(
                    hline,
                    format!(
                        "header lacks column '{want}' (expected {})",
                        COLUMNS.join(",")
                    ),
                )
            })?;
        }
        let mut rows = Vec::new();
        for (n, line) in lines {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != names.len() {
                return Err(at(
                    n,
                    format!("{} fields, but the header has {}", cells.len(), names.len()),
                ));
            }
            let cell = |k: usize| Cell {
                text: cells[col[k]],
                column: col[k] + 1,
                name: COLUMNS[k],
            };
            rows.push(parse_row(cell).map_err(|m| at(n, m))?);
        }
        if rows.is_empty() {
            return Err(Error::format(origin, "no data rows after the header"));
        }
        Ok(EvalTable { rows })
    }

    /// The CSV text: the header, then one line per row.
    pub fn to_csv(&self) -> String {
        let mut s = COLUMNS.join(",");
        s.push('\n');
        for r in &self.rows {
            s += &csv_line(r);
            s.push('\n');
        }
        s
    }

    /// Rows that cannot be drawn (non-finite kl or reward).
    pub fn skipped(&self) -> usize {
        self.rows.iter().filter(|p| !p.is_finite()).count()
    }
}

/// One CSV line for `r` (commas in the label and path become semicolons).
pub fn csv_line(r: &EvalRow) -> String {
    let p = &r.point;
    let opt = |v: Option<String>| v.unwrap_or_default();
    // Required numbers keep nan/inf (the reader accepts them); a non-finite standard error is
    // the same as none.
    let num = |x: f64| {
        if x.is_finite() {
            format!("{x:.6}")
        } else {
            format!("{x}").to_lowercase()
        }
    };
    let se = |x: Option<f64>| x.filter(|v| v.is_finite()).map(num).unwrap_or_default();
    let mut s = String::new();
    let _ = write!(
        s,
        "{},{},{},{},{},{},{},{},{},{},{}",
        p.label.replace(',', ";"),
        p.kind,
        opt(p.iteration.map(|v| v.to_string())),
        opt(p.run.map(|v| v.to_string())),
        opt(p.step.map(|v| v.to_string())),
        opt(p.eta.map(|v| v.to_string())),
        num(r.kl),
        se(r.kl_se),
        num(r.reward),
        se(r.reward_se),
        p.path.display().to_string().replace(',', ";"),
    );
    s
}

/// One field of a row, with what an error message needs.
struct Cell<'a> {
    text: &'a str,
    column: usize,
    name: &'static str,
}

impl Cell<'_> {
    fn err(&self, msg: &str) -> String {
        format!("column {} ({}): {msg}", self.column, self.name)
    }
    fn num<T: std::str::FromStr>(&self, what: &str) -> std::result::Result<Option<T>, String> {
        if self.text.is_empty() {
            return Ok(None);
        }
        let v = self
            .text
            .parse()
            .map_err(|_| self.err(&format!("'{}' is not {what}", self.text)))?;
        Ok(Some(v))
    }
    fn required<T>(&self, v: Option<T>, kind: PointKind) -> std::result::Result<T, String> {
        v.ok_or_else(|| self.err(&format!("required for kind '{}'", kind.as_str())))
    }
}

fn parse_row<'a>(cell: impl Fn(usize) -> Cell<'a>) -> std::result::Result<EvalRow, String> {
    let [label, kind, iteration, run, step, eta, kl, kl_se, reward, reward_se, path] =
        std::array::from_fn(&cell);
    let k: PointKind = kind.text.parse().map_err(|e: String| kind.err(&e))?;
    let se = |c: &Cell| -> std::result::Result<Option<f64>, String> {
        match c.num::<f64>("a number")? {
            Some(v) if v < 0.0 => Err(c.err("a standard error cannot be negative")),
            v => Ok(v),
        }
    };
    let r = EvalRow {
        point: Point {
            label: label.text.to_string(),
            kind: k,
            iteration: iteration.num("a whole number")?,
            run: run.num("a whole number")?,
            step: step.num("a whole number")?,
            eta: eta.num("a number")?,
            path: PathBuf::from(path.text),
        },
        kl: kl.required(kl.num("a number")?, k)?,
        kl_se: se(&kl_se)?,
        reward: reward.required(reward.num("a number")?, k)?,
        reward_se: se(&reward_se)?,
    };
    let p = &r.point;
    let need: &[(&Cell, bool)] = match k {
        PointKind::Sft | PointKind::Model => &[],
        PointKind::Liti | PointKind::Front => {
            &[(&iteration, p.iteration.is_some()), (&eta, p.eta.is_some())]
        }
        PointKind::Slerp | PointKind::Lerp => &[(&iteration, p.iteration.is_some())],
        PointKind::Policy | PointKind::Ema => &[
            (&iteration, p.iteration.is_some()),
            (&run, p.run.is_some()),
            (&step, p.step.is_some()),
        ],
        PointKind::AnchorInit => &[(&run, p.run.is_some()), (&step, p.step.is_some())],
    };
    for (c, present) in need {
        c.required(present.then_some(()), k)?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_rows_read_back_equal() {
        let mut liti = Point::new(PointKind::Liti, "/runs/a,b/iter-1/slerp/eta-0.50");
        liti.iteration = Some(1);
        liti.eta = Some(0.5);
        let mut pol = Point::new(PointKind::Policy, "p");
        (pol.iteration, pol.run, pol.step) = (Some(2), Some(1), Some(40));
        pol.label = "x,y".into();
        let rows = vec![
            EvalRow {
                point: Point::new(PointKind::Sft, "sft"),
                kl: 0.0,
                kl_se: Some(0.0),
                reward: 0.625,
                reward_se: Some(0.015625),
            },
            EvalRow {
                point: liti,
                kl: 1.5,
                kl_se: None,
                reward: f64::NAN,
                reward_se: Some(f64::INFINITY),
            },
            EvalRow {
                point: pol,
                kl: f64::INFINITY,
                kl_se: Some(0.25),
                reward: 1.0,
                reward_se: None,
            },
        ];
        let t = EvalTable { rows };
        let text = t.to_csv();
        assert!(text.starts_with(&(COLUMNS.join(",") + "\n")), "{text}");
        let back = EvalTable::parse(&text, Path::new("t.csv")).unwrap();
        assert_eq!(back.rows.len(), 3);
        let [a, b, c] = &back.rows[..] else { panic!() };
        assert_eq!(a, &t.rows[0]);
        // Commas in paths and labels became semicolons; nan/inf survive; an infinite standard
        // error is none.
        assert_eq!(
            b.point.path,
            PathBuf::from("/runs/a;b/iter-1/slerp/eta-0.50")
        );
        assert!(b.reward.is_nan() && b.reward_se.is_none() && b.kl == 1.5);
        assert_eq!(c.point.label, "x;y");
        assert_eq!(c.kl, f64::INFINITY);
        assert_eq!(
            (c.point.iteration, c.point.run, c.point.step),
            (Some(2), Some(1), Some(40))
        );
        assert_eq!(back.skipped(), 2);
    }

    #[test]
    fn kinds_parse_and_print_the_same_names() {
        for k in PointKind::ALL {
            assert_eq!(k.as_str().parse::<PointKind>(), Ok(k));
        }
        let e = "merge".parse::<PointKind>().unwrap_err();
        assert!(e.contains("'merge'") && e.contains("anchor_init"), "{e}");
    }
}
