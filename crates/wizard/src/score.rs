//! Particle scores without a ranker: from a consensus refinement.
//!
//! When no CryoRanker weights are given the wizard scores particles the classical way: a
//! refinement of all particles, then each particle's log-likelihood under its best poses
//! (`scores.csv` of `cryoforge refine`). Good particles agree with the consensus map and
//! form the upper mode; empty picks, ice and other junk the lower one. A two-component
//! Gaussian mixture fitted to the log-likelihoods by EM turns them into the probability of
//! the upper mode, a number in [0, 1] used like the ranker's score (thresholds 0.8/0.3).

/// Posterior probability of the upper component of a two-component 1-D Gaussian mixture
/// fitted by EM (initialised at the quartiles, 200 iterations or until the
/// log-likelihood gain is below 1e-9 per point). Non-finite values score 0. Fewer than 4
/// finite values, or no spread, give 0.5 everywhere (nothing to separate). The result is
/// made non-decreasing in the value.
pub fn mixture_scores(values: &[f64]) -> Vec<f64> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let n = finite.len();
    if n < 4 {
        return values.iter().map(|v| if v.is_finite() { 0.5 } else { 0.0 }).collect();
    }
    let mut sorted = finite.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((n - 1) as f64 * p).round() as usize];
    let spread = q(0.75) - q(0.25);
    let sd_all = {
        let m = finite.iter().sum::<f64>() / n as f64;
        (finite.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64).sqrt()
    };
    if sd_all.is_nan() || sd_all <= 0.0 {
        return values.iter().map(|v| if v.is_finite() { 0.5 } else { 0.0 }).collect();
    }
    let floor = 1e-3 * sd_all;
    let (mut w, mut mu, mut sd) = ([0.5, 0.5], [q(0.25), q(0.75)], [spread.max(sd_all * 0.5) / 2.0; 2]);
    let mut resp = vec![0.0; n];
    let mut last = f64::NEG_INFINITY;
    for _ in 0..200 {
        // E step.
        let mut ll = 0.0;
        for (r, &x) in resp.iter_mut().zip(&finite) {
            let p = |k: usize| w[k] * (-0.5 * ((x - mu[k]) / sd[k]).powi(2)).exp() / sd[k];
            let (p0, p1) = (p(0), p(1));
            let t = p0 + p1;
            *r = if t > 0.0 {
                p1 / t
            } else if (x - mu[1]).abs() < (x - mu[0]).abs() {
                1.0
            } else {
                0.0
            };
            ll += t.max(1e-300).ln();
        }
        // M step.
        let s1: f64 = resp.iter().sum();
        let s0 = n as f64 - s1;
        if s1 < 1e-9 || s0 < 1e-9 {
            break;
        }
        let m1 = resp.iter().zip(&finite).map(|(r, x)| r * x).sum::<f64>() / s1;
        let m0 = resp.iter().zip(&finite).map(|(r, x)| (1.0 - r) * x).sum::<f64>() / s0;
        let v1 = resp.iter().zip(&finite).map(|(r, x)| r * (x - m1).powi(2)).sum::<f64>() / s1;
        let v0 = resp.iter().zip(&finite).map(|(r, x)| (1.0 - r) * (x - m0).powi(2)).sum::<f64>() / s0;
        w = [s0 / n as f64, s1 / n as f64];
        mu = [m0, m1];
        sd = [v0.sqrt().max(floor), v1.sqrt().max(floor)];
        if (ll - last).abs() < 1e-9 * n as f64 {
            break;
        }
        last = ll;
    }
    // Component 1 must be the upper one.
    let upper = if mu[1] >= mu[0] { 1 } else { 0 };
    let mut out: Vec<f64> = values
        .iter()
        .map(|&x| {
            if !x.is_finite() {
                return 0.0;
            }
            let p = |k: usize| w[k] * (-0.5 * ((x - mu[k]) / sd[k]).powi(2)).exp() / sd[k];
            let (pu, pl) = (p(upper), p(1 - upper));
            let t = pu + pl;
            if t > 0.0 {
                pu / t
            } else if x > 0.5 * (mu[0] + mu[1]) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    // Monotone in the value: with unequal widths the wider (lower) component would win
    // again far in the upper tail; a better-fitting particle never scores lower.
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_finite()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut run = 0.0f64;
    for i in order {
        run = run.max(out[i]);
        out[i] = run;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_two_modes() {
        // 700 "good" around 100, 300 "junk" around 40 (deterministic pseudo-noise).
        let mut v = Vec::new();
        for i in 0..1000 {
            let e = ((i as f64 * 12.9898).sin() * 43758.5453).fract() * 2.0 - 1.0;
            v.push(if i % 10 < 7 { 100.0 + 10.0 * e } else { 40.0 + 10.0 * e });
        }
        let s = mixture_scores(&v);
        let good_ok = (0..1000).filter(|i| i % 10 < 7).all(|i| s[i] > 0.9);
        let junk_ok = (0..1000).filter(|i| i % 10 >= 7).all(|i| s[i] < 0.1);
        assert!(good_ok && junk_ok);
        // Order preserved: a higher value never scores lower.
        let mut idx: Vec<usize> = (0..1000).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        assert!(idx.windows(2).all(|w| s[w[1]] >= s[w[0]]));
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(mixture_scores(&[1.0, 2.0]), vec![0.5, 0.5]);
        assert_eq!(mixture_scores(&[3.0; 10]), vec![0.5; 10]);
        let s = mixture_scores(&[f64::NAN, 1.0, 2.0, 10.0, 11.0, 12.0]);
        assert_eq!(s[0], 0.0);
        assert!(s[5] > 0.9 && s[1] < 0.1);
    }
}
