//! The KL–reward upper envelope of a set of checkpoints and the comparison of two envelopes at
//! equal KL.
//!
//! A checkpoint is better the lower its KL to the SFT and the higher its reward, so the envelope
//! of a set is its Pareto-optimal points: those for which no other point has a KL at most as
//! large and a reward at least as large (one of the two strictly). Sorted by KL they have strictly
//! increasing rewards; between two of them the envelope is the straight segment (the way a front
//! is drawn, and what interpolating the weights between two checkpoints roughly traces). It is
//! defined from its lowest to its highest KL and nowhere else: no extrapolation.

/// A (KL, reward) point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub kl: f64,
    pub reward: f64,
}

/// Indices of the Pareto-optimal points of `points`, by increasing KL (so by strictly increasing
/// reward). Of points equal in both coordinates the first is kept; points with a non-finite
/// coordinate are ignored.
pub fn pareto(points: &[Point]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].kl.is_finite() && points[i].reward.is_finite())
        .collect();
    // By KL, then the best reward first, then the first index: a point is optimal exactly when its
    // reward beats every point before it in this order.
    idx.sort_by(|&a, &b| {
        let (pa, pb) = (points[a], points[b]);
        pa.kl
            .total_cmp(&pb.kl)
            .then(pb.reward.total_cmp(&pa.reward))
            .then(a.cmp(&b))
    });
    let mut best = f64::NEG_INFINITY;
    let mut out = Vec::new();
    for i in idx {
        if points[i].reward > best {
            best = points[i].reward;
            out.push(i);
        }
    }
    out
}

/// The upper envelope of a point set: its Pareto-optimal points joined by straight segments.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// By strictly increasing KL and reward.
    pub points: Vec<Point>,
}

impl Envelope {
    pub fn of(points: &[Point]) -> Envelope {
        Envelope {
            points: pareto(points).into_iter().map(|i| points[i]).collect(),
        }
    }

    /// The curve through `points` in order of KL, with no selection: for measuring, on other
    /// prompts, the checkpoints an envelope selected (cross-fitting, see
    /// [`crate::stats::Statistic::CrossFit`]); its rewards need not increase.
    pub fn through(points: &[Point]) -> Envelope {
        let mut points: Vec<Point> = points
            .iter()
            .copied()
            .filter(|p| p.kl.is_finite() && p.reward.is_finite())
            .collect();
        points.sort_by(|a, b| a.kl.total_cmp(&b.kl));
        // Of points at one KL the first is kept, so the curve is a function of KL.
        points.dedup_by(|b, a| a.kl == b.kl);
        Envelope { points }
    }

    /// The KL range the envelope covers, if it has any point.
    pub fn range(&self) -> Option<(f64, f64)> {
        Some((self.points.first()?.kl, self.points.last()?.kl))
    }

    /// The envelope's reward at KL `x`, inside its range.
    pub fn at(&self, x: f64) -> Option<f64> {
        let (lo, hi) = self.range()?;
        if !(x >= lo && x <= hi) {
            return None;
        }
        let k = self.points.partition_point(|p| p.kl < x);
        let b = self.points[k];
        if b.kl == x || k == 0 {
            return Some(b.reward);
        }
        let a = self.points[k - 1];
        Some(a.reward + (b.reward - a.reward) * (x - a.kl) / (b.kl - a.kl))
    }
}

/// How one envelope compares with another over the KL range both cover.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gap {
    /// The common KL range.
    pub lo: f64,
    pub hi: f64,
    /// Mean over that range of (reward of `a` − reward of `b`) at equal KL: the area between the
    /// envelopes divided by the width of the range.
    pub mean: f64,
}

/// Compares `a` with `b` at equal KL over the whole range both envelopes cover; `None` when that
/// range is empty or a single KL value.
pub fn gap(a: &Envelope, b: &Envelope) -> Option<Gap> {
    let (a0, a1) = a.range()?;
    let (b0, b1) = b.range()?;
    let (lo, hi) = (a0.max(b0), a1.min(b1));
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    // The difference is linear between consecutive knots of either envelope, so the trapezoid
    // rule over the union of the knots is exact.
    let mut xs: Vec<f64> = a
        .points
        .iter()
        .chain(&b.points)
        .map(|p| p.kl)
        .filter(|&x| x > lo && x < hi)
        .collect();
    xs.push(lo);
    xs.push(hi);
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let d = |x: f64| Some(a.at(x)? - b.at(x)?);
    let mut area = 0.0;
    let mut prev = (xs[0], d(xs[0])?);
    for &x in &xs[1..] {
        let y = d(x)?;
        area += 0.5 * (prev.1 + y) * (x - prev.0);
        prev = (x, y);
    }
    Some(Gap {
        lo,
        hi,
        mean: area / (hi - lo),
    })
}

/// The cross-fitted gap between the envelope of the first `split` points and that of the rest:
/// which checkpoints form each envelope is decided on `select`, their (KL, reward) taken from
/// `measure` (two independent halves of the prompts).
pub fn cross_gap(select: &[Point], measure: &[Point], split: usize) -> Option<f64> {
    let side = |range: std::ops::Range<usize>| {
        let start = range.start;
        let chosen: Vec<Point> = pareto(&select[range])
            .into_iter()
            .map(|i| measure[start + i])
            .collect();
        Envelope::through(&chosen)
    };
    Some(gap(&side(0..split), &side(split..select.len()))?.mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(f64, f64)]) -> Vec<Point> {
        v.iter().map(|&(kl, reward)| Point { kl, reward }).collect()
    }

    #[test]
    fn pareto_is_not_a_sort() {
        // A trajectory that overshoots: (0.3, 0.6) is dominated by (0.2, 0.7); so is the
        // duplicate-KL point (0.1, 0.4) by (0.1, 0.5), and (0.4, 0.7) by (0.2, 0.7) (equal reward,
        // more KL).
        let p = pts(&[
            (0.0, 0.3),
            (0.1, 0.5),
            (0.1, 0.4),
            (0.3, 0.6),
            (0.2, 0.7),
            (0.4, 0.7),
            (0.5, 0.9),
            (f64::NAN, 2.0),
        ]);
        assert_eq!(pareto(&p), vec![0, 1, 4, 6]);
        // Exact duplicates: the first is kept.
        assert_eq!(pareto(&pts(&[(0.1, 0.5), (0.1, 0.5)])), vec![0]);
        // A point with the lowest KL and the highest reward dominates all.
        assert_eq!(pareto(&pts(&[(0.2, 0.1), (0.0, 1.0), (0.5, 0.9)])), vec![1]);
        assert!(pareto(&[]).is_empty());
    }

    #[test]
    fn cross_gap_measures_what_the_other_half_selected() {
        // Selection: side a's envelope is points 0 and 2 (1 is dominated), side b's both.
        let select = pts(&[(0.0, 0.0), (0.5, -0.1), (1.0, 1.0), (0.0, 0.0), (1.0, 0.5)]);
        // Measured elsewhere, point 1 would be on a's envelope; it is not used.
        let measure = pts(&[(0.0, 0.1), (0.5, 0.9), (1.0, 0.9), (0.0, 0.0), (1.0, 0.6)]);
        // a: (0, 0.1)–(1, 0.9), b: (0, 0)–(1, 0.6); the difference is linear from 0.1 to 0.3.
        let g = cross_gap(&select, &measure, 3).unwrap();
        assert!((g - 0.2).abs() < 1e-15, "{g}");
        // The plain envelope of the measured points would include point 1.
        let plain = gap(&Envelope::of(&measure[..3]), &Envelope::of(&measure[3..])).unwrap();
        assert!(plain.mean > 0.3, "{plain:?}");
        // A selected point measured at a lower reward than its neighbour stays on the curve.
        let e = Envelope::through(&pts(&[(1.0, 0.2), (0.0, 0.5), (1.0, 0.9)]));
        assert_eq!(e.points, pts(&[(0.0, 0.5), (1.0, 0.2)]));
    }

    #[test]
    fn envelope_interpolates_inside_its_range_only() {
        let e = Envelope::of(&pts(&[(0.0, 0.0), (1.0, 1.0), (0.5, 0.2), (2.0, 1.5)]));
        assert_eq!(e.range(), Some((0.0, 2.0)));
        assert_eq!(e.at(0.0), Some(0.0));
        assert!((e.at(0.25).unwrap() - 0.1).abs() < 1e-15);
        assert!((e.at(0.75).unwrap() - 0.6).abs() < 1e-15);
        assert!((e.at(1.5).unwrap() - 1.25).abs() < 1e-15);
        assert_eq!(e.at(2.0), Some(1.5));
        assert_eq!(e.at(-0.01), None);
        assert_eq!(e.at(2.01), None);
        assert_eq!(Envelope::of(&[]).at(0.0), None);
    }

    #[test]
    fn gap_closed_forms() {
        // a: y = x on [0, 2]; b: y = x/2 on [0.5, 3]. Common range [0.5, 2]; a − b = x/2, whose
        // mean over [0.5, 2] is (0.25 + 1)/2 = 0.625.
        let a = Envelope::of(&pts(&[(0.0, 0.0), (2.0, 2.0)]));
        let b = Envelope::of(&pts(&[(0.5, 0.25), (3.0, 1.5)]));
        let g = gap(&a, &b).unwrap();
        assert_eq!((g.lo, g.hi), (0.5, 2.0));
        assert!((g.mean - 0.625).abs() < 1e-15);
        let g2 = gap(&b, &a).unwrap();
        assert!((g2.mean + 0.625).abs() < 1e-15);
        // Crossing envelopes: a − c = (x − 1)/2 on [0, 2] averages 0.
        let c = Envelope::of(&pts(&[(0.0, 0.5), (2.0, 1.5)]));
        assert!(gap(&a, &c).unwrap().mean.abs() < 1e-15);
        // A knot inside the range: b' = (x − 1)/2 on [0, 1], x − 1 on [1, 2], so a − b' is
        // (x + 1)/2 on [0, 1] (area 0.75) and 1 on [1, 2] (area 1): mean 1.75 / 2.
        let b2 = Envelope::of(&pts(&[(0.0, -0.5), (1.0, 0.0), (2.0, 1.0)]));
        let g3 = gap(&a, &b2).unwrap();
        assert!((g3.mean - 1.75 / 2.0).abs() < 1e-15, "{g3:?}");
        // No common range, or a single common KL value.
        let d = Envelope::of(&pts(&[(2.5, 0.0), (4.0, 1.0)]));
        assert_eq!(gap(&a, &d), None);
        let e = Envelope::of(&pts(&[(2.0, 0.0), (4.0, 1.0)]));
        assert_eq!(gap(&a, &e), None);
    }
}
