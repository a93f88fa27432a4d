//! Scores of poses: the Gaussian log-likelihood of a particle given a projection, with a
//! CTF and a per-shell noise spectrum, evaluated as dense products.
//!
//! The model of particle X (CONVENTIONS.md rules 5–6) at pose (A, t) is
//! `M(k) = −c(k)·e^(+2πi k·t/D)·P_A(k)` (c the CTF, P_A the reference's slice). With white
//! Gaussian noise of variance σ²(k) per Fourier coefficient (one value per shell), the
//! log-likelihood over the full plane is, up to a constant and with the half-plane band of
//! [`crate::band`] (each entry stands for two coefficients),
//!
//! ```text
//! ln L(A, t) = Σₑ [2 Re(X̄ₑ Mₑ) − |Mₑ|²] / σ²ₑ
//!            = Σₑ Re(Ȳₑ(t)·P_A,ₑ) − Σₑ qₑ |P_A,ₑ|²,
//! Y(t) = −2 c X e^(−2πi k·t/D) / σ²,   q = c² / σ².
//! ```
//!
//! The first sum is a real dot product of the interleaved (re, im) vectors Y(t) and P_A,
//! the second a dot product of q with |P_A|²: for a batch of particles × shifts against a
//! bank of projections both are matrix products ([`bank_scores`], `gemm`); for the few
//! children of a candidate they are short dot products ([`score_dense`]).
//!
//! [`Scoring::ScaleFree`] maximises ln L over a free scale a of the reference (M → a·M):
//! `max_a = cross² / (4·norm)` (signed, so anti-correlated poses rank last). It is used
//! while the reference is not on the particles' grey scale (the first iteration, as
//! RELION's `--firstiter_cc`), and is a monotone function of the whitened correlation.
//! Pinned by `tests::dense_scores_equal_the_brute_force_likelihood`.

use crate::band::{Band, BandEntry};
use cryoforge_core::ctf::CtfParams;
use cryoforge_core::fft::{recentre_phasor, C32};
use cryoforge_core::Rot3;
use cryoforge_sim::project::Projector;

/// How a cross term and a norm become a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    /// Gaussian log-likelihood with the reference on the data's scale.
    Likelihood,
    /// Log-likelihood maximised over a free scale of the reference.
    ScaleFree,
}

impl Scoring {
    #[inline]
    pub fn combine(self, cross: f32, norm: f32) -> f32 {
        match self {
            Scoring::Likelihood => cross - norm,
            Scoring::ScaleFree => {
                if norm > 0.0 {
                    cross * cross.abs() / (4.0 * norm)
                } else {
                    0.0
                }
            }
        }
    }
}

/// A particle prepared for a search: its spectrum, CTF and the whitened vectors of the
/// module docs at every entry of the iteration's band.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Data spectrum X (protein-bright sign).
    pub x: Vec<C32>,
    /// CTF c.
    pub ctf: Vec<f32>,
    /// −2·c·X/σ².
    pub base: Vec<C32>,
    /// c²/σ².
    pub q: Vec<f32>,
    /// 1/σ² per entry.
    pub inv_sigma2: Vec<f32>,
}

impl Prepared {
    /// Fill from the half-plane spectrum `spec` (layout of `Rfft2::forward_low` with
    /// `kx_max = band.kx_max()`), the particle's CTF and the noise spectrum per shell.
    pub fn fill(
        &mut self,
        band: &Band,
        spec: &[C32],
        ctf: Option<&CtfParams>,
        apix_a: f64,
        sigma2: &[f64],
        sign: f32,
    ) {
        let nc = band.kx_max() + 1;
        let inv = 1.0 / (band.box_px() as f64 * apix_a);
        let e = ctf.map(|c| c.evaluator());
        let n = band.len();
        self.x.resize(n, C32::default());
        self.ctf.resize(n, 0.0);
        self.base.resize(n, C32::default());
        self.q.resize(n, 0.0);
        self.inv_sigma2.resize(n, 0.0);
        for (j, en) in band.entries().iter().enumerate() {
            let x = spec[en.row as usize * nc + en.col as usize] * sign;
            let c = match &e {
                Some(e) => e.eval(en.k[0] as f64 * inv, en.k[1] as f64 * inv) as f32,
                // No CTF: the model is −P (so that c = −1 reproduces the projection).
                None => -1.0,
            };
            let is2 = (1.0 / sigma2[en.shell as usize].max(1e-30)) as f32;
            self.x[j] = x;
            self.ctf[j] = c;
            self.base[j] = x * (-2.0 * c * is2);
            self.q[j] = c * c * is2;
            self.inv_sigma2[j] = is2;
        }
    }
}

/// e^(−2πi k·t/D) for the band entries `entries` (a prefix of a band, sorted by |k|), into
/// `out`, from separable tables `tx`, `ty` built by recurrence from [`recentre_phasor`].
pub fn phases(
    entries: &[BandEntry],
    d: usize,
    t: [f64; 2],
    tx: &mut Vec<C32>,
    ty: &mut Vec<C32>,
    out: &mut [C32],
) {
    let Some(last) = entries.last() else { return };
    let r = (last.k[0].hypot(last.k[1]).ceil() as usize).max(1);
    let table = |t: f64, from: isize, len: usize, v: &mut Vec<C32>| {
        // Start and unit step from the convention's own phasor; the powers in f64 (the f32
        // step's angle error, ~1e-7 rad, grows to < 1e-4 rad over 256 steps).
        let a = recentre_phasor(from as f64, t, d);
        let b = recentre_phasor(1.0, t, d);
        let (mut re, mut im) = (a.re as f64, a.im as f64);
        let (c1, s1) = (b.re as f64, b.im as f64);
        v.clear();
        for _ in 0..len {
            v.push(C32::new(re as f32, im as f32));
            (re, im) = (re * c1 - im * s1, re * s1 + im * c1);
        }
    };
    table(t[0], 0, r + 1, tx);
    table(t[1], -(r as isize), 2 * r + 1, ty);
    for (o, e) in out.iter_mut().zip(entries) {
        *o = tx[e.k[0] as usize] * ty[(e.k[1] as isize + r as isize) as usize];
    }
}

/// Interleaved (re, im) of `base ⊙ phase` for the first `n` entries.
#[inline]
pub fn shifted_interleaved(base: &[C32], phase: &[C32], out: &mut [f32]) {
    for ((o, b), p) in out.chunks_exact_mut(2).zip(base).zip(phase) {
        let v = b * p;
        o[0] = v.re;
        o[1] = v.im;
    }
}

/// Σ a·b over equal-length slices, in eight lanes (vectorised by the compiler).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Interleave a complex projection and return Σ q|P|².
#[inline]
pub fn interleave_with_norm(p: &[C32], q: &[f32], out: &mut [f32]) -> f32 {
    let mut norm = 0f32;
    for ((o, v), w) in out.chunks_exact_mut(2).zip(p).zip(q) {
        o[0] = v.re;
        o[1] = v.im;
        norm += w * (v.re * v.re + v.im * v.im);
    }
    norm
}

/// Scratch for [`score_dense`].
#[derive(Default)]
pub struct DenseWork {
    proj: Vec<C32>,
    p: Vec<f32>,
    norms: Vec<f32>,
    y: Vec<f32>,
    phase: Vec<C32>,
    tx: Vec<C32>,
    ty: Vec<C32>,
}

/// Scores of every rotation × shift for one particle over the first `n` band entries:
/// `out[r·shifts.len() + s]`. Projections are sampled directly from the 3D reference.
pub fn score_dense(
    proj: &Projector,
    band: &Band,
    n: usize,
    prep: &Prepared,
    rots: &[Rot3],
    shifts: &[[f64; 2]],
    scoring: Scoring,
    w: &mut DenseWork,
    out: &mut [f32],
) -> Result<(), cryoforge_sim::SimError> {
    let entries = &band.entries()[..n];
    let pts = &band.point_cache()[..n];
    w.proj.resize(n * rots.len(), C32::default());
    w.p.resize(2 * n * rots.len(), 0.0);
    w.norms.resize(rots.len(), 0.0);
    proj.project_points_multi(rots, pts, &mut w.proj)?;
    for r in 0..rots.len() {
        w.norms[r] = interleave_with_norm(
            &w.proj[r * n..(r + 1) * n],
            &prep.q[..n],
            &mut w.p[2 * n * r..2 * n * (r + 1)],
        );
    }
    w.y.resize(2 * n, 0.0);
    w.phase.resize(n, C32::default());
    for (s, t) in shifts.iter().enumerate() {
        phases(entries, band.box_px(), *t, &mut w.tx, &mut w.ty, &mut w.phase);
        shifted_interleaved(&prep.base[..n], &w.phase, &mut w.y);
        for r in 0..rots.len() {
            let cross = dot(&w.y, &w.p[2 * n * r..2 * n * (r + 1)]);
            out[r * shifts.len() + s] = scoring.combine(cross, w.norms[r]);
        }
    }
    Ok(())
}

/// A bank of reference projections shared by all particles of a global search: one
/// interleaved row of the first `n` band entries per rotation, and |P|² per entry.
pub struct Bank {
    pub rots: Vec<Rot3>,
    pub n: usize,
    /// `rots.len() × 2n`, interleaved (re, im).
    pub p: Vec<f32>,
    /// `rots.len() × n`: |P|².
    pub p2: Vec<f32>,
}

impl Bank {
    /// Project every rotation of a global grid (`dirs.len() × n_psi` rotations, direction
    /// major, ψ = j·2π/n_psi) at the first `n` band entries. The reference is sliced once
    /// per viewing direction, on a 2×-oversampled Cartesian grid; each in-plane angle
    /// rotates that slice in 2D (bilinear), since the slice of (φ, θ, ψ) at k is the slice
    /// of (φ, θ, 0) at R(ψ)·k. Matches direct slicing to ≈ 1 % (test).
    pub fn build(
        proj: &Projector,
        band: &Band,
        n: usize,
        dirs: &[[f64; 3]],
        n_psi: usize,
    ) -> Result<Bank, cryoforge_sim::SimError> {
        use rayon::prelude::*;
        let pts = &band.point_cache()[..n];
        let kr = band.entries()[..n].iter().map(|e| e.k[0].hypot(e.k[1])).fold(0f32, f32::max);
        // Section grid: step ½ over [−K, K]², K = kr + 1.
        let m = (2.0 * (kr + 1.0)).ceil() as usize;
        let side = 2 * m + 1;
        let grid: Vec<[f32; 2]> = (0..side * side)
            .map(|i| [((i % side) as f32 - m as f32) * 0.5, ((i / side) as f32 - m as f32) * 0.5])
            .collect();
        type Rows = (Vec<Rot3>, Vec<f32>, Vec<f32>);
        let rows: Vec<Result<Rows, cryoforge_sim::SimError>> = dirs
            .par_iter()
            .map(|d| {
                let base = crate::so3::rotation_from_direction(*d, 0.0);
                let mut sec = vec![C32::default(); side * side];
                proj.project_points(&base, &grid, &mut sec)?;
                let mut rots = Vec::with_capacity(n_psi);
                let mut p = vec![0f32; n_psi * 2 * n];
                let mut p2 = vec![0f32; n_psi * n];
                for j in 0..n_psi {
                    let psi = j as f64 * std::f64::consts::TAU / n_psi as f64;
                    rots.push(crate::so3::rotation_from_direction(*d, psi));
                    let (s, c) = (psi.sin() as f32, psi.cos() as f32);
                    for (e, k) in pts.iter().enumerate() {
                        // R(ψ)·k in half-sample units of the section grid.
                        let x = 2.0 * (c * k[0] - s * k[1]) + m as f32;
                        let y = 2.0 * (s * k[0] + c * k[1]) + m as f32;
                        let v = bilinear(&sec, side, x, y);
                        p[j * 2 * n + 2 * e] = v.re;
                        p[j * 2 * n + 2 * e + 1] = v.im;
                        p2[j * n + e] = v.norm_sqr();
                    }
                }
                Ok((rots, p, p2))
            })
            .collect();
        let mut bank = Bank { rots: Vec::new(), n, p: Vec::new(), p2: Vec::new() };
        for r in rows {
            let (rots, p, p2) = r?;
            bank.rots.extend(rots);
            bank.p.extend(p);
            bank.p2.extend(p2);
        }
        Ok(bank)
    }

    pub fn len(&self) -> usize {
        self.rots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rots.is_empty()
    }
}

/// Bilinear sample of a side × side complex grid at (x, y) (clamped inside it).
#[inline]
pub(crate) fn bilinear(g: &[C32], side: usize, x: f32, y: f32) -> C32 {
    let x = x.clamp(0.0, (side - 1) as f32 - 1e-3);
    let y = y.clamp(0.0, (side - 1) as f32 - 1e-3);
    let (x0, y0) = (x as usize, y as usize);
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |xx: usize, yy: usize| g[yy * side + xx];
    (at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx) * (1.0 - fy)
        + (at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx) * fy
}

/// `out[(b·ns + s)·nr + r] = score` of particle-shift row (b, s) against bank rotation
/// `r0 + r` for `nr` rotations: two matrix products (cross terms and norms).
pub fn bank_scores(
    bank: &Bank,
    r0: usize,
    nr: usize,
    y: &[f32],
    q: &[f32],
    n_rows_per_particle: usize,
    scoring: Scoring,
    cross: &mut Vec<f32>,
    norms: &mut Vec<f32>,
) {
    let n = bank.n;
    let rows = y.len() / (2 * n);
    let nb = q.len() / n;
    cross.resize(rows * nr, 0.0);
    norms.resize(nb * nr, 0.0);
    matmul_abt(rows, nr, 2 * n, y, &bank.p[r0 * 2 * n..(r0 + nr) * 2 * n], cross);
    matmul_abt(nb, nr, n, q, &bank.p2[r0 * n..(r0 + nr) * n], norms);
    for (row, c) in cross.chunks_exact_mut(nr).enumerate() {
        let nrow = &norms[(row / n_rows_per_particle) * nr..][..nr];
        for (v, w) in c.iter_mut().zip(nrow) {
            *v = scoring.combine(*v, *w);
        }
    }
}

/// C = A·Bᵀ for row-major A (m×k) and B (n×k), C (m×n), single-threaded (callers run one
/// product per rayon task).
pub fn matmul_abt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n, "matmul_abt: sizes");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above bound every access of the strided views: A is m×k with row
    // stride k, Bᵀ is k×n read from B with column stride k, C is m×n with row stride n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryoforge_core::fft::Rfft2;
    use cryoforge_core::EulerRelion;

    /// A smooth, asymmetric test volume: a few Gaussian blobs.
    pub(crate) fn blobs(n: usize) -> Vec<f32> {
        let c = [[0.0, 0.0, 0.0, 1.0], [5.0, 2.0, -3.0, 0.7], [-4.0, 4.0, 2.0, 0.5], [1.0, -5.0, 4.0, 0.6]];
        let h = (n / 2) as f64;
        let mut v = vec![0f32; n * n * n];
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let p = [x as f64 - h, y as f64 - h, z as f64 - h];
                    let mut s = 0.0;
                    for b in &c {
                        let r2 = (p[0] - b[0]).powi(2) + (p[1] - b[1]).powi(2) + (p[2] - b[2]).powi(2);
                        s += b[3] * (-r2 / 8.0).exp();
                    }
                    v[(z * n + y) * n + x] = s as f32;
                }
            }
        }
        v
    }

    #[test]
    fn dense_scores_equal_the_brute_force_likelihood() {
        // −Σ_full-plane |X − M|²/(2σ²) computed from full D×D spectra of rendered images
        // must equal score + const (const = −Σ|X|²/(2σ²), independent of the pose).
        let d = 32;
        let apix = 2.0;
        let vol = blobs(d);
        let proj = Projector::new(&vol, d, apix, 2.0).unwrap();
        let band = Band::new(d, 12.0);
        let ctf = CtfParams {
            defocus_u_a: 15000.0,
            defocus_v_a: 14000.0,
            defocus_angle_deg: 30.0,
            ..Default::default()
        };
        let true_rot = EulerRelion::new(20.0, 70.0, -40.0).to_rot();
        let true_t = [1.5, -0.5];
        // Data = a clean model image at the true pose plus a deterministic perturbation.
        let mut cgrid = vec![0f32; d * d];
        cryoforge_core::ctf::ctf_grid_centered(&ctf, d, apix, &mut cgrid);
        let neg: Vec<f32> = cgrid.iter().map(|c| -c).collect();
        let mut pw = proj.work();
        let mut img = vec![0f32; d * d];
        proj.project_image(&true_rot, true_t, Some(&neg), &mut pw, &mut img).unwrap();
        for (i, v) in img.iter_mut().enumerate() {
            *v += 0.05 * ((i as f32 * 0.37).sin());
        }
        let fft = Rfft2::new(d);
        let mut w = fft.work();
        let nc = band.kx_max() + 1;
        let mut spec = vec![C32::default(); d * nc];
        fft.forward_low(&mut w, &img, band.kx_max(), &mut spec);
        let sigma2: Vec<f64> = (0..=d / 2).map(|k| 3.0 + k as f64 * 0.1).collect();
        let mut prep = Prepared::default();
        prep.fill(&band, &spec, Some(&ctf), apix, &sigma2, 1.0);
        let rots = [true_rot, EulerRelion::new(25.0, 65.0, -35.0).to_rot()];
        let shifts = [true_t, [0.0, 0.0]];
        let mut out = [0f32; 4];
        let mut dw = DenseWork::default();
        score_dense(&proj, &band, band.len(), &prep, &rots, &shifts, Scoring::Likelihood, &mut dw, &mut out)
            .unwrap();
        // Brute force over the band's full plane (both Friedel mates), from rendered images.
        let mut full_x = vec![C32::default(); d * nc];
        fft.forward_low(&mut w, &img, band.kx_max(), &mut full_x);
        let mut brute = |rot: &Rot3, t: [f64; 2]| -> f64 {
            let mut m = vec![0f32; d * d];
            proj.project_image(rot, t, Some(&neg), &mut pw, &mut m).unwrap();
            let mut ms = vec![C32::default(); d * nc];
            let mut w2 = fft.work();
            fft.forward_low(&mut w2, &m, band.kx_max(), &mut ms);
            let mut s = 0.0;
            for e in band.entries() {
                let i = e.row as usize * nc + e.col as usize;
                let diff = full_x[i] - ms[i];
                // Two coefficients per entry, −|X−M|²/(2σ²) each.
                s -= diff.norm_sqr() as f64 / sigma2[e.shell as usize];
            }
            s
        };
        let c0: f64 = band
            .entries()
            .iter()
            .map(|e| {
                -(full_x[e.row as usize * nc + e.col as usize].norm_sqr() as f64) / sigma2[e.shell as usize]
            })
            .sum();
        for (r, rot) in rots.iter().enumerate() {
            for (s, t) in shifts.iter().enumerate() {
                let b = brute(rot, *t);
                let got = out[r * 2 + s] as f64 + c0;
                assert!((got - b).abs() < 2e-3 * b.abs().max(1.0), "rot {r} shift {s}: {got} vs {b}");
            }
        }
        // The true pose scores best.
        assert!(out[0] > out[1] && out[0] > out[2] && out[0] > out[3]);
    }

    #[test]
    fn bank_rows_match_direct_slices_and_gemm_matches_dot_products() {
        let d = 32;
        let vol = blobs(d);
        let proj = Projector::new(&vol, d, 2.0, 2.0).unwrap();
        let band = Band::new(d, 8.0);
        let n = band.len();
        let dirs = crate::so3::healpix_directions(1);
        let bank = Bank::build(&proj, &band, n, &dirs, 12).unwrap();
        assert_eq!(bank.len(), dirs.len() * 12);
        let mut direct = vec![C32::default(); n];
        let (mut num, mut den) = (0f64, 0f64);
        for (r, rot) in bank.rots.iter().enumerate().step_by(7) {
            proj.project_points(rot, &band.points(n), &mut direct).unwrap();
            for e in 0..n {
                let b = C32::new(bank.p[r * 2 * n + 2 * e], bank.p[r * 2 * n + 2 * e + 1]);
                num += (b - direct[e]).norm_sqr() as f64;
                den += direct[e].norm_sqr() as f64;
            }
        }
        assert!((num / den).sqrt() < 0.02, "bank vs direct slices: {}", (num / den).sqrt());
        // GEMM scores equal plain dot products.
        let rows = 3;
        let y: Vec<f32> = (0..rows * 2 * n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let q: Vec<f32> = (0..n).map(|i| 0.01 * (1 + i % 5) as f32).collect();
        let (mut c, mut nm) = (Vec::new(), Vec::new());
        bank_scores(&bank, 5, 9, &y, &q, rows, Scoring::Likelihood, &mut c, &mut nm);
        for row in 0..rows {
            for r in 0..9 {
                let p = &bank.p[(5 + r) * 2 * n..(6 + r) * 2 * n];
                let cross = dot(&y[row * 2 * n..(row + 1) * 2 * n], p);
                let norm: f32 = (0..n).map(|e| q[e] * bank.p2[(5 + r) * n + e]).sum();
                assert!((c[row * 9 + r] - (cross - norm)).abs() < 1e-3 * (cross.abs() + norm.abs() + 1.0));
            }
        }
    }
}
