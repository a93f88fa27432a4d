//! End-to-end tests of `cryoforge mask` and `cryoforge postprocess` on small synthetic
//! half maps: outputs and summary, a given B-factor, and clear errors that leave nothing
//! behind.

use cryoforge_io::mrc::{write_volume, MrcFile};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const N: usize = 32;
const APIX: f32 = 2.0;

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

fn lcg(s: &mut u64) -> f32 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*s >> 40) as f32 / (1u64 << 24) as f32
}

/// A "particle" of 120 Gaussian atoms (σ 1.2 px) within 8 px of the centre, and two
/// half maps: it plus independent uniform noise.
fn write_halves(dir: &Path) -> (PathBuf, PathBuf) {
    let mut s = 7u64;
    let atoms: Vec<[f32; 3]> = (0..120)
        .map(|_| loop {
            let p = [16.0 * lcg(&mut s) - 8.0, 16.0 * lcg(&mut s) - 8.0, 16.0 * lcg(&mut s) - 8.0];
            if p.iter().map(|v| v * v).sum::<f32>() < 64.0 {
                break p;
            }
        })
        .collect();
    let h = (N / 2) as f32;
    let signal: Vec<f32> = (0..N * N * N)
        .map(|i| {
            let (z, y, x) = ((i / (N * N)) as f32 - h, ((i / N) % N) as f32 - h, (i % N) as f32 - h);
            atoms
                .iter()
                .map(|a| (-((x - a[0]).powi(2) + (y - a[1]).powi(2) + (z - a[2]).powi(2)) / 2.88).exp())
                .sum()
        })
        .collect();
    let mut paths = Vec::new();
    for k in 0..2 {
        let v: Vec<f32> = signal.iter().map(|v| v + 0.6 * (lcg(&mut s) - 0.5)).collect();
        let p = dir.join(format!("half{}.mrc", k + 1));
        write_volume(&p, &v, [N, N, N], APIX, [0.0; 3]).unwrap();
        paths.push(p);
    }
    (paths[0].clone(), paths[1].clone())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn mask_then_postprocess_writes_maps_curves_and_summary() {
    let t = tempfile::tempdir().unwrap();
    let (h1, h2) = write_halves(t.path());
    let mask = t.path().join("mask.mrc");
    let o = run(&[
        "mask",
        s(&h1),
        "--auto",
        "--lowpass-a",
        "8",
        "--extend-px",
        "2",
        "--soft-edge-px",
        "4",
        "-o",
        s(&mask),
        "--json",
        "-q",
    ]);
    ok(&o);
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).expect("mask --json prints JSON");
    let frac = m["box_fraction"].as_f64().unwrap();
    assert!(frac > 0.05 && frac < 0.5, "mask covers {frac} of the box");
    assert_eq!(m["threshold_mode"], "auto");
    let mf = MrcFile::open(&mask).unwrap();
    assert_eq!((mf.nx(), mf.voxel_size()[0]), (N, APIX));
    assert!(mf.read_volume().unwrap().iter().all(|v| (0.0..=1.0).contains(v)));

    let out = t.path().join("post");
    let o = run(&["postprocess", s(&h1), s(&h2), "--mask", s(&mask), "--out", s(&out), "--json", "-q"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints the summary");
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(v, on_disk);
    assert_eq!(v["kind"], "postprocess");
    assert_eq!(v["mask"], s(&mask));
    let res = v["resolution_A"].as_f64().unwrap();
    assert!((4.0..10.0).contains(&res), "resolution {res} Å");
    assert_eq!(v["bfactor_mode"], "auto");
    let fit = &v["guinier_fit"];
    assert!(fit["points"].as_u64().unwrap() >= 3, "{fit}");
    assert_eq!(fit["bfactor_A2"], v["bfactor_A2"]);
    assert!(fit["intercept"].is_f64() && fit["slope_A2"].is_f64());
    assert!(v["randomize_shell"].as_u64().is_some(), "{v}");
    for f in [
        "postprocess.mrc",
        "postprocess_masked.mrc",
        "fsc.csv",
        "fsc.png",
        "guinier.csv",
        "guinier.png",
        "summary.json",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("fsc.csv")).unwrap();
    assert!(
        csv.starts_with(
            "shell,frequency_per_A,resolution_A,fsc_unmasked,fsc_masked,fsc_random_masked,fsc_corrected\n"
        ),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + N / 2 + 1, "shells 0..=n/2");
    let map = MrcFile::open(out.join("postprocess_masked.mrc")).unwrap();
    assert_eq!((map.nx(), map.ny(), map.nz(), map.voxel_size()[0]), (N, N, N, APIX));
    assert_eq!(map.read_volume().unwrap()[0], 0.0, "the box corner is outside the mask");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("post-processing") && html.contains("Guinier plot"));
    // `cryoforge report` recognises the folder.
    let o = run(&["report", s(&out), "--json", "-q"]);
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["kind"], "post-processing");
    assert_eq!(r["numbers"]["resolution_A"], v["resolution_A"]);
}

#[test]
fn given_bfactor_is_applied_as_given() {
    let t = tempfile::tempdir().unwrap();
    let (h1, h2) = write_halves(t.path());
    let mask = t.path().join("mask.mrc");
    ok(&run(&[
        "mask",
        s(&h1),
        "--threshold",
        "0.3",
        "--extend-px",
        "3",
        "--soft-edge-px",
        "3",
        "-o",
        s(&mask),
        "-q",
    ]));
    let out = t.path().join("post");
    let o = run(&[
        "postprocess",
        s(&h1),
        s(&h2),
        "--mask",
        s(&mask),
        "--bfactor",
        "-80",
        "--out",
        s(&out),
        "--json",
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["bfactor_A2"].as_f64(), v["bfactor_mode"].as_str()), (Some(-80.0), Some("given")));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("resolution") && e.contains(s(&out)), "final line: {e}");
    fails_with(
        &run(&["postprocess", s(&h1), s(&h2), "--mask", s(&mask), "--bfactor", "sharp", "--out", s(&out)]),
        &["--bfactor \"sharp\""],
    );
}

#[test]
fn wrong_inputs_fail_clearly_and_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (h1, h2) = write_halves(t.path());
    let small = t.path().join("small_mask.mrc");
    write_volume(&small, &vec![1.0; 24 * 24 * 24], [24, 24, 24], APIX, [0.0; 3]).unwrap();
    let out = t.path().join("post");
    let o = run(&["postprocess", s(&h1), s(&h2), "--mask", s(&small), "--out", s(&out)]);
    fails_with(&o, &[s(&small), "24³", "32³"]);
    assert!(!out.exists(), "a failed run created {}", out.display());
    let bad = t.path().join("bad_mask.mrc");
    write_volume(&bad, &vec![3.0; N * N * N], [N, N, N], APIX, [0.0; 3]).unwrap();
    fails_with(
        &run(&["postprocess", s(&h1), s(&h2), "--mask", s(&bad), "--out", s(&out)]),
        &[s(&bad), "[0, 1]"],
    );
    assert!(!out.exists());
    let mask_out = t.path().join("m.mrc");
    fails_with(
        &run(&["mask", s(&h1), "--threshold", "1e6", "-o", s(&mask_out)]),
        &[s(&h1), "threshold 1000000"],
    );
    assert!(!mask_out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 4, "{leftovers:?}");
}

#[test]
fn help_has_examples() {
    for c in ["mask", "postprocess"] {
        let o = run(&[c, "--help"]);
        assert!(o.status.success());
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(
            s.contains("Examples:") && s.contains(&format!("cryoforge {c} ")),
            "{c} --help lacks examples"
        );
    }
}
