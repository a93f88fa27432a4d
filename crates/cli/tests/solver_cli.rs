//! End-to-end tests of `cryoforge solver train | analyze` (CryoSolver) on a small
//! simulated mixture of four structures in the paper's proportions (62 / 17 / 13 / 8 %):
//! informative latents (one-hot of the structure plus noise, what a perfect encoder gives)
//! against the paper's control (random latents); the run folder, the pose searches, the
//! analysis files and errors on bad input.

use std::path::{Path, PathBuf};
mod common;
use common::*;

/// Four models sharing AdK copy A: A+B (model 0), A, A+B+C, A+B+C+D, as a multi-model PDB.
fn mixture_pdb() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let a = atoms(&std::fs::read_to_string(p).unwrap());
    let c = [0, 1, 2].map(|k| a.iter().map(|x| x.1[k]).sum::<f64>() / a.len() as f64);
    let place = |copy: usize, v: [f64; 3]| match copy {
        0 => v,
        1 => [v[0] + 38.0, -v[2], v[1]],
        2 => [-v[1], v[0] + 38.0, v[2]],
        _ => [v[2], v[1], -v[0] + 38.0],
    };
    let mut out = String::new();
    for (m, copies) in [2usize, 1, 3, 4].iter().enumerate() {
        out.push_str(&format!("MODEL     {:4}\n", m + 1));
        for copy in 0..*copies {
            for (l, p) in &a {
                let q = place(copy, [p[0] - c[0], p[1] - c[1], p[2] - c[2]]);
                out.push_str(&format!("{}{:8.3}{:8.3}{:8.3}{}\n", &l[..30], q[0], q[1], q[2], &l[54..]));
            }
        }
        out.push_str("ENDMDL\n");
    }
    out.push_str("END\n");
    out
}

/// Simulated mixture, its structure labels and a consensus map (truth poses).
fn simulate(d: &Path, n: usize) -> (PathBuf, Vec<usize>, PathBuf) {
    std::fs::write(d.join("mix.pdb"), mixture_pdb()).unwrap();
    std::fs::write(d.join("w.txt"), "62\n17\n13\n8\n").unwrap();
    let sim = d.join("sim");
    ok(&run(&[
        "simulate",
        "--models",
        d.join("mix.pdb").to_str().unwrap(),
        "--model-weights",
        d.join("w.txt").to_str().unwrap(),
        "--n",
        &n.to_string(),
        "--box",
        "32",
        "--apix",
        "4.5",
        "--snr",
        "0.1",
        "--shift-a",
        "3",
        "--seed",
        "11",
        "--out",
        sim.to_str().unwrap(),
        "-q",
    ]));
    let truth = std::fs::read_to_string(sim.join("truth.csv")).unwrap();
    let labels: Vec<usize> =
        truth.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect();
    let cons = d.join("consensus");
    let star = sim.join("particles.star");
    ok(&run(&["reconstruct", star.to_str().unwrap(), "--out", cons.to_str().unwrap(), "-q"]));
    (star, labels, cons.join("map.mrc"))
}

/// One-hot structure labels (8 columns) plus N(0, 0.3²) noise.
fn oracle_features(path: &Path, labels: &[usize]) {
    let mut state = 0x2545f4914f6cdd1du64;
    let mut gauss = || {
        // Box–Muller on a xorshift stream.
        let mut u = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (a, b) = (u(), u());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    };
    let mut f = Vec::with_capacity(labels.len() * 8);
    for &l in labels {
        for k in 0..8 {
            f.push((if k == l { 1.0 } else { 0.0 } + 0.3 * gauss()) as f32);
        }
    }
    cryoforge_io::npy::write_npy_f32(path, &[labels.len(), 8], &f).unwrap();
}

fn purity(labels: &[usize], clusters: &[usize]) -> f64 {
    let k = clusters.iter().max().unwrap() + 1;
    let mut hit = 0;
    for c in 0..k {
        let mut count = [0usize; 4];
        for (l, _) in labels.iter().zip(clusters).filter(|(_, &x)| x == c) {
            count[*l] += 1;
        }
        hit += count.iter().max().unwrap();
    }
    hit as f64 / labels.len() as f64
}

fn read_labels(p: &Path) -> Vec<usize> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect()
}

fn train(star: &Path, feats: &[&str], reference: &Path, out: &Path) {
    let mut args = vec!["solver", "train", star.to_str().unwrap()];
    args.extend_from_slice(feats);
    args.extend_from_slice(&[
        "--reference",
        reference.to_str().unwrap(),
        "--epochs",
        "4",
        "--pose-search-every",
        "2",
        "--pose-search-until",
        "0.75",
        "--search-volumes",
        "4",
        "--hidden",
        "32",
        "--batch",
        "16",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    ok(&run(&args));
}

#[test]
fn solver_separates_informative_latents_and_not_random_ones() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (star, labels, cons) = simulate(d, 600);
    let oracle = d.join("oracle.npy");
    oracle_features(&oracle, &labels);

    let run_o = d.join("oracle");
    train(&star, &["--features", oracle.to_str().unwrap()], &cons, &run_o);
    for f in [
        "config.json",
        "decoder/weights.safetensors",
        "z.npy",
        "particles.star",
        "train.jsonl",
        "summary.json",
    ] {
        assert!(run_o.join(f).exists(), "{f} missing");
    }
    let log: Vec<serde_json::Value> = std::fs::read_to_string(run_o.join("train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 4);
    // The decoder search ran at epoch 3 (0-based 2) only.
    let searched: Vec<bool> = log.iter().map(|e| e["pose_search"].as_bool().unwrap()).collect();
    assert_eq!(searched, vec![false, false, true, false]);
    let (l0, l3) = (log[0]["loss"].as_f64().unwrap(), log[3]["loss"].as_f64().unwrap());
    assert!(l3 < l0, "loss {l0} → {l3}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_o.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["features"]["source"], "file");
    assert_eq!(cfg["decoder"]["zdim"], 8);

    let an = d.join("oracle_an");
    ok(&run(&[
        "solver",
        "analyze",
        run_o.to_str().unwrap(),
        "--k",
        "4",
        "--points",
        "3",
        "--out",
        an.to_str().unwrap(),
        "-q",
    ]));
    for f in [
        "latents.npy",
        "pca.npy",
        "pca_explained.csv",
        "umap.npy",
        "kmeans/labels.txt",
        "kmeans/vol_003.mrc",
        "pc1/vol_002.mrc",
        "pc2/z_values.txt",
        "summary.json",
    ] {
        assert!(an.join(f).exists(), "{f} missing");
    }
    let km = read_labels(&an.join("kmeans/labels.txt"));
    let p_oracle = purity(&labels, &km);
    assert!(p_oracle >= 0.9, "purity with informative latents {p_oracle}");
    // Every cluster's STAR re-reads with its particles at the run's poses.
    let stars: Vec<_> = std::fs::read_dir(an.join("particles")).unwrap().collect();
    assert_eq!(stars.len(), 4);
    let vol = cryoforge_io::mrc::MrcFile::open(an.join("kmeans/vol_000.mrc")).unwrap();
    let v = vol.read_volume().unwrap();
    assert_eq!(v.len(), 32 * 32 * 32);
    assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0));

    // The paper's control: random latents carry nothing, k-means finds no structure.
    let run_r = d.join("random");
    train(&star, &["--random-features", "--random-dim", "8"], &cons, &run_r);
    let an_r = d.join("random_an");
    ok(&run(&[
        "solver",
        "analyze",
        run_r.to_str().unwrap(),
        "--k",
        "4",
        "--pcs",
        "0",
        "--no-umap",
        "--out",
        an_r.to_str().unwrap(),
        "-q",
    ]));
    let p_random = purity(&labels, &read_labels(&an_r.join("kmeans/labels.txt")));
    assert!(p_random < 0.75, "purity with random latents {p_random}");

    // Bad input: wrong number of feature rows, no latent source, not a run, k too large.
    let short = d.join("short.npy");
    cryoforge_io::npy::write_npy_f32(&short, &[10, 8], &[0.0; 80]).unwrap();
    fails_with(
        &run(&[
            "solver",
            "train",
            star.to_str().unwrap(),
            "--features",
            short.to_str().unwrap(),
            "--out",
            d.join("x").to_str().unwrap(),
        ]),
        &["short.npy", "[600, C]"],
    );
    let o = run(&["solver", "train", star.to_str().unwrap(), "--out", d.join("y").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--weights"));
    fails_with(&run(&["solver", "analyze", d.to_str().unwrap()]), &["config.json"]);
    fails_with(&run(&["solver", "analyze", run_o.to_str().unwrap(), "--k", "601"]), &["--k 601"]);
}
