//! The cryoPROS HVAE: block shapes, KL, prior-only generation, a short training, resume,
//! generation output and bad input.

use candle_core::{Device, Tensor};
use cryoforge_io::mrc::MrcStackWriter;
use cryoforge_io::stack::{LoadOptions, ParticleStack};
use cryoforge_pros::condition::{Conditioner, ProjectorKind};
use cryoforge_pros::generate::{generate, GenerateOptions, AUX_COLUMN};
use cryoforge_pros::model::{gaussian_kl, normal, pixel_shuffle2, pixel_unshuffle2, pose_vectors};
use cryoforge_pros::train::{check_stack, load_run, prepare, read_volume, train, write_run_toml};
use cryoforge_pros::{ArchConfig, Hvae, ProsConfig};
use cryoforge_sim::sampling::{CtfDistribution, PoseDistribution};
use cryoforge_sim::simulate::{simulate, DensityKind, PoseSource, Sample, SimSettings};
use rand::SeedableRng;
use std::path::Path;
use std::sync::Arc;

fn blob_volume(d: usize) -> Vec<f32> {
    let mut v = vec![0f32; d * d * d];
    let c = (d / 2) as f64;
    let blobs =
        [([5.0, 0.0, 2.0], 3.0), ([-5.0, 4.0, -1.0], 2.5), ([0.0, -6.0, 4.0], 2.0), ([1.0, 2.0, -6.0], 2.0)];
    for z in 0..d {
        for y in 0..d {
            for x in 0..d {
                let mut s = 0.0;
                for (p, r) in &blobs {
                    let q = [x as f64 - c - p[0], y as f64 - c - p[1], z as f64 - c - p[2]];
                    s += (-(q[0] * q[0] + q[1] * q[1] + q[2] * q[2]) / (2.0 * r * r)).exp();
                }
                v[(z * d + y) * d + x] = s as f32;
            }
        }
    }
    v
}

/// A small posed set with CTF (32 px, 4 Å/px).
fn tiny_set(dir: &Path, n: usize, snr: f64) -> (ParticleStack, Vec<f32>) {
    let (d, apix) = (32, 4.0);
    let vol = blob_volume(d);
    let mrcs = dir.join("p.mrcs");
    let mut w = MrcStackWriter::create(&mrcs, d, d, apix as f32).unwrap();
    let set = SimSettings {
        n,
        box_px: d,
        apix_a: apix,
        density: DensityKind::Ca,
        seed: 5,
        snr,
        invert: false,
        model_weights: Vec::new(),
        batch: 64,
        junk: Default::default(),
    };
    let src = PoseSource::Random {
        poses: PoseDistribution::default(),
        ctf: CtfDistribution::default(),
        shift_max_a: 4.0,
    };
    let out = simulate(&Sample::Map(vol.clone()), &src, &set, &mut w, &mut |_| {}).unwrap();
    w.finish().unwrap();
    let mut stack =
        ParticleStack::load(&mrcs, &LoadOptions { apix_a: Some(apix), ..Default::default() }).unwrap();
    stack.poses = Some(out.truth.iter().map(|t| t.pose).collect());
    stack.ctf = Some(out.truth.iter().map(|t| t.ctf).collect());
    (stack, vol)
}

fn tiny_cfg(steps: u64) -> ProsConfig {
    ProsConfig {
        arch: ArchConfig { nf: 8, growth: 8, z_dim: 2, nls: vec![0, 1, 1], pose_hidden: vec![16, 32] },
        batch_size: 8,
        steps,
        lr: 1e-3,
        kl_warmup_steps: 20,
        kl_max: 1e-2,
        log_every: 5,
        checkpoint_every: 10,
        ..ProsConfig::paper()
    }
}

#[test]
fn paper_blocks_have_the_reference_shapes() {
    let m = Hvae::new(&ArchConfig::paper(), 256, 0, &Device::Cpu).unwrap();
    let blocks: std::collections::HashMap<String, usize> = m.params_by_block().into_iter().collect();
    // One residual dense block: 3×3 convs 64→32, 96→32, 128→32, 160→32, 192→64 with biases.
    let rdb = (64 + 96 + 128 + 160) * 32 * 9 + 4 * 32 + 192 * 64 * 9 + 64;
    assert_eq!(rdb, 239_808);
    assert_eq!(blocks["layer00.encoder"], rdb);
    assert_eq!(blocks["layer00.embed_proj"], rdb);
    // Posterior: merge conv 4·64→64 and, for μ and log σ, an RDB and a 1×1 conv 64→16.
    assert_eq!(blocks["layer00.posterior"], 256 * 64 * 9 + 64 + 2 * (rdb + 64 * 16 + 16));
    assert_eq!(blocks["layer00.prior"], 192 * 64 * 9 + 64 + 2 * (rdb + 64 * 16 + 16));
    assert_eq!(blocks["layer00.decoder"], 80 * 64 * 9 + 64 + rdb);
    // Pose MLP 6→256→512→1024 (32² at 256 px), conv 1→64 and three up-samplings 16→64.
    assert_eq!(
        blocks["cond.pose"],
        (6 * 256 + 256) + (256 * 512 + 512) + (512 * 1024 + 1024) + (9 * 64 + 64) + 3 * (16 * 64 * 9 + 64)
    );
    assert_eq!(m.layers().len(), 15);
    let levels: Vec<usize> = m.layers().iter().map(|l| l.level).collect();
    assert_eq!(levels, vec![0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]);
    let n = m.n_params() as f64;
    assert!((n / 34.8e6 - 1.0).abs() < 0.02, "{n} parameters; the paper configuration has about 34.8 M");
}

#[test]
fn kl_of_identical_gaussians_is_zero_and_pixel_shuffle_inverts() {
    let dev = Device::Cpu;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mu = normal(&mut rng, &[2, 3, 4, 4], &dev).unwrap();
    let ls = normal(&mut rng, &[2, 3, 4, 4], &dev).unwrap().affine(0.3, 0.0).unwrap();
    let kl = gaussian_kl(&mu, &ls, &mu, &ls).unwrap();
    let m: f32 = kl.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(m < 1e-6, "KL of identical Gaussians {m}");
    // KL(N(1, 1) ‖ N(0, 1)) = ½.
    let one = Tensor::ones((1, 1, 1, 1), candle_core::DType::F32, &dev).unwrap();
    let zero = one.zeros_like().unwrap();
    let v: f32 = gaussian_kl(&one, &zero, &zero, &zero).unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!((v - 0.5).abs() < 1e-6);
    // Pixel shuffle as PyTorch: out[c, 2h+i, 2w+j] = in[4c + 2i + j, h, w].
    let x = Tensor::arange(0f32, 32.0, &dev).unwrap().reshape((1, 8, 2, 2)).unwrap();
    let y = pixel_shuffle2(&x).unwrap();
    let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    // c = 1, h = 0, w = 1, i = 1, j = 0: output (row 1, col 2) ← input channel 6 at (0, 1) = 6·4 + 1.
    assert_eq!(yv[16 + 4 + 2], 25.0);
    let back = pixel_unshuffle2(&y).unwrap();
    let d: f32 = (back - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert_eq!(d, 0.0);
}

#[test]
fn prior_alone_generates_without_an_image() {
    let dev = Device::Cpu;
    let arch = ArchConfig { nf: 8, growth: 4, z_dim: 2, nls: vec![1, 1], pose_hidden: vec![8] };
    let m = Hvae::new(&arch, 16, 3, &dev).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let proj = normal(&mut rng, &[3, 1, 16, 16], &dev).unwrap();
    let poses =
        vec![cryoforge_io::stack::Pose { rot: cryoforge_core::Rot3::IDENTITY, shift_px: [1.0, -2.0] }; 3];
    let c = m.condition(&proj, &pose_vectors(&poses, 16, &dev).unwrap()).unwrap();
    let mut noise = |_l: usize, s: &[usize]| normal(&mut rng, s, &dev);
    let out = m.generate(&c, 1.0, &mut noise).unwrap();
    assert_eq!(out.dims(), &[3, 1, 16, 16]);
    let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    // Different noise, different particles (the latents reach the output).
    let mut rng2 = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut noise2 = |_l: usize, s: &[usize]| normal(&mut rng2, s, &dev);
    let out2: Vec<f32> = m.generate(&c, 1.0, &mut noise2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().zip(&out2).any(|(a, b)| (a - b).abs() > 1e-7));
}

#[test]
fn short_training_reduces_the_loss_resumes_bit_identically_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, vol) = tiny_set(dir.path(), 96, 2.0);
    let stack = Arc::new(stack);
    let (d, apix) = check_stack(&stack).unwrap();
    let dev = Device::Cpu;
    let make_cond = || Conditioner::new(vol.clone(), d, apix, 10.0, ProjectorKind::RealSpace, false).unwrap();
    let mut cfg = tiny_cfg(60);
    let mut cond = make_cond();
    prepare(&stack, &cond, &mut cfg).unwrap();
    let run_a = dir.path().join("a");
    let t = std::time::Instant::now();
    let a = train(stack.clone(), &mut cond, &cfg, &run_a, false, &dev, &mut |_| {}).unwrap();
    eprintln!("60 steps in {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(a.steps, 60);
    let csv = std::fs::read_to_string(run_a.join("metrics.csv")).unwrap();
    let mse: Vec<f64> = csv.lines().skip(1).map(|l| l.split(',').nth(5).unwrap().parse().unwrap()).collect();
    assert!(mse.last().unwrap() < &(0.9 * mse[0]), "MSE per window {mse:?}");

    // 30 steps, then resume to 60: the same weights to the bit.
    let run_b = dir.path().join("b");
    let mut half = cfg.clone();
    half.steps = 30;
    let mut cond_b = make_cond();
    train(stack.clone(), &mut cond_b, &half, &run_b, false, &dev, &mut |_| {}).unwrap();
    train(stack.clone(), &mut cond_b, &cfg, &run_b, true, &dev, &mut |_| {}).unwrap();
    let wa = std::fs::read(run_a.join("weights.safetensors")).unwrap();
    let wb = std::fs::read(run_b.join("weights.safetensors")).unwrap();
    assert!(wa == wb, "resumed weights differ from an uninterrupted run's");

    // Generation from the trained run: stack + STAR marked auxiliary.
    write_run_toml(
        &run_a,
        "test",
        &cfg,
        &[("box", (d as i64).into()), ("apix", apix.into()), ("projector", "real-space".into())],
    )
    .unwrap();
    let run = load_run(&run_a, &dev).unwrap();
    let mut c = make_cond();
    c.set_scale(run.cfg.proj_scale.unwrap());
    let out_dir = dir.path().join("aux");
    let g = generate(
        &run.model,
        &run.cfg,
        &c,
        &stack,
        &out_dir,
        &GenerateOptions { n: Some(40), seed: 1, ..Default::default() },
        &dev,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(g.n, 40);
    assert!(g.histogram_kl.is_finite() && g.snr_db_generated.is_finite());
    let aux = ParticleStack::load(&g.star, &LoadOptions::default()).unwrap();
    assert_eq!(aux.len(), 40);
    assert!(aux.poses.is_some() && aux.ctf.is_some());
    let text = std::fs::read_to_string(&g.star).unwrap();
    assert!(text.contains(AUX_COLUMN));
    let mut img = vec![0f32; d * d];
    aux.read_image(39, &mut img).unwrap();
    assert!(img.iter().all(|v| v.is_finite()));
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut stack, _) = tiny_set(dir.path(), 8, 1.0);
    let v = dir.path().join("v.mrc");
    cryoforge_io::mrc::write_volume(&v, &blob_volume(16), [16, 16, 16], 4.0, [0.0; 3]).unwrap();
    let e = read_volume(&v, 32).unwrap_err().to_string();
    assert!(e.contains("v.mrc") && e.contains("16×16×16"), "{e}");
    stack.poses = None;
    let e = check_stack(&stack).unwrap_err().to_string();
    assert!(e.contains("no poses"), "{e}");
    assert!(ProsConfig::preset("gpu").unwrap_err().to_string().contains("unknown preset"));
    let e = tiny_cfg(1).check(Some(30)).unwrap_err().to_string();
    assert!(e.contains("divisible"), "{e}");
}

#[test]
fn one_pipeline_iteration_writes_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, vol) = tiny_set(dir.path(), 64, 2.0);
    let truth = stack.poses.clone().unwrap();
    let cfg = cryoforge_pros::pipeline::PipelineConfig {
        iterations: 1,
        train: tiny_cfg(6),
        projector: ProjectorKind::Fourier,
        refine: cryoforge_refine::RefineConfig { max_iter: 2, healpix_order: 1, ..Default::default() },
        n_aux: Some(32),
        recon: Default::default(),
        balanced_local_percentile: Some(80.0),
    };
    let out = dir.path().join("pros");
    let mut lines = Vec::new();
    let s = cryoforge_pros::pipeline::run(&stack, vol, &cfg, &out, Some(&truth), &Device::Cpu, &mut |m| {
        lines.push(m.to_string())
    })
    .unwrap();
    let b = s.balanced_local.as_ref().unwrap();
    assert!(b.kept > 0 && b.kept + b.excluded == 64 && b.folder.join("map.mrc").is_file());
    let s = s.iterations;
    assert_eq!(s.len(), 1);
    let it = &s[0];
    assert_eq!(it.truth_before.as_ref().unwrap().median_angle_deg, 0.0);
    assert!(it.truth_after.as_ref().unwrap().median_angle_deg.is_finite());
    assert!(it.raw_resolution_0143_a.is_finite() && it.raw_resolution_0143_a > 0.0);
    for f in [
        "train/weights.safetensors",
        "aux/auxiliary.star",
        "corefine/particles.star",
        "raw/raw_only.mrc",
        "summary.json",
    ] {
        assert!(out.join("iter_01").join(f).is_file(), "{f} missing");
    }
    assert!(out.join("summary.json").is_file());
    // The co-refined set lists raw then auxiliary particles, marked; the raw STAR has 64.
    let co =
        ParticleStack::load(&out.join("iter_01/corefine/particles.star"), &LoadOptions::default()).unwrap();
    assert_eq!(co.len(), 96);
    let raw = ParticleStack::load(&out.join("iter_01/raw/particles.star"), &LoadOptions::default()).unwrap();
    assert_eq!(raw.len(), 64);
    // The raw STAR carries the co-refined poses (the first 64 of the co-refinement's), not
    // the input's.
    let (rp, cp) = (raw.poses.as_ref().unwrap(), co.poses.as_ref().unwrap());
    for i in 0..64 {
        assert!(cryoforge_refine::so3::angle_deg(&rp[i].rot, &cp[i].rot) < 0.01, "particle {i}");
    }
    assert!(lines.iter().any(|l| l.contains("co-refining 64 raw + 32 auxiliary")), "{lines:?}");
}

#[test]
fn recondismic_recovers_a_micelle() {
    use cryoforge_pros::recondismic::{run, DisMicConfig};
    let (d, apix) = (32usize, 4.0);
    let c = 16.0;
    let (mut protein, mut micelle) = (vec![0f32; d * d * d], vec![0f32; d * d * d]);
    for z in 0..d {
        for y in 0..d {
            for x in 0..d {
                let (dx, dy, dz) = (x as f64 - c, y as f64 - c, z as f64 - c);
                let i = (z * d + y) * d + x;
                protein[i] = (-(dx * dx + dy * dy) / (2.0 * 9.0) - dz * dz / (2.0 * 36.0)).exp() as f32;
                let r = (dx * dx + dy * dy).sqrt();
                if (7.0..11.0).contains(&r) && dz.abs() < 3.0 {
                    micelle[i] = 0.3;
                }
            }
        }
    }
    let truth: Vec<f32> = protein.iter().zip(&micelle).map(|(a, b)| a + b).collect();
    let dir = tempfile::tempdir().unwrap();
    let mrcs = dir.path().join("p.mrcs");
    let mut w = MrcStackWriter::create(&mrcs, d, d, apix as f32).unwrap();
    let set = SimSettings {
        n: 200,
        box_px: d,
        apix_a: apix,
        density: DensityKind::Ca,
        seed: 8,
        snr: 10.0,
        invert: false,
        model_weights: Vec::new(),
        batch: 64,
        junk: Default::default(),
    };
    let src = PoseSource::Random {
        poses: PoseDistribution::default(),
        ctf: CtfDistribution::default(),
        shift_max_a: 0.0,
    };
    let out = simulate(&Sample::Map(truth), &src, &set, &mut w, &mut |_| {}).unwrap();
    w.finish().unwrap();
    let mut stack =
        ParticleStack::load(&mrcs, &LoadOptions { apix_a: Some(apix), ..Default::default() }).unwrap();
    stack.poses = Some(out.truth.iter().map(|t| t.pose).collect());
    stack.ctf = Some(out.truth.iter().map(|t| t.ctf).collect());
    let cfg = DisMicConfig { steps: 300, threshold_frac: 0.2, ..Default::default() };
    let o = run(&stack, &protein, None, &cfg, &dir.path().join("dm"), &mut |_, _, _| {}).unwrap();
    assert!(o.loss_end < 0.8 * o.loss_start, "{o:?}");
    let fitted =
        cryoforge_io::mrc::MrcFile::open(dir.path().join("dm/micelle.mrc")).unwrap().read_volume().unwrap();
    let mask =
        cryoforge_io::mrc::MrcFile::open(dir.path().join("dm/mask.mrc")).unwrap().read_volume().unwrap();
    // Correlation with the true micelle outside the mask.
    let (mut sab, mut saa, mut sbb, mut sa, mut sb, mut n) = (0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    for i in 0..d * d * d {
        if mask[i] < 0.5 {
            let (a, b) = (fitted[i] as f64, micelle[i] as f64);
            sa += a;
            sb += b;
            sab += a * b;
            saa += a * a;
            sbb += b * b;
            n += 1.0;
        }
    }
    let r = (sab - sa * sb / n) / ((saa - sa * sa / n) * (sbb - sb * sb / n)).sqrt();
    assert!(r > 0.5, "fitted micelle correlates {r} with the true one ({o:?})");
}
