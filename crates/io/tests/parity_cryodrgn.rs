//! Parity with cryoDRGN 4.3.1 on the real files of ../shared/data/cryodrgn: the
//! reference pickles there were written by cryoDRGN's own parse_* commands (see
//! ../shared/data/README.md for the exact command lines).

use cryoforge_io::export;
use cryoforge_io::pkl;
use cryoforge_io::stack::{LoadOptions, ParticleStack};
use cryoforge_io::test_data_file;

/// Rotations compared as matrices, translations as box fractions (issue tolerance).
const ROT_TOL: f64 = 1e-6;
const TRANS_TOL: f64 = 1e-6;
/// CTF fields, relative.
const CTF_REL_TOL: f64 = 1e-6;

fn assert_poses_match(ours: &pkl::PosesPkl, theirs: &pkl::PosesPkl, what: &str) {
    assert_eq!(ours.rots.len(), theirs.rots.len(), "{what}: count");
    for (i, (a, b)) in ours.rots.iter().zip(&theirs.rots).enumerate() {
        for r in 0..3 {
            for c in 0..3 {
                assert!(
                    (a[r][c] - b[r][c]).abs() <= ROT_TOL,
                    "{what}: particle {i} rot[{r}][{c}] {} vs {}",
                    a[r][c],
                    b[r][c]
                );
            }
        }
    }
    let (ta, tb) = (ours.trans.as_ref().unwrap(), theirs.trans.as_ref().unwrap());
    for (i, (a, b)) in ta.iter().zip(tb).enumerate() {
        for k in 0..2 {
            assert!((a[k] - b[k]).abs() <= TRANS_TOL, "{what}: particle {i} trans[{k}] {} vs {}", a[k], b[k]);
        }
    }
}

fn assert_ctf_match(ours: &[[f64; 9]], theirs: &[[f64; 9]], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: count");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        for k in 0..9 {
            let tol = CTF_REL_TOL * b[k].abs().max(1e-12);
            assert!((a[k] - b[k]).abs() <= tol, "{what}: particle {i} field {k}: {} vs {}", a[k], b[k]);
        }
    }
}

/// Write our pickle, read it back, compare with the reference pickle.
fn poses_via_pickle(s: &ParticleStack) -> pkl::PosesPkl {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("poses.pkl");
    export::write_poses_pkl(s, &p).unwrap();
    pkl::read_poses_pkl(&p).unwrap()
}

fn ctf_via_pickle(s: &ParticleStack) -> Vec<[f64; 9]> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ctf.pkl");
    export::write_ctf_pkl(s, &p).unwrap();
    pkl::read_ctf_pkl(&p).unwrap()
}

/// `cryodrgn parse_pose_star FinalRefinement-OriginalParticles-PfCRT.star -D 300`.
#[test]
fn pose_star_matches_cryodrgn() {
    let Some(star) =
        test_data_file("pose_star_matches_cryodrgn", "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    else {
        return;
    };
    let reference = star.with_file_name("pose.star.pkl");
    let s = ParticleStack::load(&star, &LoadOptions { box_px: Some(300), ..Default::default() }).unwrap();
    assert_poses_match(&poses_via_pickle(&s), &pkl::read_poses_pkl(&reference).unwrap(), "pose.star.pkl");
}

/// `cryodrgn parse_ctf_star … -D 300 --Apix 1.035 -w 0.1`.
#[test]
fn ctf_star_matches_cryodrgn() {
    let Some(star) =
        test_data_file("ctf_star_matches_cryodrgn", "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    else {
        return;
    };
    let reference = pkl::read_ctf_pkl(star.with_file_name("ctf1.pkl")).unwrap();
    let opts =
        LoadOptions { box_px: Some(300), apix_a: Some(1.035), amp_contrast: Some(0.1), ..Default::default() };
    let s = ParticleStack::load(&star, &opts).unwrap();
    // Our values before the float32 pickle, and after it.
    assert_ctf_match(&s.ctf_rows().unwrap(), &reference, "ctf1 (values)");
    assert_ctf_match(&ctf_via_pickle(&s), &reference, "ctf1 (pickle)");
    // The pixel size also follows from rlnDetectorPixelSize / rlnMagnification.
    let s2 = ParticleStack::load(
        &star,
        &LoadOptions { box_px: Some(300), amp_contrast: Some(0.1), ..Default::default() },
    )
    .unwrap();
    assert!((s2.apix_a().unwrap() - 1.035).abs() < 1e-12);
}

/// `cryodrgn parse_pose_csparc cryosparc_P12_J24_001_particles.cs -D 180`.
#[test]
fn pose_cs_matches_cryodrgn() {
    let Some(cs) = test_data_file("pose_cs_matches_cryodrgn", "cryodrgn/cryosparc_P12_J24_001_particles.cs")
    else {
        return;
    };
    let reference = cs.with_file_name("pose.cs.pkl");
    let s = ParticleStack::load(&cs, &LoadOptions { box_px: Some(180), ..Default::default() }).unwrap();
    assert_eq!(s.len(), 2019);
    assert_poses_match(&poses_via_pickle(&s), &pkl::read_poses_pkl(&reference).unwrap(), "pose.cs.pkl");
}

/// `cryodrgn parse_ctf_csparc cryosparc_P12_J24_001_particles.cs`.
#[test]
fn ctf_cs_matches_cryodrgn() {
    let Some(cs) = test_data_file("ctf_cs_matches_cryodrgn", "cryodrgn/cryosparc_P12_J24_001_particles.cs")
    else {
        return;
    };
    let reference = pkl::read_ctf_pkl(cs.with_file_name("ctf2.pkl")).unwrap();
    let s = ParticleStack::load(&cs, &LoadOptions::default()).unwrap();
    assert_eq!(s.box_px().unwrap(), 180);
    assert_ctf_match(&ctf_via_pickle(&s), &reference, "ctf2");
}

/// relion31.star (optics first) and relion31.v2.star (particles first) give the same set.
#[test]
fn relion31_block_orders_parse_identically() {
    let Some(a) = test_data_file("relion31_block_orders_parse_identically", "cryodrgn/relion31.star") else {
        return;
    };
    let b = a.with_file_name("relion31.v2.star");
    let sa = ParticleStack::load(&a, &LoadOptions::default()).unwrap();
    let sb = ParticleStack::load(&b, &LoadOptions::default()).unwrap();
    assert_eq!(sa.len(), 5);
    assert_eq!(sa.len(), sb.len());
    assert_eq!(sa.poses, sb.poses);
    assert_eq!(sa.ctf, sb.ctf);
    assert_eq!(sa.images, sb.images);
    assert_eq!(sa.files, sb.files);
    assert_eq!(sa.apix_known(), Some(2.806)); // rlnImagePixelSize (not the micrograph's 1.403)
    assert_eq!(sa.box_known(), Some(256));
    // Pixels resolve against the STAR's folder and read the same.
    let mut ia = vec![0f32; 256 * 256];
    let mut ib = vec![0f32; 256 * 256];
    sa.read_image(4, &mut ia).unwrap();
    sb.read_image(4, &mut ib).unwrap();
    assert_eq!(ia, ib);
}

/// STAR → .cs → STAR → pkl keeps poses, shifts, CTF and image names (within float32).
#[test]
fn star_cs_star_pkl_round_trip() {
    let Some(star) = test_data_file("star_cs_star_pkl_round_trip", "cryodrgn/relion31.star") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let s0 = ParticleStack::load(&star, &LoadOptions::default()).unwrap();
    let cs = d.path().join("p.cs");
    export::write_cs(&s0, &cs).unwrap();
    let s1 = ParticleStack::load(&cs, &LoadOptions::default()).unwrap();
    let star2 = d.path().join("p.star");
    export::write_star(&s1, &star2).unwrap();
    let s2 = ParticleStack::load(&star2, &LoadOptions::default()).unwrap();
    for s in [&s1, &s2] {
        assert_eq!(s.len(), s0.len());
        assert_eq!(s.files, s0.files);
        assert_eq!(s.images, s0.images);
        assert!((s.apix_a().unwrap() - s0.apix_a().unwrap()).abs() < 1e-6);
        assert_eq!(s.box_known(), s0.box_known());
        for (p, q) in s.poses.as_ref().unwrap().iter().zip(s0.poses.as_ref().unwrap()) {
            assert!(p.rot.angle_to_deg(&q.rot) < 1e-4, "rotation differs");
            assert!(
                (p.shift_px[0] - q.shift_px[0]).abs() < 1e-4 && (p.shift_px[1] - q.shift_px[1]).abs() < 1e-4
            );
        }
        for (p, q) in s.ctf.as_ref().unwrap().iter().zip(s0.ctf.as_ref().unwrap()) {
            assert!((p.defocus_u_a - q.defocus_u_a).abs() <= 1e-6 * q.defocus_u_a.abs() + 1e-3);
            assert!((p.defocus_v_a - q.defocus_v_a).abs() <= 1e-6 * q.defocus_v_a.abs() + 1e-3);
            assert!((p.defocus_angle_deg - q.defocus_angle_deg).abs() < 1e-4);
            assert!((p.voltage_kv - q.voltage_kv).abs() < 1e-4);
            assert!((p.cs_mm - q.cs_mm).abs() < 1e-6);
            assert!((p.amp_contrast - q.amp_contrast).abs() < 1e-6);
            assert!((p.phase_shift_deg - q.phase_shift_deg).abs() < 1e-4);
        }
    }
    // … and on to cryoDRGN pickles: same as writing them from the original.
    let (a, b) = (poses_via_pickle(&s2), poses_via_pickle(&s0));
    for (x, y) in a.rots.iter().zip(&b.rots) {
        for r in 0..3 {
            for c in 0..3 {
                assert!((x[r][c] - y[r][c]).abs() < 1e-5);
            }
        }
    }
    let (ca, cb) = (ctf_via_pickle(&s2), ctf_via_pickle(&s0));
    for (x, y) in ca.iter().zip(&cb) {
        for k in 0..9 {
            assert!((x[k] - y[k]).abs() <= 1e-5 * y[k].abs().max(1.0), "{k}: {} vs {}", x[k], y[k]);
        }
    }
}

/// STAR → STAR keeps unknown columns and every original value; image names are rebased to
/// the new folder (CONVENTIONS rule 19) and still name the same image of the same file.
#[test]
fn star_to_star_preserves_unknown_columns() {
    let Some(star) = test_data_file("star_to_star_preserves_unknown_columns", "cryodrgn/relion31.star")
    else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let mut s = ParticleStack::load(&star, &LoadOptions::default()).unwrap();
    s.select(&[4, 1]).unwrap();
    let out = d.path().join("sub.star");
    export::write_star(&s, &out).unwrap();
    let a = cryoforge_io::star::RelionParticles::read(&star).unwrap();
    let b = cryoforge_io::star::RelionParticles::read(&out).unwrap();
    assert_eq!(b.n_particles(), 2);
    assert_eq!(a.particles().column_names(), b.particles().column_names());
    for c in a.particles().column_names().into_iter().filter(|c| *c != "rlnImageName") {
        assert_eq!(a.particles().get_str(4, c).unwrap(), b.particles().get_str(0, c).unwrap(), "{c}");
        assert_eq!(a.particles().get_str(1, c).unwrap(), b.particles().get_str(1, c).unwrap(), "{c}");
    }
    let back = ParticleStack::load(&out, &LoadOptions::default()).unwrap();
    let canon = |st: &ParticleStack, i: usize| {
        let r = st.images[i];
        (r.index, std::fs::canonicalize(st.resolve(&st.files[r.file as usize]).unwrap()).unwrap())
    };
    assert_eq!(canon(&back, 0), canon(&s, 0));
    assert_eq!(canon(&back, 1), canon(&s, 1));
}

/// A stack with cryoDRGN pickles: hand.mrcs + hand_rot_trans.pkl → STAR → same poses.
#[test]
fn mrcs_with_pickles_to_star_and_back() {
    let Some(mrcs) = test_data_file("mrcs_with_pickles_to_star_and_back", "cryodrgn/hand.mrcs") else {
        return;
    };
    let poses = mrcs.with_file_name("hand_rot_trans.pkl");
    let opts = LoadOptions { poses_pkl: Some(poses.clone()), ..Default::default() };
    let s = ParticleStack::load(&mrcs, &opts).unwrap();
    assert_eq!(s.len(), 100);
    assert_eq!(s.box_px().unwrap(), 64);
    let d = tempfile::tempdir().unwrap();
    let star = d.path().join("hand.star");
    export::write_star(&s, &star).unwrap();
    let s2 = ParticleStack::load(
        &star,
        &LoadOptions { datadir: mrcs.parent().map(|p| p.to_path_buf()), ..Default::default() },
    )
    .unwrap();
    let a = poses_via_pickle(&s2);
    let b = pkl::read_poses_pkl(&poses).unwrap();
    assert_poses_match(&a, &b, "hand_rot_trans via STAR");
    let mut img = vec![0f32; 64 * 64];
    s2.read_image(99, &mut img).unwrap();
}
