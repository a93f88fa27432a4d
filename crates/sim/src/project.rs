//! Fourier-slice projection of a real n³ volume.
//!
//! By the projection–slice theorem the 2D DFT of the projection of volume V along z
//! after rotation A (a model point x lands at image position (A·x)ₓᵧ, see [`Rot3`]) is
//! the 3D DFT of V on the central plane `Aᵀ·(kₓ, k_y, 0)ᵀ`:
//!
//! ```text
//! P̂_A(k) = V̂(Aᵀ k)        k = (kₓ, k_y, 0), in cycles per box
//! ```
//!
//! [`Projector::new`] prepares V̂ once:
//! 1. **Gridding pre-correction.** Slices are sampled by trilinear interpolation in a
//!    grid padded to N = pad·n. Trilinear interpolation convolves the lattice spectrum
//!    with a separable triangle of half-width one sample, which multiplies the real-space
//!    object by the triangle's transform, `g(r) = Π_axes sinc²(π r_a/N)` (r in voxels from
//!    the centre, sinc x = sin x/x). V is therefore divided by `max(g, GRIDDING_FLOOR)` so
//!    that interpolated slices are those of V itself. With pad ≥ 1, g ≥ 0.405³ ≈ 0.066 in
//!    the box, so the floor is a safeguard only.
//! 2. **Padding** by zeros to N³ (N even, N ≈ pad·n), stored with the origin wrapped to
//!    index 0, and one real-to-complex 3D FFT (`realfft` along x, complex along y and z).
//!    Only kₓ ≥ 0 is kept, in the guarded, bricked layout of [`PaddedSpectrum`]; V is
//!    real, so `V̂(−k) = V̂(k)*` gives the rest.
//!
//! Per particle, [`Projector::project_spectrum`] samples the D×D (D = n) centred
//! spectrum at `q = (N/n)·Aᵀk` (padded-grid units) by trilinear interpolation. A query
//! with qₓ < 0 is answered as the conjugate of the query at −q (exact, since the lattice
//! obeys the same symmetry and the weights are symmetric), so interpolation never
//! straddles the stored half's edge. Frequencies with |k| > D/2 (outside the Nyquist
//! circle) are zero. Only rows k_y ≤ 0 are interpolated; the others are their Friedel
//! mirrors. [`Projector::project_image`] then multiplies by the shift phase ramp
//! `exp(+2πi k·t/D)` (t in px; cryoDRGN/RELION sign: the image is the projection moved by
//! −t, `img(x) = proj(x + t)`) and an optional centred CTF grid, and inverse-transforms.
//!
//! Normalisation: the image is the sum of voxels along the projection direction
//! (voxel-unit line integral), so Σ pixels = V̂(0) = Σ voxels of the corrected volume.
//!
//! Accuracy (pad 2): after the gridding correction the central copy of V is exact and the
//! error is the replicas of the padded grid leaking through the sinc² sidelobes, of
//! relative size ≈ (π r/N)² for an object of radius r voxels. Lattice-aligned samples
//! (k = 0 for every pose; every k at the identity) see the correction without the
//! interpolation it compensates, so they are too large by up to the same amount (≈ 3 %
//! at DC for r ≈ 17, N = 96). Measured against analytic slices: 1.7 % relative L2 error
//! (pad 2), 0.7 % (pad 3), 0.4 % (pad 4), 2.9 % without the correction
//! (`tests/projection.rs::projection_slice_theorem_at_general_rotations`).
//!
//! Pinned by `tests/projection.rs` (projection–slice theorem, FRC against a real-space
//! projector, adjointness, Friedel symmetry, centred Gaussian, shift sign, CTF).

use cryoforge_core::fft::{Fft2, Fft2Work, C32};
use cryoforge_core::Rot3;
use rayon::prelude::*;

use crate::error::{check_apix, check_len, SimError};
use crate::fft3::{padded_r2c, Corners, PaddedSpectrum};
use crate::gaussian_image::mirror_friedel;

/// Lower bound of the gridding-correction divisor (see module docs).
pub const GRIDDING_FLOOR: f64 = 1e-2;

/// Default pad factor (as RELION and cryoSPARC).
pub const DEFAULT_PAD: f64 = 2.0;

/// Largest accepted pad factor (memory grows as pad³).
pub const MAX_PAD: f64 = 8.0;

/// A volume prepared for Fourier-slice projection. `&self` methods are thread-safe:
/// run rayon over particles with one [`ProjectorWork`] per thread.
pub struct Projector {
    n: usize,
    apix_a: f64,
    /// N/n: padded-grid units per output-grid frequency unit.
    scale: f64,
    spec: PaddedSpectrum,
    fft: Fft2,
}

/// Per-thread scratch for [`Projector::project_image`]; no allocation per particle.
pub struct ProjectorWork {
    spec: Vec<C32>,
    ramp_x: Vec<C32>,
    ramp_y: Vec<C32>,
    fft: Fft2Work,
    /// Real-output inverse for even boxes (half the work of the complex one).
    half: Option<(cryoforge_core::fft::Rfft2, cryoforge_core::fft::Rfft2Work, Vec<C32>)>,
}

impl Projector {
    /// Prepare the real volume `vol` (n³, `[z][y][x]`, voxel size `apix_a`) with pad
    /// factor `pad` ∈ [1, [`MAX_PAD`]] (the padded box is the even size nearest pad·n).
    /// Memory: ≈ 4·(pad·n)³ bytes for the spectrum (≈ 76 MB for n = 128, pad 2), twice
    /// that while it is built.
    pub fn new(vol: &[f32], n: usize, apix_a: f64, pad: f64) -> Result<Projector, SimError> {
        check_box(n)?;
        check_apix(apix_a)?;
        check_len("volume", n * n * n, vol.len())?;
        if !(pad.is_finite() && (1.0..=MAX_PAD).contains(&pad)) {
            return Err(SimError::InvalidPad { pad });
        }
        if vol.iter().any(|v| !v.is_finite()) {
            return Err(SimError::NonFinite { what: "volume" });
        }
        let np = (2.0 * (pad * n as f64 / 2.0).round()) as usize;
        let np = np.max(n);
        let padded = grid_corrected_padded(vol, n, np);
        let spec = padded_r2c(padded, np);
        Ok(Projector { n, apix_a, scale: np as f64 / n as f64, spec, fft: Fft2::new(n) })
    }

    /// A projector over an existing padded half spectrum (no gridding correction is
    /// applied): for tests of the sampling operator and for reconstructions.
    pub fn from_padded_spectrum(spec: PaddedSpectrum, n: usize, apix_a: f64) -> Result<Projector, SimError> {
        check_box(n)?;
        check_apix(apix_a)?;
        if spec.np() < n {
            return Err(SimError::InvalidPad { pad: spec.np() as f64 / n as f64 });
        }
        let scale = spec.np() as f64 / n as f64;
        Ok(Projector { n, apix_a, scale, spec, fft: Fft2::new(n) })
    }

    /// Box size n (= image size D).
    pub fn box_size(&self) -> usize {
        self.n
    }

    pub fn apix_a(&self) -> f64 {
        self.apix_a
    }

    /// Padded size over box size, N/n.
    pub fn pad_factor(&self) -> f64 {
        self.scale
    }

    pub fn padded_spectrum(&self) -> &PaddedSpectrum {
        &self.spec
    }

    pub fn work(&self) -> ProjectorWork {
        let d = self.n;
        ProjectorWork {
            spec: vec![C32::default(); d * d],
            ramp_x: vec![C32::default(); d],
            ramp_y: vec![C32::default(); d],
            fft: self.fft.work(),
            half: d.is_multiple_of(2).then(|| {
                let r = cryoforge_core::fft::Rfft2::new(d);
                let w = r.work();
                (r, w, vec![C32::default(); d * (d / 2 + 1)])
            }),
        }
    }

    /// Visit every in-circle frequency of the rows k_y ≤ 0 with its output index and its
    /// padded-grid coordinate `q = (N/n)·Aᵀ(kₓ, k_y, 0)`.
    #[inline]
    fn for_each_half_slice(&self, rot: &Rot3, mut f: impl FnMut(usize, [f64; 3])) {
        let (d, h) = (self.n, (self.n / 2) as isize);
        let a = &rot.0;
        let s = self.scale;
        // Aᵀ(kₓ, k_y, 0) = kₓ·(row 0 of A) + k_y·(row 1 of A).
        let ex = [s * a[0][0], s * a[0][1], s * a[0][2]];
        let ey = [s * a[1][0], s * a[1][1], s * a[1][2]];
        for i in 0..=h {
            let ky = i - h;
            // In-circle kₓ; +D/2 is not on the grid (only reachable at k_y = 0).
            let m = ((h * h - ky * ky) as f64).sqrt().floor() as isize;
            for kx in -m..=m.min(h - 1) {
                let (fx, fy) = (kx as f64, ky as f64);
                let q = [fx * ex[0] + fy * ey[0], fx * ex[1] + fy * ey[1], fx * ex[2] + fy * ey[2]];
                f(i as usize * d + (kx + h) as usize, q);
            }
        }
    }

    /// The centred D×D spectrum of the projection at pose `rot` (no shift, no CTF).
    pub fn project_spectrum(&self, rot: &Rot3, out: &mut [C32]) -> Result<(), SimError> {
        let d = self.n;
        check_len("projection spectrum", d * d, out.len())?;
        out[..(d / 2 + 1) * d].iter_mut().for_each(|v| *v = C32::default());
        // The padded spectrum (≈ 76 MB at n = 128) is far larger than the caches and a
        // slice visits it nearly at random, so the loop is bound by memory latency. Two
        // passes per chunk of samples: first every corner address, with a prefetch hint
        // for its cache lines, then every gather, by which time the lines are arriving.
        // Measured at n = 128 on one core: one pass 0.62 ms, two passes 0.50 ms, two
        // passes with prefetch 0.32 ms per spectrum.
        let mut buf = [Corners::default(); CHUNK];
        let mut at = [0usize; CHUNK];
        let mut len = 0;
        self.for_each_half_slice(rot, |idx, q| {
            buf[len] = self.spec.corners(q);
            self.spec.prefetch(&buf[len]);
            at[len] = idx;
            len += 1;
            if len == CHUNK {
                gather_chunk(&self.spec, &buf, &at, out);
                len = 0;
            }
        });
        gather_chunk(&self.spec, &buf[..len], &at[..len], out);
        mirror_friedel(out, d);
        Ok(())
    }

    /// The slice at pose `rot` sampled at arbitrary 2D frequencies: `out[j] = V̂(Aᵀ(kⱼ, 0))`
    /// with `k[j] = (kₓ, k_y)` in cycles per box (any real values), by the same trilinear
    /// gather as [`Projector::project_spectrum`]. Pose search uses it to project only the
    /// frequencies of its current band, in the order it keeps them.
    pub fn project_points(&self, rot: &Rot3, k: &[[f32; 2]], out: &mut [C32]) -> Result<(), SimError> {
        check_len("projected points", k.len(), out.len())?;
        let a = &rot.0;
        let s = self.scale;
        let ex = [s * a[0][0], s * a[0][1], s * a[0][2]];
        let ey = [s * a[1][0], s * a[1][1], s * a[1][2]];
        let mut buf = [Corners::default(); CHUNK];
        for (ks, os) in k.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            for (c, kk) in buf.iter_mut().zip(ks) {
                let (fx, fy) = (kk[0] as f64, kk[1] as f64);
                *c = self.spec.corners([
                    fx * ex[0] + fy * ey[0],
                    fx * ex[1] + fy * ey[1],
                    fx * ex[2] + fy * ey[2],
                ]);
                self.spec.prefetch(c);
            }
            for (c, o) in buf.iter().zip(os.iter_mut()) {
                *o = self.spec.gather(c);
            }
        }
        Ok(())
    }

    /// [`Projector::project_points`] for several poses at once: `out[r·k.len() + j]` is pose
    /// r at frequency j. The frequencies are the outer loop, so poses close to each other
    /// (the children of one search cell, a few degrees apart) read the same cache lines
    /// of the padded spectrum in turn instead of each sweeping it (≈ 8 samples per line
    /// instead of 1; see BENCHMARKS.md).
    pub fn project_points_multi(
        &self,
        rots: &[Rot3],
        k: &[[f32; 2]],
        out: &mut [C32],
    ) -> Result<(), SimError> {
        let n = k.len();
        check_len("projected points", rots.len() * n, out.len())?;
        if rots.is_empty() || n == 0 {
            return Ok(());
        }
        let s = self.scale;
        let axes: Vec<[[f64; 3]; 2]> = rots
            .iter()
            .map(|r| {
                let a = &r.0;
                [[s * a[0][0], s * a[0][1], s * a[0][2]], [s * a[1][0], s * a[1][1], s * a[1][2]]]
            })
            .collect();
        let nr = rots.len();
        let per = (CHUNK / nr).max(1);
        let mut buf = vec![Corners::default(); per * nr];
        let mut j0 = 0;
        while j0 < n {
            let m = per.min(n - j0);
            for jj in 0..m {
                let (fx, fy) = (k[j0 + jj][0] as f64, k[j0 + jj][1] as f64);
                for (r, [ex, ey]) in axes.iter().enumerate() {
                    let c = &mut buf[jj * nr + r];
                    *c = self.spec.corners([
                        fx * ex[0] + fy * ey[0],
                        fx * ex[1] + fy * ey[1],
                        fx * ex[2] + fy * ey[2],
                    ]);
                    self.spec.prefetch(c);
                }
            }
            for jj in 0..m {
                for r in 0..nr {
                    out[r * n + j0 + jj] = self.spec.gather(&buf[jj * nr + r]);
                }
            }
            j0 += m;
        }
        Ok(())
    }

    /// Adjoint of [`Projector::project_spectrum`] (for the real inner product
    /// `Re Σ a*·b` on both sides): spreads the D×D spectrum `spec` into `acc` with the
    /// transposed trilinear weights. Mirrored rows are folded onto their sources first.
    pub fn backproject_spectrum(
        &self,
        rot: &Rot3,
        spec: &[C32],
        acc: &mut PaddedSpectrum,
    ) -> Result<(), SimError> {
        let d = self.n;
        check_len("back-projected spectrum", d * d, spec.len())?;
        if acc.np() != self.spec.np() {
            return Err(SimError::SizeMismatch {
                what: "padded spectrum size",
                expected: self.spec.np(),
                got: acc.np(),
            });
        }
        let h = d / 2;
        self.for_each_half_slice(rot, |idx, q| {
            let (i, j) = (idx / d, idx % d);
            let mut v = spec[idx];
            // Adjoint of out[d−i][d−j] = out[i][j]* (rows 1..h−1, columns ≥ 1).
            if i >= 1 && i < h && j >= 1 {
                v += spec[(d - i) * d + (d - j)].conj();
            }
            acc.spread(q, v);
        });
        Ok(())
    }

    /// Real D×D projection image at pose `rot`, shifted by `shift_px` (cryoDRGN/RELION
    /// sign, see module docs) and optionally multiplied in Fourier space by a centred CTF
    /// grid (`cryoforge_core::ctf::ctf_grid_centered`, applied as given).
    pub fn project_image(
        &self,
        rot: &Rot3,
        shift_px: [f64; 2],
        ctf: Option<&[f32]>,
        work: &mut ProjectorWork,
        out: &mut [f32],
    ) -> Result<(), SimError> {
        let d = self.n;
        check_len("projection image", d * d, out.len())?;
        if let Some(c) = ctf {
            check_len("CTF grid", d * d, c.len())?;
        }
        if !(shift_px[0].is_finite() && shift_px[1].is_finite()) {
            return Err(SimError::NonFinite { what: "image shift" });
        }
        self.project_spectrum(rot, &mut work.spec)?;
        let shifted = shift_px != [0.0, 0.0];
        if shifted {
            phase_ramp(shift_px[0], d, &mut work.ramp_x);
            phase_ramp(shift_px[1], d, &mut work.ramp_y);
        }
        if shifted || ctf.is_some() {
            for (i, row) in work.spec.chunks_exact_mut(d).enumerate() {
                if shifted {
                    let ry = work.ramp_y[i];
                    row.iter_mut().zip(&work.ramp_x).for_each(|(v, rx)| *v *= ry * rx);
                }
                if let Some(c) = ctf {
                    row.iter_mut().zip(&c[i * d..(i + 1) * d]).for_each(|(v, c)| *v *= *c);
                }
            }
        }
        match work.half.as_mut() {
            Some((r, w, half)) => {
                r.half_from_centred(&work.spec, half);
                r.inverse(w, half, out);
            }
            None => self.fft.inverse_real(&mut work.fft, &work.spec, out),
        }
        Ok(())
    }
}

/// Samples per two-pass chunk of [`Projector::project_spectrum`].
const CHUNK: usize = 64;

fn gather_chunk(spec: &PaddedSpectrum, corners: &[Corners], at: &[usize], out: &mut [C32]) {
    for (c, &i) in corners.iter().zip(at) {
        out[i] = spec.gather(c);
    }
}

fn check_box(n: usize) -> Result<(), SimError> {
    match n {
        0 => Err(SimError::ZeroBox),
        n if n % 2 == 1 => Err(SimError::OddBox { n, what: "Fourier-slice projection" }),
        _ => Ok(()),
    }
}

/// `ramp[j] = exp(+2πi (j − D/2)·t/D)`: the shift factor of frequency index j.
fn phase_ramp(t_px: f64, d: usize, ramp: &mut [C32]) {
    let h = (d / 2) as f64;
    for (j, r) in ramp.iter_mut().enumerate() {
        *r = cryoforge_core::fft::recentre_phasor(j as f64 - h, t_px, d).conj();
    }
}

/// sinc²(π r/N), the transform of the unit triangle at real-space offset r (voxels).
fn sinc2(r: f64, np: usize) -> f64 {
    if r == 0.0 {
        return 1.0;
    }
    let x = std::f64::consts::PI * r / np as f64;
    let s = x.sin() / x;
    s * s
}

/// The gridding-corrected volume zero-padded to N³, origin wrapped to index 0.
fn grid_corrected_padded(vol: &[f32], n: usize, np: usize) -> Vec<f32> {
    let h = (n / 2) as isize;
    let g: Vec<f64> = (0..n).map(|i| sinc2((i as isize - h) as f64, np)).collect();
    let mut padded = vec![0f32; np * np * np];
    padded.par_chunks_mut(np * np).enumerate().for_each(|(pz, plane)| {
        // Padded plane pz holds offset dz = pz (pz < N/2) or pz − N; source z = dz + n/2.
        let dz = if pz < np / 2 { pz as isize } else { pz as isize - np as isize };
        let z = dz + h;
        if z < 0 || z >= n as isize {
            return;
        }
        let z = z as usize;
        for y in 0..n {
            let py = (y as isize - h).rem_euclid(np as isize) as usize;
            let gzy = g[z] * g[y];
            for x in 0..n {
                let px = (x as isize - h).rem_euclid(np as isize) as usize;
                let corr = (gzy * g[x]).max(GRIDDING_FLOOR);
                plane[py * np + px] = (vol[(z * n + y) * n + x] as f64 / corr) as f32;
            }
        }
    });
    padded
}
