//! `sphere analyze` on a tiny run (a few training steps on a noise-free two-state AdK
//! dataset): the shared analysis driver writes every file of the run-directory contract,
//! and the cryoSPHERE extras (segmentation, per-segment motions, the segmentation counts in
//! summary.json) are there and consistent.

use cryoforge_io::mrc::MrcStackWriter;
use cryoforge_io::pdb::{anchor_atoms, read_structure, write_ca_models};
use cryoforge_io::stack::{LoadOptions, ParticleStack};
use cryoforge_sim::morph::{morph, MorphSettings};
use cryoforge_sim::sampling::{CtfDistribution, PoseDistribution};
use cryoforge_sim::simulate::{
    anchor_centroid, simulate, translate_models, DensityKind, PoseSource, Sample, SimSettings,
};
use cryoforge_sphere::analyze::analyze;
use cryoforge_sphere::parts::Layout;
use cryoforge_sphere::train::{train, TrainInputs};
use cryoforge_sphere::SphereConfig;
use std::path::PathBuf;
use std::sync::Arc;

fn demo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo").join(name)
}

#[test]
fn analyze_writes_the_contract_files() {
    let a = read_structure(demo("adk_closed.pdb")).unwrap();
    let b = read_structure(demo("adk_open.pdb")).unwrap();
    let m = morph(&a.models[0], &b.models[0], &MorphSettings { frames: 2, ..Default::default() }).unwrap();
    let mut models = m.models.clone();
    let c = anchor_centroid(&models[0]).unwrap();
    translate_models(&mut models, [-c[0], -c[1], -c[2]]);
    let dir = tempfile::tempdir().unwrap();
    let (d, apix, n) = (32, 3.0, 48);
    let mrcs = dir.path().join("p.mrcs");
    let mut w = MrcStackWriter::create(&mrcs, d, d, apix as f32).unwrap();
    let set = SimSettings {
        n,
        box_px: d,
        apix_a: apix,
        density: DensityKind::Ca,
        seed: 5,
        snr: f64::INFINITY,
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
    let out = simulate(&Sample::Models(models.clone()), &src, &set, &mut w, &mut |_| {}).unwrap();
    w.finish().unwrap();
    let mut stack =
        ParticleStack::load(&mrcs, &LoadOptions { apix_a: Some(apix), ..Default::default() }).unwrap();
    stack.poses = Some(out.truth.iter().map(|t| t.pose).collect());
    stack.ctf = Some(out.truth.iter().map(|t| t.ctf).collect());
    // Ground truth next to the particles (as `cryoforge simulate` writes it).
    let mut csv = String::from("index,model\n");
    for (i, t) in out.truth.iter().enumerate() {
        csv.push_str(&format!("{i},{}\n", t.model));
    }
    std::fs::write(dir.path().join("truth.csv"), csv).unwrap();
    let residues = anchor_atoms(&models[0]).unwrap();
    let frames: Vec<Vec<[f64; 3]>> =
        models.iter().map(|m| anchor_atoms(m).unwrap().iter().map(|r| r.pos).collect()).collect();
    write_ca_models(dir.path().join("model.pdb"), &residues, &frames, None).unwrap();

    let cfg = SphereConfig {
        zdim: 2,
        n_segm: 3,
        batch_size: 16,
        steps: Some(3),
        log_every: 1,
        checkpoint_every: 100,
        ..Default::default()
    };
    let chains: Vec<String> = residues.iter().map(|r| r.chain.clone()).collect();
    let layout = Layout::per_chain(&chains, cfg.n_segm).unwrap();
    let run = dir.path().join("run");
    let stack = Arc::new(stack);
    let inputs = TrainInputs {
        stack: stack.clone(),
        residues: residues.clone(),
        layout,
        out: run.clone(),
        resume: false,
        device: candle_core::Device::Cpu,
        command: "test".into(),
        data_extra: Vec::new(),
    };
    train(&cfg, inputs, &mut |_| {}).unwrap();

    let an = run.join("analysis");
    let mut o = cryoforge_hetero::AnalyzeOptions::new("ignored", an.clone(), d, apix);
    o.kmeans_k = 4;
    o.traversal_points = 4;
    o.coords_out = Some(dir.path().join("coords.npy"));
    o.particles_out = Some(dir.path().join("clusters"));
    o.particles_dir = Some(dir.path().to_path_buf());
    let zf = dir.path().join("z.txt");
    std::fs::write(&zf, "0 0\n0.5 -0.5\n").unwrap();
    o.z_file = Some(zf);
    let mut seen = 0;
    let s = analyze(&run, &stack, &o, &mut |done, _| seen = done).unwrap();
    assert_eq!(seen, n);
    for f in [
        "latents.npy",
        "latents.csv",
        "pca.npy",
        "pca_explained.csv",
        "umap.npy",
        "kmeans/labels.txt",
        "kmeans/centers.txt",
        "kmeans/centers_ind.txt",
        "kmeans/centers.pdb",
        "kmeans/inertia.txt",
        "kmeans/vol_000.mrc",
        "pc1/traversal.pdb",
        "pc1/z_values.txt",
        "pc1/vol_003.mrc",
        "pc2/traversal.pdb",
        "zfile/structures.pdb",
        "clash.csv",
        "truth.json",
        "summary.json",
        "segmentation.csv",
        "segmentation.pdb",
        "segment_counts.csv",
        "segment_motions.csv",
        "examples.npy",
        "examples.txt",
    ] {
        assert!(an.join(f).is_file(), "missing {f}");
    }
    // Example particles next to their renderings: [M, 2, D, D], predictions not blank.
    let (ex, shape) = cryoforge_hetero::read_npy(&an.join("examples.npy")).unwrap();
    let (m, d) = (n.min(8), stack.box_px().unwrap());
    assert_eq!(shape, vec![m, 2, d, d]);
    assert!(ex.iter().all(|v| v.is_finite()));
    let pred0 = &ex[d * d..2 * d * d];
    assert!(pred0.iter().any(|v| v.abs() > 0.0), "the first prediction is blank");
    assert_eq!(std::fs::read_to_string(an.join("examples.txt")).unwrap().lines().count(), m);
    let r = residues.len();
    let (coords, shape) = cryoforge_hetero::read_npy(&dir.path().join("coords.npy")).unwrap();
    assert_eq!(shape, vec![n, r, 3]);
    assert!(coords.iter().all(|v| v.is_finite()));
    let clusters: Vec<_> = std::fs::read_dir(dir.path().join("clusters")).unwrap().collect();
    assert!(!clusters.is_empty());

    let sj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(an.join("summary.json")).unwrap()).unwrap();
    assert_eq!(sj["method"], "cryosphere");
    assert_eq!(sj["n_particles"], n);
    assert_eq!(sj["zdim"], 2);
    assert_eq!(sj["kmeans"]["k"], 4);
    assert_eq!(sj, s.json);
    let seg = &sj["segmentation"];
    assert_eq!(seg["n_segments"], 3);
    let counts: Vec<u64> = seg["counts"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(counts.len(), 3);
    assert_eq!(counts.iter().sum::<u64>(), r as u64, "every residue has a segment: {counts:?}");
    let t = s.truth.unwrap();
    assert!(t["rmsd_mean_A"].as_f64().unwrap().is_finite(), "{t}");
    assert_eq!(t["per_frame_rmsd"].as_array().unwrap().len(), 2);

    let seg_csv = std::fs::read_to_string(an.join("segmentation.csv")).unwrap();
    assert!(seg_csv.starts_with("residue,chain,resid,segment,w1,w2,w3\n"));
    assert_eq!(seg_csv.lines().count(), 1 + r);
    let mot = std::fs::read_to_string(an.join("segment_motions.csv")).unwrap();
    assert_eq!(mot.lines().count(), 1 + n * 3);
    let sp = read_structure(an.join("segmentation.pdb")).unwrap();
    assert_eq!(sp.models.len(), 1);
    let tr = read_structure(an.join("pc1/traversal.pdb")).unwrap();
    assert_eq!(tr.models.len(), 4);
}
