//! Student's t distribution: the quantile the seed-level intervals need (no statistics crate is
//! a dependency, and this is all we need of one).
//!
//! The CDF goes through the regularized incomplete beta function, evaluated by its continued
//! fraction (modified Lentz), with ln Γ from the Lanczos approximation (g = 7, 9 terms); the
//! quantile inverts the CDF by bisection. Accuracy is far beyond what an interval needs (tests:
//! closed forms for 1 and 2 degrees of freedom, the normal limit).

/// ln Γ(x) for x > 0.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (valid for x < (a + 1) / (a + b + 2)).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..100_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(a, b), a, b > 0, x in [0, 1].
pub fn beta_inc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// P(T ≤ t) for Student's t with `df` > 0 degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * beta_inc(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p` quantile of Student's t with `df` > 0 degrees of freedom (p in (0, 1)). Beyond 10⁶
/// degrees of freedom the distribution is taken as normal to that precision (df = 10⁶).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    let df = df.min(1e6);
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while t_cdf(hi, df) < p {
        lo = hi;
        hi *= 2.0;
        if hi > 1e300 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_closed_forms() {
        // Γ(n) = (n − 1)!, Γ(1/2) = √π, Γ(3/2) = √π / 2.
        let mut fact = 1.0f64;
        for n in 1..30 {
            assert!((ln_gamma(n as f64) - fact.ln()).abs() < 1e-12 * fact.ln().max(1.0));
            fact *= n as f64;
        }
        let sqrt_pi = std::f64::consts::PI.sqrt();
        assert!((ln_gamma(0.5) - sqrt_pi.ln()).abs() < 1e-13);
        assert!((ln_gamma(1.5) - (sqrt_pi / 2.0).ln()).abs() < 1e-13);
        assert!((ln_gamma(0.25) - 3.625_609_908_221_908_f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn beta_inc_closed_forms() {
        // I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 − (1 − x)^b.
        for &x in &[0.01, 0.2, 0.5, 0.77, 0.999] {
            assert!((beta_inc(1.0, 1.0, x) - x).abs() < 1e-13);
            assert!((beta_inc(3.5, 1.0, x) - x.powf(3.5)).abs() < 1e-13);
            assert!((beta_inc(1.0, 2.5, x) - (1.0 - (1.0 - x).powf(2.5))).abs() < 1e-13);
        }
        assert_eq!(beta_inc(2.0, 3.0, 0.0), 0.0);
        assert_eq!(beta_inc(2.0, 3.0, 1.0), 1.0);
    }

    #[test]
    fn t_quantiles_closed_forms() {
        for &p in &[0.6, 0.9, 0.95, 0.975, 0.995] {
            // df = 1 (Cauchy): tan(π (p − 1/2)); df = 2: (2p − 1) / √(2p(1 − p)).
            let c = (std::f64::consts::PI * (p - 0.5)).tan();
            assert!((t_quantile(p, 1.0) - c).abs() < 1e-9 * c.max(1.0), "{p}");
            let t2 = (2.0 * p - 1.0) / (2.0 * p * (1.0 - p)).sqrt();
            assert!((t_quantile(p, 2.0) - t2).abs() < 1e-9, "{p}");
            assert!((t_quantile(1.0 - p, 2.0) + t2).abs() < 1e-9, "{p}");
        }
        // The normal limit: z(0.975) = 1.959963984540054.
        assert!((t_quantile(0.975, 1e9) - 1.959_963_984_540_054).abs() < 1e-5);
        // Monotone in df: heavier tails with fewer degrees of freedom.
        let q: Vec<f64> = [2.0, 3.0, 5.0, 10.0, 30.0, 1000.0]
            .iter()
            .map(|&d| t_quantile(0.975, d))
            .collect();
        assert!(q.windows(2).all(|w| w[0] > w[1]), "{q:?}");
        assert!(t_quantile(0.5, 7.0).abs() < 1e-12);
        assert!(t_quantile(0.0, 3.0).is_nan() && t_quantile(0.5, 0.0).is_nan());
    }
}
