//! End-to-end test of `cryoforge align-maps`: a map of AdK made from a rotated, shifted and
//! mirrored copy of the model is fitted back onto the map of the original model; the fit
//! recovers the transform to < 1° and < 0.5 px, and the hand.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cryoforge")).args(args).output().expect("cannot start cryoforge")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
}

/// Rotation matrix about a unit axis (right-handed, active).
fn axis_angle(a: [f64; 3], t: f64) -> [[f64; 3]; 3] {
    let n = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
    let (x, y, z) = (a[0] / n, a[1] / n, a[2] / n);
    let (c, s) = (t.cos(), t.sin());
    let v = 1.0 - c;
    [
        [c + x * x * v, x * y * v - z * s, x * z * v + y * s],
        [y * x * v + z * s, c + y * y * v, y * z * v - x * s],
        [z * x * v - y * s, z * y * v + x * s, c + z * z * v],
    ]
}

/// Write `pdb` with every coordinate p replaced by f(p).
fn transform_pdb(src: &Path, dst: &Path, f: impl Fn([f64; 3]) -> [f64; 3]) {
    let text = std::fs::read_to_string(src).unwrap();
    let mut out = String::new();
    for l in text.lines() {
        if (l.starts_with("ATOM") || l.starts_with("HETATM")) && l.len() >= 54 {
            let p: Vec<f64> = (0..3).map(|i| l[30 + 8 * i..38 + 8 * i].trim().parse().unwrap()).collect();
            let q = f([p[0], p[1], p[2]]);
            out.push_str(&format!("{}{:8.3}{:8.3}{:8.3}{}\n", &l[..30], q[0], q[1], q[2], &l[54..]));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    std::fs::write(dst, out).unwrap();
}

#[test]
fn align_maps_recovers_rotation_shift_and_hand() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let centred = d.join("centred.pdb");
    // Centre the model on its atoms' centroid.
    let text = std::fs::read_to_string(&model).unwrap();
    let atoms: Vec<[f64; 3]> = text
        .lines()
        .filter(|l| (l.starts_with("ATOM") || l.starts_with("HETATM")) && l.len() >= 54)
        .map(|l| [0, 1, 2].map(|i| l[30 + 8 * i..38 + 8 * i].trim().parse::<f64>().unwrap()))
        .collect();
    let c = [0, 1, 2].map(|k| atoms.iter().map(|a| a[k]).sum::<f64>() / atoms.len() as f64);
    transform_pdb(&model, &centred, |p| [p[0] - c[0], p[1] - c[1], p[2] - c[2]]);
    let apix = 2.0;
    let map = |pdb: &Path, out: &Path| {
        ok(&run(&[
            "pdb2map",
            pdb.to_str().unwrap(),
            "--no-center",
            "--box",
            "40",
            "--apix",
            "2",
            "-o",
            out.to_str().unwrap(),
            "-q",
        ]))
    };
    let fixed = d.join("fixed.mrc");
    map(&centred, &fixed);
    // moving = T⁻¹(model): q = H·Rᵀ(p − t), so that R·H·q + t = p.
    let r = axis_angle([0.2, 0.9, -0.4], 140f64.to_radians());
    let shift = [3.1, -4.6, 1.7]; // Å
    let moved = d.join("moved.pdb");
    transform_pdb(&centred, &moved, |p| {
        let v = [p[0] - shift[0], p[1] - shift[1], p[2] - shift[2]];
        let q = [
            r[0][0] * v[0] + r[1][0] * v[1] + r[2][0] * v[2],
            r[0][1] * v[0] + r[1][1] * v[1] + r[2][1] * v[2],
            r[0][2] * v[0] + r[1][2] * v[1] + r[2][2] * v[2],
        ];
        [-q[0], q[1], q[2]]
    });
    let moving = d.join("moving.mrc");
    map(&moved, &moving);
    let out = d.join("aligned.mrc");
    let o = run(&[
        "align-maps",
        moving.to_str().unwrap(),
        fixed.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--try-hand",
        "--json",
        "-q",
    ]);
    ok(&o);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["hand_flipped"], serde_json::json!(true), "{j}");
    let m: Vec<Vec<f64>> = serde_json::from_value(j["rotation_matrix"].clone()).unwrap();
    // Geodesic angle between the found and the true rotation.
    let tr: f64 = (0..3).map(|i| (0..3).map(|k| m[i][k] * r[i][k]).sum::<f64>()).sum();
    let err = ((tr - 1.0) / 2.0).clamp(-1.0, 1.0).acos().to_degrees();
    let s: Vec<f64> = serde_json::from_value(j["shift_a"].clone()).unwrap();
    let serr = (0..3).map(|k| (s[k] - shift[k]).powi(2)).sum::<f64>().sqrt() / apix;
    eprintln!("align-maps: rotation error {err:.3}°, shift error {serr:.3} px, score {}", j["score"]);
    assert!(err < 1.0, "rotation error {err}° ({j})");
    assert!(serr < 0.5, "shift error {serr} px ({j})");
    assert!(j["score"].as_f64().unwrap() > j["other_hand_score"].as_f64().unwrap());
    assert!(out.is_file() && d.join("aligned.json").is_file());
    // The aligned map matches the fixed one.
    let f = run(&["fsc", out.to_str().unwrap(), fixed.to_str().unwrap(), "--json", "-q"]);
    ok(&f);
    let fj: serde_json::Value = serde_json::from_slice(&f.stdout).unwrap();
    assert!(fj["resolution_0.5_A"].as_f64().unwrap() < 6.0, "{fj}");
    // Different boxes: a clear error, nothing written.
    let small = d.join("small.mrc");
    ok(&run(&[
        "pdb2map",
        centred.to_str().unwrap(),
        "--box",
        "32",
        "--apix",
        "2",
        "-o",
        small.to_str().unwrap(),
        "-q",
    ]));
    let bad = d.join("bad.mrc");
    let o =
        run(&["align-maps", small.to_str().unwrap(), fixed.to_str().unwrap(), "-o", bad.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("small.mrc") && e.contains("32³") && e.contains("resample"), "{e}");
    assert!(!bad.exists());
}
