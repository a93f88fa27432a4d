//! Half-spectrum storage of a padded real volume and trilinear sampling in it.
//!
//! [`PaddedSpectrum`] holds the 3D DFT `F(k) = Σ_r V(r)·exp(−2πi k·r/N)` of a real N³
//! volume (r = voxel offset from the centre, k integer, N even) for kₓ ≥ 0 only; V is
//! real, so `F(−k) = F(k)*` gives the rest. Stored cells cover k_z, k_y ∈ [−N/2, N/2 + 1]
//! and kₓ ∈ [0, N/2 + 1]: the lattice plus one or two **guard** layers that repeat
//! lattice values by periodicity (F(N/2) = F(−N/2)) and Friedel symmetry
//! (kₓ = N/2 + 1). The guards let every trilinear query with |qₐ| ≤ N/2 find its eight
//! corners without wrapping or integer division.
//!
//! Cells are stored in 8×8×8 **bricks** (512 complex values = one 4 KiB page), bricks in
//! z, y, x order, cells `[z][y][x]` inside a brick. A slice through a 256³ padded
//! spectrum visits memory nearly at random; with a plain row-major layout the two z
//! planes of every trilinear cube lie on different pages, and TLB misses dominated
//! (measured 1.5× slower at n = 128). In a brick the whole 2×2×2 cube lies in one page
//! with probability (7/8)³, and successive samples along a row often share it.
//!
//! [`PaddedSpectrum::sample`] interpolates at a real-valued q; for qₓ < 0 it returns
//! `sample(−q)*`, which equals the interpolation over the full lattice because the eight
//! corners of −q are the negated corners of q with the same weights. Components are
//! clamped to [−N/2, N/2] (projections only query inside the sphere |q| ≤ N/2).
//! [`PaddedSpectrum::spread`] is its adjoint for the real inner product `Re Σ a*·b` over
//! the stored values, guards included (an accumulation must fold guard cells onto their
//! lattice cells before it is read as a spectrum).

use cryoforge_core::fft::C32;
use rayon::prelude::*;
use realfft::RealFftPlanner;
use rustfft::FftPlanner;

use crate::error::SimError;

/// kₓ ≥ 0 half of the DFT of a real N³ volume, with guard layers (see module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedSpectrum {
    np: usize,
    /// Flat-index stride of one brick step in y and in z.
    by: usize,
    bz: usize,
    data: Vec<C32>,
}

/// Brick edge (cells) and size.
const B: usize = 8;
const B3: usize = B * B * B;

impl PaddedSpectrum {
    /// All-zero spectrum for an N³ grid (N even, > 0).
    pub fn zeros(np: usize) -> Result<PaddedSpectrum, SimError> {
        if np == 0 {
            return Err(SimError::ZeroBox);
        }
        if np % 2 == 1 {
            return Err(SimError::OddBox { n: np, what: "a padded spectrum" });
        }
        Ok(PaddedSpectrum::layout(np))
    }

    /// Zeroed storage with the brick strides for N.
    fn layout(np: usize) -> PaddedSpectrum {
        // Cells per axis: x ∈ [0, N/2 + 1], y, z ∈ [−N/2, N/2 + 1]; rounded up to bricks.
        let (nbx, nbyz) = ((np / 2 + 2).div_ceil(B), (np + 2).div_ceil(B));
        let (by, bz) = (nbx * B3, nbyz * nbx * B3);
        PaddedSpectrum { np, by, bz, data: vec![C32::default(); nbyz * bz] }
    }

    /// The DFT of the real n³ volume `vol` (origin at index n/2) zero-padded to N³
    /// (N even, N ≥ n), without gridding correction. `F(0)` is the sum of the voxels.
    pub fn from_volume(vol: &[f32], n: usize, np: usize) -> Result<PaddedSpectrum, SimError> {
        PaddedSpectrum::zeros(np)?;
        crate::error::check_len("volume", n * n * n, vol.len())?;
        if n > np {
            return Err(SimError::InvalidPad { pad: np as f64 / n as f64 });
        }
        let mut padded = vec![0f32; np * np * np];
        let wrap = |i: usize| (i as isize - (n / 2) as isize).rem_euclid(np as isize) as usize;
        for (z, slab) in vol.chunks_exact(n * n).enumerate() {
            for (y, row) in slab.chunks_exact(n).enumerate() {
                let base = (wrap(z) * np + wrap(y)) * np;
                row.iter().enumerate().for_each(|(x, v)| padded[base + wrap(x)] = *v);
            }
        }
        Ok(padded_r2c(padded, np))
    }

    /// Padded box size N.
    pub fn np(&self) -> usize {
        self.np
    }

    /// Stored values in brick order, guards and brick padding included (see module docs).
    pub fn data(&self) -> &[C32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [C32] {
        &mut self.data
    }

    /// Flat-index contributions of storage coordinates x, y, z (cells from the low
    /// corner); a cell's index is their sum.
    #[inline]
    fn ox(&self, x: usize) -> usize {
        (x / B) * B3 + x % B
    }
    #[inline]
    fn oy(&self, y: usize) -> usize {
        (y / B) * self.by + (y % B) * B
    }
    #[inline]
    fn oz(&self, z: usize) -> usize {
        (z / B) * self.bz + (z % B) * B * B
    }

    /// Flat index of a stored cell: kₓ ∈ [0, N/2 + 1], k_y, k_z ∈ [−N/2, N/2 + 1].
    #[inline]
    fn index(&self, kx: usize, ky: isize, kz: isize) -> usize {
        let h = (self.np / 2) as isize;
        self.ox(kx) + self.oy((ky + h) as usize) + self.oz((kz + h) as usize)
    }

    /// F at any integer frequency (periodic in N, Friedel for kₓ < 0).
    pub fn get(&self, k: [isize; 3]) -> C32 {
        let (n, h) = (self.np as isize, (self.np / 2) as isize);
        let w = |v: isize| (v + h).rem_euclid(n) - h; // into [−N/2, N/2)
        let (kx, ky, kz) = (w(k[0]), w(k[1]), w(k[2]));
        if kx < 0 {
            self.data[self.index(-kx as usize, w(-ky), w(-kz))].conj()
        } else {
            self.data[self.index(kx as usize, ky, kz)]
        }
    }

    /// Base index, fractional offsets and conjugation flag of the query q.
    #[inline]
    pub(crate) fn corners(&self, q: [f64; 3]) -> Corners {
        let conj = q[0] < 0.0;
        let q = if conj { [-q[0], -q[1], -q[2]] } else { q };
        let h = (self.np / 2) as f64;
        // Shift to non-negative storage coordinates; clamping keeps the eight corners in
        // the stored range (the guards cover the +1 neighbours). `as usize` truncates,
        // i.e. floors, the non-negative values.
        let x = q[0].min(h);
        let y = (q[1] + h).clamp(0.0, 2.0 * h);
        let z = (q[2] + h).clamp(0.0, 2.0 * h);
        // Signed conversions are single instructions on x86-64 (unsigned ones are not).
        let (x0, y0, z0) = (x as i64 as usize, y as i64 as usize, z as i64 as usize);
        Corners {
            off: [self.ox(x0), self.ox(x0 + 1), self.oy(y0), self.oy(y0 + 1), self.oz(z0), self.oz(z0 + 1)],
            f: [(x - x0 as f64) as f32, (y - y0 as f64) as f32, (z - z0 as f64) as f32],
            conj,
        }
    }

    /// The eight (index, weight) pairs of precomputed corners.
    #[inline]
    fn taps(&self, c: &Corners) -> [(usize, f32); 8] {
        let [fx, fy, fz] = c.f;
        let (gx, gy, gz) = (1.0 - fx, 1.0 - fy, 1.0 - fz);
        let [x0, x1, y0, y1, z0, z1] = c.off;
        let (z0y0, z0y1, z1y0, z1y1) = (z0 + y0, z0 + y1, z1 + y0, z1 + y1);
        [
            (z0y0 + x0, gx * gy * gz),
            (z0y0 + x1, fx * gy * gz),
            (z0y1 + x0, gx * fy * gz),
            (z0y1 + x1, fx * fy * gz),
            (z1y0 + x0, gx * gy * fz),
            (z1y0 + x1, fx * gy * fz),
            (z1y1 + x0, gx * fy * fz),
            (z1y1 + x1, fx * fy * fz),
        ]
    }

    /// Hint the cache about the four cache lines of a query's corners.
    #[inline]
    pub(crate) fn prefetch(&self, c: &Corners) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let [x0, _, y0, y1, z0, z1] = c.off;
            for i in [z0 + y0 + x0, z0 + y1 + x0, z1 + y0 + x0, z1 + y1 + x0] {
                let p = self.data.as_ptr().wrapping_add(i) as *const i8;
                // SAFETY: PREFETCH is a hint that never faults (even on invalid addresses)
                // and SSE is part of the x86-64 baseline.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
            }
        }
    }

    /// Interpolated value at precomputed corners.
    #[inline]
    pub(crate) fn gather(&self, c: &Corners) -> C32 {
        let mut v = C32::default();
        for (i, w) in self.taps(c) {
            v += self.data[i] * w;
        }
        if c.conj {
            v.conj()
        } else {
            v
        }
    }

    /// Trilinear interpolation at q (padded-grid frequency units).
    #[inline]
    pub fn sample(&self, q: [f64; 3]) -> C32 {
        self.gather(&self.corners(q))
    }

    /// Adjoint of [`PaddedSpectrum::sample`]: add `v` to the corners of q with the
    /// interpolation weights (conjugated where `sample` conjugates).
    #[inline]
    pub fn spread(&mut self, q: [f64; 3], v: C32) {
        let c = self.corners(q);
        let v = if c.conj { v.conj() } else { v };
        for (i, w) in self.taps(&c) {
            self.data[i] += v * w;
        }
    }
}

/// A trilinear query located in a [`PaddedSpectrum`]: flat-index contributions of the
/// two x, y and z storage coordinates, fractional offsets (x, y, z) and whether the
/// result is conjugated.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Corners {
    off: [usize; 6],
    f: [f32; 3],
    conj: bool,
}

/// Real-to-complex 3D DFT of a wrapped-origin N³ volume into a [`PaddedSpectrum`]:
/// `realfft` along x, then complex FFTs along y (per z-plane) and z (per y-row), all
/// parallel over independent lines.
pub(crate) fn padded_r2c(mut real: Vec<f32>, np: usize) -> PaddedSpectrum {
    let nh = np / 2 + 1;
    let mut data = vec![C32::default(); np * np * nh];
    let r2c = RealFftPlanner::<f32>::new().plan_fft_forward(np);
    let c2c = FftPlanner::<f32>::new().plan_fft_forward(np);
    real.par_chunks_mut(np).zip(data.par_chunks_mut(nh)).for_each_init(
        || r2c.make_scratch_vec(),
        |s, (inp, out)| {
            // Lengths are fixed by construction; realfft only errs on wrong lengths.
            r2c.process_with_scratch(inp, out, s).expect("realfft lengths set by construction");
        },
    );
    drop(real);
    let scratch = || (vec![C32::default(); np], vec![C32::default(); c2c.get_inplace_scratch_len()]);
    // y lines: stride nh inside each z-plane.
    data.par_chunks_mut(np * nh).for_each_init(scratch, |(line, s), plane| {
        for x in 0..nh {
            line.iter_mut().enumerate().for_each(|(y, v)| *v = plane[y * nh + x]);
            c2c.process_with_scratch(line, s);
            line.iter().enumerate().for_each(|(y, v)| plane[y * nh + x] = *v);
        }
    });
    // z lines: gather row y of every plane into one bucket per y, so that buckets can be
    // processed in parallel without aliasing.
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
    drop(buckets);
    with_guards(&data, np)
}

/// Copy a wrapped half spectrum (`[k_z mod N][k_y mod N][kₓ = 0..=N/2]`) into the
/// guarded centred layout of [`PaddedSpectrum`].
fn with_guards(half: &[C32], np: usize) -> PaddedSpectrum {
    let (n, h, nh) = (np as isize, (np / 2) as isize, np / 2 + 1);
    let mut out = PaddedSpectrum::layout(np);
    let at = |kx: usize, ky: isize, kz: isize| {
        half[(kz.rem_euclid(n) as usize * np + ky.rem_euclid(n) as usize) * nh + kx]
    };
    let bz = out.bz;
    let geom = PaddedSpectrum { np, by: out.by, bz, data: Vec::new() };
    // One z-brick slab at a time (contiguous); cells outside the stored range stay zero.
    out.data.par_chunks_mut(bz).enumerate().for_each(|(zb, slab)| {
        for z in zb * B..((zb + 1) * B).min(np + 2) {
            let kz = z as isize - h;
            for y in 0..np + 2 {
                let ky = y as isize - h;
                for kx in 0..nh + 1 {
                    // kₓ = N/2 + 1 ≡ −N/2 + 1: F there is F(N/2 − 1, −k_y, −k_z)*.
                    let v = if kx < nh { at(kx, ky, kz) } else { at(np / 2 - 1, -ky, -kz).conj() };
                    slab[geom.ox(kx) + geom.oy(y) + geom.oz(z) - zb * bz] = v;
                }
            }
        }
    });
    out
}
