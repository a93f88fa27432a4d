//! Orientation diagnostics of a refinement: conical FSC, cFAR, 3DFSC sphericity and SCF*
//! (METHODS.md §6; `cryoforge orient`).
//!
//! * **Conical FSC.** For each cone axis `d` of a Fibonacci sphere (3,072 by default, as
//!   cryoSPARC) and each Fourier shell `k` (rule 13: round(|q|) in voxels), the FSC over the
//!   voxels of shell k whose direction lies within the half-angle (20°) of ±d. Only one voxel
//!   of each Friedel pair is visited (the half space z > 0, or z = 0 and y > 0, or z = y = 0
//!   and x > 0): both voxels of a pair fall in the same double cone and contribute the same
//!   real part, so the ratio is unchanged. Voxels are pre-sorted into 5° latitude–longitude
//!   cells, and a cone visits only the cells that can reach it, so the cost is ~7 % of a
//!   brute-force pass, exact all the same.
//! * **cFAR** (cryoSPARC's conical FSC area ratio): `W_d = Σ_{1 ≤ k < k_d} cFSC_d(k)·k²`,
//!   `k_d` the first shell with cFSC ≤ 0.143; `cFAR = min W / max W`. Below 0.5 flags
//!   preferred orientation.
//! * **Sphericity** (3DFSC, Tan et al. 2017): every voxel takes the conical FSC of its
//!   nearest cone axis; the volume is thresholded at 0.5, everything coarser than 200 Å is
//!   kept, only the component connected to the origin survives, it is blurred with a
//!   σ = 1 voxel Gaussian and its 0.5 isosurface (marching tetrahedra: watertight, no case
//!   tables) gives the area A and enclosed volume V: `Ψ = π^(1/3)(6V)^(2/3)/A`, 1 for a ball.
//! * **SCF\*** (Baldwin & Lyumkis 2020): the sampling of a Fourier shell of radius R
//!   (default 50 voxels) by the central sections of the particles' viewing directions:
//!   `S(p)` = number of directions n with `|R p·n| ≤ ½` (the section passes within half a
//!   voxel of p) at min(2πR², 5000) Fibonacci points p; `SCF = 1/(⟨1/S⟩_{S>0}·⟨S⟩)`, and with
//!   the fraction f of unsampled points and `Q = f/(1−f)`,
//!   `SCF* = SCF/(1 + Q·⟨S⟩·SCF/2)`. Below 0.81 flags a harmful orientation bias. Symmetry
//!   expands each direction by the group's operators.
//!
//! Pinned by the tests of this module (isotropic halves: cFAR ≥ 0.9 and Ψ ≥ 0.95; a 30°
//! missing cone: cFAR ≤ 0.2; Haar-uniform poses: SCF* = 1 ± 0.02; 80 % top views: SCF* < 0.81).

use cryoforge_core::fft::{Fft3, C32};
use cryoforge_core::fsc::FscCurve;
use cryoforge_core::symmetry::Symmetry;
use cryoforge_core::Rot3;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Settings of the orientation diagnostics (defaults as cryoSPARC and 3DFSC).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrientConfig {
    /// Cone axes on a Fibonacci sphere.
    pub n_directions: usize,
    /// Half-angle of each cone (degrees).
    pub cone_half_angle_deg: f64,
    /// FSC threshold of the cFAR areas and of the directional resolutions.
    pub cfar_threshold: f64,
    /// FSC threshold of the 3DFSC sphericity.
    pub sphericity_threshold: f64,
    /// Everything coarser than this (Å) is kept in the sphericity volume.
    pub highpass_a: f64,
    /// Fourier radius (voxels) of the shell whose sampling SCF* measures.
    pub scf_fourier_radius: f64,
    /// At most this many particle directions enter SCF* (a seeded random subset beyond).
    pub scf_max_particles: usize,
}

impl Default for OrientConfig {
    fn default() -> Self {
        OrientConfig {
            n_directions: 3072,
            cone_half_angle_deg: 20.0,
            cfar_threshold: 0.143,
            sphericity_threshold: 0.5,
            highpass_a: 200.0,
            scf_fourier_radius: 50.0,
            scf_max_particles: 100_000,
        }
    }
}

/// cFAR below this flags preferred orientation (cryoSPARC).
pub const CFAR_FLAG: f64 = 0.5;
/// SCF* below this flags a harmful orientation bias (Baldwin & Lyumkis).
pub const SCF_FLAG: f64 = 0.81;

/// Axes on a Fibonacci sphere: `z = 1 − 2(i−½)/n`, `φ = (i−1)·π(3−√5)`, i = 1..n.
pub fn fibonacci_sphere(n: usize) -> Vec<[f64; 3]> {
    let ga = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    (1..=n)
        .map(|i| {
            let z = 1.0 - 2.0 * (i as f64 - 0.5) / n as f64;
            let r = (1.0 - z * z).max(0.0).sqrt();
            let phi = (i - 1) as f64 * ga;
            [r * phi.cos(), r * phi.sin(), z]
        })
        .collect()
}

/// Azimuth and elevation (degrees) of a unit vector, as the viewing-direction plots.
pub fn azimuth_elevation_deg(d: [f64; 3]) -> (f64, f64) {
    (d[1].atan2(d[0]).to_degrees(), d[2].clamp(-1.0, 1.0).asin().to_degrees())
}

/// Conical FSC curves, one per cone axis.
#[derive(Debug, Clone)]
pub struct DirectionalFsc {
    pub n: usize,
    pub apix_a: f64,
    pub directions: Vec<[f64; 3]>,
    /// `curves[d][k]`, shells k = 0..=n/2 (shell 0 is the DC term).
    pub curves: Vec<Vec<f64>>,
}

impl DirectionalFsc {
    pub fn curve(&self, d: usize) -> FscCurve {
        FscCurve { n: self.n, apix_a: self.apix_a, fsc: self.curves[d].clone() }
    }
}

/// One Fourier voxel of the half space with its three FSC terms.
#[derive(Clone, Copy)]
struct Voxel {
    u: [f32; 3],
    shell: u32,
    cross: f32,
    p1: f32,
    p2: f32,
}

/// 5° latitude–longitude cells over the sphere of directions.
struct Cells {
    /// (θ ring, number of φ cells) → offset of the ring's first cell.
    ring_start: Vec<usize>,
    ring_cells: Vec<usize>,
    centres: Vec<[f64; 3]>,
    /// Largest angle (radians) from a cell's centre to any point of the cell.
    radius: Vec<f64>,
}

const RING_DEG: f64 = 5.0;

impl Cells {
    fn new() -> Cells {
        let n_rings = (180.0 / RING_DEG) as usize;
        let (mut ring_start, mut ring_cells, mut centres, mut radius) = (vec![], vec![], vec![], vec![]);
        let dir = |t: f64, p: f64| [t.sin() * p.cos(), t.sin() * p.sin(), t.cos()];
        let ang =
            |a: [f64; 3], b: [f64; 3]| (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]).clamp(-1.0, 1.0).acos();
        for r in 0..n_rings {
            let (t0, t1) = ((r as f64 * RING_DEG).to_radians(), ((r + 1) as f64 * RING_DEG).to_radians());
            let tm = 0.5 * (t0 + t1);
            let m = ((360.0 / RING_DEG) * tm.sin()).round().max(3.0) as usize;
            ring_start.push(centres.len());
            ring_cells.push(m);
            for c in 0..m {
                let dp = std::f64::consts::TAU / m as f64;
                let (p0, p1) = (c as f64 * dp, (c + 1) as f64 * dp);
                let ctr = dir(tm, 0.5 * (p0 + p1));
                // The boundary sampled densely: the farthest point bounds the cell.
                let mut rad = 0f64;
                for s in 0..=16 {
                    let f = s as f64 / 16.0;
                    for q in [
                        dir(t0, p0 + f * (p1 - p0)),
                        dir(t1, p0 + f * (p1 - p0)),
                        dir(t0 + f * (t1 - t0), p0),
                        dir(t0 + f * (t1 - t0), p1),
                    ] {
                        rad = rad.max(ang(ctr, q));
                    }
                }
                centres.push(ctr);
                radius.push(rad + 0.2f64.to_radians());
            }
        }
        Cells { ring_start, ring_cells, centres, radius }
    }

    fn len(&self) -> usize {
        self.centres.len()
    }

    fn of(&self, u: [f64; 3]) -> usize {
        let t = u[2].clamp(-1.0, 1.0).acos().to_degrees();
        let r = ((t / RING_DEG) as usize).min(self.ring_start.len() - 1);
        let m = self.ring_cells[r];
        let p = u[1].atan2(u[0]).rem_euclid(std::f64::consts::TAU);
        let c = ((p / std::f64::consts::TAU * m as f64) as usize).min(m - 1);
        self.ring_start[r] + c
    }
}

/// The half-space voxels of two centred n³ spectra, sorted by direction cell.
struct SortedVoxels {
    voxels: Vec<Voxel>,
    /// Cell c holds `voxels[cell_start[c]..cell_start[c + 1]]`.
    cell_start: Vec<usize>,
    cells: Cells,
    dc: [f64; 3],
}

fn sort_voxels(a: &[C32], b: &[C32], n: usize) -> SortedVoxels {
    let h = (n / 2) as isize;
    let nyq = n / 2;
    let cells = Cells::new();
    let mut tagged: Vec<(u32, Voxel)> = (0..n)
        .into_par_iter()
        .flat_map_iter(|z| {
            let cells = &cells;
            let mut out = Vec::new();
            let dz = z as isize - h;
            for y in 0..n {
                let dy = y as isize - h;
                for x in 0..n {
                    let dx = x as isize - h;
                    // A voxel with a coordinate at −n/2 has its Friedel mate folded back
                    // into the same plane (not in the half space): it counts half.
                    let folded = dz == -h || dy == -h || dx == -h;
                    let upper = dz > 0 || (dz == 0 && (dy > 0 || (dy == 0 && dx > 0)));
                    if !upper && !folded {
                        continue;
                    }
                    let wt = if folded { 0.5 } else { 1.0 };
                    let r = ((dx * dx + dy * dy + dz * dz) as f64).sqrt();
                    let k = r.round() as usize;
                    if k > nyq {
                        continue;
                    }
                    let i = (z * n + y) * n + x;
                    let (p, q) = (a[i], b[i]);
                    let u = [dx as f64 / r, dy as f64 / r, dz as f64 / r];
                    out.push((
                        cells.of(u) as u32,
                        Voxel {
                            u: [u[0] as f32, u[1] as f32, u[2] as f32],
                            shell: k as u32,
                            cross: wt * (p.re * q.re + p.im * q.im),
                            p1: wt * p.norm_sqr(),
                            p2: wt * q.norm_sqr(),
                        },
                    ));
                }
            }
            out
        })
        .collect();
    // Stable sort: the order within a cell (and so every sum) does not depend on threads.
    tagged.sort_by_key(|t| t.0);
    let mut cell_start = vec![0usize; cells.len() + 1];
    for t in &tagged {
        cell_start[t.0 as usize + 1] += 1;
    }
    for c in 0..cells.len() {
        cell_start[c + 1] += cell_start[c];
    }
    let i0 = (h as usize * n + h as usize) * n + h as usize;
    let dc = [
        (a[i0].re * b[i0].re + a[i0].im * b[i0].im) as f64,
        a[i0].norm_sqr() as f64,
        b[i0].norm_sqr() as f64,
    ];
    SortedVoxels { voxels: tagged.into_iter().map(|t| t.1).collect(), cell_start, cells, dc }
}

/// Conical FSC of two centred n³ spectra over the given cone axes.
pub fn conical_fsc_spectra(
    a: &[C32],
    b: &[C32],
    n: usize,
    apix_a: f64,
    directions: &[[f64; 3]],
    half_angle_deg: f64,
) -> DirectionalFsc {
    assert_eq!(a.len(), n * n * n, "conical_fsc: wrong size");
    assert_eq!(b.len(), n * n * n, "conical_fsc: wrong size");
    let sv = sort_voxels(a, b, n);
    let nyq = n / 2;
    let alpha = half_angle_deg.to_radians();
    let cos_a = alpha.cos() as f32;
    let curves = directions
        .par_iter()
        .map(|d| {
            let mut s = vec![[0f64; 4]; nyq + 1];
            s[0] = [sv.dc[0], sv.dc[1], sv.dc[2], 1.0];
            let df = [d[0] as f32, d[1] as f32, d[2] as f32];
            for c in 0..sv.cells.len() {
                let ctr = sv.cells.centres[c];
                let cosang = (ctr[0] * d[0] + ctr[1] * d[1] + ctr[2] * d[2]).clamp(-1.0, 1.0);
                // Angle to the nearer of ±d.
                let ang = cosang.abs().acos();
                if ang > alpha + sv.cells.radius[c] {
                    continue;
                }
                for v in &sv.voxels[sv.cell_start[c]..sv.cell_start[c + 1]] {
                    let cu = v.u[0] * df[0] + v.u[1] * df[1] + v.u[2] * df[2];
                    if cu.abs() >= cos_a {
                        let t = &mut s[v.shell as usize];
                        t[0] += v.cross as f64;
                        t[1] += v.p1 as f64;
                        t[2] += v.p2 as f64;
                        t[3] += 1.0;
                    }
                }
            }
            // A shell without voxels in the cone (the lowest shells of a narrow cone)
            // carries the value of the shell below it.
            let mut curve = Vec::with_capacity(nyq + 1);
            let mut last = 1.0;
            for t in &s {
                if t[3] > 0.0 {
                    last = if t[1] > 0.0 && t[2] > 0.0 { t[0] / (t[1] * t[2]).sqrt() } else { 0.0 };
                }
                curve.push(last);
            }
            curve
        })
        .collect();
    DirectionalFsc { n, apix_a, directions: directions.to_vec(), curves }
}

/// cFAR and the per-direction areas `W_d` and crossing shells `k_d`.
#[derive(Debug, Clone)]
pub struct Cfar {
    pub cfar: f64,
    pub areas: Vec<f64>,
    pub crossing_shell: Vec<usize>,
}

pub fn cfar(dfsc: &DirectionalFsc, threshold: f64) -> Cfar {
    let mut areas = Vec::with_capacity(dfsc.curves.len());
    let mut crossing = Vec::with_capacity(dfsc.curves.len());
    for c in &dfsc.curves {
        let kd = (1..c.len()).find(|&k| c[k] <= threshold).unwrap_or(c.len());
        areas.push((1..kd).map(|k| c[k] * (k * k) as f64).sum::<f64>());
        crossing.push(kd);
    }
    let max = areas.iter().cloned().fold(f64::MIN, f64::max);
    let min = areas.iter().cloned().fold(f64::MAX, f64::min);
    let cfar = if max > 0.0 { (min.max(0.0) / max).clamp(0.0, 1.0) } else { 0.0 };
    Cfar { cfar, areas, crossing_shell: crossing }
}

/// 3DFSC sphericity of the directional FSC volume (see the module notes).
pub fn sphericity(dfsc: &DirectionalFsc, threshold: f64, highpass_a: f64) -> f64 {
    let n = dfsc.n;
    let h = (n / 2) as isize;
    let nyq = n / 2;
    // Nearest cone axis (±) of every direction, tabulated on a 1° grid of (θ, φ).
    const T: usize = 180;
    const P: usize = 360;
    let dirs = &dfsc.directions;
    let table: Vec<u32> = (0..T * P)
        .into_par_iter()
        .map(|i| {
            let t = ((i / P) as f64 + 0.5).to_radians();
            let p = ((i % P) as f64 + 0.5).to_radians();
            let u = [t.sin() * p.cos(), t.sin() * p.sin(), t.cos()];
            let mut best = (0usize, -1f64);
            for (j, d) in dirs.iter().enumerate() {
                let c = (u[0] * d[0] + u[1] * d[1] + u[2] * d[2]).abs();
                if c > best.1 {
                    best = (j, c);
                }
            }
            best.0 as u32
        })
        .collect();
    let keep_r = (n as f64 * dfsc.apix_a / highpass_a).max(0.0);
    // Thresholded directional FSC, padded by PAD zero voxels on every side.
    const PAD: usize = 4;
    let m = n + 2 * PAD;
    let mut bin = vec![0u8; m * m * m];
    bin.par_chunks_mut(m * m).enumerate().for_each(|(zz, slab)| {
        if zz < PAD || zz >= n + PAD {
            return;
        }
        let dz = (zz - PAD) as isize - h;
        for yy in PAD..n + PAD {
            let dy = (yy - PAD) as isize - h;
            for xx in PAD..n + PAD {
                let dx = (xx - PAD) as isize - h;
                let r = ((dx * dx + dy * dy + dz * dz) as f64).sqrt();
                let k = r.round() as usize;
                if k > nyq {
                    continue;
                }
                let on = if r < keep_r || k == 0 {
                    true
                } else {
                    let t = ((dz as f64 / r).clamp(-1.0, 1.0).acos().to_degrees() as usize).min(T - 1);
                    let p = ((dy as f64).atan2(dx as f64).to_degrees().rem_euclid(360.0) as usize).min(P - 1);
                    dfsc.curves[table[t * P + p] as usize][k] >= threshold
                };
                slab[yy * m + xx] = on as u8;
            }
        }
    });
    // Keep the 6-connected component of the origin.
    let idx = |z: usize, y: usize, x: usize| (z * m + y) * m + x;
    let c0 = idx(h as usize + PAD, h as usize + PAD, h as usize + PAD);
    let mut keep = vec![0f32; m * m * m];
    if bin[c0] == 1 {
        let mut stack = vec![c0];
        bin[c0] = 2;
        while let Some(i) = stack.pop() {
            keep[i] = 1.0;
            let (z, y, x) = (i / (m * m), (i / m) % m, i % m);
            let nb = [
                (z.wrapping_sub(1), y, x),
                (z + 1, y, x),
                (z, y.wrapping_sub(1), x),
                (z, y + 1, x),
                (z, y, x.wrapping_sub(1)),
                (z, y, x + 1),
            ];
            for (a, b, c) in nb {
                if a < m && b < m && c < m {
                    let j = idx(a, b, c);
                    if bin[j] == 1 {
                        bin[j] = 2;
                        stack.push(j);
                    }
                }
            }
        }
    }
    let blurred = gaussian_blur3(&keep, m, 1.0);
    let (area, volume) = isosurface_area_volume(&blurred, m, 0.5);
    if area <= 0.0 || volume <= 0.0 {
        return 0.0;
    }
    std::f64::consts::PI.cbrt() * (6.0 * volume).powf(2.0 / 3.0) / area
}

/// Separable Gaussian blur of an m³ volume (σ in voxels, kernel to 4σ, zero outside).
pub fn gaussian_blur3(v: &[f32], m: usize, sigma: f64) -> Vec<f32> {
    let r = (4.0 * sigma).ceil() as isize;
    let mut k: Vec<f64> = (-r..=r).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|x| *x /= s);
    let pass = |src: &[f32], stride: usize| -> Vec<f32> {
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(m * m).enumerate().for_each(|(z, slab)| {
            for rem in 0..m * m {
                let i = z * m * m + rem;
                let coord = (i / stride) % m;
                let mut acc = 0f64;
                for (t, w) in k.iter().enumerate() {
                    let c = coord as isize + t as isize - r;
                    if c >= 0 && (c as usize) < m {
                        acc += w * src[(i as isize + (t as isize - r) * stride as isize) as usize] as f64;
                    }
                }
                slab[rem] = acc as f32;
            }
        });
        dst
    };
    let a = pass(v, 1);
    let b = pass(&a, m);
    pass(&b, m * m)
}

/// Area and enclosed volume (voxel units) of the `iso` level set of an m³ volume under
/// piecewise-linear interpolation on the 6 tetrahedra of each cube that share its main
/// diagonal (a watertight surface). The volume is the divergence-theorem sum over the
/// triangles oriented from inside (`≥ iso`) to outside; the set must not touch the border.
pub fn isosurface_area_volume(v: &[f32], m: usize, iso: f32) -> (f64, f64) {
    const CORNER: [[usize; 3]; 8] =
        [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]];
    const TETS: [[usize; 4]; 6] =
        [[0, 5, 1, 6], [0, 1, 2, 6], [0, 2, 3, 6], [0, 3, 7, 6], [0, 7, 4, 6], [0, 4, 5, 6]];
    let sums: Vec<(f64, f64)> = (0..m - 1)
        .into_par_iter()
        .map(|z| {
            let (mut area, mut vol) = (0f64, 0f64);
            for y in 0..m - 1 {
                for x in 0..m - 1 {
                    let mut val = [0f32; 8];
                    let (mut any_in, mut any_out) = (false, false);
                    for (c, o) in CORNER.iter().enumerate() {
                        val[c] = v[((z + o[2]) * m + y + o[1]) * m + x + o[0]];
                        if val[c] >= iso {
                            any_in = true;
                        } else {
                            any_out = true;
                        }
                    }
                    if !(any_in && any_out) {
                        continue;
                    }
                    let pos = |c: usize| {
                        [(x + CORNER[c][0]) as f64, (y + CORNER[c][1]) as f64, (z + CORNER[c][2]) as f64]
                    };
                    for t in TETS {
                        let ins: Vec<usize> = t.iter().copied().filter(|&c| val[c] >= iso).collect();
                        let outs: Vec<usize> = t.iter().copied().filter(|&c| val[c] < iso).collect();
                        if ins.is_empty() || outs.is_empty() {
                            continue;
                        }
                        let cut = |a: usize, b: usize| {
                            let (pa, pb) = (pos(a), pos(b));
                            let f = ((iso - val[a]) / (val[b] - val[a])) as f64;
                            [
                                pa[0] + f * (pb[0] - pa[0]),
                                pa[1] + f * (pb[1] - pa[1]),
                                pa[2] + f * (pb[2] - pa[2]),
                            ]
                        };
                        let centroid = |s: &[usize]| {
                            let mut c = [0f64; 3];
                            for &i in s {
                                let p = pos(i);
                                for j in 0..3 {
                                    c[j] += p[j] / s.len() as f64;
                                }
                            }
                            c
                        };
                        let (ci, co) = (centroid(&ins), centroid(&outs));
                        let outward = [co[0] - ci[0], co[1] - ci[1], co[2] - ci[2]];
                        let mut tri = |p0: [f64; 3], p1: [f64; 3], p2: [f64; 3]| {
                            let e1 = [p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]];
                            let e2 = [p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]];
                            let nrm = [
                                e1[1] * e2[2] - e1[2] * e2[1],
                                e1[2] * e2[0] - e1[0] * e2[2],
                                e1[0] * e2[1] - e1[1] * e2[0],
                            ];
                            let a2 = (nrm[0] * nrm[0] + nrm[1] * nrm[1] + nrm[2] * nrm[2]).sqrt();
                            area += 0.5 * a2;
                            let sgn =
                                if nrm[0] * outward[0] + nrm[1] * outward[1] + nrm[2] * outward[2] >= 0.0 {
                                    1.0
                                } else {
                                    -1.0
                                };
                            // Signed volume of the tetrahedron (origin, p0, p1, p2) = p0·(nrm)/6.
                            vol += sgn * (p0[0] * nrm[0] + p0[1] * nrm[1] + p0[2] * nrm[2]) / 6.0;
                        };
                        match (ins.len(), outs.len()) {
                            (1, 3) => tri(cut(ins[0], outs[0]), cut(ins[0], outs[1]), cut(ins[0], outs[2])),
                            (3, 1) => tri(cut(ins[0], outs[0]), cut(ins[1], outs[0]), cut(ins[2], outs[0])),
                            _ => {
                                // Quad a0b0, a0b1, a1b1, a1b0 split along its diagonal.
                                let q = [
                                    cut(ins[0], outs[0]),
                                    cut(ins[0], outs[1]),
                                    cut(ins[1], outs[1]),
                                    cut(ins[1], outs[0]),
                                ];
                                tri(q[0], q[1], q[2]);
                                tri(q[0], q[2], q[3]);
                            }
                        }
                    }
                }
            }
            (area, vol)
        })
        .collect();
    sums.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// SCF and SCF* of a set of viewing directions (unit vectors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scf {
    pub scf: f64,
    pub scf_star: f64,
    /// Fraction of the shell's sample points no section passes through.
    pub fraction_unsampled: f64,
    /// Mean sampling ⟨S⟩ per point.
    pub mean_sampling: f64,
    pub n_directions: usize,
    pub fourier_radius: f64,
}

/// SCF* (Baldwin & Lyumkis) of viewing directions, expanded by the symmetry operators.
pub fn scf_star(directions: &[[f64; 3]], sym: &Symmetry, fourier_radius: f64) -> Scf {
    let ops: Vec<Rot3> = sym.operators();
    let mut all: Vec<[f32; 3]> = Vec::with_capacity(directions.len() * ops.len());
    for d in directions {
        for op in &ops {
            let v = op.apply(*d);
            all.push([v[0] as f32, v[1] as f32, v[2] as f32]);
        }
    }
    let m = ((std::f64::consts::TAU * fourier_radius * fourier_radius).floor() as usize).clamp(12, 5000);
    let points = fibonacci_sphere(m);
    let w = (0.5 / fourier_radius) as f32;
    let samp: Vec<u32> = points
        .par_iter()
        .map(|p| {
            let pf = [p[0] as f32, p[1] as f32, p[2] as f32];
            all.iter().filter(|n| (n[0] * pf[0] + n[1] * pf[1] + n[2] * pf[2]).abs() <= w).count() as u32
        })
        .collect();
    let mean = samp.iter().map(|&s| s as f64).sum::<f64>() / m as f64;
    let nz: Vec<f64> = samp.iter().filter(|&&s| s > 0).map(|&s| 1.0 / s as f64).collect();
    let f0 = 1.0 - nz.len() as f64 / m as f64;
    if nz.is_empty() || mean <= 0.0 {
        return Scf {
            scf: 0.0,
            scf_star: 0.0,
            fraction_unsampled: 1.0,
            mean_sampling: 0.0,
            n_directions: all.len(),
            fourier_radius,
        };
    }
    let recip = nz.iter().sum::<f64>() / nz.len() as f64;
    let scf = 1.0 / (recip * mean);
    let q = f0 / (1.0 - f0);
    let scf_star = scf / (1.0 + q * mean * scf / 2.0);
    Scf {
        scf,
        scf_star,
        fraction_unsampled: f0,
        mean_sampling: mean,
        n_directions: all.len(),
        fourier_radius,
    }
}

/// Viewing direction of a pose in the map frame (the normal of its central section):
/// `(cos rot · sin tilt, sin rot · sin tilt, cos tilt)` of the RELION angles (rule 1).
pub fn viewing_direction(rot: &Rot3) -> [f64; 3] {
    let e = cryoforge_core::EulerRelion::from_rot(rot);
    let (r, t) = (e.rot_deg.to_radians(), e.tilt_deg.to_radians());
    [r.cos() * t.sin(), r.sin() * t.sin(), t.cos()]
}

/// Per-direction results of [`orient`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectionRow {
    pub direction: [f64; 3],
    pub resolution_0143_a: f64,
    pub resolution_05_a: f64,
    pub area: f64,
}

/// Everything `cryoforge orient` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrientReport {
    pub config: OrientConfig,
    pub box_px: usize,
    pub apix_a: f64,
    pub masked: bool,
    /// Global (all-direction) half-map FSC resolution at 0.143.
    pub resolution_0143_a: f64,
    pub cfar: f64,
    pub sphericity: f64,
    pub directional_resolution_best_a: f64,
    pub directional_resolution_worst_a: f64,
    pub directional_resolution_median_a: f64,
    pub scf: Option<Scf>,
    /// cFAR < 0.5 or SCF* < 0.81.
    pub preferred_orientation: bool,
    pub verdict: String,
    #[serde(skip)]
    pub rows: Vec<DirectionRow>,
    #[serde(skip)]
    pub dfsc: Option<DirectionalFsc>,
    #[serde(skip)]
    pub global: Option<FscCurve>,
}

/// Orientation diagnostics of two half maps (and optionally the particles' poses).
pub fn orient(
    half_a: &[f32],
    half_b: &[f32],
    n: usize,
    apix_a: f64,
    mask: Option<&[f32]>,
    directions_of_particles: Option<(&[[f64; 3]], &Symmetry)>,
    cfg: &OrientConfig,
) -> OrientReport {
    let apply = |v: &[f32]| -> Vec<f32> {
        match mask {
            Some(m) => v.iter().zip(m).map(|(a, b)| a * b).collect(),
            None => v.to_vec(),
        }
    };
    let fft = Fft3::new(n);
    let fa = fft.forward_real(&apply(half_a));
    let fb = fft.forward_real(&apply(half_b));
    let global = cryoforge_core::fsc::fsc_spectra(&fa, &fb, n, apix_a);
    let dirs = fibonacci_sphere(cfg.n_directions);
    let dfsc = conical_fsc_spectra(&fa, &fb, n, apix_a, &dirs, cfg.cone_half_angle_deg);
    drop((fa, fb));
    let cf = cfar(&dfsc, cfg.cfar_threshold);
    let sph = sphericity(&dfsc, cfg.sphericity_threshold, cfg.highpass_a);
    let rows: Vec<DirectionRow> = (0..dirs.len())
        .map(|d| {
            let c = dfsc.curve(d);
            DirectionRow {
                direction: dirs[d],
                resolution_0143_a: c.resolution_at(cfg.cfar_threshold),
                resolution_05_a: c.resolution_at(0.5),
                area: cf.areas[d],
            }
        })
        .collect();
    let mut res: Vec<f64> = rows.iter().map(|r| r.resolution_0143_a).filter(|r| r.is_finite()).collect();
    res.sort_by(f64::total_cmp);
    let pick =
        |q: f64| if res.is_empty() { f64::NAN } else { res[((res.len() - 1) as f64 * q).round() as usize] };
    let scf = directions_of_particles.map(|(d, sym)| scf_star(d, sym, cfg.scf_fourier_radius));
    let po_cfar = cf.cfar < CFAR_FLAG;
    let po_scf = scf.as_ref().is_some_and(|s| s.scf_star < SCF_FLAG);
    let mut verdict = Vec::new();
    verdict.push(if po_cfar {
        format!("cFAR {:.2} < {CFAR_FLAG}: the resolution is anisotropic (preferred orientation, or junk particles)", cf.cfar)
    } else {
        format!("cFAR {:.2} ≥ {CFAR_FLAG}: isotropic resolution", cf.cfar)
    });
    if let Some(s) = &scf {
        verdict.push(if po_scf {
            format!(
                "SCF* {:.2} < {SCF_FLAG}: the pose distribution is biased enough to cost resolution",
                s.scf_star
            )
        } else {
            format!("SCF* {:.2} ≥ {SCF_FLAG}: the pose distribution samples Fourier space well", s.scf_star)
        });
    }
    OrientReport {
        config: cfg.clone(),
        box_px: n,
        apix_a,
        masked: mask.is_some(),
        resolution_0143_a: global.resolution_at(0.143),
        cfar: cf.cfar,
        sphericity: sph,
        directional_resolution_best_a: pick(0.0),
        directional_resolution_worst_a: pick(1.0),
        directional_resolution_median_a: pick(0.5),
        scf,
        preferred_orientation: po_cfar || po_scf,
        verdict: verdict.join("; "),
        rows,
        dfsc: Some(dfsc),
        global: Some(global),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Two half "maps" given directly as centred spectra: a common signal that falls off
    /// sharply at shell `k_cut`, plus independent white noise.
    fn halves(n: usize, k_cut: f64, seed: u64, empty_cone_deg: Option<f64>) -> (Vec<C32>, Vec<C32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let h = (n / 2) as f64;
        let mut a = vec![C32::default(); n * n * n];
        let mut b = a.clone();
        let mut g = || {
            let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        };
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let (dz, dy, dx) = (z as f64 - h, y as f64 - h, x as f64 - h);
                    let r = (dx * dx + dy * dy + dz * dz).sqrt();
                    let sig = if r < k_cut { 30.0 } else { 0.0 };
                    let s = C32::new(sig * g(), sig * g());
                    let i = (z * n + y) * n + x;
                    a[i] = s + C32::new(g(), g());
                    b[i] = s + C32::new(g(), g());
                    if let Some(c) = empty_cone_deg {
                        if r > 0.0 && (dz / r).abs() >= c.to_radians().cos() {
                            a[i] = C32::default();
                            b[i] = C32::default();
                        }
                    }
                }
            }
        }
        (a, b)
    }

    #[test]
    fn fibonacci_points_are_unit_and_cover_the_sphere() {
        let p = fibonacci_sphere(3072);
        assert!(p.iter().all(|v| ((v[0] * v[0] + v[1] * v[1] + v[2] * v[2]) - 1.0).abs() < 1e-12));
        let mean: [f64; 3] = p.iter().fold([0.0; 3], |m, v| [m[0] + v[0], m[1] + v[1], m[2] + v[2]]);
        assert!(mean.iter().all(|c| c.abs() / 3072.0 < 1e-3), "{mean:?}");
    }

    #[test]
    fn conical_fsc_matches_brute_force() {
        let n = 16;
        let (a, b) = halves(n, 5.0, 3, None);
        let dirs = fibonacci_sphere(40);
        let h = (n / 2) as f64;
        // Spectra of real maps (Hermitian): the half-space sums equal the full-space ones.
        let fft = Fft3::new(n);
        let ra: Vec<f32> = fft.inverse_complex(&a).iter().map(|c| c.re).collect();
        let rb: Vec<f32> = fft.inverse_complex(&b).iter().map(|c| c.re).collect();
        let (ha, hb) = (fft.forward_real(&ra), fft.forward_real(&rb));
        let fast = conical_fsc_spectra(&ha, &hb, n, 2.0, &dirs, 20.0);
        for (di, d) in dirs.iter().enumerate() {
            let mut s = vec![[0f64; 4]; n / 2 + 1];
            for z in 0..n {
                for y in 0..n {
                    for x in 0..n {
                        let q = [x as f64 - h, y as f64 - h, z as f64 - h];
                        let r = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
                        let k = r.round() as usize;
                        if r == 0.0 || k > n / 2 {
                            continue;
                        }
                        let c = (q[0] * d[0] + q[1] * d[1] + q[2] * d[2]) / r;
                        if c.abs() < 20f64.to_radians().cos() {
                            continue;
                        }
                        let i = (z * n + y) * n + x;
                        s[k][0] += (ha[i] * hb[i].conj()).re as f64;
                        s[k][1] += ha[i].norm_sqr() as f64;
                        s[k][2] += hb[i].norm_sqr() as f64;
                        s[k][3] += 1.0;
                    }
                }
            }
            for k in (1..=n / 2).filter(|&k| s[k][3] > 0.0) {
                let f =
                    if s[k][1] > 0.0 && s[k][2] > 0.0 { s[k][0] / (s[k][1] * s[k][2]).sqrt() } else { 0.0 };
                assert!(
                    (fast.curves[di][k] - f).abs() < 1e-4,
                    "dir {di} shell {k}: {} vs {f}",
                    fast.curves[di][k]
                );
            }
        }
    }

    #[test]
    fn isotropic_halves_have_high_cfar_and_sphericity() {
        let n = 48;
        let (a, b) = halves(n, 14.0, 1, None);
        let cfg = OrientConfig::default();
        let dfsc = conical_fsc_spectra(&a, &b, n, 2.0, &fibonacci_sphere(cfg.n_directions), 20.0);
        let c = cfar(&dfsc, 0.143);
        let s = sphericity(&dfsc, 0.5, 200.0);
        eprintln!("isotropic: cFAR {:.3}, sphericity {:.3}", c.cfar, s);
        assert!(c.cfar >= 0.9, "cFAR {}", c.cfar);
        assert!(s >= 0.95, "sphericity {s}");
    }

    #[test]
    fn a_missing_cone_gives_low_cfar() {
        let n = 48;
        let (a, b) = halves(n, 14.0, 2, Some(30.0));
        let cfg = OrientConfig::default();
        let dfsc = conical_fsc_spectra(&a, &b, n, 2.0, &fibonacci_sphere(cfg.n_directions), 20.0);
        let c = cfar(&dfsc, 0.143);
        let s = sphericity(&dfsc, 0.5, 200.0);
        eprintln!("30° missing cone: cFAR {:.3}, sphericity {:.3}", c.cfar, s);
        assert!(c.cfar <= 0.2, "cFAR {}", c.cfar);
        assert!(s < 0.95, "sphericity {s}");
    }

    #[test]
    fn sphericity_of_a_ball_and_an_ellipsoid() {
        let m = 48;
        let h = 24.0;
        let ball: Vec<f32> = (0..m * m * m)
            .map(|i| {
                let (z, y, x) = ((i / (m * m)) as f64 - h, ((i / m) % m) as f64 - h, (i % m) as f64 - h);
                (x * x + y * y + z * z < 15.0 * 15.0) as u8 as f32
            })
            .collect();
        let (a, v) = isosurface_area_volume(&gaussian_blur3(&ball, m, 1.0), m, 0.5);
        let psi = std::f64::consts::PI.cbrt() * (6.0 * v).powf(2.0 / 3.0) / a;
        // Volume of the ball, area of its sphere.
        assert!((v / (4.0 / 3.0 * std::f64::consts::PI * 15f64.powi(3)) - 1.0).abs() < 0.03, "{v}");
        assert!((a / (4.0 * std::f64::consts::PI * 225.0) - 1.0).abs() < 0.04, "{a}");
        assert!(psi > 0.97 && psi <= 1.0 + 1e-6, "{psi}");
        // A 2:1 prolate spheroid: Ψ = 0.9281 analytically.
        let ell: Vec<f32> = (0..m * m * m)
            .map(|i| {
                let (z, y, x) = ((i / (m * m)) as f64 - h, ((i / m) % m) as f64 - h, (i % m) as f64 - h);
                ((x * x + y * y) / 81.0 + z * z / 324.0 < 1.0) as u8 as f32
            })
            .collect();
        let (a, v) = isosurface_area_volume(&gaussian_blur3(&ell, m, 1.0), m, 0.5);
        let psi = std::f64::consts::PI.cbrt() * (6.0 * v).powf(2.0 / 3.0) / a;
        assert!((psi - 0.928).abs() < 0.03, "{psi}");
    }

    fn haar(rng: &mut ChaCha8Rng) -> Rot3 {
        cryoforge_core::rotation::uniform_rotation(rng.gen(), rng.gen(), rng.gen())
    }

    #[test]
    fn scf_star_of_uniform_and_top_view_sets() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let uni: Vec<[f64; 3]> = (0..20_000).map(|_| viewing_direction(&haar(&mut rng))).collect();
        let s = scf_star(&uni, &Symmetry::C(1), 50.0);
        eprintln!("uniform: {s:?}");
        assert!((s.scf_star - 1.0).abs() <= 0.02, "{s:?}");
        // 80 % of views within 30° of the z axis, the rest uniform.
        let mut po = Vec::new();
        while po.len() < 16_000 {
            let d = viewing_direction(&haar(&mut rng));
            if d[2] >= 30f64.to_radians().cos() {
                po.push(d);
            }
        }
        po.extend(uni.iter().take(4_000));
        let s = scf_star(&po, &Symmetry::C(1), 50.0);
        eprintln!("80 % top views: {s:?}");
        assert!(s.scf_star < 0.81, "{s:?}");
        // Symmetry expansion of a C4 set fills the sampling as 4× the directions would.
        let s4 = scf_star(&uni[..5000], &Symmetry::C(4), 50.0);
        assert_eq!(s4.n_directions, 20_000);
    }
}
