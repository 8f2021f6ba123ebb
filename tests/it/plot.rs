//! `warp plot` and `warp::plot`: the CSV parser's errors, the SVG parsed by Python's XML parser
//! (tests/ref/check_svg.py), points at the pixels of the documented mapping computed here in
//! closed form, every series in the legend, and the binary end to end.

use crate::common;
use common::*;

use std::path::{Path, PathBuf};
use warp::plot::{pareto_svg, EvalTable, PAD, PLOT_HEIGHT, PLOT_LEFT, PLOT_TOP, PLOT_WIDTH, WIDTH};

const HEADER: &str = "label,kind,iteration,run,step,eta,kl,kl_se,reward,reward_se,path";

fn csv(dir: &Path, name: &str, rows: &[&str]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
    p
}

/// The SVG of `rows`, written to `dir` and read back through check_svg.py.
fn render(dir: &Path, rows: &[&str]) -> serde_json::Value {
    let t = EvalTable::from_csv(&csv(dir, "eval.csv", rows)).unwrap();
    inspect(dir, &pareto_svg(&t, "test"))
}

fn inspect(dir: &Path, svg: &str) -> serde_json::Value {
    let path = dir.join("plot.svg");
    std::fs::write(&path, svg).unwrap();
    let script = repo_root().join("tests/ref/check_svg.py");
    let out = py(&[script.to_str().unwrap(), path.to_str().unwrap()], dir);
    serde_json::from_str(&out).unwrap()
}

/// The centre of the point whose tooltip starts with `label`.
fn point(v: &serde_json::Value, label: &str) -> (f64, f64) {
    let p = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"].as_str().unwrap().lines().next() == Some(label))
        .unwrap_or_else(|| panic!("no point '{label}' in {v}"));
    (p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap())
}

fn strings(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The documented axis range: data extent padded by PAD of the span on each side.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    (lo - PAD * (hi - lo), hi + PAD * (hi - lo))
}

fn assert_at(got: (f64, f64), want: (f64, f64)) {
    assert!(
        (got.0 - want.0).abs() < 0.01 && (got.1 - want.1).abs() < 0.01,
        "point at {got:?}, expected {want:?}"
    );
}

#[test]
fn points_land_on_the_documented_pixels() {
    let d = tempfile::tempdir().unwrap();
    let v = render(
        d.path(),
        &[
            "sft,sft,,,,,0,,-1,,ckpt/sft",
            "hi,liti,1,,,1,10,,2,,",
            "mid,liti,1,,,0.5,4,,1.5,,",
            "low,liti,1,,,0,0,,-1,,",
            "p1,policy,1,1,100,,3,,-0.5,,",
        ],
    );
    // KL data in [0, 10], reward in [-1, 2].
    let (x_lo, x_hi) = padded(0.0, 10.0);
    let (y_lo, y_hi) = padded(-1.0, 2.0);
    let px = |kl: f64| PLOT_LEFT + (kl - x_lo) / (x_hi - x_lo) * PLOT_WIDTH;
    let py = |r: f64| PLOT_TOP + (y_hi - r) / (y_hi - y_lo) * PLOT_HEIGHT;
    for (label, kl, r) in [
        ("sft", 0.0, -1.0),
        ("hi", 10.0, 2.0),
        ("mid", 4.0, 1.5),
        ("p1", 3.0, -0.5),
    ] {
        assert_at(point(&v, label), (px(kl), py(r)));
    }
    // The LITI curve goes along η (rows were not in that order).
    let liti = v["polylines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["class"] == "liti")
        .unwrap();
    let want: Vec<[f64; 2]> = [(0.0, -1.0), (4.0, 1.5), (10.0, 2.0)]
        .iter()
        .map(|&(k, r)| {
            [
                (px(k) * 100.0).round() / 100.0,
                (py(r) * 100.0).round() / 100.0,
            ]
        })
        .collect();
    let got: Vec<[f64; 2]> = serde_json::from_value(liti["points"].clone()).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert_at((g[0], g[1]), (w[0], w[1]));
    }
    // 1-2-5 ticks: span 11 → step 2; span 3.3 → step 0.5 (with the typographic minus).
    assert_eq!(strings(&v, "xticks"), ["0", "2", "4", "6", "8", "10"]);
    assert_eq!(
        strings(&v, "yticks"),
        ["−1.0", "−0.5", "0.0", "0.5", "1.0", "1.5", "2.0"]
    );
    // η labels where they fit, never made up.
    let eta = strings(&v, "eta");
    assert!(
        !eta.is_empty() && eta.iter().all(|e| ["0", "0.5", "1"].contains(&e.as_str())),
        "{eta:?}"
    );
}

#[test]
fn error_bars_widen_the_range() {
    let d = tempfile::tempdir().unwrap();
    let v = render(
        d.path(),
        &["a,slerp,1,,,1,2,1,-3,0.5,", "b,lerp,1,,,1,1,,-2,,"],
    );
    // KL extent [2−1, 2+1] ∪ {1} = [1, 3]; reward [−3.5, −2.5] ∪ {−2} = [−3.5, −2].
    let (x_lo, x_hi) = padded(1.0, 3.0);
    let (y_lo, y_hi) = padded(-3.5, -2.0);
    let at = |kl: f64, r: f64| {
        (
            PLOT_LEFT + (kl - x_lo) / (x_hi - x_lo) * PLOT_WIDTH,
            PLOT_TOP + (y_hi - r) / (y_hi - y_lo) * PLOT_HEIGHT,
        )
    };
    assert_at(point(&v, "a"), at(2.0, -3.0));
    assert_at(point(&v, "b"), at(1.0, -2.0));
    assert_eq!(strings(&v, "labels").len(), 2, "merges are labelled");
}

#[test]
fn degenerate_data_is_centred_and_non_finite_rows_skipped() {
    let d = tempfile::tempdir().unwrap();
    let centre = (PLOT_LEFT + PLOT_WIDTH / 2.0, PLOT_TOP + PLOT_HEIGHT / 2.0);
    // A single point, and several equal ones, sit in the middle of the plot.
    let v = render(d.path(), &["only,sft,,,,,0,,-7.5,,"]);
    assert_at(point(&v, "only"), centre);
    let v = render(
        d.path(),
        &[
            "a,liti,1,,,0,2,,3,,",
            "b,liti,1,,,1,2,,3,,",
            "nan,policy,1,1,5,,nan,,1,,",
            "inf,ema,2,1,5,,1,,-inf,,",
        ],
    );
    assert_at(point(&v, "a"), centre);
    assert_eq!(v["points"].as_array().unwrap().len(), 2, "{v}");
    // The series without a finite point still has its legend entry.
    assert_eq!(v["legend"].as_array().unwrap().len(), 3, "{v}");
    // An empty table, values at the edge of f64 and a tiny relative span: no panic, valid XML.
    for t in [
        EvalTable::default(),
        EvalTable::from_csv(&csv(
            d.path(),
            "big.csv",
            &[
                "a,sft,,,,,1.7e308,,-1.7e308,,",
                "b,sft,,,,,-1.7e308,,1.7e308,,",
                "c,slerp,1,,,1,1.7e308,1.7e308,0,inf,",
            ],
        ))
        .unwrap(),
        EvalTable::from_csv(&csv(
            d.path(),
            "tiny.csv",
            &[
                "a,sft,,,,,1000,,5,,",
                "b,sft,,,,,1000.000000000001,,5.000000001,,",
            ],
        ))
        .unwrap(),
    ] {
        inspect(d.path(), &pareto_svg(&t, "edge"));
    }
}

#[test]
fn example_fixture_has_every_series_in_the_legend() {
    let d = tempfile::tempdir().unwrap();
    let path = repo_root().join("fixtures/eval-example.csv");
    let t = EvalTable::from_csv(&path).unwrap();
    let v = inspect(d.path(), &pareto_svg(&t, "Example <&> \"front\""));
    assert_eq!(v["title"], "Example <&> \"front\"");
    assert_eq!(v["width"].as_f64(), Some(WIDTH));
    // Series, derived here from the CSV text: kind + iteration (+ run for trajectories).
    let text = std::fs::read_to_string(&path).unwrap();
    let mut series: Vec<(String, String, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let traj = ["policy", "ema", "anchor_init"].contains(&f[1]);
            let it = if f[1] == "sft" { "" } else { f[2] };
            (
                f[1].into(),
                it.into(),
                if traj { f[3].into() } else { String::new() },
            )
        })
        .collect();
    series.sort();
    series.dedup();
    let legend = strings(&v, "legend");
    assert_eq!(legend.len(), series.len(), "{legend:?} vs {series:?}");
    for (kind, it, run) in &series {
        let want = match kind.as_str() {
            "sft" => "SFT".to_string(),
            "liti" => format!("LITI, iteration {it}"),
            "slerp" => format!("SLERP, iteration {it}"),
            "lerp" => format!("LERP, iteration {it}"),
            "policy" => format!("policy, it. {it}, run {run}"),
            "ema" => format!("EMA, it. {it}, run {run}"),
            _ => format!("init-anchored, run {run}"),
        };
        assert!(
            legend.iter().any(|l| l.starts_with(&want)),
            "no '{want}' in {legend:?}"
        );
    }
    assert_eq!(v["points"].as_array().unwrap().len(), t.rows.len());
    assert!(strings(&v, "labels").iter().any(|l| l == "SLERP it2"));
    assert!(strings(&v, "eta").len() >= 10, "η labels: {v}");
}

fn format_error(dir: &Path, name: &str, rows: &[&str], want: &[&str]) {
    let p = csv(dir, name, rows);
    let e = EvalTable::from_csv(&p).unwrap_err();
    assert!(matches!(e, warp::Error::Format { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(name), "{msg}");
    for w in want {
        assert!(msg.contains(w), "'{msg}' lacks '{w}'");
    }
}

#[test]
fn bad_csv_errors_name_file_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let ok = "s,sft,,,,,0,,1,,";
    format_error(
        d.path(),
        "fields.csv",
        &[ok, "x,sft,,,0,,1,,"],
        &["line 3", "9 fields", "11"],
    );
    format_error(
        d.path(),
        "num.csv",
        &["x,sft,,,,,abc,,1,,"],
        &["line 2", "column 7 (kl)", "'abc'"],
    );
    format_error(
        d.path(),
        "kind.csv",
        &[ok, ok, "x,bogus,,,,,0,,1,,"],
        &["line 4", "column 2 (kind)", "bogus"],
    );
    format_error(
        d.path(),
        "it.csv",
        &["x,liti,,,,0.3,1,,1,,"],
        &["line 2", "column 3 (iteration)", "liti"],
    );
    format_error(
        d.path(),
        "eta.csv",
        &["x,liti,1,,,,1,,1,,"],
        &["column 6 (eta)"],
    );
    format_error(
        d.path(),
        "step.csv",
        &["x,policy,1,1,,,1,,1,,"],
        &["column 5 (step)"],
    );
    format_error(
        d.path(),
        "whole.csv",
        &["x,policy,1,1,2.5,,1,,1,,"],
        &["column 5 (step)", "whole number"],
    );
    format_error(
        d.path(),
        "reward.csv",
        &["x,sft,,,,,0,,,,"],
        &["column 9 (reward)", "required"],
    );
    format_error(
        d.path(),
        "se.csv",
        &["x,sft,,,,,0,-1,1,,"],
        &["column 8 (kl_se)", "negative"],
    );
    format_error(d.path(), "none.csv", &[], &["no data rows"]);
    let p = d.path().join("header.csv");
    std::fs::write(&p, "label,kind,kl,reward\nx,sft,0,1\n").unwrap();
    let e = EvalTable::from_csv(&p).unwrap_err().to_string();
    assert!(
        e.contains("header.csv") && e.contains("line 1") && e.contains("'iteration'"),
        "{e}"
    );
    std::fs::write(&p, "").unwrap();
    let e = EvalTable::from_csv(&p).unwrap_err().to_string();
    assert!(e.contains("header.csv") && e.contains("empty"), "{e}");
    // Columns in another order, CRLF line ends and blank lines are fine.
    std::fs::write(&p, "kind,kl,reward,label,iteration,run,step,eta,kl_se,reward_se,path\r\n\r\nsft,0,1.5,s,,,,,,,\r\n").unwrap();
    let t = EvalTable::from_csv(&p).unwrap();
    assert_eq!(
        (t.rows[0].point.label.as_str(), t.rows[0].reward),
        ("s", 1.5)
    );
}

#[test]
fn cli_writes_the_svg_and_prints_its_path() {
    let d = tempfile::tempdir().unwrap();
    let input = repo_root().join("fixtures/eval-example.csv");
    let out = ok(
        "warp",
        &[
            "plot",
            input.to_str().unwrap(),
            "-o",
            "front.svg",
            "--title",
            "A & B",
        ],
        d.path(),
    );
    assert_eq!(out.trim(), "front.svg");
    assert_eq!(entries(d.path()), ["front.svg"], "temporary file left");
    let v = inspect(
        d.path(),
        &std::fs::read_to_string(d.path().join("front.svg")).unwrap(),
    );
    assert_eq!(v["title"], "A & B");
}

#[test]
fn cli_fails_cleanly_on_bad_input() {
    let d = tempfile::tempdir().unwrap();
    csv(
        d.path(),
        "bad.csv",
        &["s,sft,,,,,0,,1,,", "x,sft,,,,,zero,,1,,"],
    );
    let err = fails(
        "warp",
        &["plot", "bad.csv", "-o", "out.svg"],
        d.path(),
        &["bad.csv", "line 3", "kl"],
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    fails(
        "warp",
        &["plot", "missing.csv", "-o", "out.svg"],
        d.path(),
        &["missing.csv"],
    );
    fails("warp", &["plot", "bad.csv"], d.path(), &["--output"]);
    assert_eq!(
        entries(d.path()),
        ["bad.csv"],
        "output or temporary file written"
    );
    // An unwritable destination: an error naming it, nothing left behind.
    csv(d.path(), "good.csv", &["s,sft,,,,,0,,1,,"]);
    fails(
        "warp",
        &["plot", "good.csv", "-o", "no/such/dir/out.svg"],
        d.path(),
        &["no/such/dir"],
    );
    assert_eq!(entries(d.path()), ["bad.csv", "good.csv"]);
}
