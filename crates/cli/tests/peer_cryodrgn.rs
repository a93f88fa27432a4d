//! Peer tests against cryoDRGN itself (from PyPI, in a throwaway virtual environment).
//! They run only with `CRYOFORGE_PEER_TESTS=1` (cryoDRGN pulls in PyTorch, a multi-GB
//! install); CI does not set it. `CRYOFORGE_PEER_PYTHON` may name a Python that already
//! has cryodrgn installed, to skip the install.

use std::path::{Path, PathBuf};
use std::process::Command;

fn peer_python() -> Option<PathBuf> {
    if std::env::var("CRYOFORGE_PEER_TESTS").ok().as_deref() != Some("1") {
        eprintln!("SKIP peer test: set CRYOFORGE_PEER_TESTS=1 to run it (installs cryodrgn from PyPI)");
        return None;
    }
    if let Ok(p) = std::env::var("CRYOFORGE_PEER_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cryodrgn-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "cannot create a virtual environment at {}", venv.display());
        let ok =
            Command::new(&py).args(["-m", "pip", "install", "-q", "cryodrgn"]).status().map(|s| s.success());
        assert!(ok.unwrap_or(false), "pip install cryodrgn failed");
    }
    Some(py)
}

/// Pickles written by `cryoforge convert` load in cryoDRGN with the values we wrote.
#[test]
fn written_pickles_load_in_cryodrgn() {
    let Some(py) = peer_python() else { return };
    let Some(data) = cryoforge_io::test_data_dir() else {
        eprintln!("SKIP written_pickles_load_in_cryodrgn: shared test data not found");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (pp, cp) = (t.path().join("poses.pkl"), t.path().join("ctf.pkl"));
    let cs = data.join("cryodrgn/cryosparc_P12_J24_001_particles.cs");
    let o = Command::new(env!("CARGO_BIN_EXE_cryoforge"))
        .args([
            "convert",
            cs.to_str().unwrap(),
            "--poses-pkl",
            pp.to_str().unwrap(),
            "--ctf-pkl",
            cp.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = format!(
        r#"
import numpy as np
from cryodrgn import utils, ctf
from cryodrgn.pose import PoseTracker
rot, trans = utils.load_pkl({pp:?})
ref_rot, ref_trans = utils.load_pkl({rp:?})
assert rot.shape == (2019, 3, 3) and trans.shape == (2019, 2)
assert np.abs(rot - ref_rot).max() <= 1e-6 and np.abs(trans - ref_trans).max() <= 1e-6
c = ctf.load_ctf_for_training(180, {cp:?})
r = ctf.load_ctf_for_training(180, {rc:?})
assert np.allclose(c, r, rtol=1e-6)
pt = PoseTracker.load({pp:?}, 2019, 180, None, None)
print("ok")
"#,
        pp = pp.to_str().unwrap(),
        rp = data.join("cryodrgn/pose.cs.pkl").to_str().unwrap(),
        cp = cp.to_str().unwrap(),
        rc = data.join("cryodrgn/ctf2.pkl").to_str().unwrap(),
    );
    let o = Command::new(&py).args(["-c", &script]).output().unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok"),
        "cryoDRGN could not load our pickles:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// FSC of two real n³ volumes via cryoforge's own FSC.
fn fsc(a: &[f32], b: &[f32], n: usize, apix: f64) -> Vec<f64> {
    cryoforge_core::fsc::fsc_volumes(a, b, n, apix).fsc
}

/// Particles made by `cryoforge simulate` and reconstructed by `cryodrgn backproject_voxel`
/// give a map with FSC ≥ 0.9 to the ground truth up to 2/3 of Nyquist at SNR ∞: the pose,
/// shift and CTF conventions of the simulator agree with cryoDRGN's.
#[test]
fn cryodrgn_reconstructs_our_simulation() {
    let Some(py) = peer_python() else { return };
    let t = tempfile::tempdir().unwrap();
    let sim = t.path().join("sim");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let (d, apix) = (64usize, 1.5f64);
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_cryoforge")).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(&[
        "simulate",
        "--model",
        demo.to_str().unwrap(),
        "--n",
        "5000",
        "--box",
        "64",
        "--apix",
        "1.5",
        "--shift-a",
        "6",
        "--seed",
        "2",
        "--out",
        sim.to_str().unwrap(),
    ]);
    let truth = t.path().join("truth.mrc");
    run(&[
        "pdb2map",
        sim.join("model.pdb").to_str().unwrap(),
        "--no-center",
        "--box",
        "64",
        "--apix",
        "1.5",
        "-o",
        truth.to_str().unwrap(),
    ]);
    // cryoDRGN's console script lives beside the interpreter.
    let drgn = py.parent().unwrap().join("cryodrgn");
    let out = t.path().join("drgn");
    let o = Command::new(&drgn)
        .args(["backproject_voxel", sim.join("particles.mrcs").to_str().unwrap()])
        .args([
            "--poses",
            sim.join("poses.pkl").to_str().unwrap(),
            "--ctf",
            sim.join("ctf.pkl").to_str().unwrap(),
        ])
        .args(["-o", out.to_str().unwrap(), "--no-half-maps"])
        .output()
        .unwrap();
    assert!(o.status.success(), "cryodrgn failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let map = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "mrc"))
        .expect("cryodrgn wrote no .mrc");
    let v = cryoforge_io::mrc::MrcFile::open(&map).unwrap().read_volume().unwrap();
    let g = cryoforge_io::mrc::MrcFile::open(&truth).unwrap().read_volume().unwrap();
    let f = fsc(&v, &g, d, apix);
    let kmax = (2.0 / 3.0 * (d / 2) as f64) as usize;
    for (k, x) in f.iter().enumerate().take(kmax + 1).skip(1) {
        assert!(*x >= 0.9, "shell {k}: FSC(cryoDRGN map of our particles, truth) = {x:.3}");
    }
}
