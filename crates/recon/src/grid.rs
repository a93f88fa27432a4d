//! The padded Fourier accumulator of a reconstruction and its conversion to a map.
//!
//! Each particle contributes a central slice: the 2D spectrum X(k) of its image,
//! re-centred (`e^(−2πi k·t/D)`), weighted by the CTF, is spread at
//! `q = s·Aᵀ(kₓ, k_y, 0)` (s = N/D padded-grid units) into the numerator grid with the
//! trilinear kernel, and the squared CTF into the weight grid with the same kernel
//! (the adjoint of the projector's trilinear sampling). Only the kₓ ≥ 0 half of the
//! padded spectrum is stored (`[k_z mod N][k_y mod N][kₓ = 0..=N/2]`); inserting one half-plane of each
//! image is enough, because the other half holds the Friedel mirrors. The mirrors of
//! points on the planes kₓ = 0 and kₓ = N/2 are restored by [`Accumulator::complete`].
//!
//! The map is `F⁻¹[num / (w + λ(|k|))]` on the padded grid, cropped to D³, divided by
//! the real-space transform of the trilinear kernel (`Π sinc²(π r/N)`: spreading
//! convolves the spectrum with a triangle, which multiplies the map by it).

use cryoforge_core::fft::C32;
use rayon::prelude::*;
use realfft::RealFftPlanner;
use rustfft::FftPlanner;

/// Lower bound of the gridding-correction divisor (as the projector's).
pub const GRIDDING_FLOOR: f64 = 1e-2;

/// One stored frequency: Σ weighted values (re, im) and Σ weights, interleaved so that a
/// trilinear corner touches one cache line.
#[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Cell {
    pub re: f32,
    pub im: f32,
    pub w: f32,
}

/// Zeroed cell storage from an anonymous mapping, advised to use transparent huge pages:
/// each inserted point touches 2–4 rows of the grid hundreds of kB apart, and with 4 kB
/// pages insertion is bound by TLB misses (BENCHMARKS.md §2).
pub struct CellStore {
    map: memmap2::MmapMut,
}

impl CellStore {
    fn zeroed(len: usize) -> CellStore {
        let bytes = len.max(1) * std::mem::size_of::<Cell>();
        // An anonymous mapping only fails when the address space or memory is exhausted,
        // which is the same condition under which `vec!` aborts.
        let map = memmap2::MmapMut::map_anon(bytes)
            .unwrap_or_else(|e| panic!("cannot allocate {bytes} bytes for a reconstruction grid: {e}"));
        #[cfg(target_os = "linux")]
        {
            // Only a hint: without huge pages the grid is just slower.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        CellStore { map }
    }
}

impl std::ops::Deref for CellStore {
    type Target = [Cell];
    fn deref(&self) -> &[Cell] {
        let n = self.map.len() / std::mem::size_of::<Cell>();
        &bytemuck::cast_slice(&self.map[..])[..n]
    }
}

impl std::ops::DerefMut for CellStore {
    fn deref_mut(&mut self) -> &mut [Cell] {
        let n = self.map.len() / std::mem::size_of::<Cell>();
        &mut bytemuck::cast_slice_mut(&mut self.map[..])[..n]
    }
}

/// Numerator and weight grids of one (half-)reconstruction.
pub struct Accumulator {
    /// `[k_z mod N][k_y mod N][kₓ = 0..=N/2]`.
    pub cells: CellStore,
    np: usize,
    /// Image box D.
    pub d: usize,
}

impl Accumulator {
    /// Empty grids for images of D px padded by `pad` (N = pad·D rounded to even).
    pub fn new(d: usize, pad: f64) -> Accumulator {
        let np = padded_size(d, pad);
        let len = np * np * (np / 2 + 1);
        Accumulator { cells: CellStore::zeroed(len), np, d }
    }

    /// Bytes of the grid [`Accumulator::new`] allocates.
    pub fn bytes(d: usize, pad: f64) -> usize {
        let np = padded_size(d, pad);
        np * np * (np / 2 + 1) * std::mem::size_of::<Cell>()
    }

    pub fn np(&self) -> usize {
        self.np
    }

    /// Spread value `v` and weight `w` at q (padded-grid units) with trilinear weights.
    /// A point with qₓ < 0 is stored as its Friedel mirror (−q, v*).
    #[inline]
    pub fn spread(&mut self, q: [f64; 3], v: C32, w: f32) {
        let (q, v) = if q[0] < 0.0 { ([-q[0], -q[1], -q[2]], v.conj()) } else { (q, v) };
        let np = self.np as i64;
        let nh = self.np / 2 + 1;
        // floor without a libm call or a division (this is the innermost loop of a
        // reconstruction): truncate, then step down for negative non-integers.
        let floor = |t: f64| -> i64 {
            let i = t as i64;
            if (i as f64) > t {
                i - 1
            } else {
                i
            }
        };
        let (x0, y0, z0) = (floor(q[0]), floor(q[1]), floor(q[2]));
        let (fx, fy, fz) = ((q[0] - x0 as f64) as f32, (q[1] - y0 as f64) as f32, (q[2] - z0 as f64) as f32);
        let xmax = self.np / 2;
        let xa = (x0.max(0) as usize).min(xmax);
        let xb = (xa + 1).min(xmax);
        // |q| ≤ N/2 for inserted points, so one conditional add/subtract wraps an index.
        let wrap = |i: i64| -> usize {
            (if i < 0 {
                i + np
            } else if i >= np {
                i - np
            } else {
                i
            }) as usize
        };
        let (ya, yb, za, zb) = (wrap(y0), wrap(y0 + 1), wrap(z0), wrap(z0 + 1));
        let row = |y: usize, z: usize| (z * self.np + y) * nh;
        let (gx, gy, gz) = (1.0 - fx, 1.0 - fy, 1.0 - fz);
        let cells = [
            (row(ya, za) + xa, gx * gy * gz),
            (row(ya, za) + xb, fx * gy * gz),
            (row(yb, za) + xa, gx * fy * gz),
            (row(yb, za) + xb, fx * fy * gz),
            (row(ya, zb) + xa, gx * gy * fz),
            (row(ya, zb) + xb, fx * gy * fz),
            (row(yb, zb) + xa, gx * fy * fz),
            (row(yb, zb) + xb, fx * fy * fz),
        ];
        for (i, k) in cells {
            let c = &mut self.cells[i];
            c.re += v.re * k;
            c.im += v.im * k;
            c.w += w * k;
        }
    }

    /// Padded-grid units per image frequency unit.
    pub fn scale(&self) -> f64 {
        self.np() as f64 / self.d as f64
    }

    /// Insert one image's weighted slice. `values` and `weights` are in the half-plane
    /// layout of `cryoforge_core::fft::Rfft2` (D × (D/2+1); value = CTF-weighted,
    /// re-centred spectrum; weight = CTF² or 1); `rot` is the rotation A of the pose.
    /// Each Friedel pair is inserted once (kₓ > 0, or kₓ = 0 with k_y ≥ 0); frequencies
    /// beyond Nyquist (|k| > D/2) are skipped.
    pub fn insert(&mut self, rot: &[[f64; 3]; 3], values: &[C32], weights: &[f32]) {
        let d = self.d;
        let (h, nh) = ((d / 2) as isize, d / 2 + 1);
        let s = self.scale();
        let r2max = h * h;
        // Columns of Aᵀ for kₓ and k_y: q = kₓ·(A₀₀, A₀₁, A₀₂) + k_y·(A₁₀, A₁₁, A₁₂).
        let ax = [rot[0][0] * s, rot[0][1] * s, rot[0][2] * s];
        let ay = [rot[1][0] * s, rot[1][1] * s, rot[1][2] * s];
        for row in 0..d {
            let ky = if (row as isize) < h { row as isize } else { row as isize - d as isize };
            let kx0 = if ky < 0 { 1 } else { 0 };
            let base = [ky as f64 * ay[0], ky as f64 * ay[1], ky as f64 * ay[2]];
            for kx in kx0..nh as isize {
                if kx * kx + ky * ky > r2max {
                    break;
                }
                let i = row * nh + kx as usize;
                let (v, w) = (values[i], weights[i]);
                if w == 0.0 && v == C32::default() {
                    continue;
                }
                let f = kx as f64;
                let q = [base[0] + f * ax[0], base[1] + f * ax[1], base[2] + f * ax[2]];
                self.spread(q, v, w);
            }
        }
    }

    /// Add another accumulator of the same size.
    pub fn add(&mut self, o: &Accumulator) {
        self.cells.par_iter_mut().zip(o.cells.par_iter()).for_each(|(a, b)| {
            a.re += b.re;
            a.im += b.im;
            a.w += b.w;
        });
    }

    /// Restore the Friedel mirrors on the planes kₓ = 0 and kₓ = N/2 (see module docs).
    pub fn complete(&mut self) {
        let np = self.np();
        let nh = np / 2 + 1;
        for x in [0, np / 2] {
            let mut seen = vec![false; np * np];
            for z in 0..np {
                for y in 0..np {
                    let (my, mz) = ((np - y) % np, (np - z) % np);
                    let (a, b) = (z * np + y, mz * np + my);
                    if seen[a] {
                        continue;
                    }
                    seen[a] = true;
                    seen[b] = true;
                    let (ia, ib) = (a * nh + x, b * nh + x);
                    let (ca, cb) = (self.cells[ia], self.cells[ib]);
                    if ia == ib {
                        self.cells[ia] = Cell { re: 2.0 * ca.re, im: 0.0, w: 2.0 * ca.w };
                    } else {
                        let w = ca.w + cb.w;
                        self.cells[ia] = Cell { re: ca.re + cb.re, im: ca.im - cb.im, w };
                        self.cells[ib] = Cell { re: cb.re + ca.re, im: cb.im - ca.im, w };
                    }
                }
            }
        }
    }

    /// Mean weight per image-frequency shell k = 0..=D/2 (padded points binned by
    /// round(|q|/s)).
    pub fn mean_weight_per_shell(&self) -> Vec<f64> {
        let nyq = self.d / 2;
        let mut sum = vec![0f64; nyq + 1];
        let mut cnt = vec![0f64; nyq + 1];
        self.for_each_point(|i, r| {
            let k = r.round() as usize;
            if k <= nyq {
                sum[k] += self.cells[i].w as f64;
                cnt[k] += 1.0;
            }
        });
        sum.iter().zip(&cnt).map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 }).collect()
    }

    /// Call `f(index, |q|/s)` for every stored point.
    fn for_each_point(&self, mut f: impl FnMut(usize, f64)) {
        let np = self.np();
        let nh = np / 2 + 1;
        let s = self.scale();
        let signed = |v: usize| if v <= np / 2 { v as f64 } else { v as f64 - np as f64 };
        for z in 0..np {
            let kz = signed(z);
            for y in 0..np {
                let ky = signed(y);
                for x in 0..nh {
                    let r = (x as f64 * x as f64 + ky * ky + kz * kz).sqrt() / s;
                    f((z * np + y) * nh + x, r);
                }
            }
        }
    }

    /// The map `F⁻¹[num/(w + λ(|k|))]`, cropped to D³ and gridding-corrected. `lambda`
    /// gives λ per image shell k = 0..=D/2 (linearly interpolated in |k|).
    pub fn to_map(&self, lambda: &[f64]) -> Vec<f32> {
        let np = self.np();
        let nh = np / 2 + 1;
        let s = self.scale();
        let d = self.d;
        let nyq = (d / 2) as f64;
        let cells = &self.cells;
        let mut spec = vec![C32::default(); cells.len()];
        let signed = |v: usize| if v <= np / 2 { v as f64 } else { v as f64 - np as f64 };
        spec.par_chunks_mut(np * nh).enumerate().for_each(|(z, plane)| {
            let kz = signed(z);
            for y in 0..np {
                let ky = signed(y);
                for x in 0..nh {
                    let r = (x as f64 * x as f64 + ky * ky + kz * kz).sqrt() / s;
                    // Keep the whole FSC Nyquist shell (round(|q|) = D/2): trilinear spreading of
                    // samples at |k| = D/2 reaches voxels up to half a voxel beyond it.
                    if r > nyq + 0.5 {
                        continue;
                    }
                    let i = (z * np + y) * nh + x;
                    let lam = interp(lambda, r);
                    let c = cells[i];
                    let w = c.w as f64 + lam;
                    if w > 0.0 {
                        plane[y * nh + x] = C32::new(c.re, c.im) * (1.0 / w) as f32;
                    }
                }
            }
        });
        let padded = half_c2r(spec, np);
        crop_and_correct(&padded, np, d)
    }
}

/// Padded box N = pad·D rounded up to an even number (at least D).
pub fn padded_size(d: usize, pad: f64) -> usize {
    let n = (d as f64 * pad.max(1.0)).ceil() as usize;
    (n + n % 2).max(d + d % 2)
}

fn interp(v: &[f64], r: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = r.floor() as usize;
    if i + 1 >= v.len() {
        return v[v.len() - 1];
    }
    let t = r - i as f64;
    v[i] * (1.0 - t) + v[i + 1] * t
}

/// Inverse of the kₓ ≥ 0 half spectrum (wrapped origin) to a real N³ volume, divided by N³.
pub fn half_c2r(mut data: Vec<C32>, np: usize) -> Vec<f32> {
    let nh = np / 2 + 1;
    let c2c = FftPlanner::<f32>::new().plan_fft_inverse(np);
    let c2r = RealFftPlanner::<f32>::new().plan_fft_inverse(np);
    let scratch = || (vec![C32::default(); np], vec![C32::default(); c2c.get_inplace_scratch_len()]);
    // z lines (stride np·nh), parallel over y rows.
    {
        let mut buckets: Vec<Vec<&mut [C32]>> = (0..np).map(|_| Vec::with_capacity(np)).collect();
        for plane in data.chunks_exact_mut(np * nh) {
            for (y, row) in plane.chunks_exact_mut(nh).enumerate() {
                buckets[y].push(row);
            }
        }
        buckets.par_iter_mut().for_each_init(scratch, |(line, s), rows| {
            for x in 0..nh {
                line.iter_mut().zip(rows.iter()).for_each(|(v, r)| *v = r[x]);
                c2c.process_with_scratch(line, s);
                line.iter().zip(rows.iter_mut()).for_each(|(v, r)| r[x] = *v);
            }
        });
    }
    // y lines within each z-plane.
    data.par_chunks_mut(np * nh).for_each_init(scratch, |(line, s), plane| {
        for x in 0..nh {
            line.iter_mut().enumerate().for_each(|(y, v)| *v = plane[y * nh + x]);
            c2c.process_with_scratch(line, s);
            line.iter().enumerate().for_each(|(y, v)| plane[y * nh + x] = *v);
        }
    });
    // x lines: complex-to-real.
    let mut out = vec![0f32; np * np * np];
    let norm = 1.0 / (np as f32).powi(3);
    out.par_chunks_mut(np).zip(data.par_chunks_mut(nh)).for_each_init(
        || c2r.make_scratch_vec(),
        |s, (o, inp)| {
            // The DC and Nyquist terms of a real signal are real: drop rounding residue so
            // the transform does not report an input error.
            inp[0].im = 0.0;
            inp[nh - 1].im = 0.0;
            if c2r.process_with_scratch(inp, o, s).is_ok() {
                o.iter_mut().for_each(|v| *v *= norm);
            }
        },
    );
    out
}

/// Crop the centred D³ box out of a wrapped-origin N³ volume and divide by the trilinear
/// kernel's transform `Π sinc²(π r_a/N)` (floored at [`GRIDDING_FLOOR`]).
pub fn crop_and_correct(padded: &[f32], np: usize, d: usize) -> Vec<f32> {
    let h = (d / 2) as isize;
    let wrap = |i: usize| (i as isize - h).rem_euclid(np as isize) as usize;
    let sinc2 = |r: isize| {
        let x = std::f64::consts::PI * r as f64 / np as f64;
        if x == 0.0 {
            1.0
        } else {
            (x.sin() / x).powi(2)
        }
    };
    let g: Vec<f64> = (0..d).map(|i| sinc2(i as isize - h)).collect();
    let mut out = vec![0f32; d * d * d];
    out.par_chunks_mut(d * d).enumerate().for_each(|(z, slab)| {
        let pz = wrap(z);
        for y in 0..d {
            let py = wrap(y);
            for x in 0..d {
                let corr = (g[z] * g[y] * g[x]).max(GRIDDING_FLOOR);
                slab[y * d + x] = (padded[(pz * np + py) * np + wrap(x)] as f64 / corr) as f32;
            }
        }
    });
    out
}
