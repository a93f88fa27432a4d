//! Sampling of SO(3): HEALPix viewing directions × in-plane angles for global searches,
//! the asymmetric unit of a point group, and tangent-space cells for hierarchical
//! (coarse-to-fine) refinement.
//!
//! **Global grid** (RELION's): HEALPix of order o (N_side = 2^o, 12·4^o equal-area pixel
//! centres, ring scheme; Górski et al. 2005, ApJ 622:759, eqs. 4–9) for the viewing
//! direction, and `6·2^o` in-plane angles ψ. A direction d = (sinθ cosφ, sinθ sinφ, cosθ)
//! and ψ give the RELION Euler triple (φ, θ, ψ) and so the matrix A whose third row is d
//! (CONVENTIONS.md rule 2): d is the beam direction in the model frame. Order 2 is 192
//! directions × 24 angles = 4,608 rotations ≈ 15° apart (RELION's `--healpix_order 2`);
//! each order halves the step.
//!
//! **Symmetry.** A particle with pose A is also one with pose A·g for every operator g
//! (`recon` inserts it at all of them), and the direction of A·g is gᵀ·d. The global grid
//! keeps only the directions of one Dirichlet cell of the group's orbit of a generic point
//! p₀ (d is kept when no gᵀ·d is closer to p₀), so a group of order |G| searches ≈ 1/|G|
//! of the directions with every in-plane angle.
//!
//! **Cells.** A sample stands for the cell of rotations `exp([ω]ₓ)·A`, ω in a cube of side
//! h around 0 (h = the grid step in radians). Its eight children are the cells of side h/2
//! centred at ω ∈ {±h/4}³: refining a cell never leaves it, and L levels reach h/2^L.
//! Pinned by `tests::healpix_*`, `tests::children_tile_their_parent`,
//! `tests::asymmetric_unit_covers_the_sphere_once`.

use cryoforge_core::rotation::{EulerRelion, Rot3};

/// HEALPix (ring scheme) pixel centres of order `order` as unit vectors.
pub fn healpix_directions(order: u32) -> Vec<[f64; 3]> {
    let ns = 1usize << order;
    let npix = 12 * ns * ns;
    let ncap = 2 * ns * (ns - 1);
    let nsf = ns as f64;
    let pi = std::f64::consts::PI;
    (0..npix)
        .map(|p| {
            let (z, phi) = if p < ncap {
                // North polar cap.
                let ph = (p + 1) as f64;
                let i = ((1.0 + (1.0 + 2.0 * (ph - 1.0)).sqrt()) / 2.0).floor().max(1.0);
                let i = fix_ring(i, |i| 2.0 * i * (i - 1.0), ph - 1.0);
                let j = ph - 2.0 * i * (i - 1.0);
                (1.0 - i * i / (3.0 * nsf * nsf), pi / (2.0 * i) * (j - 0.5))
            } else if p < npix - ncap {
                // Equatorial belt.
                let q = (p - ncap) as f64;
                let i = (q / (4.0 * nsf)).floor() + nsf;
                let j = q % (4.0 * nsf) + 1.0;
                let s = ((i - nsf + 1.0) as i64).rem_euclid(2) as f64;
                (4.0 / 3.0 - 2.0 * i / (3.0 * nsf), pi / (2.0 * nsf) * (j - s / 2.0))
            } else {
                // South polar cap, the mirror of the north one.
                let q = (npix - p) as f64;
                let i = ((1.0 + (2.0 * q - 1.0).sqrt()) / 2.0).floor().max(1.0);
                let i = fix_ring(i, |i| 2.0 * i * (i - 1.0), q - 1.0);
                let j = 4.0 * i + 1.0 - (q - 2.0 * i * (i - 1.0));
                (-1.0 + i * i / (3.0 * nsf * nsf), pi / (2.0 * i) * (j - 0.5))
            };
            let st = (1.0 - z * z).max(0.0).sqrt();
            [st * phi.cos(), st * phi.sin(), z]
        })
        .collect()
}

/// Guard the floating-point ring index of a polar-cap pixel: ring i holds the pixels
/// `first(i) .. first(i) + 4i` (0-based offset `p0`).
fn fix_ring(mut i: f64, first: impl Fn(f64) -> f64, p0: f64) -> f64 {
    while first(i) > p0 {
        i -= 1.0;
    }
    while first(i + 1.0) <= p0 {
        i += 1.0;
    }
    i
}

/// Number of in-plane angles at HEALPix order `order` (RELION: 360°/(6·2^order) apart).
pub fn n_psi(order: u32) -> usize {
    6 << order
}

/// Angular step (radians) of the global grid of `order`: the in-plane step, which the
/// direction spacing √(4π/N_pix) matches to within 2 %.
pub fn grid_step_rad(order: u32) -> f64 {
    2.0 * std::f64::consts::PI / n_psi(order) as f64
}

/// The HEALPix order whose grid step is closest to (and not coarser than 1.5×) `step_deg`.
pub fn order_for_step_deg(step_deg: f64) -> u32 {
    let mut o = 0;
    while o < 9 && grid_step_rad(o).to_degrees() > 1.5 * step_deg {
        o += 1;
    }
    o
}

/// The rotation A with viewing direction `d` (third row of A) and in-plane angle `psi_rad`.
pub fn rotation_from_direction(d: [f64; 3], psi_rad: f64) -> Rot3 {
    let tilt = d[2].clamp(-1.0, 1.0).acos();
    let rot = if d[0] == 0.0 && d[1] == 0.0 { 0.0 } else { d[1].atan2(d[0]) };
    EulerRelion::new(rot.to_degrees(), tilt.to_degrees(), psi_rad.to_degrees()).to_rot()
}

/// The viewing direction of A (its third row, the beam axis in the model frame).
#[inline]
pub fn direction(a: &Rot3) -> [f64; 3] {
    a.0[2]
}

/// A generic point (no symmetry axis of the standard groups passes through it).
const DIRICHLET_CENTRE: [f64; 3] = [0.190_765, 0.312_318, 0.930_626];

/// Keep the directions in one Dirichlet cell of the point group `ops` (see module docs).
/// With only the identity every direction is kept.
pub fn asymmetric_unit(dirs: &[[f64; 3]], ops: &[Rot3]) -> Vec<usize> {
    let p = DIRICHLET_CENTRE;
    let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    (0..dirs.len())
        .filter(|&i| {
            let own = dot(dirs[i], p);
            // gᵀ·d for every operator; ties (d on a cell boundary) are kept on one side by
            // the index order of the operators.
            ops.iter().all(|g| dot(g.apply_transpose(dirs[i]), p) <= own + 1e-12)
        })
        .collect()
}

/// The global grid: rotations for every kept direction × every in-plane angle.
pub fn global_grid(order: u32, ops: &[Rot3]) -> Vec<Rot3> {
    let dirs = healpix_directions(order);
    let keep = asymmetric_unit(&dirs, ops);
    let np = n_psi(order);
    let mut out = Vec::with_capacity(keep.len() * np);
    for &i in &keep {
        for j in 0..np {
            out.push(rotation_from_direction(dirs[i], j as f64 * grid_step_rad(order)));
        }
    }
    out
}

/// `exp([ω]ₓ)·A`: A perturbed by the rotation vector ω (radians, image frame).
#[inline]
pub fn perturb(a: &Rot3, w: [f64; 3]) -> Rot3 {
    let t = (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]).sqrt();
    if t == 0.0 {
        return *a;
    }
    Rot3::from_axis_angle([w[0] / t, w[1] / t, w[2] / t], t).compose(a)
}

/// The eight child offsets of a cell of side h: ω ∈ {±h/4}³.
pub fn child_offsets(h: f64) -> [[f64; 3]; 8] {
    let q = h / 4.0;
    let mut out = [[0.0; 3]; 8];
    for (i, o) in out.iter_mut().enumerate() {
        for (a, v) in o.iter_mut().enumerate() {
            *v = if (i >> a) & 1 == 1 { q } else { -q };
        }
    }
    out
}

/// Geodesic angle between two rotations in degrees (0–180).
pub fn angle_deg(a: &Rot3, b: &Rot3) -> f64 {
    a.angle_to_deg(b)
}

/// The smallest geodesic angle between `a` and any symmetry mate `b·g` (degrees).
pub fn angle_deg_sym(a: &Rot3, b: &Rot3, ops: &[Rot3]) -> f64 {
    ops.iter().map(|g| a.angle_to_deg(&b.compose(g))).fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryoforge_core::symmetry::Symmetry;

    fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
        a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    }

    #[test]
    fn healpix_pixels_are_distinct_unit_vectors_with_zero_mean() {
        for order in 0..=3 {
            let d = healpix_directions(order);
            assert_eq!(d.len(), 12 << (2 * order));
            let mut mean = [0.0; 3];
            for v in &d {
                assert!((dot(*v, *v) - 1.0).abs() < 1e-12);
                for a in 0..3 {
                    mean[a] += v[a] / d.len() as f64;
                }
            }
            assert!(dot(mean, mean).sqrt() < 1e-9, "order {order}: mean {mean:?}");
        }
    }

    #[test]
    fn healpix_nearest_neighbour_spacing_is_uniform() {
        // Equal-area pixels: the nearest-neighbour distance varies by well under 2×, and the
        // covering radius (farthest random point from its nearest pixel) is about one step.
        let order = 3;
        let d = healpix_directions(order);
        let nn: Vec<f64> = d
            .iter()
            .enumerate()
            .map(|(i, a)| {
                d.iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, b)| dot(*a, *b).clamp(-1.0, 1.0).acos())
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let (lo, hi) = nn.iter().fold((f64::INFINITY, 0.0f64), |(l, h), &v| (l.min(v), h.max(v)));
        let step = (4.0 * std::f64::consts::PI / d.len() as f64).sqrt();
        assert!(lo > 0.6 * step && hi < 1.4 * step, "nn {lo} .. {hi}, step {step}");
        assert!((step - grid_step_rad(order)).abs() / step < 0.03);
    }

    #[test]
    fn rotation_from_direction_has_that_direction() {
        for v in healpix_directions(2) {
            let r = rotation_from_direction(v, 0.7);
            let d = direction(&r);
            assert!((dot(d, v) - 1.0).abs() < 1e-9);
            r.check().unwrap();
        }
    }

    #[test]
    fn asymmetric_unit_covers_the_sphere_once() {
        // Every direction of the full grid is the image gᵀ·d of exactly one kept direction
        // (up to the grid's own discreteness: compare on a fine random set instead).
        for sym in ["C1", "C4", "D3", "T", "O", "I"] {
            let ops = sym.parse::<Symmetry>().unwrap().operators();
            let dirs = healpix_directions(4);
            let keep = asymmetric_unit(&dirs, &ops);
            let frac = keep.len() as f64 / dirs.len() as f64;
            let want = 1.0 / ops.len() as f64;
            assert!((frac - want).abs() < 0.1 * want + 2.0 / dirs.len() as f64, "{sym}: {frac} vs {want}");
        }
    }

    #[test]
    fn children_tile_their_parent() {
        // Random points of the parent cube are within the child cube of their nearest child.
        let h = 0.2;
        let kids = child_offsets(h);
        let mut s = 1u64;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        for _ in 0..1000 {
            let p = [rnd() * h, rnd() * h, rnd() * h];
            let best = kids
                .iter()
                .map(|c| (0..3).map(|a| (p[a] - c[a]).abs()).fold(0.0, f64::max))
                .fold(f64::INFINITY, f64::min);
            assert!(best <= h / 4.0 + 1e-12);
        }
    }

    #[test]
    fn perturb_rotates_by_the_vector_norm() {
        let a = EulerRelion::new(30.0, 60.0, 10.0).to_rot();
        let b = perturb(&a, [0.01, -0.02, 0.03]);
        let want = (0.01f64.powi(2) + 0.02f64.powi(2) + 0.03f64.powi(2)).sqrt().to_degrees();
        assert!((angle_deg(&a, &b) - want).abs() < 1e-6);
        assert_eq!(order_for_step_deg(15.0), 2);
        assert_eq!(order_for_step_deg(7.5), 3);
        assert_eq!(order_for_step_deg(1.8), 5);
    }
}
