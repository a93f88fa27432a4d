//! The simulator driver: SNR definition, determinism, given poses, polarity.

use cryoforge_io::mrc::{MrcFile, MrcStackWriter};
use cryoforge_io::pdb::read_structure;
use cryoforge_io::stack::Pose;
use cryoforge_sim::sampling::{CtfDistribution, PoseDistribution};
use cryoforge_sim::simulate::{
    anchor_centroid, simulate, translate_models, DensityKind, PoseSource, Sample, SimSettings,
};
use std::path::Path;

fn adk() -> Sample {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let mut s = read_structure(&p).unwrap();
    let c = anchor_centroid(&s.models[0]).unwrap();
    translate_models(&mut s.models, [-c[0], -c[1], -c[2]]);
    Sample::Models(s.models)
}

fn settings(n: usize, snr: f64, density: DensityKind) -> SimSettings {
    SimSettings {
        n,
        box_px: 32,
        apix_a: 3.0,
        density,
        seed: 7,
        snr,
        invert: false,
        model_weights: vec![],
        batch: 100,
        junk: Default::default(),
    }
}

fn random() -> PoseSource {
    PoseSource::Random {
        poses: PoseDistribution::default(),
        ctf: CtfDistribution::default(),
        shift_max_a: 6.0,
    }
}

fn run(
    sample: &Sample,
    src: &PoseSource,
    s: &SimSettings,
    path: &Path,
) -> (Vec<f32>, cryoforge_sim::simulate::SimOutput) {
    let mut w = MrcStackWriter::create(path, s.box_px, s.box_px, s.apix_a as f32).unwrap();
    let out = simulate(sample, src, s, &mut w, &mut |_| {}).unwrap();
    w.finish().unwrap();
    let f = MrcFile::open(path).unwrap();
    let mut v = vec![0f32; s.n * s.box_px * s.box_px];
    f.read_images(0, &mut v).unwrap();
    (v, out)
}

/// `--snr`: pooled variance of the noise-free images over the noise variance.
#[test]
fn measured_snr_equals_target() {
    let d = tempfile::tempdir().unwrap();
    let sample = adk();
    for (snr, density) in [(0.1, DensityKind::Ca), (2.0, DensityKind::Atomic)] {
        let (clean, _) =
            run(&sample, &random(), &settings(300, f64::INFINITY, density), &d.path().join("c.mrcs"));
        let (noisy, out) = run(&sample, &random(), &settings(300, snr, density), &d.path().join("n.mrcs"));
        let m = clean.iter().map(|&v| v as f64).sum::<f64>() / clean.len() as f64;
        let var_s = clean.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / clean.len() as f64;
        let noise: Vec<f64> = noisy.iter().zip(&clean).map(|(a, b)| (*a - *b) as f64).collect();
        let mn = noise.iter().sum::<f64>() / noise.len() as f64;
        let var_n = noise.iter().map(|v| (v - mn).powi(2)).sum::<f64>() / noise.len() as f64;
        let measured = var_s / var_n;
        // 3σ of the noise-variance estimate (n samples): 3·sqrt(2/n), far inside 5 %.
        let tol = 3.0 * (2.0 / noise.len() as f64).sqrt();
        assert!((measured / snr - 1.0).abs() < tol.max(0.01), "SNR {measured} vs {snr}");
        assert!((out.signal_variance - var_s).abs() < 1e-6 * var_s);
    }
}

/// Identical output whatever the thread count and batch size.
#[test]
fn deterministic_for_any_thread_count() {
    let d = tempfile::tempdir().unwrap();
    let sample = adk();
    let s = settings(120, 0.5, DensityKind::Ca);
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let (a, ta) = one.install(|| run(&sample, &random(), &s, &d.path().join("a.mrcs")));
    let mut s2 = s.clone();
    s2.batch = 7;
    let (b, tb) = two.install(|| run(&sample, &random(), &s2, &d.path().join("b.mrcs")));
    assert_eq!(ta.truth, tb.truth);
    assert!(a == b, "images differ between 1 and 2 threads");
    // A different seed gives a different dataset.
    let mut s3 = s.clone();
    s3.seed = 8;
    let (c, _) = run(&sample, &random(), &s3, &d.path().join("c.mrcs"));
    assert!(a != c);
}

/// Given poses are used as they are; `invert` flips the sign.
#[test]
fn given_poses_and_inversion() {
    let d = tempfile::tempdir().unwrap();
    let sample = adk();
    let s = settings(4, f64::INFINITY, DensityKind::Ca);
    let poses: Vec<Pose> = (0..4)
        .map(|i| Pose {
            rot: cryoforge_core::EulerRelion::new(10.0 * i as f64, 20.0, 30.0).to_rot(),
            shift_px: [i as f64, -(i as f64)],
        })
        .collect();
    let ctf = vec![cryoforge_core::CtfParams::default(); 4];
    let src = PoseSource::Given { poses: poses.clone(), ctf };
    let (a, out) = run(&sample, &src, &s, &d.path().join("a.mrcs"));
    assert_eq!(out.truth.iter().map(|t| t.pose).collect::<Vec<_>>(), poses);
    let mut si = s.clone();
    si.invert = true;
    let (b, _) = run(&sample, &src, &si, &d.path().join("b.mrcs"));
    assert!(a.iter().zip(&b).all(|(x, y)| (x + y).abs() < 1e-6));
    // Protein-bright: the image correlates positively with the CTF-free projection at low
    // frequency, i.e. its mean is positive (DC of −CTF is +w).
    let mean: f32 = a[..32 * 32].iter().sum::<f32>() / 1024.0;
    assert!(mean > 0.0, "particles should be protein-bright (mean {mean})");
}

/// Past the noise pilot (2000 particles) batches are double-buffered (batch i written while
/// batch i + 1 renders): the stack must still be identical for any batch size and threads.
#[test]
fn double_buffered_batches_are_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let sample = adk();
    let mut s = SimSettings {
        n: 2300,
        box_px: 16,
        apix_a: 6.0,
        density: DensityKind::Ca,
        seed: 5,
        snr: 1.0,
        invert: false,
        model_weights: vec![],
        batch: 64,
        junk: Default::default(),
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (a, _) = one.install(|| run(&sample, &random(), &s, &d.path().join("a.mrcs")));
    s.batch = 500;
    let (b, _) = run(&sample, &random(), &s, &d.path().join("b.mrcs"));
    assert!(a == b, "double-buffered output differs between batch sizes / thread counts");
    let f = MrcFile::open(d.path().join("b.mrcs")).unwrap();
    assert_eq!(f.n_images(), 2300);
}

/// `--junk`: the drawn fraction and kinds, empty picks without signal, ice and aggregates
/// with more power than a good particle, off-centre picks away from the centre, and a
/// noise level set by the good particles only.
#[test]
fn junk_kinds_and_noise_level() {
    use cryoforge_sim::junk::{JunkKind, JunkSettings};
    let d = tempfile::tempdir().unwrap();
    let sample = adk();
    let mut s = settings(1200, f64::INFINITY, DensityKind::Ca);
    s.junk = JunkSettings { fraction: 0.4, ..Default::default() };
    let (v, out) = run(&sample, &random(), &s, &d.path().join("j.mrcs"));
    let n = s.box_px * s.box_px;
    let of = |k: Option<JunkKind>| -> Vec<usize> { (0..s.n).filter(|&i| out.truth[i].junk == k).collect() };
    let good = of(None);
    let f = 1.0 - good.len() as f64 / s.n as f64;
    assert!((f - 0.4).abs() < 0.05, "junk fraction {f}");
    let power = |i: usize| v[i * n..(i + 1) * n].iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n as f64;
    let mean = |ix: &[usize]| ix.iter().map(|&i| power(i)).sum::<f64>() / ix.len() as f64;
    let p_good = mean(&good);
    for k in JunkKind::ALL {
        assert!(of(Some(k)).len() > 60, "{k:?}: {}", of(Some(k)).len());
    }
    assert!(of(Some(JunkKind::Noise)).iter().all(|&i| power(i) == 0.0));
    assert!(mean(&of(Some(JunkKind::Aggregate))) > 2.0 * p_good);
    assert!(mean(&of(Some(JunkKind::Ice))) > 5.0 * p_good);
    // Off-centre picks: the centre of |image| far from the box centre.
    let h = (s.box_px / 2) as f64;
    let centre = |i: usize| {
        let (mut cx, mut cy, mut t) = (0.0, 0.0, 0.0);
        for (j, &x) in v[i * n..(i + 1) * n].iter().enumerate() {
            let a = (x as f64).abs();
            cx += a * ((j % s.box_px) as f64 - h);
            cy += a * ((j / s.box_px) as f64 - h);
            t += a;
        }
        (cx / t).hypot(cy / t)
    };
    let off = of(Some(JunkKind::Offcentre));
    let c_off = off.iter().map(|&i| centre(i)).sum::<f64>() / off.len() as f64;
    let c_good = good.iter().map(|&i| centre(i)).sum::<f64>() / good.len() as f64;
    assert!(c_off > c_good + 3.0, "off-centre {c_off} vs good {c_good}");
    for &i in &off {
        let t = out.truth[i].pose.shift_px;
        // 25 % of the box, less the good particles' own shift (≤ 2 px per axis).
        assert!(t[0].hypot(t[1]) > 0.25 * s.box_px as f64 - 3.0);
    }

    // The noise level comes from the good particles: the same σ with or without junk.
    let (_, clean) = run(&sample, &random(), &settings(1200, 0.1, DensityKind::Ca), &d.path().join("c.mrcs"));
    s.snr = 0.1;
    let (_, junky) = run(&sample, &random(), &s, &d.path().join("k.mrcs"));
    let r = junky.noise_sigma / clean.noise_sigma;
    assert!((r - 1.0).abs() < 0.05, "noise σ ratio {r}");
}

#[test]
fn carbon_edge_and_wrong_defocus_junk() {
    use cryoforge_sim::junk::{JunkKind, JunkSettings};
    let d = tempfile::tempdir().unwrap();
    let sample = adk();
    let mut s = settings(300, f64::INFINITY, DensityKind::Ca);
    s.junk = JunkSettings {
        fraction: 0.5,
        kinds: vec![JunkKind::Carbon, JunkKind::WrongDefocus],
        ..Default::default()
    };
    let (v, out) = run(&sample, &random(), &s, &d.path().join("j.mrcs"));
    // The same particles without junk: identical poses and CTFs (junk draws use their own stream).
    let clean_s = settings(300, f64::INFINITY, DensityKind::Ca);
    let (c, _) = run(&sample, &random(), &clean_s, &d.path().join("c.mrcs"));
    let n = s.box_px * s.box_px;
    let diff = |i: usize| {
        let (a, b) = (&v[i * n..(i + 1) * n], &c[i * n..(i + 1) * n]);
        let e: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let p: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
        e / p.max(1e-30)
    };
    let (mut nc, mut nw) = (0, 0);
    for (i, t) in out.truth.iter().enumerate() {
        match t.junk {
            None => assert!(diff(i) < 1e-10, "good particle {i} changed"),
            // A step of 3× the signal's sd: far more power than the particle.
            Some(JunkKind::Carbon) => {
                nc += 1;
                assert!(diff(i) > 3.0, "carbon {i}: {}", diff(i));
            }
            // Same particle, other CTF: clearly different, similar power.
            Some(JunkKind::WrongDefocus) => {
                nw += 1;
                assert!(diff(i) > 0.2, "wrong defocus {i}: {}", diff(i));
            }
            Some(k) => panic!("kind {k:?} not asked for"),
        }
    }
    assert!(nc > 40 && nw > 40, "{nc} carbon, {nw} wrong-defocus");
}
