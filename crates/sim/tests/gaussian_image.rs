//! Analytic Cα Gaussian images: agreement with the point-sampled real-space sum, pose
//! consistency, agreement with the Fourier-slice projection of the Cα volume, shift sign.

mod common;

use common::*;
use cryoforge_core::fft::C32;
use cryoforge_core::Rot3;
use cryoforge_sim::{gaussian_image_direct, GaussianImager, GaussianModel, Projector, SimError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::f64::consts::PI;

/// `count` residues within `radius_a` Å of the centre, amplitudes like residue Z sums.
fn random_model(r: &mut ChaCha8Rng, count: usize, radius_a: f64) -> GaussianModel {
    let centers: Vec<[f64; 3]> = (0..count)
        .map(|_| loop {
            let c = [
                r.gen_range(-radius_a..radius_a),
                r.gen_range(-radius_a..radius_a),
                r.gen_range(-radius_a..radius_a),
            ];
            if c.iter().map(|v| v * v).sum::<f64>() <= radius_a * radius_a {
                break c;
            }
        })
        .collect();
    let amps = (0..count).map(|_| r.gen_range(30.0..90.0)).collect();
    GaussianModel::with_default_sigma(centers, amps).unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let peak = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max) / peak
}

/// The inverse DFT of the analytic spectrum equals the point-sampled image
/// Σ_r A_r exp(−|p + t·apix − c_r|²/2σ²) to 1e-3 of its peak (σ = 2 Å, apix 1–1.5 Å).
#[test]
fn analytic_image_matches_point_sampled_sum() {
    let d = 64;
    let mut r = rng(30);
    let model = random_model(&mut r, 60, 15.0);
    for apix in [1.0, 1.5] {
        let imager = GaussianImager::new(d, apix).unwrap();
        let mut work = imager.work();
        let (mut a, mut b) = (vec![0f32; d * d], vec![0f32; d * d]);
        for _ in 0..3 {
            let rot = random_rotation(&mut r);
            let shift = [r.gen_range(-4.0..4.0), r.gen_range(-4.0..4.0)];
            imager.image(&model, &rot, shift, None, &mut work, &mut a).unwrap();
            gaussian_image_direct(&model, &rot, shift, d, apix, &mut b).unwrap();
            let e = max_rel_diff(&a, &b);
            eprintln!("Cα analytic vs direct, apix {apix}: max |Δ|/peak = {e:.2e}");
            assert!(e < 1e-3, "apix {apix}: {e:.3e}");
        }
    }
}

/// Rendering the model rotated by A at the identity pose equals rendering the model at
/// pose A.
#[test]
fn rotating_the_model_equals_rotating_the_pose() {
    let (d, apix) = (48, 1.2);
    let mut r = rng(31);
    let model = random_model(&mut r, 40, 12.0);
    let rot = random_rotation(&mut r);
    let rotated = GaussianModel::new(
        model.centers_a().iter().map(|x| rot.apply(*x)).collect(),
        model.amplitudes().to_vec(),
        model.sigma_a(),
    )
    .unwrap();
    let imager = GaussianImager::new(d, apix).unwrap();
    let mut work = imager.work();
    let (mut a, mut b) = (vec![0f32; d * d], vec![0f32; d * d]);
    imager.image(&model, &rot, [1.0, 2.0], None, &mut work, &mut a).unwrap();
    imager.image(&rotated, &Rot3::IDENTITY, [1.0, 2.0], None, &mut work, &mut b).unwrap();
    assert!(max_rel_diff(&a, &b) < 1e-5);
}

/// The analytic image at pose A agrees with the Fourier-slice projection of the Cα
/// density volume at A: FRC > 0.99 up to 2/3 Nyquist, and the projection is √(2π)σ/apix
/// times the image (line integral of a Gaussian, in voxel units) to within the
/// projector's gridding error.
#[test]
fn analytic_image_agrees_with_fourier_slice_projection_of_ca_volume() {
    let (n, apix) = (64, 1.5);
    let mut r = rng(32);
    let model = random_model(&mut r, 80, 20.0);
    let vol = model.render_volume(n, apix).unwrap();
    let proj = Projector::new(&vol, n, apix, 2.0).unwrap();
    let imager = GaussianImager::new(n, apix).unwrap();
    let (mut pw, mut iw) = (proj.work(), imager.work());
    let (mut p, mut a) = (vec![0f32; n * n], vec![0f32; n * n]);
    let want_scale = (2.0 * PI).sqrt() * model.sigma_a() / apix;
    for _ in 0..4 {
        let rot = random_rotation(&mut r);
        proj.project_image(&rot, [0.0, 0.0], None, &mut pw, &mut p).unwrap();
        imager.image(&model, &rot, [0.0, 0.0], None, &mut iw, &mut a).unwrap();
        let (frc, k) = min_frc(&p, &a, n, 2.0 / 3.0);
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(u, v)| *u as f64 * *v as f64).sum::<f64>();
        let scale = dot(&p, &a) / dot(&a, &a);
        eprintln!("Cα image vs projected Cα volume: min FRC {frc:.5} (shell {k}), scale {scale:.4} (expected {want_scale:.4})");
        assert!(frc > 0.99, "FRC {frc:.4} at shell {k}");
        assert!((scale / want_scale - 1.0).abs() < 0.03, "scale {scale} vs {want_scale}");
    }
}

/// Shift sign: t = (3, −2) px moves a residue at the origin to pixel (D/2 − 3, D/2 + 2).
#[test]
fn shift_moves_peak_to_minus_t() {
    let (d, apix) = (32, 1.0);
    let model = GaussianModel::with_default_sigma(vec![[0.0; 3]], vec![10.0]).unwrap();
    let imager = GaussianImager::new(d, apix).unwrap();
    let mut work = imager.work();
    let mut img = vec![0f32; d * d];
    let rot = random_rotation(&mut rng(33));
    imager.image(&model, &rot, [3.0, -2.0], None, &mut work, &mut img).unwrap();
    assert_eq!(argmax(&img, d), (d / 2 - 3, d / 2 + 2));
    assert!((img[(d / 2 + 2) * d + d / 2 - 3] - 10.0).abs() < 1e-3);
}

/// The spectrum is Hermitian (a real image), and a CTF grid of ones changes nothing.
#[test]
fn spectrum_is_hermitian_and_ctf_is_multiplicative() {
    let (d, apix) = (32, 1.3);
    let mut r = rng(34);
    let model = random_model(&mut r, 20, 8.0);
    let imager = GaussianImager::new(d, apix).unwrap();
    let mut work = imager.work();
    let rot = random_rotation(&mut r);
    let mut spec = vec![C32::default(); d * d];
    imager.spectrum(&model, &rot, [0.5, 0.25], &mut work, &mut spec).unwrap();
    let peak = spec.iter().fold(0f32, |m, v| m.max(v.norm()));
    // Row D/2 (k_y = 0) is computed directly, so its symmetry is a real check.
    let h = d / 2;
    for j in 1..d {
        assert!((spec[h * d + j] - spec[h * d + d - j].conj()).norm() < 1e-5 * peak);
    }
    let (mut a, mut b) = (vec![0f32; d * d], vec![0f32; d * d]);
    imager.image(&model, &rot, [0.5, 0.25], None, &mut work, &mut a).unwrap();
    imager.image(&model, &rot, [0.5, 0.25], Some(&vec![1.0; d * d]), &mut work, &mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_imager_input_is_reported() {
    assert!(matches!(GaussianImager::new(31, 1.0), Err(SimError::OddBox { n: 31, .. })));
    assert_eq!(GaussianImager::new(0, 1.0).err(), Some(SimError::ZeroBox));
    assert!(matches!(GaussianImager::new(32, f64::NAN), Err(SimError::InvalidPixelSize { .. })));
    let imager = GaussianImager::new(8, 1.0).unwrap();
    let mut w = imager.work();
    let m = GaussianModel::with_default_sigma(vec![[0.0; 3]], vec![1.0]).unwrap();
    let mut out = vec![0f32; 10];
    assert!(matches!(
        imager.image(&m, &Rot3::IDENTITY, [0.0, 0.0], None, &mut w, &mut out),
        Err(SimError::SizeMismatch { .. })
    ));
    let mut out = vec![0f32; 64];
    assert!(imager.image(&m, &Rot3::IDENTITY, [0.0, f64::INFINITY], None, &mut w, &mut out).is_err());
}

/// Timing of one 128-px Cα image of a 214-residue model (AdK size) on one core.
#[test]
fn bench_ca_image_128() {
    if std::env::var("CRYOFORGE_SCALE_BENCH").ok().as_deref() != Some("1") {
        eprintln!("SKIP bench_ca_image_128: set CRYOFORGE_SCALE_BENCH=1 to run this timing");
        return;
    }
    let (d, apix) = (128, 1.0);
    let mut r = rng(35);
    let model = random_model(&mut r, 214, 25.0);
    let imager = GaussianImager::new(d, apix).unwrap();
    let mut work = imager.work();
    let mut img = vec![0f32; d * d];
    let rots: Vec<Rot3> = (0..200).map(|_| random_rotation(&mut r)).collect();
    imager.image(&model, &rots[0], [0.0, 0.0], None, &mut work, &mut img).unwrap();
    let t = std::time::Instant::now();
    for rot in &rots {
        imager.image(&model, rot, [1.0, -1.0], None, &mut work, &mut img).unwrap();
    }
    eprintln!(
        "Cα image 128 px, 214 residues: {:.1} µs per image",
        t.elapsed().as_secs_f64() / rots.len() as f64 * 1e6
    );
}
