//! End-to-end tests of `cryoforge reconstruct` on a small simulated data set: outputs,
//! summary, the window option, and clear errors for bad particles.

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

fn simulate(dir: &Path) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    ok(&run(&[
        "simulate",
        "--model",
        model.to_str().unwrap(),
        "--n",
        "600",
        "--box",
        "32",
        "--apix",
        "3",
        "--snr",
        "1",
        "--seed",
        "3",
        "--out",
        dir.to_str().unwrap(),
        "-q",
    ]));
}

#[test]
fn reconstruct_writes_maps_fsc_and_summary() {
    let t = tempfile::tempdir().unwrap();
    let sim = t.path().join("sim");
    simulate(&sim);
    let star = sim.join("particles.star");
    let out = t.path().join("rec");
    let o = run(&["reconstruct", star.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json", "-q"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints the summary");
    assert_eq!(v["particles"], 600);
    assert_eq!(v["window"], serde_json::json!([0.85, 0.99]));
    let res = v["resolution_0.143_masked_A"].as_f64().unwrap();
    assert!((6.0..30.0).contains(&res), "resolution {res} Å");
    for f in ["map.mrc", "half_a.mrc", "half_b.mrc", "fsc.csv", "fsc.png", "summary.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("fsc.csv")).unwrap();
    assert!(csv.starts_with("shell,frequency_per_A,resolution_A,fsc_unmasked,fsc_masked"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 17, "shells 0..=16");
    // The default window zeroes the box corners; --window none leaves noise there.
    let corner = |dir: &Path| {
        let m = cryoforge_io::mrc::MrcFile::open(dir.join("map.mrc")).unwrap();
        let v = m.read_volume().unwrap();
        assert_eq!((m.nx(), m.voxel_size()[0]), (32, 3.0));
        v[0].abs()
    };
    assert_eq!(corner(&out), 0.0);
    let out2 = t.path().join("rec_nowin");
    ok(&run(&[
        "reconstruct",
        star.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "--window",
        "none",
        "-q",
    ]));
    assert!(corner(&out2) > 0.0);
    fails_with(
        &run(&[
            "reconstruct",
            star.to_str().unwrap(),
            "--out",
            out2.to_str().unwrap(),
            "--window",
            "0.9,0.5",
        ]),
        &["--window", "inner"],
    );
}

#[test]
fn reconstruct_stops_on_a_nan_image_naming_it() {
    let t = tempfile::tempdir().unwrap();
    let sim = t.path().join("sim");
    simulate(&sim);
    // Particle 7 (0-based), first pixel := NaN.
    let stack = sim.join("particles.mrcs");
    let mut b = std::fs::read(&stack).unwrap();
    let off = 1024 + 7 * 32 * 32 * 4;
    b[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&stack, b).unwrap();
    let out = t.path().join("rec");
    let o =
        run(&["reconstruct", sim.join("particles.star").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    fails_with(&o, &["particles.mrcs"]);
    assert!(!out.join("map.mrc").exists(), "no map after a failed run");
}

#[test]
fn fsc_of_two_maps_reports_resolutions_and_rejects_mismatched_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let m = model.to_str().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let open = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_open.pdb");
    let o = open.to_str().unwrap();
    for (name, src, bx) in [("a.mrc", m, "32"), ("b.mrc", o, "32"), ("c.mrc", m, "24")] {
        ok(&run(&["pdb2map", src, "--box", bx, "--apix", "3", "-o", &p(name)]));
    }
    // A map against itself: FSC 1 in every shell, so the 0.5 crossing is Nyquist (2 × 3 Å).
    let o = run(&["fsc", &p("a.mrc"), &p("a.mrc"), "--json", "--out", &p("self.csv")]);
    ok(&o);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["resolution_0.5_A"].as_f64().unwrap(), 6.0, "{j}");
    let csv = std::fs::read_to_string(p("self.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 17, "{csv}");
    // Closed vs open AdK (LID and NMP domains moved): alike only at the lowest resolution.
    let o = run(&["fsc", &p("a.mrc"), &p("b.mrc"), "--json"]);
    ok(&o);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = j["resolution_0.5_A"].as_f64().unwrap();
    assert!(r > 20.0, "{j}");
    let f = j["fsc"].as_array().unwrap();
    assert!(f[1].as_f64().unwrap() > 0.9, "{j}");
    fails_with(&run(&["fsc", &p("a.mrc"), &p("c.mrc")]), &["c.mrc", "24³", "32³"]);
    fails_with(&run(&["fsc", &p("a.mrc"), &p("missing.mrc")]), &["missing.mrc"]);
}
