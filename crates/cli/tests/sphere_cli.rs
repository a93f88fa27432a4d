//! `cryoforge sphere train` + `sphere analyze` end to end on a tiny simulated dataset:
//! the run reloads its particles from run.toml (with --first), and analyze writes the
//! run-directory contract (shared driver) plus the cryoSPHERE extras and the optional
//! outputs (--coords-out, --particles-out, --z, truth.json).

use cryoforge_io::pdb::{anchor_atoms, read_structure, write_ca_models};
use std::path::{Path, PathBuf};
use std::process::Command;

fn demo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo").join(name)
}

fn ok(args: &[&str]) -> String {
    let o =
        Command::new(env!("CARGO_BIN_EXE_cryoforge")).args(args).output().expect("cannot start cryoforge");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "cryoforge {args:?} failed: {e}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn sphere_analyze_writes_the_contract_files() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, run) = (dir.path().join("sim"), dir.path().join("run"));
    // Two states (closed, open AdK) as a Cα trajectory.
    let anchors = |f: &str| {
        let st = read_structure(demo(f)).unwrap();
        anchor_atoms(&st.models[0]).unwrap()
    };
    let (a, b) = (anchors("adk_closed.pdb"), anchors("adk_open.pdb"));
    assert_eq!(a.len(), b.len());
    let traj = dir.path().join("traj.pdb");
    let frames: Vec<Vec<[f64; 3]>> = [&a, &b].iter().map(|m| m.iter().map(|r| r.pos).collect()).collect();
    write_ca_models(&traj, &a, &frames, None).unwrap();
    ok(&[
        "simulate",
        "--models",
        s(&traj),
        "--density",
        "ca",
        "--n",
        "40",
        "--box",
        "32",
        "--apix",
        "3",
        "--snr",
        "inf",
        "--out",
        s(&sim),
        "--quiet",
    ]);
    ok(&[
        "sphere",
        "train",
        s(&sim.join("particles.star")),
        "--reference",
        s(&sim.join("model.pdb")),
        "--out",
        s(&run),
        "--first",
        "30",
        "--steps",
        "2",
        "-b",
        "16",
        "--zdim",
        "2",
        "--n-segm",
        "3",
        "--quiet",
    ]);
    let rt = std::fs::read_to_string(run.join("run.toml")).unwrap();
    assert!(rt.contains("first = \"30\""), "{rt}");
    let z = dir.path().join("z.txt");
    std::fs::write(&z, "0 0\n1 1\n").unwrap();
    let (coords, clusters) = (dir.path().join("coords.npy"), dir.path().join("clusters"));
    let js = ok(&[
        "sphere",
        "analyze",
        s(&run),
        "-k",
        "3",
        "--n-points",
        "3",
        "--coords-out",
        s(&coords),
        "--particles-out",
        s(&clusters),
        "--z",
        s(&z),
        "--no-volumes",
        "--json",
        "--quiet",
    ]);
    let sj: serde_json::Value = serde_json::from_str(&js).expect("--json prints the summary");
    assert_eq!(sj["method"], "cryosphere");
    assert_eq!(sj["n_particles"], 30);
    assert_eq!(sj["kmeans"]["k"], 3);
    assert_eq!(sj["segmentation"]["n_segments"], 3);
    assert!(sj["truth"]["pc1_frame_spearman"].is_number(), "{sj}");
    assert!(sj["truth"]["rmsd_mean_A"].is_number(), "{sj}");
    let an = run.join("analysis");
    for f in [
        "latents.npy",
        "latents.csv",
        "pca.npy",
        "pca_explained.csv",
        "umap.npy",
        "kmeans/labels.txt",
        "kmeans/centers.txt",
        "kmeans/centers_ind.txt",
        "kmeans/centers.pdb",
        "kmeans/inertia.txt",
        "pc1/traversal.pdb",
        "pc1/z_values.txt",
        "zfile/structures.pdb",
        "clash.csv",
        "truth.json",
        "summary.json",
        "segmentation.csv",
        "segmentation.pdb",
        "segment_counts.csv",
        "segment_motions.csv",
    ] {
        assert!(an.join(f).is_file(), "missing {f}");
    }
    assert!(!an.join("pc1/vol_000.mrc").exists(), "--no-volumes");
    let labels = std::fs::read_to_string(an.join("kmeans/labels.txt")).unwrap();
    assert_eq!(labels.lines().count(), 30);
    assert!(coords.is_file());
    let stars: Vec<_> = std::fs::read_dir(&clusters)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!stars.is_empty() && stars.iter().all(|n| n.starts_with("cluster_") && n.ends_with(".star")));
}

#[test]
fn training_commands_reject_an_unusable_device_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no_such.star");
    let run = dir.path().join("run");
    let adk = demo("adk_closed.pdb");
    let cases: [Vec<&str>; 4] = [
        vec!["star", "train", s(&missing), "--reference", s(&adk), "--out", s(&run), "--device", "tpu"],
        vec!["sphere", "train", s(&missing), "--reference", s(&adk), "--out", s(&run), "--device", "cuda:x"],
        vec!["star", "volume", s(&run), "--device", "gpu:1"],
        // A valid spelling: only a build with `--features cuda` can open it.
        vec!["star", "train", s(&missing), "--reference", s(&adk), "--out", s(&run), "--device", "cuda"],
    ];
    for (i, args) in cases.iter().enumerate() {
        let o = Command::new(env!("CARGO_BIN_EXE_cryoforge")).args(args).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains("--device") && !e.contains("panicked"), "{args:?}: {e}");
        if i == 3 && !cfg!(feature = "cuda") {
            assert!(e.contains("--features cuda"), "{e}");
        }
        // The device is checked first: the missing particle file is not what failed.
        assert!(!e.contains("no_such.star"), "{args:?}: {e}");
    }
    assert!(!run.exists(), "nothing may be written");
}
