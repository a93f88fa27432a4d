//! End-to-end test of `cryoforge wizard` on a small simulated set with junk and preferred
//! orientation (consensus scoring, no weights), with the quick hidden settings: every step
//! recorded, final map and report written, `--resume` reuses every step, bad options named.

use std::path::Path;
mod common;
use common::*;

fn model() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    std::fs::read_to_string(p).unwrap()
}

/// Simulate `n` AdK particles (48 px, 2.5 Å/px, SNR 0.1, 30 % junk) with preferred
/// orientation (`po_fraction` within `po_cone` degrees of z) into DIR/sim.
fn simulate(d: &Path, n: usize, po_fraction: &str, po_cone: &str, seed: &str) -> std::path::PathBuf {
    let pdb = d.join("adk.pdb");
    std::fs::write(&pdb, model()).unwrap();
    let sim = d.join("sim");
    let n = n.to_string();
    ok(&run(&[
        "simulate",
        "--model",
        pdb.to_str().unwrap(),
        "--n",
        &n,
        "--box",
        "48",
        "--apix",
        "2.5",
        "--snr",
        "0.1",
        "--junk",
        "0.3",
        "--poses",
        "preferred",
        "--po-fraction",
        po_fraction,
        "--po-cone",
        po_cone,
        "--seed",
        seed,
        "--out",
        sim.to_str().unwrap(),
        "-q",
    ]));
    sim
}

#[test]
fn wizard_runs_every_step_records_them_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let sim = simulate(d, 400, "0.6", "30", "5");
    let star = sim.join("particles.star");
    let out = d.join("wiz");
    let quick = [
        "--abinit-iterations",
        "8",
        "--refine-max-iter",
        "3",
        "--healpix-order",
        "1",
        "--search-first",
        "3",
        "--search-second",
        "2",
    ];
    let mut args = vec!["wizard", star.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"];
    args.extend(quick);
    let r = run(&args);
    ok(&r);
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(summary["status"], "done");
    assert_eq!(summary["scoring"], "consensus");
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("wizard.json")).unwrap()).unwrap();
    let steps = st["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    for want in ["consensus abinit", "consensus refine", "score", "initial_200 abinit", "initial_200 refine"]
    {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("search_")), "{names:?}");
    for s in steps {
        assert_eq!(s["status"], "done");
        assert!(s["command"].as_str().unwrap().starts_with("cryoforge ") || s["name"] == "score", "{s}");
        assert!(out.join(s["dir"].as_str().unwrap()).is_dir(), "{s}");
    }
    let f = &st["final"];
    assert!(f["resolution_a"].as_f64().unwrap().is_finite());
    assert!(out.join("final_map.mrc").is_file() && out.join("final_particles.star").is_file());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for want in [
        "Particle-number search",
        "resolution vs particles",
        "resolution vs score",
        "orientation gate",
        "Steps",
    ] {
        assert!(html.contains(want), "report lacks {want}");
    }
    // The equivalent command of a refine step runs as printed.
    let refine_cmd =
        steps.iter().find(|s| s["name"] == "initial_200 refine").unwrap()["command"].as_str().unwrap();
    assert!(refine_cmd.contains("--ini-high-a 15"), "{refine_cmd}");

    // Resume: every step reused, same final.
    let mut args = vec!["wizard", star.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume"];
    args.extend(quick);
    ok(&run(&args));
    let st2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("wizard.json")).unwrap()).unwrap();
    assert!(st2["steps"].as_array().unwrap().iter().all(|s| s["resumed"] == true));
    assert_eq!(st2["final"]["particles"], st["final"]["particles"]);

    // Starting afresh in the same folder, other settings on resume, bad options.
    let mut args = vec!["wizard", star.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(quick);
    fails_with(&run(&args), &["wizard.json", "--resume"]);
    fails_with(
        &run(&[
            "wizard",
            star.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--resume",
            "--cfar-min",
            "0.5",
        ]),
        &["other settings"],
    );
    // (the step settings count too: the same wizard options with another refinement depth)
    let mut args = vec!["wizard", star.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume"];
    args.extend(quick);
    let at = args.len() - 7;
    assert_eq!(args[at - 1], "--refine-max-iter");
    args[at] = "4";
    fails_with(&run(&args), &["other settings"]);
    let bad = d.join("bad");
    fails_with(
        &run(&[
            "wizard",
            star.to_str().unwrap(),
            "--out",
            bad.to_str().unwrap(),
            "--weights",
            "/nonexistent.safetensors",
        ]),
        &["--weights", "/nonexistent.safetensors"],
    );
    fails_with(
        &run(&["wizard", star.to_str().unwrap(), "--out", bad.to_str().unwrap(), "--score-low", "0.9"]),
        &["--score-high"],
    );
    assert!(!bad.join("wizard.json").exists());
}

#[test]
fn wizard_with_ranker_weights_scores_and_clusters_features() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Strong preferred orientation, so that the gate fails and the k-means branch runs.
    let sim = simulate(d, 400, "0.95", "10", "6");
    let star = sim.join("particles.star");
    let rk = d.join("rk");
    ok(&run(&[
        "-q",
        "ranker",
        "train",
        star.to_str().unwrap(),
        "--labels",
        sim.join("truth.csv").to_str().unwrap(),
        "--column",
        "junk",
        "--good-values",
        "none",
        "--out",
        rk.to_str().unwrap(),
        "--steps",
        "6",
        "--batch-size",
        "16",
    ]));
    let w = rk.join("weights.safetensors");
    let out = d.join("wiz");
    let r = run(&[
        "wizard",
        star.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--abinit-iterations",
        "8",
        "--refine-max-iter",
        "3",
        "--healpix-order",
        "1",
        "--search-first",
        "2",
        "--search-second",
        "0",
        "--cluster-k",
        "2",
        "--cluster-min-particles",
        "20",
        "--cfar-min",
        "0.99",
        "--json",
    ]);
    ok(&r);
    let st: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(st["scoring"], "ranker");
    assert_eq!(st["gate"]["passed"], false, "{}", st["gate"]);
    assert_eq!(st["branch"]["method"], "kmeans");
    let cands = st["branch"]["candidates"].as_array().unwrap();
    assert!(!cands.is_empty() && cands.len() <= 2, "{cands:?}");
    assert!(out.join("score/scores.csv").is_file());
    assert!(out.join("branch_200/features/features.npy").is_file());
    let clusters = std::fs::read_to_string(out.join("branch_200/clusters.csv")).unwrap();
    assert_eq!(clusters.lines().count(), 401, "the top 8·200 = all 400 particles clustered");
    assert!(out.join("final_map.mrc").is_file());
}
