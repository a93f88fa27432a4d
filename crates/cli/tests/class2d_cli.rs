//! End-to-end test of `cryoforge class2d` and `select --classes`: a 50/50 mixture of two
//! structures is classified into classes that each hold mostly one of them, and
//! `select --classes` keeps the chosen classes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
mod common;
use common::*;

/// AdK copies at the given offsets (Å), copy j rotated by j·90° about x, as PDB text.
fn model(offsets: &[[f64; 3]]) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let a = atoms(&std::fs::read_to_string(p).unwrap());
    let c = [0, 1, 2].map(|k| a.iter().map(|x| x.1[k]).sum::<f64>() / a.len() as f64);
    let mut out = String::new();
    for (j, o) in offsets.iter().enumerate() {
        for (l, p) in &a {
            let v = [p[0] - c[0], p[1] - c[1], p[2] - c[2]];
            let v = match j % 4 {
                0 => v,
                1 => [v[0], -v[2], v[1]],
                2 => [v[0], -v[1], -v[2]],
                _ => [v[0], v[2], -v[1]],
            };
            out.push_str(&format!(
                "{}{:8.3}{:8.3}{:8.3}{}\n",
                &l[..30],
                v[0] + o[0],
                v[1] + o[1],
                v[2] + o[2],
                &l[54..]
            ));
        }
    }
    out.push_str("END\n");
    out
}

fn simulate(
    dir: &Path,
    tag: &str,
    offsets: &[[f64; 3]],
    n: usize,
    snr: &str,
    shift: &str,
    seed: u64,
) -> PathBuf {
    let pdb = dir.join(format!("{tag}.pdb"));
    std::fs::write(&pdb, model(offsets)).unwrap();
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
        snr,
        "--shift-a",
        shift,
        "--seed",
        &seed.to_string(),
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]));
    out
}

/// (source folder, class) of every particle of a classified STAR.
fn classes(star: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(star).unwrap();
    let labels: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("_rln"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let first = labels.iter().position(|l| *l == "_rlnImageName").unwrap();
    let col = labels[first..].iter().position(|l| *l == "_rlnClassNumber").unwrap();
    text.lines()
        .filter(|l| l.contains("particles.mrcs"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let src = f[0].split('/').rev().nth(1).unwrap().to_string();
            (src, f[col].parse().unwrap())
        })
        .collect()
}

#[test]
fn class2d_separates_two_structures_and_select_keeps_classes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mono = simulate(d, "mono", &[[0.0; 3]], 800, "0.1", "4", 5);
    let dimer = simulate(d, "dimer", &[[0.0; 3], [38.0, 0.0, 0.0]], 800, "0.1", "4", 6);
    let star = d.join("mix.star");
    merge(&star, &[&mono, &dimer]);
    let out = d.join("c2d");
    ok(&run(&[
        "class2d",
        star.to_str().unwrap(),
        "--classes",
        "6",
        "--iterations",
        "15",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]));
    for f in [
        "classes.mrcs",
        "particles.star",
        "classes.csv",
        "iterations.jsonl",
        "gallery.png",
        "summary.json",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Class averages") && html.contains("EM iterations"));
    let cl = classes(&out.join("particles.star"));
    assert_eq!(cl.len(), 1600);
    // Purity: each class counted for its majority structure.
    let mut per: HashMap<usize, (usize, usize)> = HashMap::new();
    for (s, c) in &cl {
        let e = per.entry(*c).or_default();
        if s == "mono" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let pure: usize = per.values().map(|v| v.0.max(v.1)).sum();
    let purity = pure as f64 / cl.len() as f64;
    eprintln!("class2d: purity {purity:.3}; classes {per:?}");
    assert!(purity >= 0.8, "purity {purity}");

    // select --classes keeps exactly the chosen classes.
    let mono_classes: Vec<usize> = per.iter().filter(|(_, v)| v.0 > v.1).map(|(k, _)| *k).collect();
    let list = mono_classes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    let sel = d.join("mono_classes.star");
    ok(&run(&[
        "select",
        out.join("particles.star").to_str().unwrap(),
        "--classes",
        &list,
        "-o",
        sel.to_str().unwrap(),
        "-q",
    ]));
    let kept = classes(&sel);
    assert_eq!(kept.len(), cl.iter().filter(|(_, c)| mono_classes.contains(c)).count());
    assert!(kept.iter().all(|(_, c)| mono_classes.contains(c)));
    let o =
        run(&["select", star.to_str().unwrap(), "--classes", "1", "-o", d.join("x.star").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rlnClassNumber"));
    assert!(!d.join("x.star").exists());
}

/// Two structures plus 30 % junk (`simulate --junk`: empty picks, ice, off-centre picks and
/// aggregates): ≥ 90 % of the junk lands in classes where junk is the majority, and the good
/// classes keep the two structures apart.
#[test]
fn class2d_gathers_junk_in_junk_classes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let strip = |s: String| s.replace("END\n", "");
    let pdb = d.join("two.pdb");
    std::fs::write(
        &pdb,
        format!(
            "MODEL        1\n{}ENDMDL\nMODEL        2\n{}ENDMDL\nEND\n",
            strip(model(&[[0.0; 3]])),
            strip(model(&[[-19.0, 0.0, 0.0], [19.0, 0.0, 0.0]]))
        ),
    )
    .unwrap();
    let sim = d.join("sim");
    ok(&run(&[
        "simulate",
        "--models",
        pdb.to_str().unwrap(),
        "--n",
        "2000",
        "--box",
        "48",
        "--apix",
        "3",
        "--snr",
        "0.1",
        "--shift-a",
        "4",
        "--junk",
        "0.3",
        "--seed",
        "5",
        "--out",
        sim.to_str().unwrap(),
        "-q",
    ]));
    // Labels from truth.csv: "m0"/"m1" for good particles, the junk kind otherwise.
    let truth = std::fs::read_to_string(sim.join("truth.csv")).unwrap();
    let mut lines = truth.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (mc, jc) =
        (head.iter().position(|h| *h == "model").unwrap(), head.iter().position(|h| *h == "junk").unwrap());
    let labels: Vec<String> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            if f[jc] == "none" {
                format!("m{}", f[mc])
            } else {
                f[jc].to_string()
            }
        })
        .collect();
    let kinds: std::collections::HashSet<&str> = labels.iter().map(|s| s.as_str()).collect();
    for k in ["m0", "m1", "noise", "offcentre", "aggregate", "ice"] {
        assert!(kinds.contains(k), "no {k} particles");
    }
    let out = d.join("c2d");
    ok(&run(&[
        "class2d",
        sim.join("particles.star").to_str().unwrap(),
        "--classes",
        "10",
        "--iterations",
        "15",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]));
    let cl = classes(&out.join("particles.star"));
    assert_eq!(cl.len(), labels.len());
    let mut per: HashMap<usize, HashMap<&str, usize>> = HashMap::new();
    for ((_, c), l) in cl.iter().zip(&labels) {
        *per.entry(*c).or_default().entry(l.as_str()).or_default() += 1;
    }
    let (mut junk_in, mut junk_all, mut pure, mut good_all) = (0, 0, 0, 0);
    for counts in per.values() {
        let junk: usize = counts.iter().filter(|(k, _)| !k.starts_with('m')).map(|(_, v)| v).sum();
        let good: usize = counts.iter().filter(|(k, _)| k.starts_with('m')).map(|(_, v)| v).sum();
        junk_all += junk;
        good_all += good;
        if junk > good {
            junk_in += junk;
        } else {
            pure += counts.get("m0").copied().unwrap_or(0).max(counts.get("m1").copied().unwrap_or(0));
        }
    }
    let jf = junk_in as f64 / junk_all as f64;
    let purity = pure as f64 / good_all as f64;
    eprintln!("class2d junk: {jf:.3} of the junk in junk classes; good-class purity {purity:.3}; {per:?}");
    assert!(jf >= 0.9, "junk in junk classes {jf}");
    assert!(purity >= 0.8, "good-class purity {purity}");
}
