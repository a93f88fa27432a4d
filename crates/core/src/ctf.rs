//! Contrast transfer function, in cryoDRGN's formula and sign.
//!
//! ```text
//! λ  = 12.2639 / sqrt(V + 0.97845e-6·V²)         (Å; V in volts)
//! Δf = ½(dfU + dfV + (dfU − dfV)·cos(2(α − dfAng)))  (Å, underfocus positive)
//! γ  = 2π(−½·Δf·λ·s² + ¼·Cs·λ³·s⁴) − φ
//! CTF = scale · (sqrt(1 − w²)·sin γ − w·cos γ) · exp(−B·s²/4)
//! ```
//! with s = (sx, sy) in 1/Å, sx along image columns, α = atan2(sy, sx).
//! `CTF(0) = −w·scale`: the physical sign under which a protein (positive
//! potential) images dark. RELION-extracted particles are protein-bright, so the
//! forward model of cryoforge is `image = F⁻¹[−CTF · F[projection]]` (see
//! CONVENTIONS.md). Pinned by `tests::ctf_matches_cryodrgn_golden`.

use serde::{Deserialize, Serialize};

/// Per-particle CTF parameters with explicit units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CtfParams {
    pub defocus_u_a: f64,
    pub defocus_v_a: f64,
    pub defocus_angle_deg: f64,
    pub voltage_kv: f64,
    pub cs_mm: f64,
    pub amp_contrast: f64,
    pub phase_shift_deg: f64,
    /// Envelope B-factor in Å² (`rlnCtfBfactor`); 0 means none.
    pub bfactor_a2: f64,
    /// Overall scale (`rlnCtfScalefactor`, cryoSPARC `ctf/scale`); 1 means none.
    pub scale: f64,
}

impl Default for CtfParams {
    fn default() -> Self {
        CtfParams {
            defocus_u_a: 15000.0,
            defocus_v_a: 15000.0,
            defocus_angle_deg: 0.0,
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amp_contrast: 0.1,
            phase_shift_deg: 0.0,
            bfactor_a2: 0.0,
            scale: 1.0,
        }
    }
}

/// Relativistic electron wavelength in Å for an acceleration voltage in kV.
pub fn electron_wavelength_a(voltage_kv: f64) -> f64 {
    let v = voltage_kv * 1000.0;
    12.2639 / (v + 0.97845e-6 * v * v).sqrt()
}

/// Precomputed constants of one CTF, for fast repeated evaluation.
#[derive(Debug, Clone, Copy)]
pub struct CtfEval {
    lambda: f64,
    cs_a: f64,
    df_mean: f64,
    df_diff: f64,
    df_ang: f64,
    phase: f64,
    w: f64,
    sqrt_1mw2: f64,
    bfactor: f64,
    scale: f64,
}

impl CtfParams {
    /// Error message when a parameter is non-finite or physically impossible.
    pub fn check(&self) -> Result<(), String> {
        let vals = [
            ("defocus U", self.defocus_u_a),
            ("defocus V", self.defocus_v_a),
            ("defocus angle", self.defocus_angle_deg),
            ("voltage", self.voltage_kv),
            ("Cs", self.cs_mm),
            ("amplitude contrast", self.amp_contrast),
            ("phase shift", self.phase_shift_deg),
            ("B-factor", self.bfactor_a2),
            ("scale", self.scale),
        ];
        for (n, v) in vals {
            if !v.is_finite() {
                return Err(format!("CTF {n} is {v}"));
            }
        }
        if self.voltage_kv <= 0.0 {
            return Err(format!("CTF voltage {} kV must be positive", self.voltage_kv));
        }
        if !(0.0..=1.0).contains(&self.amp_contrast) {
            return Err(format!("CTF amplitude contrast {} must lie in [0, 1]", self.amp_contrast));
        }
        Ok(())
    }

    pub fn evaluator(&self) -> CtfEval {
        let w = self.amp_contrast;
        CtfEval {
            lambda: electron_wavelength_a(self.voltage_kv),
            cs_a: self.cs_mm * 1e7,
            df_mean: 0.5 * (self.defocus_u_a + self.defocus_v_a),
            df_diff: 0.5 * (self.defocus_u_a - self.defocus_v_a),
            df_ang: self.defocus_angle_deg.to_radians(),
            phase: self.phase_shift_deg.to_radians(),
            w,
            sqrt_1mw2: (1.0 - w * w).max(0.0).sqrt(),
            bfactor: self.bfactor_a2,
            scale: self.scale,
        }
    }

    /// CTF at spatial frequency (sx, sy) in 1/Å.
    pub fn eval(&self, sx: f64, sy: f64) -> f64 {
        self.evaluator().eval(sx, sy)
    }
}

impl CtfEval {
    /// The phase γ (radians) at spatial frequency (sx, sy) in 1/Å.
    #[inline]
    pub fn gamma(&self, sx: f64, sy: f64) -> f64 {
        let s2 = sx * sx + sy * sy;
        let alpha = sy.atan2(sx);
        let df = self.df_mean + self.df_diff * (2.0 * (alpha - self.df_ang)).cos();
        let l = self.lambda;
        2.0 * std::f64::consts::PI * (-0.5 * df * l * s2 + 0.25 * self.cs_a * l * l * l * s2 * s2)
            - self.phase
    }

    /// CTF at spatial frequency (sx, sy) in 1/Å.
    #[inline]
    pub fn eval(&self, sx: f64, sy: f64) -> f64 {
        let s2 = sx * sx + sy * sy;
        let gamma = self.gamma(sx, sy);
        let mut c = self.sqrt_1mw2 * gamma.sin() - self.w * gamma.cos();
        if self.bfactor != 0.0 {
            c *= (-self.bfactor * s2 / 4.0).exp();
        }
        c * self.scale
    }
}

/// Fill `out` (D×D, row-major) with the CTF on the centred grid: element
/// `[row][col]` at `s = ((col − D/2), (row − D/2)) / (D·apix)`.
pub fn ctf_grid_centered(p: &CtfParams, d: usize, apix_a: f64, out: &mut [f32]) {
    assert_eq!(out.len(), d * d, "ctf_grid_centered: output must be D×D");
    let e = p.evaluator();
    let inv = 1.0 / (d as f64 * apix_a);
    let h = (d / 2) as f64;
    for (r, row) in out.chunks_exact_mut(d).enumerate() {
        let sy = (r as f64 - h) * inv;
        for (c, v) in row.iter_mut().enumerate() {
            *v = e.eval((c as f64 - h) * inv, sy) as f32;
        }
    }
}

/// Fill `out` (D × (D/2+1), row-major) with the CTF on the half-plane layout of a
/// real FFT in **unshifted** order: row r ↔ ky = r for r < D/2 else r − D,
/// column c ↔ kx = c.
pub fn ctf_grid_rfft(p: &CtfParams, d: usize, apix_a: f64, out: &mut [f32]) {
    let w = d / 2 + 1;
    assert_eq!(out.len(), d * w, "ctf_grid_rfft: output must be D×(D/2+1)");
    let e = p.evaluator();
    let inv = 1.0 / (d as f64 * apix_a);
    for (r, row) in out.chunks_exact_mut(w).enumerate() {
        let ky = if r < d.div_ceil(2) { r as f64 } else { r as f64 - d as f64 };
        for (c, v) in row.iter_mut().enumerate() {
            *v = e.eval(c as f64 * inv, ky * inv) as f32;
        }
    }
}

/// Per-pixel geometry of a centred D×D frequency grid, precomputed so that a CTF is
/// one `sin_cos` per pixel (for the many particles of a stack).
#[derive(Debug, Clone)]
pub struct CtfGrid {
    d: usize,
    /// The full centred D×D grid (D even): the CTF is even, CTF(−k) = CTF(k), so only the
    /// rows k_y ≤ 0 are evaluated and the rest mirrored.
    centred: bool,
    s2: Vec<f64>,
    cos2a: Vec<f64>,
    sin2a: Vec<f64>,
}

impl CtfGrid {
    /// Grid of `ctf_grid_centered`: element `[row][col]` at `((col − D/2), (row − D/2))/(D·apix)`.
    pub fn new(d: usize, apix_a: f64) -> CtfGrid {
        let h = (d / 2) as isize;
        Self::from_indices(
            d,
            apix_a,
            (0..d).flat_map(|r| (0..d).map(move |c| (c as isize - h, r as isize - h))),
        )
    }

    /// Grid of the half-plane layout of [`crate::fft::Rfft2`] (D × (D/2+1): row r ↔
    /// k_y = r for r < D/2 else r − D, column c ↔ kₓ = c), equal to `ctf_grid_rfft`.
    pub fn new_half(d: usize, apix_a: f64) -> CtfGrid {
        let half = d / 2;
        let ky = move |r: usize| if r < half { r as isize } else { r as isize - d as isize };
        Self::from_indices(d, apix_a, (0..d).flat_map(move |r| (0..=half).map(move |c| (c as isize, ky(r)))))
    }

    fn from_indices(d: usize, apix_a: f64, ks: impl Iterator<Item = (isize, isize)>) -> CtfGrid {
        let inv = 1.0 / (d as f64 * apix_a);
        let mut g = CtfGrid { d, centred: false, s2: Vec::new(), cos2a: Vec::new(), sin2a: Vec::new() };
        for (kx, ky) in ks {
            let (sx, sy) = (kx as f64 * inv, ky as f64 * inv);
            let a = sy.atan2(sx);
            g.s2.push(sx * sx + sy * sy);
            g.cos2a.push((2.0 * a).cos());
            g.sin2a.push((2.0 * a).sin());
        }
        g
    }

    /// Number of grid points.
    pub fn len(&self) -> usize {
        self.s2.len()
    }

    pub fn is_empty(&self) -> bool {
        self.s2.is_empty()
    }

    pub fn size(&self) -> usize {
        self.d
    }

    /// Fill `out` (one value per grid point) with the CTF of `p`.
    pub fn fill(&self, p: &CtfParams, out: &mut [f32]) {
        assert_eq!(out.len(), self.len(), "CtfGrid::fill: output length must match the grid");
        if !self.centred {
            self.fill_range(p, 0..self.len(), out);
            return;
        }
        // Rows 0..=D/2 hold k_y ≤ 0; row r > D/2 is the mirror of row D − r (columns c ≥ 1
        // mirror to D − c; column 0, kₓ = −D/2, has no mirror inside the grid).
        let d = self.d;
        let h = d / 2;
        self.fill_range(p, 0..(h + 1) * d, out);
        for r in h + 1..d {
            let m = d - r;
            for c in 1..d {
                out[r * d + c] = out[m * d + (d - c)];
            }
            self.fill_range(p, r * d..r * d + 1, out);
        }
    }

    fn fill_range(&self, p: &CtfParams, range: std::ops::Range<usize>, out: &mut [f32]) {
        let e = p.evaluator();
        let (c2, s2a) = ((2.0 * e.df_ang).cos(), (2.0 * e.df_ang).sin());
        let l = e.lambda;
        let k1 = -std::f64::consts::PI * l;
        let k2 = 0.5 * std::f64::consts::PI * e.cs_a * l * l * l;
        for i in range {
            let s2 = self.s2[i];
            // cos(2(α − ang)) = cos2α·cos2ang + sin2α·sin2ang
            let df = e.df_mean + e.df_diff * (self.cos2a[i] * c2 + self.sin2a[i] * s2a);
            let gamma = k1 * df * s2 + k2 * s2 * s2 - e.phase;
            let (sg, cg) = gamma.sin_cos();
            let mut v = e.sqrt_1mw2 * sg - e.w * cg;
            if e.bfactor != 0.0 {
                v *= (-e.bfactor * s2 / 4.0).exp();
            }
            out[i] = (v * e.scale) as f32;
        }
    }
}

/// Phase flipping: multiply a spectrum by −sign(CTF) (cryoDRGN-sign CTF grid, same
/// layout), turning protein-bright particles into CTF-sign-corrected ones.
pub fn phase_flip(spec: &mut [crate::fft::C32], ctf: &[f32]) {
    for (v, c) in spec.iter_mut().zip(ctf) {
        *v *= if *c > 0.0 {
            -1.0
        } else if *c < 0.0 {
            1.0
        } else {
            0.0
        };
    }
}

/// Wiener correction of one image: `X·(−CTF)/(CTF² + 1/SNR)` (protein-bright convention).
pub fn wiener_filter(spec: &mut [crate::fft::C32], ctf: &[f32], snr: f64) {
    let reg = if snr > 0.0 { (1.0 / snr) as f32 } else { f32::INFINITY };
    for (v, c) in spec.iter_mut().zip(ctf) {
        *v *= -*c / (c * c + reg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: cryoDRGN 4.3.1 `cryodrgn.ctf.compute_ctf` on a 64×64 grid at 1.5 Å/px.
    #[test]
    fn ctf_matches_cryodrgn_golden() {
        let Some(path) =
            crate::testdata::test_data_file("ctf_matches_cryodrgn_golden", "reference/cryodrgn_golden.json")
        else {
            return;
        };
        let s = std::fs::read_to_string(&path).unwrap();
        let g: serde_json::Value = serde_json::from_str(&s).unwrap();
        let c = &g["ctf"];
        let d = c["box"].as_u64().unwrap() as usize;
        let apix = c["apix_A"].as_f64().unwrap();
        for case in c["cases"].as_array().unwrap() {
            let pr = &case["params"];
            let f = |k: &str| pr[k].as_f64().unwrap_or(0.0);
            let p = CtfParams {
                defocus_u_a: f("defocus_u_A"),
                defocus_v_a: f("defocus_v_A"),
                defocus_angle_deg: f("defocus_angle_deg"),
                voltage_kv: f("voltage_kV"),
                cs_mm: f("cs_mm"),
                amp_contrast: f("amplitude_contrast"),
                phase_shift_deg: f("phase_shift_deg"),
                bfactor_a2: f("bfactor_A2"),
                scale: 1.0,
            };
            let want: Vec<f64> =
                case["ctf_row_major"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let e = p.evaluator();
            let h = (d / 2) as f64;
            let inv = 1.0 / (d as f64 * apix);
            for r in 0..d {
                for col in 0..d {
                    let (sx, sy) = ((col as f64 - h) * inv, (r as f64 - h) * inv);
                    let got = e.eval(sx, sy);
                    let w = want[r * d + col];
                    // cryoDRGN evaluates in float32 (torch): its γ carries a rounding error
                    // of order ε₃₂·|γ| (measured: ≤ 0.4·ε₃₂·|γ|). Tolerance: 1e-6 plus 2·ε₃₂·|γ|.
                    let tol = 1e-6 + 2.0 * f32::EPSILON as f64 * e.gamma(sx, sy).abs();
                    assert!((got - w).abs() <= tol, "{p:?} [{r}][{col}] {got} vs {w} (tol {tol:.2e})");
                }
            }
            // The f32 grid filler agrees with the scalar evaluator.
            let mut grid = vec![0f32; d * d];
            ctf_grid_centered(&p, d, apix, &mut grid);
            for (i, g) in grid.iter().enumerate() {
                let (sx, sy) = (((i % d) as f64 - h) * inv, ((i / d) as f64 - h) * inv);
                assert!((*g as f64 - e.eval(sx, sy)).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn ctf_at_zero_is_minus_amplitude_contrast() {
        let p = CtfParams { amp_contrast: 0.07, ..Default::default() };
        assert!((p.eval(0.0, 0.0) + 0.07).abs() < 1e-12);
    }

    #[test]
    fn rfft_grid_matches_centered_grid() {
        let p = CtfParams {
            defocus_u_a: 12000.0,
            defocus_v_a: 9000.0,
            defocus_angle_deg: 33.0,
            ..Default::default()
        };
        let d = 16;
        let mut c = vec![0f32; d * d];
        let mut h = vec![0f32; d * (d / 2 + 1)];
        ctf_grid_centered(&p, d, 1.3, &mut c);
        ctf_grid_rfft(&p, d, 1.3, &mut h);
        for r in 0..d {
            for k in 0..=d / 2 {
                let cr = (r + d / 2) % d; // centred row of unshifted row r
                let cc = k + d / 2; // centred column of kx = k (k ≤ D/2)
                if cc < d {
                    assert!((h[r * (d / 2 + 1) + k] - c[cr * d + cc]).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn ctf_grid_cache_matches_direct_grid() {
        let p = CtfParams {
            defocus_u_a: 21000.0,
            defocus_v_a: 17000.0,
            defocus_angle_deg: -61.0,
            phase_shift_deg: 30.0,
            bfactor_a2: 40.0,
            scale: 0.9,
            ..Default::default()
        };
        for d in [16usize, 17] {
            let g = CtfGrid::new(d, 1.7);
            let (mut a, mut b) = (vec![0f32; d * d], vec![0f32; d * d]);
            g.fill(&p, &mut a);
            ctf_grid_centered(&p, d, 1.7, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "{x} {y}");
            }
        }
        let d = 16;
        let g = CtfGrid::new_half(d, 1.7);
        let (mut a, mut b) = (vec![0f32; d * (d / 2 + 1)], vec![0f32; d * (d / 2 + 1)]);
        g.fill(&p, &mut a);
        ctf_grid_rfft(&p, d, 1.7, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} {y}");
        }
    }

    #[test]
    fn phase_flip_and_wiener_undo_the_ctf_sign() {
        use crate::fft::C32;
        let ctf = [0.5f32, -0.25, 0.0];
        // Protein-bright image: X = −CTF·P with P = 1.
        let mut x: Vec<C32> = ctf.iter().map(|c| C32::new(-c, 0.0)).collect();
        let mut y = x.clone();
        phase_flip(&mut x, &ctf);
        assert_eq!(x.iter().map(|v| v.re).collect::<Vec<_>>(), vec![0.5, 0.25, 0.0]);
        wiener_filter(&mut y, &ctf, 1e9);
        assert!((y[0].re - 1.0).abs() < 1e-6 && (y[1].re - 1.0).abs() < 1e-6 && y[2].re == 0.0);
    }

    #[test]
    fn wavelength_300kv() {
        assert!((electron_wavelength_a(300.0) - 0.019687).abs() < 1e-5);
    }
}
