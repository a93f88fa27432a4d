//! `cryoforge ief features` and `ranker score` on simulated particles with the committed
//! tiny ViT fixture (crates/ief/tests/fixtures/tiny_vit, 28 px input, 4 heads).

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ief/tests/fixtures/tiny_vit").join(name)
}

fn demo_pdb() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb")
}

#[test]
fn ranker_score_and_features() {
    let d = tempfile::tempdir().unwrap();
    let sim = d.path().join("sim");
    let (pdb, simd) = (demo_pdb(), sim.to_str().unwrap().to_string());
    ok(&run(&[
        "-q",
        "simulate",
        "--models",
        pdb.to_str().unwrap(),
        "--n",
        "12",
        "--box",
        "40",
        "--apix",
        "3",
        "--snr",
        "0.5",
        "--seed",
        "3",
        "--out",
        &simd,
    ]));
    let star = sim.join("particles.star");
    let w = fixture("weights.safetensors");
    let out = d.path().join("ranked");
    ok(&run(&[
        "-q",
        "ranker",
        "score",
        star.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--heads",
        "4",
        "--out",
        out.to_str().unwrap(),
        "--top",
        "5,12",
    ]));
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let scores: Vec<f64> =
        csv.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(scores.len(), 12);
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    assert!(scores.iter().any(|&s| (s - scores[0]).abs() > 1e-6), "all particles got one score: {scores:?}");
    let count = |p: &Path| std::fs::read_to_string(p).unwrap().lines().filter(|l| l.contains('@')).count();
    assert_eq!(count(&out.join("top_5.star")), 5);
    assert_eq!(count(&out.join("top_12.star")), 12);
    assert_eq!(count(&out.join("particles_scored.star")), 12);
    // Sorted: the first row holds the best score; the top-5 subset holds the five best.
    let sorted = std::fs::read_to_string(out.join("particles_sorted.star")).unwrap();
    assert!(sorted.contains("_rlnCryoRankerScore"));
    let mut best = scores.clone();
    best.sort_by(|a, b| b.total_cmp(a));
    let top5 = std::fs::read_to_string(out.join("top_5.star")).unwrap();
    for s in &best[..5] {
        assert!(top5.contains(&format!("{s:.6}")), "top_5 lacks {s}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["particles"], 12);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Score distribution") && html.contains("Best and worst particles"));
    assert!(!html.contains("class=\"warn\""), "report has warnings");
    assert_eq!(html.matches("<img ").count(), 2);

    // Features: float16 [12, 32], unit rows.
    let f = d.path().join("f.npy");
    ok(&run(&[
        "-q",
        "ief",
        "features",
        star.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--heads",
        "4",
        "-o",
        f.to_str().unwrap(),
        "--batch-size",
        "5",
    ]));
    let b = std::fs::read(&f).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(header.contains("'<f2'") && header.contains("(12, 32)"), "{header}");
    let data = &b[10 + hl..];
    assert_eq!(data.len(), 12 * 32 * 2);
    for row in data.chunks_exact(64) {
        let n2: f32 =
            row.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32().powi(2)).sum();
        assert!((n2 - 1.0).abs() < 2e-3, "row norm² {n2}");
    }

    // k-NN against the simulation's model column (one model: every query right) and
    // a length mismatch.
    let truth = sim.join("truth.csv");
    let o = run(&[
        "ief",
        "knn",
        f.to_str().unwrap(),
        "--labels",
        truth.to_str().unwrap(),
        "--column",
        "model",
        "--json",
    ]);
    ok(&o);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["accuracy"], 1.0);
    fails_with(
        &run(&["ief", "knn", f.to_str().unwrap(), "--labels", truth.to_str().unwrap(), "--column", "nope"]),
        &["truth.csv", "no column \"nope\""],
    );
    let short = d.path().join("short.csv");
    std::fs::write(&short, "model\n0\n0\n").unwrap();
    fails_with(
        &run(&["ief", "knn", f.to_str().unwrap(), "--labels", short.to_str().unwrap(), "--column", "model"]),
        &["2 labels", "12 feature rows"],
    );

    // Errors: an encoder without a head, a bad --top, weights of another architecture.
    let mut t = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    t.retain(|k, _| !k.starts_with("head."));
    let enc = d.path().join("enc.safetensors");
    candle_core::safetensors::save(&t, &enc).unwrap();
    fails_with(
        &run(&[
            "ranker",
            "score",
            star.to_str().unwrap(),
            "--weights",
            enc.to_str().unwrap(),
            "--heads",
            "4",
            "--out",
            d.path().join("x").to_str().unwrap(),
        ]),
        &["enc.safetensors", "no ranker head"],
    );
    fails_with(
        &run(&[
            "ranker",
            "score",
            star.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--top",
            "13",
            "--out",
            d.path().join("y").to_str().unwrap(),
        ]),
        &["--top 13"],
    );
    fails_with(
        &run(&[
            "ief",
            "features",
            star.to_str().unwrap(),
            "--weights",
            pdb.to_str().unwrap(),
            "-o",
            d.path().join("z.npy").to_str().unwrap(),
        ]),
        &["adk_closed.pdb", "safetensors"],
    );
    assert!(!d.path().join("z.npy").exists());
}

/// Pre-training → ranker fine-tuning from the pre-trained encoder → scoring with the
/// trained ranker → clustering features, end to end through the CLI (tiny runs).
#[test]
fn pretrain_ranker_train_score_and_cluster() {
    let d = tempfile::tempdir().unwrap();
    let sim = d.path().join("sim");
    let pdb = demo_pdb();
    ok(&run(&[
        "-q",
        "simulate",
        "--model",
        pdb.to_str().unwrap(),
        "--n",
        "48",
        "--box",
        "32",
        "--apix",
        "4",
        "--snr",
        "0.5",
        "--junk",
        "0.5",
        "--seed",
        "5",
        "--out",
        sim.to_str().unwrap(),
    ]));
    let star = sim.join("particles.star");
    let truth = sim.join("truth.csv");
    let pt = d.path().join("pt");
    ok(&run(&[
        "-q",
        "ief",
        "pretrain",
        star.to_str().unwrap(),
        "--out",
        pt.to_str().unwrap(),
        "--img-size",
        "32",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "2",
    ]));
    for f in ["config.json", "metrics.csv", "train.json", "weights.safetensors"] {
        assert!(pt.join(f).is_file(), "{f} missing");
    }
    assert_eq!(std::fs::read_to_string(pt.join("metrics.csv")).unwrap().lines().count(), 4);
    // Resume extends the run.
    ok(&run(&[
        "-q",
        "ief",
        "pretrain",
        star.to_str().unwrap(),
        "--out",
        pt.to_str().unwrap(),
        "--resume",
        "--steps",
        "4",
    ]));
    assert_eq!(std::fs::read_to_string(pt.join("metrics.csv")).unwrap().lines().count(), 5);
    let enc = pt.join("weights.safetensors");
    let rk = d.path().join("rk");
    ok(&run(&[
        "-q",
        "ranker",
        "train",
        star.to_str().unwrap(),
        "--labels",
        truth.to_str().unwrap(),
        "--column",
        "junk",
        "--good-values",
        "none",
        "--init",
        enc.to_str().unwrap(),
        "--out",
        rk.to_str().unwrap(),
        "--steps",
        "4",
        "--batch-size",
        "8",
    ]));
    let tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rk.join("train.json")).unwrap()).unwrap();
    assert_eq!(tj["steps"], 4);
    let scored = d.path().join("scored");
    ok(&run(&[
        "-q",
        "ranker",
        "score",
        star.to_str().unwrap(),
        "--weights",
        rk.join("weights.safetensors").to_str().unwrap(),
        "--out",
        scored.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read_to_string(scored.join("scores.csv")).unwrap().lines().count(), 49);
    // A student distilled from that ranker.
    let ds = d.path().join("ds");
    ok(&run(&[
        "-q",
        "ranker",
        "distill",
        star.to_str().unwrap(),
        "--teacher",
        rk.join("weights.safetensors").to_str().unwrap(),
        "--out",
        ds.to_str().unwrap(),
        "--steps",
        "3",
        "--batch-size",
        "8",
    ]));
    let dj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ds.join("distill.json")).unwrap()).unwrap();
    assert!(dj["spearman_with_teacher"].as_f64().unwrap().abs() <= 1.0);
    assert_eq!(std::fs::read_to_string(ds.join("teacher_scores.csv")).unwrap().lines().count(), 49);
    fails_with(
        &run(&[
            "ranker",
            "distill",
            star.to_str().unwrap(),
            "--teacher",
            enc.to_str().unwrap(),
            "--out",
            d.path().join("w").to_str().unwrap(),
        ]),
        &["no ranker head"],
    );
    let cl = d.path().join("cl");
    ok(&run(&[
        "-q",
        "ief",
        "cluster",
        star.to_str().unwrap(),
        "--weights",
        enc.to_str().unwrap(),
        "--k",
        "3",
        "--labels",
        truth.to_str().unwrap(),
        "--column",
        "junk",
        "--umap-max",
        "40",
        "--out",
        cl.to_str().unwrap(),
    ]));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cl.join("summary.json")).unwrap()).unwrap();
    let sizes: Vec<u64> = s["sizes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(sizes.iter().sum::<u64>(), 48);
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    assert!(s["purity"].as_f64().unwrap() >= 0.5);
    assert!(cl.join("cluster_01.star").is_file() && cl.join("umap.csv").is_file());
    let html = std::fs::read_to_string(cl.join("report.html")).unwrap();
    assert!(html.contains("UMAP by cluster"), "report lacks the UMAP");
    assert_eq!(std::fs::read_to_string(cl.join("umap.csv")).unwrap().lines().count(), 41);
    // Features from a file give the same clusters.
    let f = d.path().join("f.npy");
    ok(&run(&[
        "-q",
        "ief",
        "features",
        star.to_str().unwrap(),
        "--weights",
        enc.to_str().unwrap(),
        "-o",
        f.to_str().unwrap(),
    ]));
    let cl2 = d.path().join("cl2");
    ok(&run(&[
        "-q",
        "ief",
        "cluster",
        star.to_str().unwrap(),
        "--features",
        f.to_str().unwrap(),
        "--k",
        "3",
        "--umap-max",
        "0",
        "--out",
        cl2.to_str().unwrap(),
    ]));
    // (float16 features: the same partition up to rounding; sizes agree)
    let s2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cl2.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s2["particles"], 48);
    // Bad input: labels of another length, a categorical column without --good-values.
    let short = d.path().join("short.csv");
    std::fs::write(&short, "junk\nnone\nnoise\n").unwrap();
    fails_with(
        &run(&[
            "ranker",
            "train",
            star.to_str().unwrap(),
            "--labels",
            short.to_str().unwrap(),
            "--column",
            "junk",
            "--good-values",
            "none",
            "--out",
            d.path().join("x").to_str().unwrap(),
        ]),
        &["short.csv", "2 labels", "48 particles"],
    );
    fails_with(
        &run(&[
            "ranker",
            "train",
            star.to_str().unwrap(),
            "--labels",
            truth.to_str().unwrap(),
            "--column",
            "junk",
            "--out",
            d.path().join("y").to_str().unwrap(),
        ]),
        &["truth.csv", "column junk", "particle 0", "--good-values"],
    );
    fails_with(
        &run(&["ief", "cluster", star.to_str().unwrap(), "--out", d.path().join("z").to_str().unwrap()]),
        &["--features", "--weights"],
    );
}
