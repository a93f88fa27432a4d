//! End-to-end tests of the `cryoforge` binary: every shared file, conversions that must
//! equal cryoDRGN's output, and bad input that must give a clear error (never a panic,
//! never a partial output).

use cryoforge_io::{mrc, pkl, test_data_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cryoforge"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("cannot start cryoforge")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn shared(test: &str) -> Option<PathBuf> {
    let d = test_data_dir().map(|d| d.join("cryodrgn"));
    if d.is_none() {
        eprintln!("SKIP {test}: shared test data not found (set CRYOFORGE_TEST_DATA)");
    }
    d
}

/// A failing command: exit code 1, an `error:` line containing every `needles`, no panic.
fn assert_fails_with(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, stderr: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}: {e}");
    }
}

#[test]
fn info_succeeds_on_every_shared_file() {
    let Some(d) = shared("info_succeeds_on_every_shared_file") else { return };
    let mut n = 0;
    for e in std::fs::read_dir(&d).unwrap() {
        let p = e.unwrap().path();
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
        if !["star", "cs", "mrc", "mrcs", "pkl"].contains(&ext) {
            continue;
        }
        let o = run(&["info", p.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}: {}", p.display(), stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v["kind"].is_string(), "{}", p.display());
        let o = run(&["info", p.to_str().unwrap()]);
        assert!(o.status.success());
        n += 1;
    }
    assert!(n >= 15, "only {n} files checked");
    for f in ["adk_closed.pdb", "adk_open.pdb"] {
        let p = d.join("../structures").join(f);
        let o = run(&["info", p.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["atoms"], 3341);
        assert_eq!(v["anchor_residues"], 214);
    }
}

#[test]
fn info_reports_star_geometry() {
    let Some(d) = shared("info_reports_star_geometry") else { return };
    let o = run(&["info", d.join("relion31.v2.star").to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["particles"], 5);
    assert_eq!(v["summary"]["box_px"], 256);
    assert_eq!(v["summary"]["apix_A"], 2.806);
    assert_eq!(v["optics_groups"].as_array().unwrap().len(), 1);
}

/// `convert` writes the same pickles as cryoDRGN's parse_pose_star / parse_ctf_star.
#[test]
fn convert_star_equals_cryodrgn_pickles() {
    let Some(d) = shared("convert_star_equals_cryodrgn_pickles") else { return };
    let t = tempfile::tempdir().unwrap();
    let (pp, cp) = (t.path().join("poses.pkl"), t.path().join("ctf.pkl"));
    let star = d.join("FinalRefinement-OriginalParticles-PfCRT.star");
    let o = run(&[
        "convert",
        star.to_str().unwrap(),
        "-D",
        "300",
        "--apix",
        "1.035",
        "-w",
        "0.1",
        "--poses-pkl",
        pp.to_str().unwrap(),
        "--ctf-pkl",
        cp.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (pkl::read_poses_pkl(&pp).unwrap(), pkl::read_poses_pkl(d.join("pose.star.pkl")).unwrap());
    for (x, y) in a.rots.iter().zip(&b.rots) {
        for r in 0..3 {
            for c in 0..3 {
                assert!((x[r][c] - y[r][c]).abs() <= 1e-6);
            }
        }
    }
    for (x, y) in a.trans.unwrap().iter().zip(&b.trans.unwrap()) {
        assert!((x[0] - y[0]).abs() <= 1e-6 && (x[1] - y[1]).abs() <= 1e-6);
    }
    let (a, b) = (pkl::read_ctf_pkl(&cp).unwrap(), pkl::read_ctf_pkl(d.join("ctf1.pkl")).unwrap());
    for (x, y) in a.iter().zip(&b) {
        for k in 0..9 {
            assert!((x[k] - y[k]).abs() <= 1e-6 * y[k].abs().max(1e-12), "field {k}");
        }
    }
}

#[test]
fn convert_without_required_ctf_column_names_it() {
    let Some(d) = shared("convert_without_required_ctf_column_names_it") else { return };
    let t = tempfile::tempdir().unwrap();
    let cp = t.path().join("ctf.pkl");
    let star = d.join("FinalRefinement-OriginalParticles-PfCRT.star");
    let o = run(&["convert", star.to_str().unwrap(), "-D", "300", "--ctf-pkl", cp.to_str().unwrap()]);
    assert_fails_with(&o, &["FinalRefinement-OriginalParticles-PfCRT.star", "rlnAmplitudeContrast"]);
    assert!(!cp.exists(), "partial output left behind");
}

#[test]
fn convert_star_without_angles_has_no_poses() {
    let Some(d) = shared("convert_star_without_angles_has_no_poses") else { return };
    let t = tempfile::tempdir().unwrap();
    let pp = t.path().join("poses.pkl");
    let o = run(&[
        "convert",
        d.join("toy.star").to_str().unwrap(),
        "-D",
        "30",
        "--poses-pkl",
        pp.to_str().unwrap(),
    ]);
    assert_fails_with(&o, &["toy.star", "no poses"]);
    assert!(!pp.exists());
}

#[test]
fn select_and_downsample() {
    let Some(d) = shared("select_and_downsample") else { return };
    let t = tempfile::tempdir().unwrap();
    // select: first 3 of the refinement .cs, as .cs and as an index pickle.
    let (cs, ind) = (t.path().join("sub.cs"), t.path().join("ind.pkl"));
    let src = d.join("cryosparc_P12_J24_001_particles.cs");
    let o = run(&[
        "select",
        src.to_str().unwrap(),
        "--first",
        "3",
        "-o",
        cs.to_str().unwrap(),
        "--ind-out",
        ind.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(cryoforge_io::cs::CsFile::read(&cs).unwrap().n_rows(), 3);
    assert_eq!(pkl::read_index_pkl(&ind).unwrap(), vec![0, 1, 2]);
    // downsample hand.mrcs 64 → 32 px: pixel size doubles, pixel sums are kept.
    let out = t.path().join("hand32.mrcs");
    let o = run(&[
        "downsample",
        d.join("hand.mrcs").to_str().unwrap(),
        "-d",
        "32",
        "-o",
        out.to_str().unwrap(),
        "--ind",
        ind.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (mrc::MrcFile::open(d.join("hand.mrcs")).unwrap(), mrc::MrcFile::open(&out).unwrap());
    assert_eq!((b.nx(), b.n_images()), (32, 3));
    assert!((b.voxel_size()[0] - 2.0 * a.voxel_size()[0]).abs() < 1e-5);
    let (mut x, mut y) = (vec![0f32; 64 * 64], vec![0f32; 32 * 32]);
    a.read_image(2, &mut x).unwrap();
    b.read_image(2, &mut y).unwrap();
    let (sx, sy): (f32, f32) = (x.iter().sum(), y.iter().sum());
    assert!((sx - sy).abs() < 1e-3 * sx.abs());
}

fn write_file(p: &Path, bytes: &[u8]) {
    std::fs::write(p, bytes).unwrap();
}

#[test]
fn bad_inputs_give_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // A small valid stack to point STAR files at: 2 images of 4×4.
    let stack = dir.join("s.mrcs");
    mrc::write_stack(&stack, &[1.0; 32], 4, 4, 2, 1.0).unwrap();
    let star = |name: &str, body: &str| {
        let p = dir.join(name);
        write_file(
            &p,
            format!(
                "data_particles\nloop_\n_rlnImageName\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n{body}"
            )
            .as_bytes(),
        );
        p
    };
    // Index beyond the stack.
    let p = star("oob.star", "000003@s.mrcs 0 0 0\n");
    let out = dir.join("o.mrcs");
    let o = run(&["downsample", p.to_str().unwrap(), "-d", "2", "-o", out.to_str().unwrap()]);
    assert_fails_with(&o, &["oob.star", "index 0", "image 3", "holds 2 images"]);
    assert!(!out.exists());
    // Missing stack: metadata commands work, pixel commands name the file.
    let p = star("missing.star", "000001@nowhere.mrcs 0 0 0\n");
    assert!(run(&["info", p.to_str().unwrap()]).status.success());
    let o = run(&["downsample", p.to_str().unwrap(), "-d", "2", "-o", out.to_str().unwrap()]);
    assert_fails_with(&o, &["missing.star", "nowhere.mrcs", "not found"]);
    // Malformed image name, with its line.
    let p = star("badname.star", "0@s.mrcs 0 0 0\n");
    let o = run(&["info", p.to_str().unwrap()]);
    assert_fails_with(&o, &["badname.star", "line 7", "rlnImageName"]);
    // Unparsable angle, with line and column.
    let p = star("badnum.star", "000001@s.mrcs abc 0 0\n");
    let o = run(&["convert", p.to_str().unwrap(), "--poses-pkl", dir.join("x.pkl").to_str().unwrap()]);
    assert_fails_with(&o, &["badnum.star", "line 7", "rlnAngleRot"]);
    // Non-square images.
    let rect = dir.join("rect.mrcs");
    mrc::write_stack(&rect, &[0.0; 48], 4, 6, 2, 1.0).unwrap();
    let o = run(&["downsample", rect.to_str().unwrap(), "-d", "2", "-o", out.to_str().unwrap()]);
    assert_fails_with(&o, &["rect.mrcs", "square"]);
    // NaN pixels, with image index and pixel.
    let nan = dir.join("nan.mrcs");
    let mut bytes = std::fs::read(&stack).unwrap();
    let off = 1024 + 16 * 4 + 5 * 4; // image 1, pixel (1, 1)
    bytes[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    write_file(&nan, &bytes);
    let o = run(&["downsample", nan.to_str().unwrap(), "-d", "2", "-o", out.to_str().unwrap()]);
    assert_fails_with(&o, &["nan.mrcs", "NaN"]);
    assert!(!out.exists());
    // Truncated MRC.
    let trunc = dir.join("trunc.mrcs");
    write_file(&trunc, &std::fs::read(&stack).unwrap()[..1100]);
    let o = run(&["info", trunc.to_str().unwrap()]);
    assert_fails_with(&o, &["trunc.mrcs", "truncated"]);
    // Absurd dimensions.
    let mut h = std::fs::read(&stack).unwrap();
    h[0..4].copy_from_slice(&(-5i32).to_le_bytes());
    let absurd = dir.join("absurd.mrc");
    write_file(&absurd, &h);
    let o = run(&["info", absurd.to_str().unwrap()]);
    assert_fails_with(&o, &["absurd.mrc", "nx"]);
    // Unknown file kind and missing file.
    let o = run(&["info", dir.join("x.xyz").to_str().unwrap()]);
    assert_fails_with(&o, &["x.xyz"]);
    // --ind out of range.
    let ind = dir.join("ind.txt");
    write_file(&ind, b"0\n7\n");
    let o = run(&[
        "select",
        stack.to_str().unwrap(),
        "--ind",
        ind.to_str().unwrap(),
        "-o",
        dir.join("o.star").to_str().unwrap(),
    ]);
    assert_fails_with(&o, &["index 7", "out of range"]);
}

#[test]
fn help_has_examples() {
    for c in ["info", "convert", "select", "downsample"] {
        let o = run(&[c, "--help"]);
        assert!(o.status.success());
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("Examples:"), "{c} --help lacks examples");
    }
}
