//! ParticleStack behaviour that no single format module covers.

use cryoforge_io::cs::CsBuilder;
use cryoforge_io::mrc;
use cryoforge_io::stack::{LoadOptions, ParticleStack};

fn stack_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("s.mrcs");
    let data: Vec<f32> = (0..3 * 16).map(|i| i as f32).collect();
    mrc::write_stack(&p, &data, 4, 4, 3, 1.5).unwrap();
    p
}

#[test]
fn cs_blob_sign_is_applied_to_pixels() {
    let d = tempfile::tempdir().unwrap();
    stack_file(d.path());
    let cs = CsBuilder::new(2)
        .add_u64("uid", &[1, 2])
        .add_bytes("blob/path", 7, &[b">s.mrcs".to_vec(), b"s.mrcs".to_vec()])
        .add_u32("blob/idx", &[2, 0])
        .add_u32_vec("blob/shape", 2, &[4, 4, 4, 4])
        .add_f32("blob/psize_A", &[1.5, 1.5])
        .add_f32("blob/sign", &[-1.0, 1.0])
        .build()
        .unwrap();
    let p = d.path().join("p.cs");
    cs.write(&p).unwrap();
    let s = ParticleStack::load(&p, &LoadOptions::default()).unwrap();
    assert_eq!(s.files, vec!["s.mrcs".to_string()], "leading '>' stripped, one file");
    let mut img = vec![0f32; 16];
    s.read_image(0, &mut img).unwrap();
    assert_eq!(img[0], -32.0, "image 2 (first pixel 32) with sign −1");
    s.read_image(1, &mut img).unwrap();
    assert_eq!(img[1], 1.0);
    assert_eq!(s.apix_a().unwrap(), 1.5);
    assert_eq!(s.box_px().unwrap(), 4);
}

#[test]
fn relion_flags_and_warnings() {
    let d = tempfile::tempdir().unwrap();
    stack_file(d.path());
    let star = d.path().join("p.star");
    std::fs::write(
        &star,
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnImageSize\n_rlnVoltage\n_rlnSphericalAberration\n\
         _rlnAmplitudeContrast\n_rlnCtfDataAreCtfPremultiplied\n_rlnBeamTiltX\n_rlnBeamTiltY\n\
         1 1.5 4 300 2.7 0.1 1 0.1 0.2\n\
         data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnOpticsGroup\n_rlnCtfBfactor\n_rlnCtfScalefactor\n\
         1@s.mrcs 10000 9000 30 1 50 0.8\n",
    )
    .unwrap();
    let s = ParticleStack::load(&star, &LoadOptions::default()).unwrap();
    assert!(s.ctf_premultiplied);
    assert!(
        s.warnings.iter().any(|w| w.contains("rlnBeamTiltX") && w.contains("rlnBeamTiltY")),
        "{:?}",
        s.warnings
    );
    let c = s.ctf.as_ref().unwrap()[0];
    assert_eq!((c.bfactor_a2, c.scale, c.phase_shift_deg), (50.0, 0.8, 0.0));
    assert!(s.poses.is_none());
}

#[test]
fn txt_list_and_datadir() {
    let d = tempfile::tempdir().unwrap();
    let sub = d.path().join("data");
    std::fs::create_dir(&sub).unwrap();
    stack_file(&sub);
    std::fs::copy(sub.join("s.mrcs"), sub.join("t.mrcs")).unwrap();
    let txt = sub.join("list.txt");
    std::fs::write(&txt, "s.mrcs\n\nt.mrcs\n").unwrap();
    let s = ParticleStack::load(&txt, &LoadOptions::default()).unwrap();
    assert_eq!(s.len(), 6);
    let mut img = vec![0f32; 16];
    s.read_image(4, &mut img).unwrap();
    assert_eq!(img[0], 16.0);
    // A STAR elsewhere whose paths only resolve through --datadir.
    let star = d.path().join("p.star");
    std::fs::write(&star, "data_\nloop_\n_rlnImageName\n3@Extract/job1/s.mrcs\n").unwrap();
    let s = ParticleStack::load(&star, &LoadOptions::default()).unwrap();
    let e = s.read_image(0, &mut img).unwrap_err().to_string();
    assert!(e.contains("p.star") && e.contains("Extract/job1/s.mrcs") && e.contains("--datadir"), "{e}");
    let s = ParticleStack::load(&star, &LoadOptions { datadir: Some(sub.clone()), ..Default::default() })
        .unwrap();
    s.read_image(0, &mut img).unwrap();
    assert_eq!(img[0], 32.0);
}

#[test]
fn ind_then_first() {
    let d = tempfile::tempdir().unwrap();
    let p = stack_file(d.path());
    let mut s = ParticleStack::load(&p, &LoadOptions::default()).unwrap();
    s.select_ind_first(Some(&[2, 0, 1]), Some(2)).unwrap();
    assert_eq!(s.source_index, vec![2, 0]);
    let mut img = vec![0f32; 16];
    s.read_image(0, &mut img).unwrap();
    assert_eq!(img[0], 32.0);
    let e = s.select(&[5]).unwrap_err().to_string();
    assert!(e.contains("index 5") && e.contains("out of range"), "{e}");
}

#[test]
fn invalid_pose_pickle_rows_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let p = stack_file(d.path());
    let pk = d.path().join("bad.pkl");
    let rot = [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]; 3];
    let mut bad = rot;
    bad[1][2][2] = -1.0; // a reflection
    cryoforge_io::pkl::write_poses_pkl(&pk, &bad, Some(&[[0.0, 0.0]; 3])).unwrap();
    let e = ParticleStack::load(&p, &LoadOptions { poses_pkl: Some(pk.clone()), ..Default::default() })
        .unwrap_err();
    assert!(e.to_string().contains("index 1") && e.to_string().contains("invalid pose"), "{e}");
    // Wrong count.
    cryoforge_io::pkl::write_poses_pkl(&pk, &rot[..2], None).unwrap();
    let e = ParticleStack::load(&p, &LoadOptions { poses_pkl: Some(pk), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("2 poses") && e.to_string().contains("3 particles"), "{e}");
}

/// A STAR written into another folder names its stacks relative to that folder (image
/// paths are relative to the STAR's folder: CONVENTIONS rule 19), so it reads the same
/// pixels from there; written beside the input it keeps the input's text.
#[test]
fn star_written_elsewhere_rebases_image_paths() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("data")).unwrap();
    stack_file(&d.path().join("data"));
    let star = d.path().join("data/p.star");
    std::fs::write(
        &star,
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnImageSize\n1 1.5 4\n\
         data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n_rlnMyColumn\n1@s.mrcs 1 a\n3@s.mrcs 1 b\n",
    )
    .unwrap();
    let s = ParticleStack::load(&star, &LoadOptions::default()).unwrap();
    let out = d.path().join("jobs/refine");
    std::fs::create_dir_all(&out).unwrap();
    cryoforge_io::export::write_star(&s, &out.join("o.star")).unwrap();
    let text = std::fs::read_to_string(out.join("o.star")).unwrap();
    assert!(text.contains("000003@../../data/s.mrcs") && text.contains(" b"), "{text}");
    let back = ParticleStack::load(&out.join("o.star"), &LoadOptions::default()).unwrap();
    let (mut a, mut b) = (vec![0f32; 16], vec![0f32; 16]);
    s.read_image(1, &mut a).unwrap();
    back.read_image(1, &mut b).unwrap();
    assert_eq!(a, b);
    cryoforge_io::export::write_star(&s, &d.path().join("data/same.star")).unwrap();
    assert!(std::fs::read_to_string(d.path().join("data/same.star")).unwrap().contains("1@s.mrcs"));
}
