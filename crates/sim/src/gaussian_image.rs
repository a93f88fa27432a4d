//! Analytic images of a Cα Gaussian model (cryoSTAR / cryoSPHERE forward model).
//!
//! For a pose A (RELION matrix, [`Rot3`]) a residue at x_r lands at c_r = (A·x_r)ₓᵧ (Å).
//! The image is `img(p) = Σ_r A_r·exp(−|p + t·apix − c_r|²/2σ²)` sampled at
//! `p = (j − D/2)·apix`, where t (px) is the shift in the cryoDRGN/RELION sign: the
//! experimental image is the projection moved by −t, `img(x) = proj(x + t)`. Its centred
//! D×D DFT (k in Å⁻¹, `k = (j − D/2)/(D·apix)`) is, up to aliasing beyond Nyquist,
//!
//! ```text
//! F(k) = Σ_r A_r·(2πσ²/apix²)·exp(−2π²σ²|k|²)·exp(−2πi k·c_r)·exp(+2πi k·t·apix)
//!      = Σ_r E_y[r, k_y]·E_x[r, k_x]
//! E_x[r, k] = exp(−2π²σ²k²)·exp(−2πi k (c_{r,x} − t_x·apix))
//! E_y[r, k] = A_r·(2πσ²/apix²)·exp(−2π²σ²k²)·exp(−2πi k (c_{r,y} − t_y·apix))
//! ```
//!
//! (the 1/apix² turns the continuous transform into the DFT of samples). So a whole
//! spectrum is one complex matrix product E_yᵀ·E_x of an R×(D/2+1) and an R×D matrix —
//! no per-pixel loop over residues with transcendental functions; the phasors are built
//! by recurrence. Only the rows k_y ≤ 0 are computed; the others follow from Friedel
//! symmetry F(−k) = F(k)* of a real image. The shift folds into the centres. F is
//! evaluated on the disk |k| ≤ min(D/2, k_ε) in frequency-index units — the Nyquist
//! circle, like the Fourier-slice projector, further cut where the envelope falls below
//! [`DAMP_EPS`] — and is zero outside it. Pinned by `tests/gaussian_image.rs` (measured
//! max deviation from the point-sampled sum: 2e-7 of the peak at 1 Å/px, 8e-5 at
//! 1.5 Å/px, where the Gaussian still has energy in the corners beyond Nyquist).

use cryoforge_core::fft::{Fft2, Fft2Work, C32};
use cryoforge_core::Rot3;

use crate::density::GaussianModel;
use crate::error::{check_apix, check_len, SimError};

/// Frequencies where the Gaussian envelope exp(−2π²σ²|k|²) is below this are skipped:
/// their terms are bounded by DAMP_EPS times the DC term, so the image changes by
/// ~1e-7 of its peak, while the work drops to ~2/3 at σ = 2 Å, 1 Å/px.
pub const DAMP_EPS: f64 = 1e-7;

/// Renders analytic Cα-model images of size D×D at a fixed pixel size. Shareable
/// across threads; per-thread buffers live in [`GaussianImageWork`].
#[derive(Clone)]
pub struct GaussianImager {
    d: usize,
    apix_a: f64,
    fft: Fft2,
}

/// Per-thread scratch for [`GaussianImager`]; sized on first use for a model, so calls
/// with models of at most that many residues do not allocate.
pub struct GaussianImageWork {
    exr: Vec<f32>,
    exi: Vec<f32>,
    eyr: Vec<f32>,
    eyi: Vec<f32>,
    rowr: Vec<f32>,
    rowi: Vec<f32>,
    damp: Vec<f64>,
    spec: Vec<C32>,
    fft: Fft2Work,
}

impl GaussianImager {
    /// D must be even and positive.
    pub fn new(d: usize, apix_a: f64) -> Result<GaussianImager, SimError> {
        if d == 0 {
            return Err(SimError::ZeroBox);
        }
        if d % 2 == 1 {
            return Err(SimError::OddBox { n: d, what: "Cα image rendering" });
        }
        check_apix(apix_a)?;
        Ok(GaussianImager { d, apix_a, fft: Fft2::new(d) })
    }

    pub fn box_size(&self) -> usize {
        self.d
    }

    /// Radius (frequency index) beyond which the envelope exp(−2π²σ²k²) < [`DAMP_EPS`].
    fn band_limit_index(&self, sigma_a: f64) -> usize {
        let k = (DAMP_EPS.recip().ln() / (2.0 * std::f64::consts::PI.powi(2) * sigma_a * sigma_a)).sqrt();
        let idx = (k * self.d as f64 * self.apix_a).floor();
        if idx.is_finite() {
            (idx as usize).min(self.d / 2)
        } else {
            self.d / 2
        }
    }

    pub fn apix_a(&self) -> f64 {
        self.apix_a
    }

    pub fn work(&self) -> GaussianImageWork {
        GaussianImageWork {
            exr: Vec::new(),
            exi: Vec::new(),
            eyr: Vec::new(),
            eyi: Vec::new(),
            rowr: vec![0.0; self.d],
            rowi: vec![0.0; self.d],
            damp: Vec::with_capacity(self.d),
            spec: vec![C32::default(); self.d * self.d],
            fft: self.fft.work(),
        }
    }

    /// Centred D×D spectrum of the model's image at pose `rot` and shift `shift_px`.
    pub fn spectrum(
        &self,
        model: &GaussianModel,
        rot: &Rot3,
        shift_px: [f64; 2],
        work: &mut GaussianImageWork,
        out: &mut [C32],
    ) -> Result<(), SimError> {
        let d = self.d;
        check_len("Cα image spectrum", d * d, out.len())?;
        if !(shift_px[0].is_finite() && shift_px[1].is_finite()) {
            return Err(SimError::NonFinite { what: "image shift" });
        }
        self.fill_factors(model, rot, shift_px, work);
        let (h, r) = (d / 2, model.len());
        let kmax = self.band_limit_index(model.sigma_a());
        let w = &mut *work;
        for i in 0..=h {
            let row_out = &mut out[i * d..(i + 1) * d];
            row_out.iter_mut().for_each(|v| *v = C32::default());
            // Columns inside the disk where the Gaussian envelope exceeds DAMP_EPS.
            let ky = h - i;
            if ky > kmax {
                continue;
            }
            let m = ((kmax * kmax - ky * ky) as f64).sqrt() as usize;
            let cols = h.saturating_sub(m)..(h + m + 1).min(d);
            let (rowr, rowi) = (&mut w.rowr[cols.clone()], &mut w.rowi[cols.clone()]);
            rowr.iter_mut().for_each(|v| *v = 0.0);
            rowi.iter_mut().for_each(|v| *v = 0.0);
            for k in 0..r {
                let (ar, ai) = (w.eyr[k * (h + 1) + i], w.eyi[k * (h + 1) + i]);
                let (xr, xi) = (
                    &w.exr[k * d + cols.start..k * d + cols.end],
                    &w.exi[k * d + cols.start..k * d + cols.end],
                );
                // Split real/imaginary arrays so that this loop vectorises.
                for (((or, oi), &br), &bi) in rowr.iter_mut().zip(rowi.iter_mut()).zip(xr).zip(xi) {
                    *or += ar * br - ai * bi;
                    *oi += ar * bi + ai * br;
                }
            }
            for (o, (&re, &im)) in row_out[cols].iter_mut().zip(rowr.iter().zip(rowi.iter())) {
                *o = C32::new(re, im);
            }
        }
        mirror_friedel(out, d);
        Ok(())
    }

    /// Real D×D image: the spectrum, optionally multiplied by a centred CTF grid
    /// (`cryoforge_core::ctf::ctf_grid_centered`, used as given — pass −CTF for the
    /// cryoSTAR/cryoSPHERE prediction sign), then inverse-transformed.
    pub fn image(
        &self,
        model: &GaussianModel,
        rot: &Rot3,
        shift_px: [f64; 2],
        ctf: Option<&[f32]>,
        work: &mut GaussianImageWork,
        out: &mut [f32],
    ) -> Result<(), SimError> {
        let d = self.d;
        check_len("Cα image", d * d, out.len())?;
        if let Some(c) = ctf {
            check_len("CTF grid", d * d, c.len())?;
        }
        let mut spec = std::mem::take(&mut work.spec);
        let res = self.spectrum(model, rot, shift_px, work, &mut spec);
        if res.is_ok() {
            if let Some(c) = ctf {
                spec.iter_mut().zip(c).for_each(|(s, c)| *s *= *c);
            }
            self.fft.inverse_real(&mut work.fft, &spec, out);
        }
        work.spec = spec;
        res
    }

    /// Fill E_x (R×D) and the k_y ≤ 0 half of E_y (R×(D/2+1)) — see module docs.
    fn fill_factors(&self, model: &GaussianModel, rot: &Rot3, shift_px: [f64; 2], w: &mut GaussianImageWork) {
        let (d, h, r) = (self.d, self.d / 2, model.len());
        for (v, len) in
            [(&mut w.exr, r * d), (&mut w.exi, r * d), (&mut w.eyr, r * (h + 1)), (&mut w.eyi, r * (h + 1))]
        {
            v.resize(len, 0.0);
        }
        let sigma = model.sigma_a();
        let dk = 1.0 / (d as f64 * self.apix_a);
        let norm = 2.0 * std::f64::consts::PI * sigma * sigma / (self.apix_a * self.apix_a);
        // exp(−2π²σ²k²) depends on the frequency only: D exponentials per image.
        w.damp.clear();
        w.damp.extend((0..d).map(|j| {
            let k = (j as f64 - h as f64) * dk;
            (-2.0 * std::f64::consts::PI.powi(2) * sigma * sigma * k * k).exp()
        }));
        let t = [shift_px[0] * self.apix_a, shift_px[1] * self.apix_a];
        for (k, (x, amp)) in model.centers_a().iter().zip(model.amplitudes()).enumerate() {
            let c = rot.apply(*x);
            let (rx, ix) = (&mut w.exr[k * d..(k + 1) * d], &mut w.exi[k * d..(k + 1) * d]);
            phasors(c[0] - t[0], dk, h, 1.0, &w.damp, rx, ix);
            let (ry, iy) =
                (&mut w.eyr[k * (h + 1)..(k + 1) * (h + 1)], &mut w.eyi[k * (h + 1)..(k + 1) * (h + 1)]);
            phasors(c[1] - t[1], dk, h, amp * norm, &w.damp, ry, iy);
        }
    }
}

/// `out[j] = scale·damp[j]·exp(−2πi (j − h)·dk·c)` for j = 0..len, by recurrence in f64.
fn phasors(c: f64, dk: f64, h: usize, scale: f64, damp: &[f64], re: &mut [f32], im: &mut [f32]) {
    let step_ph = -2.0 * std::f64::consts::PI * dk * c;
    let step = (step_ph.cos(), step_ph.sin());
    let start_ph = -(h as f64) * step_ph; // phase at j = 0 (k = −h·dk)
    let mut p = (start_ph.cos(), start_ph.sin());
    for ((r, i), g) in re.iter_mut().zip(im.iter_mut()).zip(damp) {
        let a = scale * g;
        *r = (a * p.0) as f32;
        *i = (a * p.1) as f32;
        p = (p.0 * step.0 - p.1 * step.1, p.0 * step.1 + p.1 * step.0);
    }
}

/// Fill rows D/2+1..D of a centred spectrum from rows 1..D/2 by `F(−k) = F(k)*`.
/// Column 0 (k_x = −D/2) has no partner on the grid and is set to zero there.
pub(crate) fn mirror_friedel(spec: &mut [C32], d: usize) {
    let h = d / 2;
    for i in h + 1..d {
        let (src, dst) = spec.split_at_mut(i * d);
        let src_row = &src[(d - i) * d..(d - i + 1) * d];
        let dst_row = &mut dst[..d];
        dst_row[0] = C32::default();
        for j in 1..d {
            dst_row[j] = src_row[d - j].conj();
        }
    }
}

/// Reference renderer: the point-sampled image `Σ_r A_r exp(−|p + t·apix − c_r|²/2σ²)`
/// summed directly in real space (separably, O(R·D²)). For validation.
pub fn gaussian_image_direct(
    model: &GaussianModel,
    rot: &Rot3,
    shift_px: [f64; 2],
    d: usize,
    apix_a: f64,
    out: &mut [f32],
) -> Result<(), SimError> {
    check_apix(apix_a)?;
    check_len("Cα reference image", d * d, out.len())?;
    let h = (d / 2) as f64;
    let inv = 1.0 / (2.0 * model.sigma_a() * model.sigma_a());
    let mut acc = vec![0f64; d * d];
    let (mut gx, mut gy) = (vec![0f64; d], vec![0f64; d]);
    for (x, amp) in model.centers_a().iter().zip(model.amplitudes()) {
        let c = rot.apply(*x);
        for (j, (vx, vy)) in gx.iter_mut().zip(gy.iter_mut()).enumerate() {
            let p = (j as f64 - h) * apix_a;
            let (dx, dy) = (p + shift_px[0] * apix_a - c[0], p + shift_px[1] * apix_a - c[1]);
            *vx = (-dx * dx * inv).exp();
            *vy = amp * (-dy * dy * inv).exp();
        }
        for (row, vy) in acc.chunks_exact_mut(d).zip(&gy) {
            row.iter_mut().zip(&gx).for_each(|(o, vx)| *o += vy * vx);
        }
    }
    out.iter_mut().zip(&acc).for_each(|(o, a)| *o = *a as f32);
    Ok(())
}
