//! `cryoforge pros train | generate | noise-test | recondismic` end to end on a tiny
//! simulated set, and the errors bad input gets.

use std::path::{Path, PathBuf};
use std::process::Command;

fn demo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo").join(name)
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o =
        Command::new(env!("CARGO_BIN_EXE_cryoforge")).args(args).output().expect("cannot start cryoforge");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (good, out, err) = run(args);
    assert!(good, "cryoforge {args:?} failed: {err}");
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pros_commands_run_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let adk = demo("adk_closed.pdb");
    ok(&[
        "-q",
        "simulate",
        "--model",
        s(&adk),
        "--n",
        "48",
        "--box",
        "32",
        "--apix",
        "4",
        "--snr",
        "1",
        "--seed",
        "1",
        "--out",
        s(&p("sim")),
    ]);
    ok(&[
        "-q",
        "pdb2map",
        s(&p("sim/model.pdb")),
        "--no-center",
        "--box",
        "32",
        "--apix",
        "4",
        "-o",
        s(&p("ref.mrc")),
    ]);
    let star = p("sim/particles.star");
    let tiny =
        ["--nf", "8", "--growth", "4", "--z-dim", "2", "--nls", "0,1", "--steps", "4", "--batch-size", "8"];
    let (refm, runp) = (p("ref.mrc"), p("run"));
    let mut args = vec!["-q", "pros", "train", s(&star), "--volume", s(&refm), "--out", s(&runp)];
    args.extend(tiny);
    ok(&args);
    for f in ["run.toml", "reference.mrc", "metrics.csv", "weights.safetensors", "train.json"] {
        assert!(p("run").join(f).is_file(), "{f} missing");
    }
    let j = ok(&["-q", "pros", "generate", s(&p("run")), "--out", s(&p("aux")), "--n", "10", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["n"], 10);
    let text = std::fs::read_to_string(p("aux/auxiliary.star")).unwrap();
    assert!(text.contains("rlnCryoprosAuxiliary"));
    let (good, _, err) = run(&[
        "-q",
        "pros",
        "recondismic",
        s(&star),
        "--volume",
        s(&p("ref.mrc")),
        "--out",
        s(&p("dm")),
        "--steps",
        "5",
    ]);
    assert!(good, "{err}");
    assert!(p("dm/composite.mrc").is_file());

    // A volume in another box, named with its size.
    ok(&[
        "-q",
        "pdb2map",
        s(&p("sim/model.pdb")),
        "--no-center",
        "--box",
        "16",
        "--apix",
        "8",
        "-o",
        s(&p("small.mrc")),
    ]);
    let (good, _, err) =
        run(&["pros", "train", s(&star), "--volume", s(&p("small.mrc")), "--out", s(&p("bad1"))]);
    assert!(!good && err.contains("small.mrc") && err.contains("16×16×16"), "{err}");
    // Particles without poses.
    let (good, _, err) = run(&[
        "pros",
        "train",
        s(&p("sim/particles.mrcs")),
        "--apix",
        "4",
        "--volume",
        s(&p("ref.mrc")),
        "--out",
        s(&p("bad2")),
    ]);
    assert!(!good && err.contains("no poses"), "{err}");
    // Unknown preset.
    let (good, _, err) = run(&[
        "pros",
        "train",
        s(&star),
        "--volume",
        s(&p("ref.mrc")),
        "--out",
        s(&p("bad3")),
        "--preset",
        "huge",
    ]);
    assert!(!good && err.contains("unknown preset"), "{err}");
    assert!(!p("bad3/weights.safetensors").exists());
}
