//! Reconstruction against ground truth made by the simulator: accuracy without noise,
//! half-map FSC as a predictor of the true FSC with noise, symmetry, shift sign, polarity.

use cryoforge_core::fsc::{fsc_truth_from_half, fsc_volumes};
use cryoforge_core::Rot3;
use cryoforge_io::mrc::MrcStackWriter;
use cryoforge_io::pdb::{read_structure, Model};
use cryoforge_io::stack::{ImageRef, ParticleStack};
use cryoforge_recon::{reconstruct, CtfCorrection, HalfSplit, ReconConfig, Regularisation};
use cryoforge_sim::sampling::{CtfDistribution, PoseDistribution};
use cryoforge_sim::simulate::{
    anchor_centroid, atom_specs, simulate, translate_models, DensityKind, PoseSource, Sample, SimSettings,
};
use std::path::Path;

fn adk_model() -> Model {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let mut s = read_structure(&p).unwrap();
    let c = anchor_centroid(&s.models[0]).unwrap();
    translate_models(&mut s.models, [-c[0], -c[1], -c[2]]);
    s.models.remove(0)
}

struct Data {
    _dir: tempfile::TempDir,
    stack: ParticleStack,
}

fn make(sample: &Sample, s: &SimSettings, shift_max_a: f64) -> Data {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.mrcs");
    let mut w = MrcStackWriter::create(&path, s.box_px, s.box_px, s.apix_a as f32).unwrap();
    let src = PoseSource::Random {
        poses: PoseDistribution::default(),
        ctf: CtfDistribution::default(),
        shift_max_a,
    };
    let out = simulate(sample, &src, s, &mut w, &mut |_| {}).unwrap();
    w.finish().unwrap();
    let mut stack = ParticleStack::from_parts(
        &dir.path().join("p.star"),
        vec![path.to_string_lossy().into_owned()],
        (0..s.n).map(|i| ImageRef { file: 0, index: i as u64 }).collect(),
        s.box_px,
        s.apix_a,
    );
    stack.poses = Some(out.truth.iter().map(|t| t.pose).collect());
    stack.ctf = Some(out.truth.iter().map(|t| t.ctf).collect());
    Data { _dir: dir, stack }
}

fn settings(n: usize, d: usize, apix: f64, snr: f64) -> SimSettings {
    SimSettings {
        n,
        box_px: d,
        apix_a: apix,
        density: DensityKind::Atomic,
        seed: 3,
        snr,
        invert: false,
        model_weights: vec![],
        batch: 256,
        junk: Default::default(),
    }
}

fn truth_map(m: &Model, d: usize, apix: f64) -> Vec<f32> {
    cryoforge_sim::atomic_density(&atom_specs(m).unwrap(), d, apix).unwrap()
}

const TWO_THIRDS: f64 = 2.0 / 3.0;

/// SNR ∞: FSC(map, ground truth) ≥ 0.95 up to 2/3 of Nyquist (with shifts: pins the sign).
#[test]
fn noiseless_reconstruction_matches_truth() {
    let (d, apix) = (48, 2.0);
    let m = adk_model();
    let data = make(&Sample::Models(vec![m.clone()]), &settings(3000, d, apix, f64::INFINITY), 8.0);
    let r = reconstruct(&data.stack, &ReconConfig::default(), &|_| {}).unwrap();
    let f = fsc_volumes(&r.map, &truth_map(&m, d, apix), d, apix);
    let kmax = (TWO_THIRDS * (d / 2) as f64) as usize;
    for k in 1..=kmax {
        assert!(f.fsc[k] >= 0.95, "shell {k}: FSC {:.4}", f.fsc[k]);
    }
    // The shift sign matters: re-centring the other way ruins the map.
    let mut wrong = data.stack.clone();
    for p in wrong.poses.as_mut().unwrap() {
        p.shift_px = [-p.shift_px[0], -p.shift_px[1]];
    }
    let rw = reconstruct(&wrong, &ReconConfig::default(), &|_| {}).unwrap();
    let fw = fsc_volumes(&rw.map, &truth_map(&m, d, apix), d, apix);
    assert!(fw.fsc[kmax] < 0.5, "wrong shift sign still gives FSC {:.3}", fw.fsc[kmax]);
}

/// With noise, the half-map FSC predicts the map-to-truth FSC: sqrt(2F/(1+F)) within 0.05
/// at every shell where F > 0.2.
#[test]
fn half_map_fsc_predicts_truth_fsc() {
    let (d, apix) = (48, 2.0);
    let m = adk_model();
    let data = make(&Sample::Models(vec![m.clone()]), &settings(4000, d, apix, 0.05), 4.0);
    let r = reconstruct(&data.stack, &ReconConfig::default(), &|_| {}).unwrap();
    let t = fsc_volumes(&r.map, &truth_map(&m, d, apix), d, apix);
    let mut checked = 0;
    for k in 1..r.fsc.fsc.len() {
        let f = r.fsc.fsc[k];
        if f > 0.2 {
            let pred = fsc_truth_from_half(f);
            assert!((pred - t.fsc[k]).abs() <= 0.05, "shell {k}: predicted {pred:.3}, truth {:.3}", t.fsc[k]);
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} shells above 0.2");
}

/// A C4 object: C4 reconstruction from a quarter of the particles matches C1 from all.
#[test]
fn c4_symmetry_from_a_quarter_of_the_particles() {
    let (d, apix) = (48, 3.0);
    let mut base = adk_model();
    translate_models(std::slice::from_mut(&mut base), [20.0, 0.0, 0.0]);
    let mut copies = vec![base.clone()];
    for k in 1..4 {
        let mut c = base.clone();
        let r = Rot3::from_axis_angle([0.0, 0.0, 1.0], k as f64 * std::f64::consts::FRAC_PI_2);
        for a in c.chains.iter_mut().flat_map(|c| c.residues.iter_mut()).flat_map(|r| r.atoms.iter_mut()) {
            a.pos = r.apply(a.pos);
        }
        copies.push(c);
    }
    // One model holding the four copies.
    let mut c4 = copies[0].clone();
    for c in &copies[1..] {
        c4.chains.extend(c.chains.iter().cloned());
    }
    let data = make(&Sample::Models(vec![c4]), &settings(4000, d, apix, f64::INFINITY), 0.0);
    let all = reconstruct(&data.stack, &ReconConfig::default(), &|_| {}).unwrap();
    let mut quarter = data.stack.clone();
    quarter.select(&(0..1000).collect::<Vec<_>>()).unwrap();
    let cfg = ReconConfig { symmetry: "C4".into(), ..Default::default() };
    let sym = reconstruct(&quarter, &cfg, &|_| {}).unwrap();
    let f = fsc_volumes(&sym.map, &all.map, d, apix);
    let kmax = (TWO_THIRDS * (d / 2) as f64) as usize;
    for k in 1..=kmax {
        assert!(f.fsc[k] >= 0.95, "shell {k}: FSC(C4 quarter, C1 all) {:.4}", f.fsc[k]);
    }
}

/// Dark particles with `invert`, phase flipping and no CTF correction all give maps that
/// correlate positively with the truth; the STAR half split needs labels.
#[test]
fn polarity_and_correction_modes() {
    let (d, apix) = (32, 3.0);
    let m = adk_model();
    let mut s = settings(1500, d, apix, f64::INFINITY);
    s.invert = true;
    let data = make(&Sample::Models(vec![m.clone()]), &s, 0.0);
    let truth = truth_map(&m, d, apix);
    let corr = |v: &[f32]| {
        let (ma, mb) =
            (v.iter().sum::<f32>() / v.len() as f32, truth.iter().sum::<f32>() / truth.len() as f32);
        let num: f32 = v.iter().zip(&truth).map(|(a, b)| (a - ma) * (b - mb)).sum();
        let da: f32 = v.iter().map(|a| (a - ma).powi(2)).sum();
        let db: f32 = truth.iter().map(|b| (b - mb).powi(2)).sum();
        num / (da * db).sqrt()
    };
    for (mode, min) in
        [(CtfCorrection::Wiener, 0.9), (CtfCorrection::PhaseFlip, 0.6), (CtfCorrection::None, 0.0)]
    {
        let cfg = ReconConfig {
            invert: true,
            ctf_correction: mode,
            regularisation: Regularisation::Tikhonov(0.01),
            ..Default::default()
        };
        let r = reconstruct(&data.stack, &cfg, &|_| {}).unwrap();
        let c = corr(&r.map);
        assert!(c > min, "{mode:?}: correlation with truth {c:.3}");
    }
    let not_inverted = reconstruct(&data.stack, &ReconConfig::default(), &|_| {}).unwrap();
    assert!(corr(&not_inverted.map) < -0.5, "forgetting --invert must give a negative map");
    let cfg = ReconConfig { half_split: HalfSplit::Star, ..Default::default() };
    let e = reconstruct(&data.stack, &cfg, &|_| {}).err().unwrap().to_string();
    assert!(e.contains("rlnRandomSubset"), "{e}");
}
