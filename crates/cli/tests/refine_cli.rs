//! End-to-end tests of `cryoforge refine` on a small simulated set: a run from a low-passed
//! reference writes its run folder (STAR, pickles, maps, report) and reports the pose
//! errors against the truth; bad input stops with a message naming the file and what to do,
//! and leaves no output.

use std::path::Path;
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

/// 500 AdK particles of 32 px at 3 Å/px, SNR 0.5, shifts ±3 Å, and the true map.
fn simulate(dir: &Path) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let sim = dir.join("sim");
    let args = [
        "simulate",
        "--model",
        model.to_str().unwrap(),
        "--n",
        "500",
        "--box",
        "32",
        "--apix",
        "3",
        "--snr",
        "0.5",
        "--shift-a",
        "3",
        "--seed",
        "4",
        "--out",
        sim.to_str().unwrap(),
        "-q",
    ];
    ok(&run(&args));
    let truth = dir.join("truth.mrc");
    let pdb = sim.join("model.pdb");
    ok(&run(&[
        "pdb2map",
        pdb.to_str().unwrap(),
        "--no-center",
        "--box",
        "32",
        "--apix",
        "3",
        "-o",
        truth.to_str().unwrap(),
        "-q",
    ]));
}

#[test]
fn refine_writes_its_run_folder_and_reports_truth_errors() {
    let t = tempfile::tempdir().unwrap();
    simulate(t.path());
    let star = t.path().join("sim/particles.star");
    let out = t.path().join("r");
    let o = run(&[
        "refine",
        star.to_str().unwrap(),
        "--reference",
        t.path().join("truth.mrc").to_str().unwrap(),
        "--truth",
        star.to_str().unwrap(),
        "--healpix-order",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--json",
        "-q",
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints summary.json");
    assert_eq!(v["particles"], 500);
    let ang = v["truth_median_angle_deg"].as_f64().unwrap();
    assert!(ang < 6.0, "median angular error {ang}°");
    for f in [
        "particles.star",
        "poses.pkl",
        "map.mrc",
        "half_a.mrc",
        "half_b.mrc",
        "mask.mrc",
        "fsc.csv",
        "fsc.png",
        "angdist.png",
        "scores.csv",
        "iterations.jsonl",
        "summary.json",
        "run.json",
        "report.html",
        "iter_001/fsc.png",
        "iter_001/particles.star",
        "orient/orient.json",
        "orient/directions.csv",
        "orient/conical_fsc.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("Iterations") && html.contains("Viewing directions") && html.contains("cFAR"),
        "report lacks the refine sections"
    );
    // The STAR keeps the input columns and adds RELION's refinement labels.
    let text = std::fs::read_to_string(out.join("particles.star")).unwrap();
    for label in [
        "_rlnImageName",
        "_rlnDefocusU",
        "_rlnAngleRot",
        "_rlnOriginXAngst",
        "_rlnRandomSubset",
        "_rlnLogLikeliContribution",
        "_rlnMaxValueProbDistribution",
        "_rlnNrOfSignificantSamples",
    ] {
        assert!(text.contains(label), "{label} missing from particles.star");
    }
    // `reconstruct` takes it as it is, with its half sets.
    let rec = t.path().join("rec");
    ok(&run(&[
        "reconstruct",
        out.join("particles.star").to_str().unwrap(),
        "--half-split",
        "star",
        "--out",
        rec.to_str().unwrap(),
        "-q",
    ]));
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    simulate(t.path());
    let star = t.path().join("sim/particles.star");
    let s = star.to_str().unwrap();
    let truth = t.path().join("truth.mrc");
    let out = t.path().join("r");
    let o = out.to_str().unwrap();
    // A reference of another box: say how to resample.
    let big = t.path().join("big.mrc");
    ok(&run(&[
        "pdb2map",
        t.path().join("sim/model.pdb").to_str().unwrap(),
        "--no-center",
        "--box",
        "40",
        "--apix",
        "3",
        "-o",
        big.to_str().unwrap(),
        "-q",
    ]));
    fails_with(
        &run(&["refine", s, "--reference", big.to_str().unwrap(), "--out", o]),
        &["big.mrc", "40×40×40", "32 px", "resample"],
    );
    // A reference of another pixel size.
    let fine = t.path().join("fine.mrc");
    ok(&run(&[
        "pdb2map",
        t.path().join("sim/model.pdb").to_str().unwrap(),
        "--no-center",
        "--box",
        "32",
        "--apix",
        "2",
        "-o",
        fine.to_str().unwrap(),
        "-q",
    ]));
    fails_with(
        &run(&["refine", s, "--reference", fine.to_str().unwrap(), "--out", o]),
        &["fine.mrc", "voxel size", "2.0000", "3.0000"],
    );
    // A solvent mask of another size.
    fails_with(
        &run(&[
            "refine",
            s,
            "--reference",
            truth.to_str().unwrap(),
            "--solvent-mask",
            big.to_str().unwrap(),
            "--out",
            o,
        ]),
        &["big.mrc", "solvent mask"],
    );
    // Unknown symmetry.
    fails_with(
        &run(&["refine", s, "--reference", truth.to_str().unwrap(), "--sym", "Q3", "--out", o]),
        &["--sym", "Q3"],
    );
    // Particles without CTF: a bare stack.
    let mrcs = t.path().join("sim/particles.mrcs");
    fails_with(
        &run(&["refine", mrcs.to_str().unwrap(), "--reference", truth.to_str().unwrap(), "--out", o]),
        &["CTF"],
    );
    assert!(!out.exists(), "a failed refinement left {}", out.display());
}
