//! The AdK closed → open morph keeps chain geometry and moves monotonically.

use cryoforge_io::pdb::read_structure;
use cryoforge_sim::morph::{morph, rmsd, MorphError, MorphSettings};
use std::path::PathBuf;

fn demo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo").join(name)
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

#[test]
fn adk_morph_keeps_bonds_and_is_monotonic() {
    let a = read_structure(demo("adk_closed.pdb")).unwrap();
    let b = read_structure(demo("adk_open.pdb")).unwrap();
    let set = MorphSettings { frames: 20, ..Default::default() };
    let m = morph(&a.models[0], &b.models[0], &set).unwrap();
    assert_eq!(m.frames.len(), 20);
    assert_eq!(m.models.len(), 20);
    let n = m.residues.len();
    assert_eq!(n, 214);
    assert_eq!(m.bonds.len(), 213);
    let (first, last) = (&m.frames[0], &m.frames[19]);
    // Frame 0 is START exactly.
    let start: Vec<[f64; 3]> = m.residues.iter().map(|r| r.pos).collect();
    assert!(rmsd(first, &start) < 1e-9);
    // The last frame is END superposed: its internal distances are END's.
    assert!(m.end_rmsd_a > 5.0, "closed→open RMSD {}", m.end_rmsd_a);
    assert!((rmsd(first, last) - m.end_rmsd_a).abs() < 1e-9);
    // Bonds: within 0.1 Å of the interpolation of the end states' lengths in every frame,
    // whereas plain linear interpolation breaks them.
    let mut worst = 0f64;
    let mut worst_linear = 0f64;
    for (k, f) in m.frames.iter().enumerate() {
        let t = k as f64 / 19.0;
        for &(i, j) in &m.bonds {
            let (da, db) = (dist(first[i], first[j]), dist(last[i], last[j]));
            let target = da + t * (db - da);
            worst = worst.max((dist(f[i], f[j]) - target).abs());
            let li = |p: usize| {
                let (x, y) = (first[p], last[p]);
                [x[0] + t * (y[0] - x[0]), x[1] + t * (y[1] - x[1]), x[2] + t * (y[2] - x[2])]
            };
            worst_linear = worst_linear.max((dist(li(i), li(j)) - target).abs());
        }
    }
    assert!(worst < 0.1, "bond error {worst}");
    assert!(m.max_bond_error_a < 0.1);
    assert!(worst_linear > 0.3, "linear interpolation bond error only {worst_linear}");
    // RMSD to START grows monotonically.
    let r: Vec<f64> = m.frames.iter().map(|f| rmsd(f, first)).collect();
    for w in r.windows(2) {
        assert!(w[1] > w[0], "RMSD to start not monotonic: {r:?}");
    }
    // All-atom models: anchors follow the frames.
    let ca = |model: &cryoforge_io::pdb::Model| -> Vec<[f64; 3]> {
        cryoforge_io::pdb::anchor_atoms(model).unwrap().iter().map(|r| r.pos).collect()
    };
    for k in [0, 7, 19] {
        assert!(rmsd(&ca(&m.models[k]), &m.frames[k]) < 1e-9);
    }
}

#[test]
fn unmatched_residue_is_named() {
    let a = read_structure(demo("adk_closed.pdb")).unwrap();
    let mut b = read_structure(demo("adk_open.pdb")).unwrap().models.remove(0);
    b.chains[0].residues.remove(10);
    let e = morph(&a.models[0], &b, &MorphSettings::default()).unwrap_err();
    assert!(matches!(e, MorphError::Unmatched { seq: 11, .. }), "{e}");
    assert!(e.to_string().contains("11"));
}
