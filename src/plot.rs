//! The KL–reward Pareto front of an evaluation as a standalone SVG (no scripts, no external
//! resources), read from the CSV that `warp eval` writes.
//!
//! # Input
//! The evaluation CSV of [`crate::stats::eval_table`] (its module docs give the schema).
//!
//! # Pixel mapping
//! The plot area is the rectangle `[PLOT_LEFT, PLOT_LEFT + PLOT_WIDTH] × [PLOT_TOP, PLOT_TOP +
//! PLOT_HEIGHT]`, whatever the data (a long legend makes the picture taller, not the plot smaller).
//! Each axis covers the finite values of the drawn points, error bars included (`v ± se`), from
//! `lo` to `hi`, padded by `PAD` of the span on both sides: `[lo − PAD·(hi−lo), hi + PAD·(hi−lo)]`.
//! When all values are equal (span ≤ 1e-9·max|v|) the axis is `c ± max(0.1·|c|, 0.5)` around
//! their centre `c`. (Ends beyond ±f64::MAX are clamped to it.) Then, with `[x_lo, x_hi]` the KL
//! axis and `[y_lo, y_hi]` the reward axis:
//!
//! ```text
//! x_px = PLOT_LEFT + (kl − x_lo) / (x_hi − x_lo) · PLOT_WIDTH
//! y_px = PLOT_TOP  + (y_hi − reward) / (y_hi − y_lo) · PLOT_HEIGHT     (reward grows upwards)
//! ```
//!
//! Every drawn point is a `<g class="point" transform="translate(x_px y_px)">` whose `<title>`
//! (the tooltip in a browser) gives the label, the numbers and the checkpoint path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

pub use crate::stats::eval_table::{EvalRow, EvalTable, PointKind as Kind, COLUMNS};

/// Width of the whole picture.
pub const WIDTH: f64 = 880.0;
pub const PLOT_LEFT: f64 = 78.0;
pub const PLOT_TOP: f64 = 56.0;
pub const PLOT_WIDTH: f64 = 540.0;
pub const PLOT_HEIGHT: f64 = 420.0;
/// Fraction of the data span added on each side of an axis.
pub const PAD: f64 = 0.05;

/// Drawing order of the markers: trajectory dots at the bottom, the SFT point on top.
fn layer(kind: Kind) -> u8 {
    match kind {
        Kind::Policy | Kind::Ema | Kind::AnchorInit => 0,
        Kind::Liti | Kind::Front => 1,
        Kind::Lerp | Kind::Model => 2,
        Kind::Slerp => 3,
        Kind::Sft => 4,
    }
}

/// Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), yellow left
/// out: too pale on white.
const PALETTE: [&str; 6] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
];
const GREY: &str = "#555555";
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

/// A group of points drawn as one: one legend entry each. Merges and LITI curves group by
/// iteration; trajectories by iteration and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    kind: Kind,
    iteration: Option<u32>,
    run: Option<u32>,
}

impl Series {
    fn of(p: &EvalRow) -> Series {
        let traj = p.point.kind.is_trajectory();
        Series {
            kind: p.point.kind,
            iteration: if p.point.kind == Kind::Sft {
                None
            } else {
                p.point.iteration
            },
            run: if traj { p.point.run } else { None },
        }
    }
    fn legend(&self) -> String {
        let it = |i: Option<u32>| i.map(|i| i.to_string()).unwrap_or_else(|| "?".into());
        let run = it(self.run);
        match self.kind {
            Kind::Sft => "SFT (init)".into(),
            Kind::Model => "other checkpoints".into(),
            Kind::Liti => format!("LITI, iteration {} (η)", it(self.iteration)),
            Kind::Front => format!("SLERP {} toward the SFT (η)", it(self.iteration)),
            Kind::Slerp => format!("SLERP, iteration {}", it(self.iteration)),
            Kind::Lerp => format!("LERP, iteration {}", it(self.iteration)),
            Kind::Policy => format!("policy, it. {}, run {run}", it(self.iteration)),
            Kind::Ema => format!("EMA, it. {}, run {run}", it(self.iteration)),
            Kind::AnchorInit => match self.iteration {
                Some(i) => format!("init-anchored, it. {i}, run {run}"),
                None => format!("init-anchored, run {run}"),
            },
        }
    }
}

/// One axis: its data range and how it maps to pixels.
struct Axis {
    lo: f64,
    hi: f64,
}

impl Axis {
    fn fit(values: impl Iterator<Item = f64>) -> Axis {
        let (lo, hi) = values
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        if lo > hi {
            return Axis { lo: 0.0, hi: 1.0 };
        }
        // Half-spans stay finite even for values near ±f64::MAX; the ends are clamped to it.
        let half = hi / 2.0 - lo / 2.0;
        let (lo, hi) = if half <= 0.5e-9 * lo.abs().max(hi.abs()) {
            let c = lo / 2.0 + hi / 2.0;
            let h = (0.1 * c.abs()).max(0.5);
            (c - h, c + h)
        } else {
            (lo - 2.0 * PAD * half, hi + 2.0 * PAD * half)
        };
        Axis {
            lo: lo.max(f64::MIN),
            hi: hi.min(f64::MAX),
        }
    }
    /// Position in [0, 1] along the axis.
    fn frac(&self, v: f64) -> f64 {
        (v / 2.0 - self.lo / 2.0) / (self.hi / 2.0 - self.lo / 2.0)
    }
    /// Multiples of a 1-2-5 step inside the range (about 6 of them) and their label precision.
    fn ticks(&self) -> (Vec<f64>, f64) {
        let raw = (self.hi / 2.0 - self.lo / 2.0) / 3.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = mag
            * match raw / mag {
                f if f < 1.5 => 1.0,
                f if f < 3.5 => 2.0,
                f if f < 7.5 => 5.0,
                _ => 10.0,
            };
        let (first, last) = ((self.lo / step).ceil(), (self.hi / step).floor());
        // Guards against degenerate spans at the edge of f64 precision.
        if !(step > 0.0 && step.is_finite() && (0.0..=50.0).contains(&(last - first))) {
            return (Vec::new(), step);
        }
        let ticks = (0..=(last - first) as i64)
            .map(|i| (first + i as f64) * step)
            .collect();
        (ticks, step)
    }
}

/// A tick label with as many decimals as the step needs; U+2212 for minus, as in typesetting.
fn tick_label(v: f64, step: f64) -> String {
    let s = if !(1e-4..1e6).contains(&step) {
        format!("{v:.1e}")
    } else {
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    };
    let zero = s
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.');
    if zero {
        s.trim_start_matches('-').to_string()
    } else {
        s.replace('-', "−")
    }
}

/// A number for labels and tooltips: at most 3 decimals, no trailing zeros.
fn short(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".into()
    } else {
        s.replace('-', "−")
    }
}

/// Escapes text for XML content and attributes; drops the control characters XML 1.0 forbids.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// Mixes a `#RRGGBB` colour with white: 0 keeps it, 1 gives white.
fn tint(hex: &str, f: f64) -> String {
    let ch = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0) as f64;
    let mix = |c: f64| (c + (255.0 - c) * f).round() as u8;
    format!("#{:02X}{:02X}{:02X}", mix(ch(1)), mix(ch(3)), mix(ch(5)))
}

/// Colour and stroke of a series: one hue per iteration; trajectories in lighter shades of it,
/// a shade per run, the dash telling policy, EMA and init-anchored apart.
struct Style {
    color: String,
    dash: &'static str,
    width: f64,
}

impl Style {
    fn dash_attr(&self) -> String {
        match self.dash {
            "" => String::new(),
            d => format!(r#" stroke-dasharray="{d}""#),
        }
    }
}

fn style(s: &Series, iterations: &[u32], runs: &[u32]) -> Style {
    let hue = match s
        .iteration
        .and_then(|i| iterations.iter().position(|&j| j == i))
    {
        Some(k) => PALETTE[k % PALETTE.len()],
        None => GREY,
    };
    if s.kind == Kind::Sft {
        return Style {
            color: "#000000".into(),
            dash: "",
            width: 0.0,
        };
    }
    if !s.kind.is_trajectory() {
        return Style {
            color: hue.into(),
            dash: if s.kind == Kind::Front { "7 3" } else { "" },
            width: 2.2,
        };
    }
    let shade = s
        .run
        .and_then(|r| runs.iter().position(|&q| q == r))
        .unwrap_or(0)
        % 3;
    let dash = match s.kind {
        Kind::Policy => "",
        Kind::Ema => "5 3",
        _ => "1.5 2.5",
    };
    Style {
        color: tint(hue, 0.15 + 0.2 * shade as f64),
        dash,
        width: 1.3,
    }
}

/// The marker of a point, drawn around (0, 0).
fn marker(kind: Kind, color: &str) -> String {
    match kind {
        Kind::Sft => {
            r##"<circle r="5.5" fill="#000000" stroke="#FFFFFF" stroke-width="1.5"/>"##.into()
        }
        Kind::Liti => {
            format!(r##"<circle r="4" fill="{color}" stroke="#FFFFFF" stroke-width="1.2"/>"##)
        }
        Kind::Slerp => {
            let pts: Vec<String> = (0..10)
                .map(|i| {
                    let r = if i % 2 == 0 { 9.0 } else { 3.8 };
                    let a = std::f64::consts::PI * (i as f64 / 5.0 - 0.5);
                    format!("{:.2},{:.2}", r * a.cos(), r * a.sin())
                })
                .collect();
            format!(
                r##"<polygon points="{}" fill="{color}" stroke="#222222" stroke-width="0.8" stroke-linejoin="round"/>"##,
                pts.join(" ")
            )
        }
        Kind::Model => {
            format!(r##"<circle r="4" fill="{color}" stroke="#FFFFFF" stroke-width="1"/>"##)
        }
        Kind::Lerp => format!(
            r##"<rect x="-4.5" y="-4.5" width="9" height="9" fill="{color}" stroke="#222222" stroke-width="0.8"/>"##
        ),
        Kind::Front => format!(
            r##"<polygon points="0,-5 5,0 0,5 -5,0" fill="{color}" stroke="#FFFFFF" stroke-width="1"/>"##
        ),
        _ => format!(r#"<circle r="1.8" fill="{color}"/>"#),
    }
}

/// Half-size of a marker, for label placement.
fn marker_radius(kind: Kind) -> f64 {
    match kind {
        Kind::Sft => 6.0,
        Kind::Liti => 4.5,
        Kind::Front => 5.0,
        Kind::Slerp => 9.0,
        Kind::Lerp => 5.0,
        Kind::Model => 4.5,
        _ => 2.0,
    }
}

fn tooltip(p: &EvalRow) -> String {
    let mut t = if p.point.label.is_empty() {
        p.point.kind.as_str().to_string()
    } else {
        p.point.label.clone()
    };
    let pm = |se: Option<f64>| se.map(|s| format!(" ± {}", short(s))).unwrap_or_default();
    let _ = write!(t, "\nkind {}", p.point.kind.as_str());
    for (name, v) in [("iteration", p.point.iteration), ("run", p.point.run)] {
        if let Some(v) = v {
            let _ = write!(t, ", {name} {v}");
        }
    }
    if let Some(s) = p.point.step {
        let _ = write!(t, ", step {s}");
    }
    if let Some(e) = p.point.eta {
        let _ = write!(t, ", η {}", short(e));
    }
    let _ = write!(
        t,
        "\nKL {}{} nats\nreward {}{}",
        short(p.kl),
        pm(p.kl_se),
        short(p.reward),
        pm(p.reward_se)
    );
    if !p.point.path.as_os_str().is_empty() {
        let _ = write!(t, "\n{}", p.point.path.display());
    }
    xml_escape(&t)
}

/// Where a label goes relative to its point.
#[derive(Clone, Copy)]
enum Side {
    Right,
    Left,
    Above,
    Below,
    AboveLeft,
    BelowRight,
}

/// Text labels placed greedily where they overlap no marker and no earlier label.
struct Placer {
    taken: Vec<[f64; 4]>,
}

impl Placer {
    fn overlaps(&self, b: &[f64; 4]) -> bool {
        self.taken
            .iter()
            .any(|t| b[0] < t[2] && t[0] < b[2] && b[1] < t[3] && t[1] < b[3])
    }
    /// Tries the `sides` of the point (marker radius `r`) in order; `force` takes the first one
    /// inside the plot when none is free. Returns the `<text>` element (with `attrs`), if placed.
    fn place(
        &mut self,
        (x, y, r): (f64, f64, f64),
        text: &str,
        size: f64,
        sides: &[Side],
        force: bool,
        attrs: &str,
    ) -> Option<String> {
        // DejaVu Sans averages about 0.6 em a character.
        let w = text.chars().count() as f64 * size * 0.6;
        let (g, d) = (r + 3.0, 0.7 * (r + 2.0));
        // Baseline position, anchor and left edge of the text box for each side.
        let spot = |side: Side| match side {
            Side::Right => (x + g, y + 0.35 * size, "start", x + g),
            Side::Left => (x - g, y + 0.35 * size, "end", x - g - w),
            Side::Above => (x, y - g, "middle", x - w / 2.0),
            Side::Below => (x, y + g + 0.8 * size, "middle", x - w / 2.0),
            Side::AboveLeft => (x - d, y - d, "end", x - d - w),
            Side::BelowRight => (x + d, y + d + 0.8 * size, "start", x + d),
        };
        let bbox = |(_, ty, _, left): (f64, f64, &str, f64)| {
            [left, ty - 0.8 * size, left + w, ty + 0.2 * size]
        };
        let inside = |b: &[f64; 4]| {
            b[0] >= PLOT_LEFT
                && b[2] <= PLOT_LEFT + PLOT_WIDTH
                && b[1] >= PLOT_TOP
                && b[3] <= PLOT_TOP + PLOT_HEIGHT
        };
        let spots: Vec<_> = sides.iter().map(|s| spot(*s)).collect();
        let pick = spots
            .iter()
            .position(|s| inside(&bbox(*s)) && !self.overlaps(&bbox(*s)))
            .or_else(|| force.then(|| spots.iter().position(|s| inside(&bbox(*s))).unwrap_or(0)))?;
        self.taken.push(bbox(spots[pick]));
        let (tx, ty, anchor, _) = spots[pick];
        Some(format!(
            r##"<text {attrs} x="{tx:.2}" y="{ty:.2}" text-anchor="{anchor}" font-size="{size}" stroke="#FFFFFF" stroke-width="3" stroke-linejoin="round" paint-order="stroke">{}</text>
"##,
            xml_escape(text)
        ))
    }
}

/// The two axes and the pixel mapping of the module docs.
struct Frame {
    x: Axis,
    y: Axis,
}

impl Frame {
    fn px(&self, kl: f64) -> f64 {
        PLOT_LEFT + self.x.frac(kl) * PLOT_WIDTH
    }
    fn py(&self, reward: f64) -> f64 {
        PLOT_TOP + (1.0 - self.y.frac(reward)) * PLOT_HEIGHT
    }
    fn at(&self, p: &EvalRow) -> (f64, f64) {
        (self.px(p.kl), self.py(p.reward))
    }
}

/// The standard error of `v` worth drawing: positive, and `v ± se` finite.
fn se(v: f64, se: Option<f64>) -> Option<f64> {
    se.filter(|e| *e > 0.0 && (v - e).is_finite() && (v + e).is_finite())
}

/// The points of each series (every series of the table gets one, drawable or not), sorted
/// along η for LITI curves and along training steps for trajectories.
type SeriesMap<'a> = BTreeMap<Series, Vec<&'a EvalRow>>;

fn group<'a>(t: &'a EvalTable, drawn: &[&'a EvalRow]) -> SeriesMap<'a> {
    let mut series: SeriesMap = t.rows.iter().map(|p| (Series::of(p), Vec::new())).collect();
    for p in drawn {
        series.entry(Series::of(p)).or_default().push(p);
    }
    for (k, v) in series.iter_mut() {
        let key = |p: &EvalRow| match k.kind {
            Kind::Liti | Kind::Front => p.point.eta.unwrap_or(0.0),
            _ => p.point.step.unwrap_or(0) as f64,
        };
        v.sort_by(|a, b| key(a).total_cmp(&key(b)).then(a.kl.total_cmp(&b.kl)));
    }
    series
}

/// The style of every series: hues by iteration, shades by run.
fn styles_of(t: &EvalTable, series: &SeriesMap) -> BTreeMap<Series, Style> {
    let distinct = |field: fn(&EvalRow) -> Option<u32>| -> Vec<u32> {
        let set: BTreeSet<u32> = t.rows.iter().filter_map(field).collect();
        set.into_iter().collect()
    };
    let (iterations, runs) = (distinct(|p| p.point.iteration), distinct(|p| p.point.run));
    series
        .keys()
        .map(|k| (*k, style(k, &iterations, &runs)))
        .collect()
}

/// The KL–reward plot of an evaluation as a standalone SVG document (see the module docs for the
/// layout and the pixel mapping). Rows with a non-finite kl or reward are left out.
pub fn pareto_svg(t: &EvalTable, title: &str) -> String {
    let pts: Vec<&EvalRow> = t.rows.iter().filter(|p| p.is_finite()).collect();
    let spread = |v: f64, e: Option<f64>| {
        let e = se(v, e).unwrap_or(0.0);
        [v - e, v + e]
    };
    let f = Frame {
        x: Axis::fit(pts.iter().flat_map(|p| spread(p.kl, p.kl_se))),
        y: Axis::fit(pts.iter().flat_map(|p| spread(p.reward, p.reward_se))),
    };
    let series = group(t, &pts);
    let styles = styles_of(t, &series);

    let row = 19.0;
    let height = (PLOT_TOP + PLOT_HEIGHT + 62.0).max(PLOT_TOP + 24.0 + row * series.len() as f64);
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="{FONT}" font-size="11" fill="#222222">
<title>{title}</title>
<rect width="100%" height="100%" fill="#FFFFFF"/>
<text x="{:.2}" y="30" text-anchor="middle" font-size="16" font-weight="bold">{title}</text>
"##,
        PLOT_LEFT + PLOT_WIDTH / 2.0,
        title = xml_escape(title)
    );
    axes(&mut s, &f);

    // Layers, bottom to top: trajectories, error bars, LITI curves, markers, labels.
    for (k, v) in series.iter().filter(|(k, _)| k.kind.is_trajectory()) {
        polyline(&mut s, &f, v, &styles[k], "trajectory");
    }
    error_bars(&mut s, &f, &series, &styles);
    for (k, v) in series.iter().filter(|(k, _)| k.kind == Kind::Liti) {
        polyline(&mut s, &f, v, &styles[k], "liti");
    }
    for (k, v) in series.iter().filter(|(k, _)| k.kind == Kind::Front) {
        polyline(&mut s, &f, v, &styles[k], "front");
    }
    let mut layers: Vec<(&Series, &Vec<&EvalRow>)> = series.iter().collect();
    layers.sort_by_key(|(k, _)| layer(k.kind));
    let mut placer = Placer { taken: Vec::new() };
    markers(&mut s, &f, &layers, &styles, &mut placer);
    s.push_str("<g class=\"labels\">\n");
    labels(&mut s, &f, &layers, &series, &styles, &mut placer);
    s.push_str("</g>\n");
    legend(&mut s, &series, &styles, row);
    s.push_str("</svg>\n");
    s
}

/// Horizontal (KL) and vertical (reward) bars of ± one standard error.
fn error_bars(s: &mut String, f: &Frame, series: &SeriesMap, styles: &BTreeMap<Series, Style>) {
    for (k, v) in series {
        // Trajectories have many points: their bars stay in the background.
        let c = format!(
            r#"stroke="{}" stroke-opacity="{}""#,
            styles[k].color,
            if k.kind.is_trajectory() { 0.5 } else { 1.0 }
        );
        for p in v {
            let (x, y) = f.at(p);
            if let Some(e) = se(p.kl, p.kl_se) {
                let (a, b) = (f.px(p.kl - e), f.px(p.kl + e));
                let _ = writeln!(
                    s,
                    r#"<path class="errorbar" d="M{a:.2},{y:.2}H{b:.2}M{a:.2},{:.2}v6M{b:.2},{:.2}v6" {c} fill="none"/>"#,
                    y - 3.0,
                    y - 3.0
                );
            }
            if let Some(e) = se(p.reward, p.reward_se) {
                let (a, b) = (f.py(p.reward + e), f.py(p.reward - e));
                let _ = writeln!(
                    s,
                    r#"<path class="errorbar" d="M{x:.2},{a:.2}V{b:.2}M{:.2},{a:.2}h6M{:.2},{b:.2}h6" {c} fill="none"/>"#,
                    x - 3.0,
                    x - 3.0
                );
            }
        }
    }
}

/// One marker per point (with its tooltip), layer by layer; the big markers are reserved in
/// `placer` so labels do not hide them.
fn markers(
    s: &mut String,
    f: &Frame,
    layers: &[(&Series, &Vec<&EvalRow>)],
    styles: &BTreeMap<Series, Style>,
    placer: &mut Placer,
) {
    for (k, v) in layers {
        for p in v.iter() {
            let (x, y) = f.at(p);
            if !k.kind.is_trajectory() {
                let r = marker_radius(k.kind);
                placer.taken.push([x - r, y - r, x + r, y + r]);
            }
            let _ = writeln!(
                s,
                r#"<g class="point {}" transform="translate({x:.2} {y:.2})"><title>{}</title>{}</g>"#,
                k.kind.as_str(),
                tooltip(p),
                marker(k.kind, &styles[k].color)
            );
        }
    }
}

/// The SFT and merge labels always (right of the point if there is room), then the η of the
/// LITI markers where they fit, preferably above-left: the empty side of a Pareto front.
fn labels(
    s: &mut String,
    f: &Frame,
    layers: &[(&Series, &Vec<&EvalRow>)],
    series: &SeriesMap,
    styles: &BTreeMap<Series, Style>,
    placer: &mut Placer,
) {
    for (k, v) in layers.iter().rev() {
        let name = match k.kind {
            Kind::Sft => "SFT",
            Kind::Slerp => "SLERP",
            Kind::Lerp => "LERP",
            Kind::Model => "",
            _ => continue,
        };
        for p in v.iter() {
            let text = match (p.point.label.is_empty(), k.iteration) {
                (false, _) => p.point.label.clone(),
                (true, Some(i)) => format!("{name} {i}"),
                (true, None) => name.to_string(),
            };
            let sides = [Side::Right, Side::Left, Side::Above, Side::Below];
            let (x, y) = f.at(p);
            let at = (x, y, marker_radius(k.kind));
            let attrs = r#"class="label" font-weight="bold""#;
            s.extend(placer.place(at, &text, 11.0, &sides, true, attrs));
        }
    }
    let curves = series
        .iter()
        .filter(|(k, _)| matches!(k.kind, Kind::Liti | Kind::Front));
    for (k, v) in curves {
        let attrs = format!(r#"class="eta" fill="{}""#, styles[k].color);
        let sides = [Side::AboveLeft, Side::BelowRight, Side::Left, Side::Right];
        for p in v.iter() {
            let (x, y) = f.at(p);
            let at = (x, y, marker_radius(k.kind));
            let text = short(p.point.eta.unwrap_or(f64::NAN));
            s.extend(placer.place(at, &text, 9.0, &sides, false, &attrs));
        }
    }
}

/// Frame, light grid, ticks with their labels and the axis titles.
fn axes(s: &mut String, f: &Frame) {
    let (right, bottom) = (PLOT_LEFT + PLOT_WIDTH, PLOT_TOP + PLOT_HEIGHT);
    s.push_str("<g class=\"axes\">\n");
    let (xt, xstep) = f.x.ticks();
    for v in xt {
        let x = f.px(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.2}" y1="{PLOT_TOP}" x2="{x:.2}" y2="{bottom}" stroke="#E6E6E6"/><line x1="{x:.2}" y1="{bottom}" x2="{x:.2}" y2="{:.2}" stroke="#444444"/><text class="xtick" x="{x:.2}" y="{:.2}" text-anchor="middle">{}</text>"##,
            bottom + 5.0,
            bottom + 18.0,
            tick_label(v, xstep)
        );
    }
    let (yt, ystep) = f.y.ticks();
    for v in yt {
        let y = f.py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{PLOT_LEFT}" y1="{y:.2}" x2="{right}" y2="{y:.2}" stroke="#E6E6E6"/><line x1="{:.2}" y1="{y:.2}" x2="{PLOT_LEFT}" y2="{y:.2}" stroke="#444444"/><text class="ytick" x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"##,
            PLOT_LEFT - 5.0,
            PLOT_LEFT - 8.0,
            y + 4.0,
            tick_label(v, ystep)
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" fill="none" stroke="#444444"/>
<text x="{:.2}" y="{:.2}" text-anchor="middle" font-size="13">KL(π ‖ π<tspan font-size="9" baseline-shift="sub">SFT</tspan>) (nats)</text>
<text transform="translate({:.2} {:.2}) rotate(-90)" text-anchor="middle" font-size="13">mean reward (held-out)</text>
<text x="{:.2}" y="{:.2}" fill="#888888" font-style="italic">↖ better</text>
</g>
"##,
        PLOT_LEFT + PLOT_WIDTH / 2.0,
        bottom + 44.0,
        PLOT_LEFT - 54.0,
        PLOT_TOP + PLOT_HEIGHT / 2.0,
        PLOT_LEFT + 8.0,
        PLOT_TOP + 16.0
    );
}

fn polyline(s: &mut String, f: &Frame, v: &[&EvalRow], st: &Style, class: &str) {
    if v.len() < 2 {
        return;
    }
    let xy: Vec<String> = v
        .iter()
        .map(|p| format!("{:.2},{:.2}", f.px(p.kl), f.py(p.reward)))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline class="{class}" points="{}" fill="none" stroke="{}" stroke-width="{}"{} stroke-linejoin="round" stroke-linecap="round"/>"#,
        xy.join(" "),
        st.color,
        st.width,
        st.dash_attr()
    );
}

/// One entry per series, right of the plot: its line and/or marker, then its name.
fn legend(
    s: &mut String,
    series: &BTreeMap<Series, Vec<&EvalRow>>,
    styles: &BTreeMap<Series, Style>,
    row: f64,
) {
    s.push_str("<g class=\"legend\">\n");
    for (i, (k, v)) in series.iter().enumerate() {
        let st = &styles[k];
        let (x, y) = (
            PLOT_LEFT + PLOT_WIDTH + 22.0,
            PLOT_TOP + 8.0 + row * i as f64,
        );
        let _ = write!(
            s,
            r#"<g class="legend-entry" transform="translate({x:.2} {y:.2})">"#
        );
        if k.kind.is_trajectory() || matches!(k.kind, Kind::Liti | Kind::Front) {
            let _ = write!(
                s,
                r#"<line x1="0" y1="0" x2="28" y2="0" stroke="{}" stroke-width="{}"{}/>"#,
                st.color,
                st.width.max(1.6),
                st.dash_attr()
            );
        }
        if !k.kind.is_trajectory() {
            let m = marker(k.kind, &st.color);
            let _ = write!(s, r#"<g transform="translate(14 0)">{m}</g>"#);
        }
        let note = if v.is_empty() { " (not drawn)" } else { "" };
        let _ = writeln!(
            s,
            r#"<text x="36" y="4">{}{note}</text></g>"#,
            xml_escape(&k.legend())
        );
    }
    s.push_str("</g>\n");
}
