//! FFTs in the centred layout of CONVENTIONS.md.
//!
//! `F = fftshift(fftn(ifftshift(x)))`: the real-space origin is pixel `D/2` (integer
//! division) of each axis and the zero frequency lands at index `D/2` of the
//! output. The forward transform is unnormalised, the inverse divides by the
//! number of elements, so `inverse(forward(x)) = x`. Arrays are row-major with the
//! last axis (x, columns) fastest: images `[y][x]`, volumes `[z][y][x]`.
//!
//! Plans are built once per size ([`Fft2`], [`Fft3`]) and shared between threads;
//! per-thread scratch lives in the work structs passed to each call, so hot loops
//! do not allocate. Pinned by `tests::matches_naive_dft`, `tests::round_trip_2d`,
//! `tests::round_trip_3d` and `tests::centred_delta_has_flat_spectrum`.

use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

pub type C32 = Complex<f32>;

/// `ifftshift` source index: output element `i` takes input element `(i + n/2) mod n`.
#[inline]
pub fn ifftshift_index(i: usize, n: usize) -> usize {
    (i + n / 2) % n
}

/// The re-centring factor of frequency `k` (Fourier pixels, any layout) for a particle
/// shifted by `t_px` pixels along that axis in a box of `d`: `exp(−2πi·k·t/D)`
/// (CONVENTIONS.md rule 5; simulation applies the conjugate). Computed in f64.
#[inline]
pub fn recentre_phasor(k: f64, t_px: f64, d: usize) -> C32 {
    let (s, c) = (-std::f64::consts::TAU * k * t_px / d as f64).sin_cos();
    C32::new(c as f32, s as f32)
}

/// [`recentre_phasor`] of a 2D frequency `k` = (kₓ, k_y) and shift `t_px` = (tₓ, t_y):
/// `exp(−2πi·k·t/D)`.
#[inline]
pub fn recentre_phasor_2d(k: [f64; 2], t_px: [f64; 2], d: usize) -> C32 {
    recentre_phasor(k[0] * t_px[0] + k[1] * t_px[1], 1.0, d)
}

/// `fftshift` source index: output element `i` takes input element `(i + n − n/2) mod n`
/// (equal to [`ifftshift_index`] for even n).
#[inline]
pub fn fftshift_index(i: usize, n: usize) -> usize {
    (i + n - n / 2) % n
}

/// Centred index of the Friedel mirror of centred index `i` (frequency −k of frequency k)
/// on an axis of length n: `(2·(n/2) − i) mod n`. For even n the frequency −n/2 (index 0)
/// is its own mirror, by periodicity.
#[inline]
pub fn friedel_mirror_index(i: usize, n: usize) -> usize {
    (2 * (n / 2) + n - i) % n
}

/// Signed frequency index of centred position `i` on an axis of length n: `i − n/2`.
#[inline]
pub fn centered_freq(i: usize, n: usize) -> isize {
    i as isize - (n / 2) as isize
}

/// 2D complex FFT plans for D×D images (forward and inverse), shareable across threads.
#[derive(Clone)]
pub struct Fft2 {
    d: usize,
    fwd: Arc<dyn Fft<f32>>,
    inv: Arc<dyn Fft<f32>>,
}

/// Per-thread scratch for [`Fft2`].
pub struct Fft2Work {
    buf: Vec<C32>,
    col: Vec<C32>,
    scratch: Vec<C32>,
}

impl Fft2 {
    pub fn new(d: usize) -> Fft2 {
        let mut p = FftPlanner::<f32>::new();
        Fft2 { d, fwd: p.plan_fft_forward(d), inv: p.plan_fft_inverse(d) }
    }

    pub fn size(&self) -> usize {
        self.d
    }

    pub fn work(&self) -> Fft2Work {
        let s = self.fwd.get_inplace_scratch_len().max(self.inv.get_inplace_scratch_len());
        Fft2Work {
            buf: vec![C32::default(); self.d * self.d],
            col: vec![C32::default(); self.d],
            scratch: vec![C32::default(); s],
        }
    }

    /// Transform `w.buf` in place (rows then columns), unnormalised.
    fn transform(&self, w: &mut Fft2Work, plan: &Arc<dyn Fft<f32>>) {
        let d = self.d;
        plan.process_with_scratch(&mut w.buf, &mut w.scratch);
        for c in 0..d {
            for r in 0..d {
                w.col[r] = w.buf[r * d + c];
            }
            plan.process_with_scratch(&mut w.col, &mut w.scratch);
            for r in 0..d {
                w.buf[r * d + c] = w.col[r];
            }
        }
    }

    /// Centred forward transform of a real D×D image into `out` (D×D complex).
    pub fn forward_real(&self, w: &mut Fft2Work, img: &[f32], out: &mut [C32]) {
        let d = self.d;
        assert!(img.len() == d * d && out.len() == d * d, "Fft2::forward_real: wrong sizes");
        for r in 0..d {
            let sr = ifftshift_index(r, d);
            for c in 0..d {
                w.buf[r * d + c] = C32::new(img[sr * d + ifftshift_index(c, d)], 0.0);
            }
        }
        self.transform(w, &self.fwd.clone());
        for r in 0..d {
            let sr = fftshift_index(r, d);
            for c in 0..d {
                out[r * d + c] = w.buf[sr * d + fftshift_index(c, d)];
            }
        }
    }

    /// Centred forward transform of a complex D×D array (centred in, centred out).
    pub fn forward_complex(&self, w: &mut Fft2Work, x: &[C32], out: &mut [C32]) {
        self.centred(w, x, out, true)
    }

    /// Centred inverse transform (divides by D²) of a complex D×D array.
    pub fn inverse_complex(&self, w: &mut Fft2Work, x: &[C32], out: &mut [C32]) {
        self.centred(w, x, out, false)
    }

    fn centred(&self, w: &mut Fft2Work, x: &[C32], out: &mut [C32], forward: bool) {
        let d = self.d;
        assert!(x.len() == d * d && out.len() == d * d, "Fft2: wrong sizes");
        for r in 0..d {
            let sr = ifftshift_index(r, d);
            for c in 0..d {
                w.buf[r * d + c] = x[sr * d + ifftshift_index(c, d)];
            }
        }
        let plan = if forward { self.fwd.clone() } else { self.inv.clone() };
        self.transform(w, &plan);
        let norm = if forward { 1.0 } else { 1.0 / (d * d) as f32 };
        for r in 0..d {
            let sr = fftshift_index(r, d);
            for c in 0..d {
                out[r * d + c] = w.buf[sr * d + fftshift_index(c, d)] * norm;
            }
        }
    }

    /// Centred inverse transform returning the real part (divides by D²).
    pub fn inverse_real(&self, w: &mut Fft2Work, x: &[C32], out: &mut [f32]) {
        let d = self.d;
        assert!(x.len() == d * d && out.len() == d * d, "Fft2::inverse_real: wrong sizes");
        for r in 0..d {
            let sr = ifftshift_index(r, d);
            for c in 0..d {
                w.buf[r * d + c] = x[sr * d + ifftshift_index(c, d)];
            }
        }
        self.transform(w, &self.inv.clone());
        let norm = 1.0 / (d * d) as f32;
        for r in 0..d {
            let sr = fftshift_index(r, d);
            for c in 0..d {
                out[r * d + c] = w.buf[sr * d + fftshift_index(c, d)].re * norm;
            }
        }
    }
}

/// Half-plane 2D FFT of real D×D images (D even): the kₓ ≥ 0 half of the centred
/// spectrum, stored D × (D/2+1) with row r ↔ k_y = r for r < D/2, else r − D, and
/// column c ↔ kₓ = c. Same values as [`Fft2::forward_real`] at those frequencies, for
/// about half the work.
#[derive(Clone)]
pub struct Rfft2 {
    d: usize,
    r2c: Arc<dyn realfft::RealToComplex<f32>>,
    c2r: Arc<dyn realfft::ComplexToReal<f32>>,
    fwd: Arc<dyn Fft<f32>>,
    inv: Arc<dyn Fft<f32>>,
}

/// Per-thread scratch for [`Rfft2`].
pub struct Rfft2Work {
    row: Vec<f32>,
    row_out: Vec<C32>,
    col: Vec<C32>,
    rscratch: Vec<C32>,
    iscratch: Vec<C32>,
    cscratch: Vec<C32>,
}

impl Rfft2 {
    pub fn new(d: usize) -> Rfft2 {
        assert!(d.is_multiple_of(2) && d > 0, "Rfft2 needs an even size");
        let mut rp = realfft::RealFftPlanner::<f32>::new();
        let mut cp = FftPlanner::<f32>::new();
        let (r2c, c2r) = (rp.plan_fft_forward(d), rp.plan_fft_inverse(d));
        let (fwd, inv) = (cp.plan_fft_forward(d), cp.plan_fft_inverse(d));
        Rfft2 { d, r2c, c2r, fwd, inv }
    }

    pub fn size(&self) -> usize {
        self.d
    }

    pub fn work(&self) -> Rfft2Work {
        Rfft2Work {
            row: vec![0.0; self.d],
            row_out: vec![C32::default(); self.d / 2 + 1],
            col: vec![C32::default(); self.d],
            rscratch: self.r2c.make_scratch_vec(),
            iscratch: self.c2r.make_scratch_vec(),
            cscratch: vec![
                C32::default();
                self.fwd.get_inplace_scratch_len().max(self.inv.get_inplace_scratch_len())
            ],
        }
    }

    /// Signed k_y of stored row r.
    #[inline]
    pub fn row_freq(&self, r: usize) -> isize {
        if r < self.d / 2 {
            r as isize
        } else {
            r as isize - self.d as isize
        }
    }

    /// Forward transform of `img` (D×D, origin at pixel D/2) into `out` (D×(D/2+1)).
    pub fn forward(&self, w: &mut Rfft2Work, img: &[f32], out: &mut [C32]) {
        self.forward_low(w, img, self.d / 2, out);
    }
}

impl Rfft2 {
    /// [`Rfft2::forward`] restricted to the columns kₓ = 0..=`kx_max`: every row is
    /// transformed, but only `kx_max + 1` column FFTs are done. `out` is D × (kx_max + 1),
    /// row r ↔ k_y as in `forward`. For band-limited consumers (a 10 Å band of a 128 px
    /// image needs 13 of the 65 columns); negative kₓ follow from F(k_y, −kₓ) =
    /// conj F(−k_y, kₓ).
    pub fn forward_low(&self, w: &mut Rfft2Work, img: &[f32], kx_max: usize, out: &mut [C32]) {
        let (d, nh) = (self.d, self.d / 2 + 1);
        let nc = (kx_max + 1).min(nh);
        assert!(img.len() == d * d && out.len() == d * nc, "Rfft2::forward_low: wrong sizes");
        for y in 0..d {
            let src = &img[ifftshift_index(y, d) * d..][..d];
            for (x, v) in w.row.iter_mut().enumerate() {
                *v = src[ifftshift_index(x, d)];
            }
            // Lengths are fixed at construction: realfft only fails on wrong lengths.
            let _ = self.r2c.process_with_scratch(&mut w.row, &mut w.row_out, &mut w.rscratch);
            out[y * nc..(y + 1) * nc].copy_from_slice(&w.row_out[..nc]);
        }
        for c in 0..nc {
            for y in 0..d {
                w.col[y] = out[y * nc + c];
            }
            self.fwd.process_with_scratch(&mut w.col, &mut w.cscratch);
            for y in 0..d {
                out[y * nc + c] = w.col[y];
            }
        }
    }

    /// Inverse of [`Rfft2::forward`] (divides by D²): the half-plane spectrum `half`
    /// (overwritten) to the real D×D image `out` with its origin at pixel D/2.
    pub fn inverse(&self, w: &mut Rfft2Work, half: &mut [C32], out: &mut [f32]) {
        let (d, nh) = (self.d, self.d / 2 + 1);
        assert!(half.len() == d * nh && out.len() == d * d, "Rfft2::inverse: wrong sizes");
        for c in 0..nh {
            for y in 0..d {
                w.col[y] = half[y * nh + c];
            }
            self.inv.process_with_scratch(&mut w.col, &mut w.cscratch);
            for y in 0..d {
                half[y * nh + c] = w.col[y];
            }
        }
        let norm = 1.0 / (d * d) as f32;
        for y in 0..d {
            w.row_out.copy_from_slice(&half[y * nh..(y + 1) * nh]);
            // The DC and Nyquist columns of a real image are real; drop rounding residue.
            w.row_out[0].im = 0.0;
            w.row_out[nh - 1].im = 0.0;
            let _ = self.c2r.process_with_scratch(&mut w.row_out, &mut w.row, &mut w.iscratch);
            let dst = &mut out[fftshift_index(y, d) * d..][..d];
            for (x, v) in dst.iter_mut().enumerate() {
                *v = w.row[fftshift_index(x, d)] * norm;
            }
        }
    }

    /// The half-plane layout of a centred D×D spectrum (Friedel-completed at kₓ = D/2).
    pub fn half_from_centred(&self, full: &[C32], half: &mut [C32]) {
        let (d, h) = (self.d, self.d / 2);
        let nh = h + 1;
        for r in 0..d {
            let ky = self.row_freq(r);
            let fr = (ky + h as isize) as usize;
            half[r * nh..r * nh + h].copy_from_slice(&full[fr * d + h..fr * d + d]);
            let mr = if ky == -(h as isize) { 0 } else { (h as isize - ky) as usize };
            half[r * nh + h] = full[mr * d].conj();
        }
    }
}

/// 3D centred FFT of an n×n×n volume (`[z][y][x]`), parallel over lines with rayon.
pub struct Fft3 {
    n: usize,
    fwd: Arc<dyn Fft<f32>>,
    inv: Arc<dyn Fft<f32>>,
}

impl Fft3 {
    pub fn new(n: usize) -> Fft3 {
        let mut p = FftPlanner::<f32>::new();
        Fft3 { n, fwd: p.plan_fft_forward(n), inv: p.plan_fft_inverse(n) }
    }

    /// Centred forward transform of a real volume.
    pub fn forward_real(&self, vol: &[f32]) -> Vec<C32> {
        let c: Vec<C32> = vol.iter().map(|&v| C32::new(v, 0.0)).collect();
        self.forward_complex(&c)
    }

    pub fn forward_complex(&self, x: &[C32]) -> Vec<C32> {
        self.run(x, true)
    }

    /// Centred inverse transform (divides by n³).
    pub fn inverse_complex(&self, x: &[C32]) -> Vec<C32> {
        self.run(x, false)
    }

    fn run(&self, x: &[C32], forward: bool) -> Vec<C32> {
        let n = self.n;
        assert_eq!(x.len(), n * n * n, "Fft3: wrong size");
        let mut buf = shift3(x, n, ifftshift_index);
        let plan = if forward { &self.fwd } else { &self.inv };
        // x lines are contiguous.
        buf.par_chunks_mut(n).for_each_init(
            || vec![C32::default(); plan.get_inplace_scratch_len()],
            |s, line| plan.process_with_scratch(line, s),
        );
        // y lines: stride n within each z slab.
        buf.par_chunks_mut(n * n).for_each_init(
            || (vec![C32::default(); n], vec![C32::default(); plan.get_inplace_scratch_len()]),
            |(line, s), slab| {
                for xi in 0..n {
                    for y in 0..n {
                        line[y] = slab[y * n + xi];
                    }
                    plan.process_with_scratch(line, s);
                    for y in 0..n {
                        slab[y * n + xi] = line[y];
                    }
                }
            },
        );
        // z lines: transpose-free gather per (y, x) column, parallel over y.
        let nn = n * n;
        let cols: Vec<Vec<C32>> = (0..n)
            .into_par_iter()
            .map_init(
                || (vec![C32::default(); n], vec![C32::default(); plan.get_inplace_scratch_len()]),
                |(line, s), y| {
                    let mut outcol = vec![C32::default(); n * n];
                    for xi in 0..n {
                        for z in 0..n {
                            line[z] = buf[z * nn + y * n + xi];
                        }
                        plan.process_with_scratch(line, s);
                        outcol[xi * n..(xi + 1) * n].copy_from_slice(line);
                    }
                    outcol
                },
            )
            .collect();
        for (y, col) in cols.iter().enumerate() {
            for xi in 0..n {
                for z in 0..n {
                    buf[z * nn + y * n + xi] = col[xi * n + z];
                }
            }
        }
        let mut out = shift3(&buf, n, fftshift_index);
        if !forward {
            let s = 1.0 / (n * n * n) as f32;
            out.par_iter_mut().for_each(|v| *v *= s);
        }
        out
    }
}

fn shift3(x: &[C32], n: usize, idx: fn(usize, usize) -> usize) -> Vec<C32> {
    let nn = n * n;
    let mut out = vec![C32::default(); n * nn];
    out.par_chunks_mut(nn).enumerate().for_each(|(z, slab)| {
        let sz = idx(z, n);
        for y in 0..n {
            let sy = idx(y, n);
            for xi in 0..n {
                slab[y * n + xi] = x[sz * nn + sy * n + idx(xi, n)];
            }
        }
    });
    out
}

/// Fourier crop (D > d) or zero-pad (D < d) of a centred D×D spectrum to d×d:
/// keeps the frequencies |k| ≤ d/2 around the centre.
pub fn resize_centered_spectrum(x: &[C32], d_in: usize, d_out: usize, out: &mut [C32]) {
    assert!(x.len() == d_in * d_in && out.len() == d_out * d_out, "resize_centered_spectrum: sizes");
    out.iter_mut().for_each(|v| *v = C32::default());
    let (ci, co) = ((d_in / 2) as isize, (d_out / 2) as isize);
    for r in 0..d_out {
        let kr = r as isize - co;
        let sr = kr + ci;
        if sr < 0 || sr >= d_in as isize {
            continue;
        }
        for c in 0..d_out {
            let sc = c as isize - co + ci;
            if sc < 0 || sc >= d_in as isize {
                continue;
            }
            out[r * d_out + c] = x[sr as usize * d_in + sc as usize];
        }
    }
}

/// Resample one D×D image to d×d by Fourier cropping or padding (as `cryodrgn
/// downsample`): the sum of the pixels is preserved, so intensities scale by (D/d)².
pub struct FourierResizer {
    fin: Fft2,
    fout: Fft2,
    win: Fft2Work,
    wout: Fft2Work,
    spec_in: Vec<C32>,
    spec_out: Vec<C32>,
}

impl FourierResizer {
    pub fn new(d_in: usize, d_out: usize) -> Self {
        let fin = Fft2::new(d_in);
        let fout = Fft2::new(d_out);
        let (win, wout) = (fin.work(), fout.work());
        FourierResizer {
            fin,
            fout,
            win,
            wout,
            spec_in: vec![C32::default(); d_in * d_in],
            spec_out: vec![C32::default(); d_out * d_out],
        }
    }

    pub fn resize(&mut self, img: &[f32], out: &mut [f32]) {
        let (di, d) = (self.fin.size(), self.fout.size());
        self.fin.forward_real(&mut self.win, img, &mut self.spec_in);
        resize_centered_spectrum(&self.spec_in, di, d, &mut self.spec_out);
        self.fout.inverse_real(&mut self.wout, &self.spec_out, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_centered_dft(x: &[f32], d: usize) -> Vec<Complex<f64>> {
        let h = (d / 2) as f64;
        let mut out = vec![Complex::<f64>::default(); d * d];
        for kr in 0..d {
            for kc in 0..d {
                let mut s = Complex::<f64>::default();
                for r in 0..d {
                    for c in 0..d {
                        let ph = -2.0
                            * std::f64::consts::PI
                            * ((kr as f64 - h) * (r as f64 - h) + (kc as f64 - h) * (c as f64 - h))
                            / d as f64;
                        s += Complex::from_polar(x[r * d + c] as f64, ph);
                    }
                }
                out[kr * d + kc] = s;
            }
        }
        out
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn matches_naive_dft() {
        for d in [8usize, 9, 12] {
            let mut s = 7u64;
            let x: Vec<f32> = (0..d * d).map(|_| lcg(&mut s)).collect();
            let f = Fft2::new(d);
            let mut w = f.work();
            let mut out = vec![C32::default(); d * d];
            f.forward_real(&mut w, &x, &mut out);
            let want = naive_centered_dft(&x, d);
            for (a, b) in out.iter().zip(&want) {
                assert!((a.re as f64 - b.re).abs() < 1e-4 && (a.im as f64 - b.im).abs() < 1e-4, "d={d}");
            }
        }
    }

    #[test]
    fn round_trip_2d() {
        let d = 16;
        let mut s = 3u64;
        let x: Vec<f32> = (0..d * d).map(|_| lcg(&mut s)).collect();
        let f = Fft2::new(d);
        let mut w = f.work();
        let mut spec = vec![C32::default(); d * d];
        let mut back = vec![0f32; d * d];
        f.forward_real(&mut w, &x, &mut spec);
        f.inverse_real(&mut w, &spec, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() < 1e-6);
        }
        // Parseval: Σ|x|² = Σ|F|²/D².
        let e1: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
        let e2: f64 = spec.iter().map(|v| v.norm_sqr() as f64).sum::<f64>() / (d * d) as f64;
        assert!((e1 - e2).abs() < 1e-4 * e1);
    }

    /// The spectrum of a real image is Hermitian: F(−k) = conj F(k) at the mirror index.
    #[test]
    fn friedel_mirror_index_pairs_conjugates() {
        for d in [8usize, 9] {
            let mut s = 11u64;
            let x: Vec<f32> = (0..d * d).map(|_| lcg(&mut s)).collect();
            let f = Fft2::new(d);
            let mut w = f.work();
            let mut spec = vec![C32::default(); d * d];
            f.forward_real(&mut w, &x, &mut spec);
            for r in 0..d {
                for c in 0..d {
                    let (mr, mc) = (friedel_mirror_index(r, d), friedel_mirror_index(c, d));
                    assert_eq!(centered_freq(friedel_mirror_index(mr, d), d), centered_freq(r, d));
                    let (a, b) = (spec[r * d + c], spec[mr * d + mc].conj());
                    assert!((a - b).norm() < 1e-4, "d={d} ({r}, {c})");
                }
            }
        }
    }

    #[test]
    fn centred_delta_has_flat_spectrum() {
        let d = 10;
        let mut x = vec![0f32; d * d];
        x[(d / 2) * d + d / 2] = 1.0;
        let f = Fft2::new(d);
        let mut w = f.work();
        let mut spec = vec![C32::default(); d * d];
        f.forward_real(&mut w, &x, &mut spec);
        assert!(spec.iter().all(|v| (v.re - 1.0).abs() < 1e-6 && v.im.abs() < 1e-6));
    }

    #[test]
    fn recentring_a_shifted_delta_gives_a_flat_spectrum() {
        // Rule 5: a particle shifted by t sits at centre − t; re-centring its spectrum by
        // exp(−2πi k·t/D) brings it back to the centre (a flat spectrum).
        let d = 12;
        let t = [3.0, -2.0];
        let mut x = vec![0f32; d * d];
        let (cx, cy) = ((d / 2) as f64 - t[0], (d / 2) as f64 - t[1]);
        x[cy as usize * d + cx as usize] = 1.0;
        let f = Fft2::new(d);
        let mut w = f.work();
        let mut spec = vec![C32::default(); d * d];
        f.forward_real(&mut w, &x, &mut spec);
        let h = (d / 2) as f64;
        for r in 0..d {
            for c in 0..d {
                let v = spec[r * d + c]
                    * recentre_phasor(c as f64 - h, t[0], d)
                    * recentre_phasor(r as f64 - h, t[1], d);
                assert!((v.re - 1.0).abs() < 1e-5 && v.im.abs() < 1e-5, "({r}, {c}): {v}");
                let w = spec[r * d + c] * recentre_phasor_2d([c as f64 - h, r as f64 - h], t, d);
                assert!((w.re - 1.0).abs() < 1e-5 && w.im.abs() < 1e-5, "2D form at ({r}, {c}): {w}");
            }
        }
        // The opposite sign does not re-centre.
        let off = spec[d / 2 * d + d / 2 + 1] * recentre_phasor(1.0, -t[0], d);
        assert!((off.re - 1.0).abs() > 0.1);
    }

    #[test]
    fn half_plane_fft_matches_full() {
        let d = 12;
        let mut s = 11u64;
        let x: Vec<f32> = (0..d * d).map(|_| lcg(&mut s)).collect();
        let (f, h) = (Fft2::new(d), Rfft2::new(d));
        let (mut wf, mut wh) = (f.work(), h.work());
        let mut full = vec![C32::default(); d * d];
        let mut half = vec![C32::default(); d * (d / 2 + 1)];
        f.forward_real(&mut wf, &x, &mut full);
        h.forward(&mut wh, &x, &mut half);
        for r in 0..d {
            let ky = h.row_freq(r);
            for c in 0..=d / 2 {
                let (fr, fc) = ((ky + (d / 2) as isize) as usize, c + d / 2);
                if fc < d {
                    let (a, b) = (half[r * (d / 2 + 1) + c], full[fr * d + fc]);
                    assert!((a - b).norm() < 1e-4, "r={r} c={c}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn half_plane_inverse_matches_full_inverse() {
        let d = 12;
        let mut s = 13u64;
        let x: Vec<f32> = (0..d * d).map(|_| lcg(&mut s)).collect();
        let (f, h) = (Fft2::new(d), Rfft2::new(d));
        let (mut wf, mut wh) = (f.work(), h.work());
        let mut full = vec![C32::default(); d * d];
        f.forward_real(&mut wf, &x, &mut full);
        let mut half = vec![C32::default(); d * (d / 2 + 1)];
        h.half_from_centred(&full, &mut half);
        let mut back = vec![0f32; d * d];
        h.inverse(&mut wh, &mut half, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn round_trip_3d() {
        let n = 10;
        let mut s = 5u64;
        let x: Vec<f32> = (0..n * n * n).map(|_| lcg(&mut s)).collect();
        let f = Fft3::new(n);
        let spec = f.forward_real(&x);
        // DC equals the sum.
        let sum: f32 = x.iter().sum();
        let c = n / 2;
        assert!((spec[c * n * n + c * n + c].re - sum).abs() < 1e-3);
        let back = f.inverse_complex(&spec);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b.re).abs() < 1e-5 && b.im.abs() < 1e-5);
        }
        // Friedel symmetry of a real volume: F(−k) = conj F(k).
        let at = |z: usize, y: usize, xx: usize| spec[z * n * n + y * n + xx];
        let (z, y, xx) = (c + 2, c - 3, c + 1);
        let a = at(z, y, xx);
        let b = at(2 * c - z, 2 * c - y, 2 * c - xx);
        assert!((a.re - b.re).abs() < 1e-4 && (a.im + b.im).abs() < 1e-4);
    }

    #[test]
    fn fourier_resize_preserves_sum_and_band_limited_signal() {
        let (di, d) = (32usize, 16usize);
        // A smooth Gaussian blob is band-limited well inside the cropped band.
        let g = |n: usize, s: f32| -> Vec<f32> {
            let h = (n / 2) as f32;
            (0..n * n)
                .map(|i| {
                    let (y, x) = ((i / n) as f32 - h, (i % n) as f32 - h);
                    (-(x * x + y * y) / (2.0 * s * s)).exp()
                })
                .collect()
        };
        let big = g(di, 4.0);
        let mut r = FourierResizer::new(di, d);
        let mut small = vec![0f32; d * d];
        r.resize(&big, &mut small);
        let s1: f32 = big.iter().sum();
        let s2: f32 = small.iter().sum();
        assert!((s1 - s2).abs() < 1e-3 * s1);
        let want = g(d, 2.0);
        for (a, b) in small.iter().zip(&want) {
            assert!((a / 4.0 - b).abs() < 1e-3, "{a} {b}");
        }
    }
}
