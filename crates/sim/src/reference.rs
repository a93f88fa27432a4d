//! Real-space reference projector, for validating the Fourier-slice projector.
//!
//! The volume rotated by A is `V_A(y) = V(Aᵀ y)` (a model point x moves to A·x); its
//! projection is the sum along z: `P_A[i][j] = Σ_k V(Aᵀ·(j − n/2, i − n/2, k − n/2))`,
//! with V sampled by trilinear interpolation in voxel coordinates and zero outside the
//! box. Slow (n³ samples) but independent of any Fourier machinery. Trilinear sampling
//! low-passes (≈ sinc² per axis), so compare at frequencies well below Nyquist.

use cryoforge_core::Rot3;
use rayon::prelude::*;

use crate::error::{check_len, SimError};

/// Interpolation kernel of [`project_real_space_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealSpaceKernel {
    /// 2×2×2 trilinear interpolation (spectrum Π sinc², double zeros at the lattice).
    Trilinear,
    /// 4×4×4 cubic B-spline smoothing without prefilter (spectrum Π sinc⁴): a low-pass,
    /// but with fourth-order zeros at the lattice, so far less aliasing.
    CubicBSpline,
}

/// Project the n³ volume `vol` at pose `rot` into the n×n image `out` (voxel-unit line
/// integral, like [`crate::Projector`]), trilinear, one sample per voxel along z.
pub fn project_real_space(vol: &[f32], n: usize, rot: &Rot3, out: &mut [f32]) -> Result<(), SimError> {
    project_real_space_with(vol, n, rot, RealSpaceKernel::Trilinear, 1, out)
}

/// [`project_real_space`] with a choice of kernel and `z_oversample` samples per voxel
/// along the projection direction (the sum is divided by it).
pub fn project_real_space_with(
    vol: &[f32],
    n: usize,
    rot: &Rot3,
    kernel: RealSpaceKernel,
    z_oversample: usize,
    out: &mut [f32],
) -> Result<(), SimError> {
    if n == 0 {
        return Err(SimError::ZeroBox);
    }
    check_len("volume", n * n * n, vol.len())?;
    check_len("projection image", n * n, out.len())?;
    let os = z_oversample.max(1);
    let h = (n / 2) as f64;
    let a = &rot.0;
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let py = i as f64 - h;
        for (j, o) in row.iter_mut().enumerate() {
            let px = j as f64 - h;
            let mut acc = 0f64;
            for k in 0..n * os {
                let pz = (k as f64 + 0.5) / os as f64 - 0.5 - h;
                // Aᵀ·(px, py, pz), shifted to voxel indices.
                let x = a[0][0] * px + a[1][0] * py + a[2][0] * pz + h;
                let y = a[0][1] * px + a[1][1] * py + a[2][1] * pz + h;
                let z = a[0][2] * px + a[1][2] * py + a[2][2] * pz + h;
                acc += match kernel {
                    RealSpaceKernel::Trilinear => trilinear(vol, n, [x, y, z]),
                    RealSpaceKernel::CubicBSpline => bspline3(vol, n, [x, y, z]),
                };
            }
            *o = (acc / os as f64) as f32;
        }
    });
    Ok(())
}

/// Cubic B-spline weights of the four samples floor(p) − 1 ..= floor(p) + 2, t = p − floor(p).
fn bspline_weights(t: f64) -> [f64; 4] {
    let (t2, t3) = (t * t, t * t * t);
    [
        (1.0 - t).powi(3) / 6.0,
        (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
        (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
        t3 / 6.0,
    ]
}

/// Cubic B-spline smoothing of `vol` at voxel coordinates p; zero outside the grid.
fn bspline3(vol: &[f32], n: usize, p: [f64; 3]) -> f64 {
    let f = [p[0].floor(), p[1].floor(), p[2].floor()];
    let last = n as f64;
    if f.iter().any(|&v| v < -2.0 || v > last) {
        return 0.0;
    }
    let w = [bspline_weights(p[0] - f[0]), bspline_weights(p[1] - f[1]), bspline_weights(p[2] - f[2])];
    let b = [f[0] as isize - 1, f[1] as isize - 1, f[2] as isize - 1];
    let ni = n as isize;
    let mut acc = 0.0;
    for (dz, wz) in w[2].iter().enumerate() {
        let z = b[2] + dz as isize;
        if z < 0 || z >= ni {
            continue;
        }
        for (dy, wy) in w[1].iter().enumerate() {
            let y = b[1] + dy as isize;
            if y < 0 || y >= ni {
                continue;
            }
            let base = (z as usize * n + y as usize) * n;
            for (dx, wx) in w[0].iter().enumerate() {
                let x = b[0] + dx as isize;
                if x >= 0 && x < ni {
                    acc += wz * wy * wx * vol[base + x as usize] as f64;
                }
            }
        }
    }
    acc
}
/// Trilinear sample of `vol` at voxel coordinates p (x, y, z); zero outside the grid.
fn trilinear(vol: &[f32], n: usize, p: [f64; 3]) -> f64 {
    let f = [p[0].floor(), p[1].floor(), p[2].floor()];
    let last = n as f64 - 1.0;
    if f.iter().any(|&v| v < -1.0 || v > last) {
        return 0.0;
    }
    let t = [p[0] - f[0], p[1] - f[1], p[2] - f[2]];
    let base = [f[0] as isize, f[1] as isize, f[2] as isize];
    let mut acc = 0.0;
    for m in 0..8usize {
        let d = [m & 1, (m >> 1) & 1, (m >> 2) & 1];
        let idx = [base[0] + d[0] as isize, base[1] + d[1] as isize, base[2] + d[2] as isize];
        if idx.iter().any(|&v| v < 0 || v >= n as isize) {
            continue;
        }
        let w: f64 = (0..3).map(|a| if d[a] == 1 { t[a] } else { 1.0 - t[a] }).product();
        acc += w * vol[(idx[2] as usize * n + idx[1] as usize) * n + idx[0] as usize] as f64;
    }
    acc
}
