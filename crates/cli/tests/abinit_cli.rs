//! End-to-end tests of `cryoforge abinit` on small simulated sets: a map from a random start
//! that, docked with `align-maps --try-hand`, matches the truth at low resolution; two classes
//! on a 50/50 mixture of two structures; the run folder and report; errors on bad input.

use std::path::{Path, PathBuf};
mod common;
use common::*;

/// AdK (`copies` = 1) or an asymmetric AdK dimer (the second copy rotated 90° about x and
/// moved 38 Å along x), as PDB text.
fn model(copies: usize) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let a = atoms(&std::fs::read_to_string(p).unwrap());
    let c = [0, 1, 2].map(|k| a.iter().map(|x| x.1[k]).sum::<f64>() / a.len() as f64);
    let mut out = String::new();
    for copy in 0..copies {
        for (l, p) in &a {
            let v = [p[0] - c[0], p[1] - c[1], p[2] - c[2]];
            let q = if copy == 0 { v } else { [v[0] + 38.0, -v[2], v[1]] };
            out.push_str(&format!("{}{:8.3}{:8.3}{:8.3}{}\n", &l[..30], q[0], q[1], q[2], &l[54..]));
        }
    }
    out.push_str("END\n");
    out
}

fn simulate(dir: &Path, tag: &str, copies: usize, n: usize, seed: u64) -> PathBuf {
    let pdb = dir.join(format!("{tag}.pdb"));
    std::fs::write(&pdb, model(copies)).unwrap();
    let out = dir.join(tag);
    ok(&run(&[
        "simulate",
        "--model",
        pdb.to_str().unwrap(),
        "--n",
        &n.to_string(),
        "--box",
        "48",
        "--apix",
        "3",
        "--snr",
        "0.1",
        "--shift-a",
        "4",
        "--seed",
        &seed.to_string(),
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]));
    out
}

#[test]
fn abinit_from_a_random_start_matches_the_truth_after_docking() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let sim = simulate(d, "dimer", 2, 1500, 3);
    let out = d.join("ab");
    let star = sim.join("particles.star");
    ok(&run(&[
        "abinit",
        star.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--iterations",
        "30",
        "--batch",
        "200",
        "--seed",
        "1",
        "-q",
    ]));
    for f in [
        "class_001.mrc",
        "class_001_half_a.mrc",
        "particles.star",
        "classes.csv",
        "iterations.jsonl",
        "summary.json",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Classes") && html.contains("SGD iterations"));
    assert_eq!(std::fs::read_to_string(out.join("iterations.jsonl")).unwrap().lines().count(), 30);
    let text = std::fs::read_to_string(out.join("particles.star")).unwrap();
    assert!(text.contains("_rlnClassNumber") && text.contains("_rlnAngleRot"));
    // Dock onto the truth (either hand) and compare.
    let truth = d.join("truth.mrc");
    ok(&run(&[
        "pdb2map",
        sim.join("model.pdb").to_str().unwrap(),
        "--no-center",
        "--box",
        "48",
        "--apix",
        "3",
        "-o",
        truth.to_str().unwrap(),
        "-q",
    ]));
    let aligned = d.join("aligned.mrc");
    ok(&run(&[
        "align-maps",
        out.join("class_001.mrc").to_str().unwrap(),
        truth.to_str().unwrap(),
        "-o",
        aligned.to_str().unwrap(),
        "--try-hand",
        "-q",
    ]));
    let f = run(&["fsc", aligned.to_str().unwrap(), truth.to_str().unwrap(), "--json", "-q"]);
    ok(&f);
    let j: serde_json::Value = serde_json::from_slice(&f.stdout).unwrap();
    let r = j["resolution_0.5_A"].as_f64().unwrap();
    eprintln!("abinit dimer, docked: FSC to truth 0.5 at {r:.1} Å");
    assert!(r <= 20.0, "FSC 0.5 at {r} Å");

    // Bad input: clear errors, nothing written.
    let bad = d.join("bad");
    fails_with(
        &run(&["abinit", star.to_str().unwrap(), "--classes", "0", "--out", bad.to_str().unwrap()]),
        &["--classes"],
    );
    fails_with(
        &run(&["abinit", star.to_str().unwrap(), "--batch", "5000", "--out", bad.to_str().unwrap()]),
        &["particles.star", "--batch"],
    );
    fails_with(
        &run(&[
            "abinit",
            sim.join("particles.mrcs").to_str().unwrap(),
            "--apix",
            "3",
            "--out",
            bad.to_str().unwrap(),
        ]),
        &["particles.mrcs", "CTF"],
    );
    assert!(!bad.exists());
}

#[test]
fn abinit_two_classes_separate_a_mixture() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let a = simulate(d, "mono", 1, 800, 5);
    let b = simulate(d, "dimer", 2, 800, 6);
    let star = d.join("mix.star");
    merge(&star, &[&a, &b]);
    let out = d.join("ab2");
    ok(&run(&[
        "abinit",
        star.to_str().unwrap(),
        "--classes",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--iterations",
        "40",
        "--batch",
        "200",
        "-q",
    ]));
    let text = std::fs::read_to_string(out.join("particles.star")).unwrap();
    let labels: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("_rln"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let first = labels.iter().position(|l| *l == "_rlnImageName").unwrap();
    let col = labels[first..].iter().position(|l| *l == "_rlnClassNumber").unwrap();
    let (mut n, mut agree) = (0usize, [0usize; 2]);
    for l in text.lines().filter(|l| l.contains("particles.mrcs")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let truth = if f[0].contains("mono/") { 1 } else { 2 };
        let c: usize = f[col].parse().unwrap();
        n += 1;
        agree[0] += (c == truth) as usize;
        agree[1] += (c != truth) as usize;
    }
    assert_eq!(n, 1600);
    let right = agree[0].max(agree[1]) as f64 / n as f64;
    eprintln!("abinit two classes: {right:.3} in the right class");
    assert!(right >= 0.9, "{right}");
}
