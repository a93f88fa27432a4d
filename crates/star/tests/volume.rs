//! Phase II volume: the slice/CTF/shift forward model against the simulator's projector,
//! and a tiny end-to-end training that must recover the ground-truth map.

use cryoforge_core::ctf::{ctf_grid_centered, CtfParams};
use cryoforge_core::fft::{Fft2, Fft3, C32};
use cryoforge_core::rotation::uniform_rotation;
use cryoforge_core::Rot3;
use cryoforge_io::stack::{ImageRef, ParticleStack, Pose};
use cryoforge_sim::{GaussianModel, Projector};
use cryoforge_star::volume::{
    band_disk, eval_volume, particle_hartley, slice_coords, train_volume, VolumeConfig,
};
use rand::{Rng, SeedableRng};

const APIX: f64 = 3.0;

/// An asymmetric blob "molecule" in a d³ box (Å frame, origin at the box centre).
fn truth_map(d: usize) -> Vec<f32> {
    let c = vec![
        [0.0, 0.0, 0.0],
        [9.0, 3.0, -3.0],
        [-6.0, 9.0, 3.0],
        [3.0, -9.0, 6.0],
        [-9.0, -3.0, -6.0],
        [12.0, -6.0, 9.0],
    ];
    let a = vec![1.0, 0.8, 1.2, 0.6, 0.9, 0.5];
    GaussianModel::new(c, a, 3.5).unwrap().render_volume(d, APIX).unwrap()
}

fn ctf_for(i: usize) -> CtfParams {
    let df = 10000.0 + 1000.0 * (i % 11) as f64;
    CtfParams { defocus_u_a: df, defocus_v_a: df * 0.95, defocus_angle_deg: 30.0, ..Default::default() }
}

/// Exact DTFT of the sampled map at a frequency q (cycles per box), as Hartley.
fn hartley_at(vol: &[f32], d: usize, q: [f64; 3]) -> f64 {
    let h = (d / 2) as f64;
    let (mut re, mut im) = (0.0, 0.0);
    for iz in 0..d {
        for iy in 0..d {
            for ix in 0..d {
                let v = vol[(iz * d + iy) * d + ix] as f64;
                if v.abs() < 1e-6 {
                    continue;
                }
                let ph = -2.0
                    * std::f64::consts::PI
                    * (q[0] * (ix as f64 - h) + q[1] * (iy as f64 - h) + q[2] * (iz as f64 - h))
                    / d as f64;
                re += v * ph.cos();
                im += v * ph.sin();
            }
        }
    }
    re - im
}

fn simulate(vol: &[f32], d: usize, rot: &Rot3, shift: [f64; 2], ctf: &CtfParams) -> Vec<f32> {
    let proj = Projector::new(vol, d, APIX, 2.0).unwrap();
    let mut w = proj.work();
    let mut c = vec![0f32; d * d];
    ctf_grid_centered(ctf, d, APIX, &mut c);
    c.iter_mut().for_each(|v| *v = -*v);
    let mut img = vec![0f32; d * d];
    proj.project_image(rot, shift, Some(&c), &mut w, &mut img).unwrap();
    img
}

#[test]
fn forward_model_matches_projector() {
    let d = 32;
    let vol = truth_map(d);
    let disk = band_disk(d, (d / 2 - 1) as f64);
    let fft = Fft2::new(d);
    let mut w = fft.work();
    let mut spec = vec![C32::new(0.0, 0.0); d * d];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for t in 0..3 {
        let rot = uniform_rotation(rng.gen(), rng.gen(), rng.gen());
        let shift = [1.3 - t as f64, -2.1 + 0.7 * t as f64];
        let ctf = ctf_for(t * 4);
        let img = simulate(&vol, d, &rot, shift, &ctf);
        let mut c = vec![0f32; d * d];
        ctf_grid_centered(&ctf, d, APIX, &mut c);
        let mut coords = Vec::new();
        slice_coords(&rot, d, &disk, &mut coords);
        let pred: Vec<f64> = disk
            .iter()
            .enumerate()
            .map(|(j, &(i, _, _))| {
                let q = [
                    coords[3 * j] as f64 * d as f64,
                    coords[3 * j + 1] as f64 * d as f64,
                    coords[3 * j + 2] as f64 * d as f64,
                ];
                -(c[i] as f64) * hartley_at(&vol, d, q)
            })
            .collect();
        let mut rel = |shift: [f64; 2]| {
            let mut data = vec![0f32; disk.len()];
            particle_hartley(&fft, &mut w, &img, shift, &disk, &mut spec, &mut data);
            let num: f64 = data.iter().zip(&pred).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
            let den: f64 = pred.iter().map(|b| b * b).sum();
            (num / den).sqrt()
        };
        let good = rel(shift);
        let wrong = rel([-shift[0], -shift[1]]);
        println!("pose {t}: relative L2 error {good:.4} (opposite shift sign {wrong:.3})");
        assert!(good < 0.03, "forward model disagrees with the projector: {good}");
        assert!(wrong > 0.3, "the shift sign is not pinned: {wrong}");
    }
}

fn band_limit(vol: &[f32], d: usize, r: f64) -> Vec<f32> {
    let f = Fft3::new(d);
    let mut s = f.forward_real(vol);
    let h = (d / 2) as f64;
    for iz in 0..d {
        for iy in 0..d {
            for ix in 0..d {
                let k = [ix as f64 - h, iy as f64 - h, iz as f64 - h];
                if k[0] * k[0] + k[1] * k[1] + k[2] * k[2] > r * r {
                    s[(iz * d + iy) * d + ix] = C32::new(0.0, 0.0);
                }
            }
        }
    }
    f.inverse_complex(&s).iter().map(|c| c.re).collect()
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|v| *v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|v| *v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64 - ma, *y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn tiny_end_to_end_recovers_the_map() {
    let d = 32;
    let n = 320;
    let vol = truth_map(d);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut imgs = Vec::with_capacity(n * d * d);
    let mut poses = Vec::new();
    let mut ctfs = Vec::new();
    let proj = Projector::new(&vol, d, APIX, 2.0).unwrap();
    let mut w = proj.work();
    let mut c = vec![0f32; d * d];
    let mut img = vec![0f32; d * d];
    for i in 0..n {
        let rot = uniform_rotation(rng.gen(), rng.gen(), rng.gen());
        let shift = [rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0)];
        let ctf = ctf_for(i);
        ctf_grid_centered(&ctf, d, APIX, &mut c);
        c.iter_mut().for_each(|v| *v = -*v);
        proj.project_image(&rot, shift, Some(&c), &mut w, &mut img).unwrap();
        imgs.extend_from_slice(&img);
        poses.push(Pose { rot, shift_px: shift });
        ctfs.push(ctf);
    }
    let mrcs = dir.path().join("p.mrcs");
    cryoforge_io::mrc::write_stack(&mrcs, &imgs, d, d, n, APIX as f32).unwrap();
    let refs: Vec<ImageRef> = (0..n).map(|i| ImageRef { file: 0, index: i as u64 }).collect();
    let mut st = ParticleStack::from_parts(&mrcs, vec![mrcs.display().to_string()], refs, d, APIX);
    st.poses = Some(poses);
    st.ctf = Some(ctfs);

    let band = 7.0;
    let cfg = VolumeConfig {
        width: 128,
        n_features: 64,
        epochs: 6,
        lr: 1e-3,
        band_px: Some(band),
        seed: 1,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let out_dir = dir.path().join("vol");
    let (model, out) =
        train_volume(&st, &[], 0, &cfg, &out_dir, false, &candle_core::Device::Cpu, &mut |_| {}).unwrap();
    let got = eval_volume(&model, &[], out.band_px).unwrap();
    let want = band_limit(&vol, d, band);
    let r = pearson(&got, &want);
    println!(
        "{} steps in {:.1} s, final loss {:.4}, real-space correlation with the band-limited truth {r:.4}",
        out.steps,
        t0.elapsed().as_secs_f64(),
        out.final_loss
    );
    assert!(out_dir.join("weights.safetensors").is_file() && out_dir.join("metrics.csv").is_file());
    assert!(r > 0.9, "trained volume correlates {r} with the truth");
}
