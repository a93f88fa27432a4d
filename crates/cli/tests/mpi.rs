//! Distributed runs (`mpirun -n 2 cryoforge …`, built with `--features mpi`) against one
//! rank on the same data: reconstruction, refinement, training, scoring and features, and a
//! failing rank stopping the others. Run by `scripts/test-mpi.sh` (part of the README's test
//! command), which installs Open MPI first.
#![cfg(feature = "mpi")]

use cryoforge_io::mrc::MrcFile;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cryoforge");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `mpirun -n ranks cryoforge --threads 1 ARGS` (one thread per rank: 2 ranks fit 2 cores).
fn mpirun(ranks: usize, args: &[&str]) -> Output {
    mpirun_env(ranks, args, &[])
}

fn mpirun_env(ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-n", &ranks.to_string(), BIN, "--threads", "1"]);
    c.args(args);
    // Loopback only: no network interfaces to probe.
    c.env("OMPI_MCA_btl", "self,vader").env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("cannot start mpirun (install openmpi-bin)")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn cryoforge(args: &[&str]) {
    ok(&Command::new(BIN).args(args).output().unwrap());
}

fn demo_model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb")
}

fn simulate(dir: &Path, n: usize, snr: &str, extra: &[&str]) {
    simulate_seed(dir, n, snr, "7", extra)
}

fn simulate_seed(dir: &Path, n: usize, snr: &str, seed: &str, extra: &[&str]) {
    let m = demo_model();
    let n = n.to_string();
    let mut a = vec![
        "simulate",
        "--model",
        s(&m),
        "--n",
        &n,
        "--box",
        "32",
        "--apix",
        "3",
        "--snr",
        snr,
        "--seed",
        seed,
        "--out",
    ];
    a.push(s(dir));
    a.extend_from_slice(extra);
    a.push("-q");
    cryoforge(&a);
}

fn volume(p: &Path) -> Vec<f32> {
    MrcFile::open(p).unwrap().read_volume().unwrap()
}

fn min_fsc(a: &Path, b: &Path) -> f64 {
    let f = cryoforge_core::fsc::fsc_volumes(&volume(a), &volume(b), 32, 3.0);
    f.fsc.iter().skip(1).copied().fold(1.0, f64::min)
}

#[test]
fn reconstruct_on_two_ranks_equals_one() {
    let t = tempfile::tempdir().unwrap();
    let sim = t.path().join("sim");
    simulate(&sim, 600, "1", &[]);
    let star = sim.join("particles.star");
    let (r1, r2) = (t.path().join("r1"), t.path().join("r2"));
    ok(&mpirun(1, &["reconstruct", s(&star), "--out", s(&r1), "-q"]));
    ok(&mpirun(2, &["reconstruct", s(&star), "--out", s(&r2), "-q"]));
    for f in ["map.mrc", "half_a.mrc", "half_b.mrc"] {
        let m = min_fsc(&r1.join(f), &r2.join(f));
        assert!(m >= 0.9999, "{f}: lowest FSC between 1 and 2 ranks {m}");
    }
    for f in ["fsc.csv", "summary.json", "report.html"] {
        assert!(r2.join(f).is_file(), "rank 0 wrote no {f}");
    }
}

#[test]
fn refine_on_two_ranks_equals_one() {
    let t = tempfile::tempdir().unwrap();
    let sim = t.path().join("sim");
    // The data set of refine_cli.rs, on which refinement converges (median error < 6°).
    simulate_seed(&sim, 500, "0.5", "4", &["--shift-a", "3"]);
    let truth = t.path().join("truth.mrc");
    cryoforge(&[
        "pdb2map",
        s(&sim.join("model.pdb")),
        "--no-center",
        "--box",
        "32",
        "--apix",
        "3",
        "-o",
        s(&truth),
        "-q",
    ]);
    let star = sim.join("particles.star");
    let run = |k: usize, out: &Path| -> serde_json::Value {
        let o = mpirun(
            k,
            &[
                "refine",
                s(&star),
                "--reference",
                s(&truth),
                "--truth",
                s(&star),
                "--healpix-order",
                "1",
                "--out",
                s(out),
                "--json",
                "-q",
            ],
        );
        ok(&o);
        serde_json::from_slice(&o.stdout).expect("rank 0 prints summary.json once")
    };
    let (o1, o2) = (t.path().join("f1"), t.path().join("f2"));
    let (v1, v2) = (run(1, &o1), run(2, &o2));
    assert_eq!(v1["iterations"], v2["iterations"]);
    let a = |v: &serde_json::Value| v["truth_median_angle_deg"].as_f64().unwrap();
    assert!(a(&v1) < 6.0, "1 rank: median angle error {}°", a(&v1));
    assert!((a(&v1) - a(&v2)).abs() < 0.1, "median angle error {}° vs {}°", a(&v1), a(&v2));
    let m = min_fsc(&o1.join("map.mrc"), &o2.join("map.mrc"));
    assert!(m >= 0.999, "lowest FSC between the 1- and 2-rank maps {m}");
}

/// (step, loss columns) of a metrics.csv.
fn metrics(p: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse::<f64>().unwrap_or(f64::NAN)).collect())
        .collect()
}

fn weights(p: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(p, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            (k, t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap())
        })
        .collect()
}

/// Training on 2 ranks (each half of every batch, gradients all-reduced) follows the
/// 1-rank run with the same total batch: the same losses step by step and the same weights,
/// to float rounding.
fn training_matches(method: &str, loss_cols: std::ops::Range<usize>) {
    let t = tempfile::tempdir().unwrap();
    let sim = t.path().join("sim");
    simulate(&sim, 256, "0.5", &[]);
    let star = sim.join("particles.star");
    let m = demo_model();
    let train = |k: usize| {
        let out = t.path().join(format!("{method}{k}"));
        ok(&mpirun(
            k,
            &[
                method,
                "train",
                s(&star),
                "--reference",
                s(&m),
                "--out",
                s(&out),
                "--steps",
                "12",
                "--batch-size",
                "32",
                "--seed",
                "1",
                "--log-every",
                "1",
                "-q",
            ],
        ));
        out
    };
    let (a, b) = (train(1), train(2));
    let (ma, mb) = (metrics(&a.join("metrics.csv")), metrics(&b.join("metrics.csv")));
    assert_eq!(ma.len(), 12);
    assert_eq!(ma.len(), mb.len());
    for (ra, rb) in ma.iter().zip(&mb) {
        assert_eq!(ra[0], rb[0]);
        assert_eq!(ra[2], rb[2], "images seen");
        for c in loss_cols.clone() {
            let tol = 1e-4 * ra[c].abs().max(1e-3);
            assert!((ra[c] - rb[c]).abs() <= tol, "step {} column {c}: {} vs {}", ra[0], ra[c], rb[c]);
        }
    }
    let (wa, wb) = (weights(&a.join("weights.safetensors")), weights(&b.join("weights.safetensors")));
    assert_eq!(wa.len(), wb.len());
    for (k, va) in &wa {
        let vb = &wb[k];
        let scale = va.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-2);
        let diff = va.iter().zip(vb).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-3 * scale, "{method} parameter {k}: max |Δ| {diff} (scale {scale})");
    }
}

#[test]
fn star_training_on_two_ranks_matches_one() {
    // loss, recon, kl, continuity
    training_matches("star", 4..8);
}

#[test]
fn sphere_training_on_two_ranks_matches_one() {
    // loss, recon, KL(z)
    training_matches("sphere", 4..7);
}

#[test]
fn ranker_scores_and_features_on_two_ranks_are_identical() {
    let t = tempfile::tempdir().unwrap();
    let sim = t.path().join("sim");
    simulate(&sim, 77, "0.5", &[]);
    let star = sim.join("particles.star");
    let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ief/tests/fixtures/tiny_vit/weights.safetensors");
    for k in [1, 2] {
        let out = t.path().join(format!("rank{k}"));
        let common = ["--weights", s(&w), "--heads", "4", "--batch-size", "8"];
        let mut a = vec!["ranker", "score", s(&star)];
        a.extend_from_slice(&common);
        a.extend_from_slice(&["--out", s(&out), "-q"]);
        ok(&mpirun(k, &a));
        let f = t.path().join(format!("features{k}.npy"));
        let mut a = vec!["ief", "features", s(&star)];
        a.extend_from_slice(&common);
        a.extend_from_slice(&["-o", s(&f), "-q"]);
        ok(&mpirun(k, &a));
    }
    let read = |p: &str| std::fs::read(t.path().join(p)).unwrap();
    assert_eq!(read("rank1/scores.csv"), read("rank2/scores.csv"), "scores differ");
    assert_eq!(read("rank1/particles_scored.star"), read("rank2/particles_scored.star"));
    assert_eq!(read("features1.npy"), read("features2.npy"), "features differ");
}

#[test]
fn a_failing_rank_stops_every_rank_with_its_error() {
    let t = tempfile::tempdir().unwrap();
    let sim = t.path().join("sim");
    simulate(&sim, 200, "1", &[]);
    let out = t.path().join("r");
    let started = std::time::Instant::now();
    let o = mpirun_env(
        2,
        &["reconstruct", s(&sim.join("particles.star")), "--out", s(&out), "-q"],
        &[("CRYOFORGE_MPI_FAIL_RANK", "1")],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "mpirun succeeded: {e}");
    assert!(e.contains("rank 1 of 2: error: failure injected"), "stderr: {e}");
    assert!(started.elapsed().as_secs() < 60, "the other rank was not stopped");
    assert!(!out.join("map.mrc").exists(), "a failed distributed run wrote a map");
    // A file every rank fails on: each names it, none panics.
    let o = mpirun(2, &["reconstruct", s(&t.path().join("missing.star")), "--out", s(&out), "-q"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("missing.star") && !e.contains("panicked"), "stderr: {e}");
}

#[test]
fn commands_that_do_not_distribute_refuse_several_ranks() {
    let t = tempfile::tempdir().unwrap();
    let o =
        mpirun(2, &["simulate", "--model", s(&demo_model()), "--n", "10", "--out", s(&t.path().join("s"))]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("does not run across MPI ranks"), "stderr: {e}");
    assert!(!t.path().join("s").exists());
}
