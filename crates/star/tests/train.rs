//! End to end: a short cryoSTAR training on a tiny noise-free two-state AdK dataset must
//! move the predicted structures towards the true ones; and the loss terms on hand-made
//! structures.

use cryoforge_io::mrc::MrcStackWriter;
use cryoforge_io::pdb::{anchor_atoms, read_structure};
use cryoforge_io::stack::{LoadOptions, ParticleStack};
use cryoforge_sim::morph::{morph, MorphSettings};
use cryoforge_sim::sampling::{CtfDistribution, PoseDistribution};
use cryoforge_sim::simulate::{
    anchor_centroid, simulate, translate_models, DensityKind, PoseSource, Sample, SimSettings,
};
use cryoforge_star::train::{encode_stack, load_run, prepare, train, write_run_toml};
use cryoforge_star::{Reference, StarConfig};
use std::path::PathBuf;
use std::sync::Arc;

fn demo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo").join(name)
}

fn rmsd(a: &[[f32; 3]], b: &[[f64; 3]]) -> f64 {
    let s: f64 =
        a.iter().zip(b).map(|(p, q)| (0..3).map(|d| (p[d] as f64 - q[d]).powi(2)).sum::<f64>()).sum();
    (s / a.len() as f64).sqrt()
}

#[test]
fn short_training_reduces_rmsd() {
    let a = read_structure(demo("adk_closed.pdb")).unwrap();
    let b = read_structure(demo("adk_open.pdb")).unwrap();
    let m = morph(&a.models[0], &b.models[0], &MorphSettings { frames: 2, ..Default::default() }).unwrap();
    let mut models = m.models.clone();
    let c = anchor_centroid(&models[0]).unwrap();
    translate_models(&mut models, [-c[0], -c[1], -c[2]]);
    let truth_frames: Vec<Vec<[f64; 3]>> =
        models.iter().map(|m| anchor_atoms(m).unwrap().iter().map(|r| r.pos).collect()).collect();
    let dir = tempfile::tempdir().unwrap();
    let (d, apix, n) = (32, 3.0, 384);
    let mrcs = dir.path().join("p.mrcs");
    let mut w = MrcStackWriter::create(&mrcs, d, d, apix as f32).unwrap();
    let set = SimSettings {
        n,
        box_px: d,
        apix_a: apix,
        density: DensityKind::Ca,
        seed: 3,
        snr: f64::INFINITY,
        invert: false,
        model_weights: Vec::new(),
        batch: 128,
        junk: Default::default(),
    };
    let src = PoseSource::Random {
        poses: PoseDistribution::default(),
        ctf: CtfDistribution::default(),
        shift_max_a: 0.0,
    };
    let out = simulate(&Sample::Models(models.clone()), &src, &set, &mut w, &mut |_| {}).unwrap();
    w.finish().unwrap();
    let mut stack =
        ParticleStack::load(&mrcs, &LoadOptions { apix_a: Some(apix), ..Default::default() }).unwrap();
    stack.poses = Some(out.truth.iter().map(|t| t.pose).collect());
    stack.ctf = Some(out.truth.iter().map(|t| t.ctf).collect());
    let frames: Vec<usize> = out.truth.iter().map(|t| t.model).collect();

    let reference = Reference::from_anchors(anchor_atoms(&models[0]).unwrap(), 12.0, 4.0, 10.0).unwrap();
    let mut cfg = StarConfig {
        batch_size: 32,
        steps: Some(240),
        lr: 1e-3,
        lowpass_a: Some(8.0),
        keep_ratio: 0.8,
        kl_warmup_steps: 100,
        log_every: 20,
        checkpoint_every: 100,
        ..Default::default()
    };
    prepare(&stack, &reference, &mut cfg, None).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    cryoforge_io::pdb::write_ca_models(
        run.join("reference.pdb"),
        &reference.residues,
        std::slice::from_ref(&reference.coords),
        None,
    )
    .unwrap();
    write_run_toml(&run, "test", &cfg, &mrcs, n, d, apix, &[]).unwrap();
    let stack = Arc::new(stack);
    let res =
        train(stack.clone(), &reference, &cfg, &run, false, &candle_core::Device::Cpu, &mut |_| {}).unwrap();
    assert_eq!(res.steps, 240);
    for f in ["metrics.csv", "metrics.jsonl", "weights.safetensors", "run.toml"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("step,epoch,images,elapsed_s,loss,recon,kl,continuity,clash,elastic"));
    assert_eq!(csv.lines().count(), 1 + 12);

    let lr = load_run(&run).unwrap();
    let z = encode_stack(&lr.model, &lr.cfg, &stack).unwrap();
    let coords = lr.model.decode_coords(&z).unwrap();
    let r = reference.len();
    let (mut pred, mut base) = (0.0, 0.0);
    for i in 0..n {
        let t = &truth_frames[frames[i]];
        pred += rmsd(&coords[i * r..(i + 1) * r], t);
        let rc: Vec<[f32; 3]> =
            reference.coords.iter().map(|p| [p[0] as f32, p[1] as f32, p[2] as f32]).collect();
        base += rmsd(&rc, t);
    }
    let (pred, base) = (pred / n as f64, base / n as f64);
    eprintln!("mean RMSD to truth: predicted {pred:.3} Å, reference {base:.3} Å");
    assert!(pred < 0.8 * base, "predicted {pred:.3} Å vs reference {base:.3} Å");

    // Resume continues from the last checkpoint to a longer run.
    let cfg2 = StarConfig { steps: Some(260), ..cfg.clone() };
    let res2 = train(stack, &reference, &cfg2, &run, true, &candle_core::Device::Cpu, &mut |_| {}).unwrap();
    assert_eq!(res2.steps, 260);
}
