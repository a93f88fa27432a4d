//! Mask creation: geometry of extension and soft edge on a sphere, voxel-for-voxel
//! agreement with RELION's `autoMask` scan, thresholds.

use cryoforge_core::filter::spherical_mask;
use cryoforge_recon::mask::{create_mask, create_mask_detailed, MaskOptions, Threshold};

fn radius(i: usize, n: usize) -> f64 {
    let h = (n / 2) as f64;
    let (z, y, x) = ((i / (n * n)) as f64 - h, ((i / n) % n) as f64 - h, (i % n) as f64 - h);
    (x * x + y * y + z * z).sqrt()
}

fn opts(threshold: f64, extend_px: f64, soft_edge_px: f64) -> MaskOptions {
    MaskOptions { threshold: Threshold::Value(threshold), lowpass_a: None, extend_px, soft_edge_px }
}

/// A ball of radius r = 8 extended by N = 3 and softened over W = 5: 1 up to radius
/// r + N − 1, 0 from r + N + W on, values in [0, 1] falling with the radius; on a lattice
/// axis the extension ends at r + N − 1 exactly and the edge is ½ + ½·cos(π·j/W) at
/// r + N − 1 + j (the nearest 1 voxel lies on the axis).
#[test]
fn extension_and_soft_edge_on_a_sphere() {
    let (n, r, ext, w) = (48usize, 8.0, 3.0, 5.0);
    let ball = spherical_mask(n, r, 0.0);
    let m = create_mask(&ball, n, 1.0, &opts(0.5, ext, w)).unwrap();
    for (i, &v) in m.iter().enumerate() {
        let rho = radius(i, n);
        assert!((0.0..=1.0).contains(&v), "voxel {i}: {v}");
        if rho <= r + ext - 1.0 {
            assert_eq!(v, 1.0, "radius {rho:.2}");
        }
        if rho >= r + ext + w {
            assert_eq!(v, 0.0, "radius {rho:.2}");
        }
    }
    let c = n / 2;
    let axis = |x: usize| m[(c * n + c) * n + c + x];
    let last = (r + ext - 1.0) as usize;
    assert_eq!(axis(last), 1.0);
    for j in 1..=7usize {
        let want = if (j as f64) < w { 0.5 + 0.5 * (std::f64::consts::PI * j as f64 / w).cos() } else { 0.0 };
        assert!(
            (axis(last + j) as f64 - want).abs() < 1e-6,
            "axis {}: {} vs {want}",
            last + j,
            axis(last + j)
        );
    }
    // Radially non-increasing along the axis, and the same on all six axis directions.
    let at = |z: usize, y: usize, x: usize| m[(z * n + y) * n + x];
    for d in 0..20usize {
        let v = at(c, c, c + d);
        for u in [at(c, c, c - d), at(c, c + d, c), at(c, c - d, c), at(c + d, c, c), at(c - d, c, c)] {
            assert_eq!(u, v, "distance {d}");
        }
        assert!(at(c, c, c + d + 1) <= v);
    }
}

/// Shrinking a ball of radius 10 by 3: everything within radius 6 survives, nothing
/// beyond 8.5, and the result lies inside the ball; extension by +3 then keeps the ball.
#[test]
fn shrinking_a_sphere() {
    let (n, r) = (40usize, 10.0);
    let ball = spherical_mask(n, r, 0.0);
    let d = create_mask_detailed(&ball, n, 1.0, &opts(0.5, -3.0, 0.0)).unwrap();
    assert!(d.extended_voxels < d.binary_voxels);
    for (i, &v) in d.mask.iter().enumerate() {
        let rho = radius(i, n);
        assert!(v == 0.0 || v == 1.0);
        if rho <= r - 4.0 {
            assert_eq!(v, 1.0, "radius {rho:.2}");
        }
        if rho > r - 1.5 {
            assert_eq!(v, 0.0, "radius {rho:.2}");
        }
    }
    let grown = create_mask(&ball, n, 1.0, &opts(0.5, 3.0, 0.0)).unwrap();
    assert!(ball.iter().zip(&grown).all(|(b, g)| *b <= *g));
}

/// RELION 3.1 `autoMask` (src/mask.cpp), transcribed: extension/shrinking by scanning the
/// cube of ±ceil(|N|) voxels for r² < N², then the soft edge from the smallest r² to a
/// 1 voxel within ±ceil(W), ½ + ½·cos(π·√r²/W) where r² < W². Only voxels inside the box
/// are scanned.
fn relion_automask(vol: &[f32], n: usize, thr: f64, ext: f64, w: f64) -> Vec<f32> {
    let idx = |z: i64, y: i64, x: i64| ((z * n as i64 + y) * n as i64 + x) as usize;
    let inside = |v: i64| v >= 0 && v < n as i64;
    let mut m: Vec<f32> = vol.iter().map(|&v| if v as f64 >= thr { 1.0 } else { 0.0 }).collect();
    let scan = |m: &[f32], z: i64, y: i64, x: i64, size: i64, f: &mut dyn FnMut(f32, f64)| {
        for kz in z - size..=z + size {
            for ky in y - size..=y + size {
                for kx in x - size..=x + size {
                    if inside(kz) && inside(ky) && inside(kx) {
                        let r2 = ((kz - z).pow(2) + (ky - y).pow(2) + (kx - x).pow(2)) as f64;
                        f(m[idx(kz, ky, kx)], r2);
                    }
                }
            }
        }
    };
    let nn = n as i64;
    if ext != 0.0 {
        let cp = m.clone();
        let size = ext.abs().ceil() as i64;
        for z in 0..nn {
            for y in 0..nn {
                for x in 0..nn {
                    let me = cp[idx(z, y, x)];
                    let mut flip = false;
                    scan(&cp, z, y, x, size, &mut |v, r2| {
                        let other = if ext > 0.0 { v > 0.999 } else { v < 0.001 };
                        flip |= other && r2 < ext * ext;
                    });
                    if flip && ((ext > 0.0 && me < 0.001) || (ext < 0.0 && me > 0.999)) {
                        m[idx(z, y, x)] = if ext > 0.0 { 1.0 } else { 0.0 };
                    }
                }
            }
        }
    }
    if w > 0.0 {
        let cp = m.clone();
        let size = w.ceil() as i64;
        for z in 0..nn {
            for y in 0..nn {
                for x in 0..nn {
                    if cp[idx(z, y, x)] < 0.001 {
                        let mut min_r2 = 9999.0f64;
                        scan(&cp, z, y, x, size, &mut |v, r2| {
                            if v > 0.999 && r2 < min_r2 {
                                min_r2 = r2;
                            }
                        });
                        if min_r2 < w * w {
                            m[idx(z, y, x)] =
                                (0.5 + 0.5 * (std::f64::consts::PI * min_r2.sqrt() / w).cos()) as f32;
                        }
                    }
                }
            }
        }
    }
    m
}

/// An irregular blob touching the box edge (two off-centre Gaussians and ripples):
/// cryoforge's distance transforms give RELION's scan voxel for voxel.
#[test]
fn matches_relions_automask_scan() {
    let n = 20usize;
    let vol: Vec<f32> = (0..n * n * n)
        .map(|i| {
            let (z, y, x) = ((i / (n * n)) as f32, ((i / n) % n) as f32, (i % n) as f32);
            let g = |cx: f32, cy: f32, cz: f32, s: f32| {
                (-((x - cx).powi(2) + (y - cy).powi(2) + (z - cz).powi(2)) / (2.0 * s * s)).exp()
            };
            g(8.0, 9.0, 10.0, 3.0) + 0.8 * g(2.0, 14.0, 12.0, 2.0) + 0.1 * (x * 1.3 + y * 0.7).sin()
        })
        .collect();
    for (ext, w) in [(0.0, 0.0), (2.5, 0.0), (-1.5, 0.0), (0.0, 3.5), (2.0, 4.0), (-1.0, 2.0), (3.0, 1.0)] {
        let ours = create_mask(&vol, n, 1.0, &opts(0.4, ext, w)).unwrap();
        let relion = relion_automask(&vol, n, 0.4, ext, w);
        for (i, (a, b)) in ours.iter().zip(&relion).enumerate() {
            assert!((a - b).abs() < 1e-6, "extend {ext}, edge {w}, voxel {i}: {a} vs RELION {b}");
        }
    }
}

/// A voxel equal to the threshold is inside (RELION's ≥); a threshold above the map's
/// maximum is refused with the maximum named; a low-pass first smooths a point into a
/// symmetric blob around it.
#[test]
fn thresholds() {
    let n = 16;
    let mut v = vec![0f32; n * n * n];
    let c = (8 * n + 8) * n + 8;
    v[c] = 2.0;
    v[c + 1] = 1.0;
    let d = create_mask_detailed(&v, n, 1.0, &opts(1.0, 0.0, 0.0)).unwrap();
    assert_eq!((d.binary_voxels, d.mask[c + 1], d.threshold), (2, 1.0, 1.0));
    let e = create_mask(&v, n, 1.0, &opts(2.5, 0.0, 0.0)).err().unwrap().to_string();
    assert!(e.contains("threshold 2.5") && e.contains("maximum is 2"), "{e}");
    v[c + 1] = 0.0;
    let o = MaskOptions { threshold: Threshold::Value(0.05), lowpass_a: Some(4.0), ..Default::default() };
    let m = create_mask(&v, n, 1.0, &o).unwrap();
    assert_eq!(m[c], 1.0);
    assert!(m.iter().filter(|&&x| x == 1.0).count() > 1);
    for dx in 1..4 {
        assert_eq!(m[c + dx], m[c - dx]);
        assert_eq!(m[c + dx * n], m[c + dx]);
    }
    let bad = MaskOptions { soft_edge_px: -1.0, ..opts(0.5, 0.0, 0.0) };
    assert!(create_mask(&v, n, 1.0, &bad).is_err());
    assert!(create_mask(&v[1..], n, 1.0, &opts(0.5, 0.0, 0.0)).is_err());
}
