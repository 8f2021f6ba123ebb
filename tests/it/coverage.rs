//! Coverage of `warp report`'s intervals on simulated data with a known truth, for the designs
//! the committed experiments use (issue 27): 2 seeds, and fronts of 10–40 points on each side,
//! where choosing an envelope's points on the prompts that then measure it biases the gap.

use crate::common;
use warp::rng::SplitMix64;
use warp::stats::{self, BootstrapOptions, Envelope, Point, PromptMeans, SeedInput};

/// The true reward of a checkpoint at KL `kl` on the front (concave, increasing).
fn curve(kl: f64) -> f64 {
    0.4 + 0.4 * (1.0 - (-kl / 0.15).exp())
}

/// A set of checkpoints' true (KL, reward): `n` points spread over KL (0, 0.5], those of an RL
/// trajectory (`below`) a little under the front, as an overshooting trajectory is.
fn truth(n: usize, below: f64, g: &mut SplitMix64) -> Vec<Point> {
    (0..n)
        .map(|i| {
            let kl = 0.5 * (i as f64 + 0.5 + 0.4 * (g.next_open01() - 0.5)) / n as f64;
            let off = below * g.next_open01();
            Point {
                kl,
                reward: curve(kl) - off,
            }
        })
        .collect()
}

/// One seed's per-prompt means of the points: a prompt difficulty shared by every point (and
/// seed), a seed effect per point (training randomness), and sample noise.
fn evaluate(
    pts: &[Point],
    difficulty: &[f64],
    seed_sd: f64,
    g: &mut SplitMix64,
) -> Vec<PromptMeans> {
    pts.iter()
        .map(|p| {
            let a = seed_sd * g.normal();
            PromptMeans {
                kl: difficulty
                    .iter()
                    .map(|_| (p.kl * (1.0 + 0.5 * g.normal())).max(0.0))
                    .collect(),
                reward: difficulty
                    .iter()
                    .map(|d| p.reward + a + d + 0.3 * g.normal())
                    .collect(),
            }
        })
        .collect()
}

struct FrontDesign {
    seeds: usize,
    left: usize,
    right: usize,
    seed_sd: f64,
}

/// Coverage of the cross-fitted interval of "envelope of the left points minus envelope of the
/// right ones" (as `warp report` computes claims 1, 5 and 6), and of the same interval without
/// cross-fitting; and the mean error of both point estimates. The truth is the gap between the
/// envelopes of the true points (the same points in every simulated seed: seeds differ by
/// training noise around them).
fn front_coverage(d: &FrontDesign, sims: usize) -> (f64, f64, f64, f64) {
    let prompts = 200;
    let mut g = SplitMix64(77 + d.left as u64 * 1000 + d.right as u64 + 7 * d.seeds as u64);
    let (mut hits, mut naive_hits, mut err, mut naive_err) = (0, 0, 0.0, 0.0);
    let (mut bc_hits, mut bc_err) = (0, 0.0);
    for sim in 0..sims {
        let left = truth(d.left, 0.0, &mut g);
        let right = truth(d.right, 0.04, &mut g);
        let all: Vec<Point> = left.iter().chain(&right).copied().collect();
        let want = stats::gap(&Envelope::of(&left), &Envelope::of(&right))
            .unwrap()
            .mean;
        let difficulty: Vec<f64> = (0..prompts).map(|_| 0.2 * g.normal()).collect();
        let means: Vec<Vec<PromptMeans>> = (0..d.seeds)
            .map(|_| evaluate(&all, &difficulty, d.seed_sd, &mut g))
            .collect();
        let o = BootstrapOptions {
            replicates: 300,
            seed: sim as u64,
            level: 0.95,
        };
        let split = d.left;
        let cross: Vec<SeedInput> = means
            .iter()
            .map(|m| {
                SeedInput::cross_fit(m.iter().collect(), move |s: &[Point], p: &[Point]| {
                    stats::cross_gap(s, p, split)
                })
            })
            .collect();
        let plain: Vec<SeedInput> = means
            .iter()
            .map(|m| {
                SeedInput::plain(m.iter().collect(), move |p: &[Point]| {
                    Some(stats::gap(&Envelope::of(&p[..split]), &Envelope::of(&p[split..]))?.mean)
                })
            })
            .collect();
        let c = stats::estimate(&cross, &o).unwrap().unwrap();
        let n = stats::estimate(&plain, &o).unwrap().unwrap();
        hits += (c.lo <= want && want <= c.hi) as usize;
        naive_hits += (n.lo <= want && want <= n.hi) as usize;
        let b = n.boot_mean - n.value;
        bc_hits += (n.lo - b <= want && want <= n.hi - b) as usize;
        bc_err += n.value - b - want;
        err += c.value - want;
        naive_err += n.value - want;
    }
    let s = sims as f64;
    eprintln!(
        "bias-corrected plain: coverage {:.3} bias {:+.4}",
        bc_hits as f64 / s,
        bc_err / s
    );
    (
        hits as f64 / s,
        naive_hits as f64 / s,
        err / s,
        naive_err / s,
    )
}

#[test]
fn many_point_fronts_cross_fitted_cover_the_truth() {
    // 200 simulated experiments per design (binomial sd of a 95 % coverage: 1.5 %).
    let designs = [
        FrontDesign {
            seeds: 1,
            left: 11,
            right: 40,
            seed_sd: 0.0,
        },
        FrontDesign {
            seeds: 3,
            left: 11,
            right: 40,
            seed_sd: 0.01,
        },
        FrontDesign {
            seeds: 2,
            left: 10,
            right: 10,
            seed_sd: 0.01,
        },
        FrontDesign {
            seeds: 3,
            left: 40,
            right: 20,
            seed_sd: 0.01,
        },
    ];
    let mut report = Vec::new();
    let mut results = std::collections::BTreeMap::new();
    for d in &designs {
        let (cov, naive, bias, naive_bias) = front_coverage(d, common::coverage_sims(200));
        results.insert((d.seeds, d.left, d.right), (cov, naive, bias, naive_bias));
        report.push(format!(
            "K={} fronts {}+{}: cross-fitted {cov:.3} (bias {bias:+.4}), plain {naive:.3} \
             (bias {naive_bias:+.4})",
            d.seeds, d.left, d.right
        ));
    }
    eprintln!("{}", report.join("\n"));
    // What holds (the figures are in docs/RESULTS.md and issue 27's closing note): the
    // cross-fitted interval covers the truth within sampling error of 95 % (200 experiments:
    // sd 1.5 %) and its point estimate is less biased than the plain one where the plain one's
    // bias is large; the plain interval under-covers the many-point designs (the check has
    // teeth).
    for (d, line) in designs.iter().zip(&report) {
        let (cov, naive, bias, naive_bias) = results[&(d.seeds, d.left, d.right)];
        assert!((0.92..=0.985).contains(&cov), "{line}");
        if naive_bias.abs() > 0.005 {
            assert!(bias.abs() < 0.6 * naive_bias.abs(), "{line}");
            assert!(naive < 0.9, "{line}");
        }
    }
}
