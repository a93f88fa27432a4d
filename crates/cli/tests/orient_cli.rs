//! End-to-end tests of `cryoforge orient` and `cryoforge rebalance` on small simulated sets
//! (uniform and 80 % top views): outputs, the preferred-orientation flags, rebalancing's
//! idempotence and column pass-through, and errors on bad input that leave nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cryoforge")).args(args).output().expect("cannot start cryoforge")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
}

fn fails_with(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, stderr: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}: {e}");
    }
}

/// 2,000 AdK particles of 32 px at 2.5 Å/px, SNR 0.3, reconstructed with their true poses.
fn dataset(dir: &Path, tag: &str, extra: &[&str]) -> PathBuf {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let sim = dir.join(format!("sim_{tag}"));
    let mut args = vec![
        "simulate",
        "--model",
        model.to_str().unwrap(),
        "--n",
        "2000",
        "--box",
        "32",
        "--apix",
        "2.5",
        "--snr",
        "0.3",
        "--seed",
        "9",
        "--out",
        sim.to_str().unwrap(),
        "-q",
    ];
    args.extend_from_slice(extra);
    ok(&run(&args));
    let rec = dir.join(format!("rec_{tag}"));
    ok(&run(&[
        "reconstruct",
        sim.join("particles.star").to_str().unwrap(),
        "--out",
        rec.to_str().unwrap(),
        "-q",
    ]));
    sim
}

fn orient_json(dir: &Path, tag: &str) -> serde_json::Value {
    let rec = dir.join(format!("rec_{tag}"));
    let out = dir.join(format!("orient_{tag}"));
    let star = dir.join(format!("sim_{tag}/particles.star"));
    let o = run(&[
        "orient",
        rec.join("half_a.mrc").to_str().unwrap(),
        rec.join("half_b.mrc").to_str().unwrap(),
        "--particles",
        star.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
        "-q",
    ]);
    ok(&o);
    for f in [
        "orient.json",
        "directions.csv",
        "conical_fsc.csv",
        "conical_fsc.png",
        "directional_resolution.png",
        "resolution_map.png",
        "viewing_directions.png",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("directions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3073, "one row per cone axis");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Orientation diagnostics") && html.contains("cFAR"));
    serde_json::from_slice(&o.stdout).expect("--json prints orient.json")
}

#[test]
fn orient_flags_preferred_orientation_and_rebalance_evens_it_out() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    dataset(d, "uni", &[]);
    let po = dataset(d, "po", &["--poses", "preferred", "--po-fraction", "0.8", "--po-cone", "30"]);
    let u = orient_json(d, "uni");
    let p = orient_json(d, "po");
    let g = |j: &serde_json::Value, k: &str| j[k].as_f64().unwrap();
    let scf = |j: &serde_json::Value| j["scf"]["scf_star"].as_f64().unwrap();
    eprintln!(
        "uniform: cFAR {:.3} sphericity {:.3} SCF* {:.3}; top views: cFAR {:.3} sphericity {:.3} SCF* {:.3}",
        g(&u, "cfar"),
        g(&u, "sphericity"),
        scf(&u),
        g(&p, "cfar"),
        g(&p, "sphericity"),
        scf(&p)
    );
    assert!(scf(&u) > 0.9, "uniform SCF* {}", scf(&u));
    assert!(scf(&p) < 0.81, "top-view SCF* {}", scf(&p));
    assert!(g(&u, "cfar") > g(&p, "cfar"), "cFAR uniform {} vs top views {}", g(&u, "cfar"), g(&p, "cfar"));
    assert!(g(&u, "sphericity") > g(&p, "sphericity"));
    assert_eq!(p["preferred_orientation"], serde_json::json!(true));

    // Rebalance the top-view set: fewer particles, better SCF*, every column kept.
    let star = po.join("particles.star");
    let reb = d.join("rebalanced.star");
    let exc = d.join("excluded.star");
    let summary = d.join("rebalance.json");
    ok(&run(&[
        "rebalance",
        star.to_str().unwrap(),
        "-o",
        reb.to_str().unwrap(),
        "--excluded",
        exc.to_str().unwrap(),
        "--bins",
        "100",
        "--summary",
        summary.to_str().unwrap(),
        "-q",
    ]));
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let (kept, excluded) = (s["kept"].as_u64().unwrap(), s["excluded"].as_u64().unwrap());
    assert_eq!(kept + excluded, 2000);
    assert!(excluded > 500, "{s}");
    let text = std::fs::read_to_string(&reb).unwrap();
    let header_in = std::fs::read_to_string(&star).unwrap();
    for col in ["_rlnImageName", "_rlnDefocusU", "_rlnAngleRot", "_rlnOriginXAngst"] {
        assert_eq!(header_in.contains(col), text.contains(col), "{col}");
    }
    // Idempotent.
    let again = d.join("again.json");
    ok(&run(&[
        "rebalance",
        reb.to_str().unwrap(),
        "-o",
        d.join("again.star").to_str().unwrap(),
        "--bins",
        "100",
        "--summary",
        again.to_str().unwrap(),
        "-q",
    ]));
    let s2: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(s2["excluded"].as_u64(), Some(0), "{s2}");
    // SCF* of the rebalanced poses is higher.
    let rec = d.join("rec_po");
    let o = run(&[
        "orient",
        rec.join("half_a.mrc").to_str().unwrap(),
        rec.join("half_b.mrc").to_str().unwrap(),
        "--particles",
        reb.to_str().unwrap(),
        "--out",
        d.join("orient_reb").to_str().unwrap(),
        "--json",
        "-q",
    ]);
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(scf(&r) > scf(&p) + 0.2, "rebalanced SCF* {} vs {}", scf(&r), scf(&p));

    // Bad input: clear errors, nothing written.
    let bad = d.join("bad_out");
    let h = |n: &str| rec.join(n).to_str().unwrap().to_string();
    let other = d.join("other.mrc");
    ok(&run(&[
        "pdb2map",
        po.join("model.pdb").to_str().unwrap(),
        "--box",
        "24",
        "--apix",
        "2.5",
        "-o",
        other.to_str().unwrap(),
        "-q",
    ]));
    fails_with(
        &run(&["orient", &h("half_a.mrc"), other.to_str().unwrap(), "--out", bad.to_str().unwrap()]),
        &["other.mrc", "24³", "32³"],
    );
    fails_with(
        &run(&[
            "orient",
            &h("half_a.mrc"),
            &h("half_b.mrc"),
            "--mask",
            other.to_str().unwrap(),
            "--out",
            bad.to_str().unwrap(),
        ]),
        &["other.mrc", "mask"],
    );
    fails_with(
        &run(&["orient", &h("half_a.mrc"), &h("half_b.mrc"), "--sym", "Q7", "--out", bad.to_str().unwrap()]),
        &["--sym"],
    );
    fails_with(
        &run(&[
            "rebalance",
            star.to_str().unwrap(),
            "-o",
            d.join("x.star").to_str().unwrap(),
            "--keep-best",
            "rlnNoSuchColumn",
        ]),
        &["particles.star", "rlnNoSuchColumn"],
    );
    // Particles without poses (a bare stack).
    let noposes = d.join("noposes.star");
    let mrcs = po.join("particles.mrcs");
    fails_with(
        &run(&["rebalance", mrcs.to_str().unwrap(), "-o", noposes.to_str().unwrap(), "--apix", "2.5"]),
        &["particles.mrcs", "no poses"],
    );
    assert!(!bad.exists() && !noposes.exists() && !d.join("x.star").exists());
}
