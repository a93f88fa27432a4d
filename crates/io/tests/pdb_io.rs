//! PDB / mmCIF: the adenylate-kinase files, real-world PDB dialects, anchors, writing and
//! error messages.

use cryoforge_io::pdb::*;
use cryoforge_io::test_data_file;
use std::path::PathBuf;

fn write_tmp(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err_of<T: std::fmt::Debug>(r: cryoforge_io::Result<T>) -> String {
    r.unwrap_err().to_string()
}

// ---- adenylate kinase ------------------------------------------------------------------

#[test]
fn pdb_adk_closed_and_open() {
    let Some(closed) = test_data_file("pdb_adk_closed_and_open", "structures/adk_closed.pdb") else { return };
    let Some(open) = test_data_file("pdb_adk_closed_and_open", "structures/adk_open.pdb") else { return };
    let c = read_pdb(&closed).unwrap();
    let o = read_structure(&open).unwrap();
    assert_eq!((c.models.len(), o.models.len()), (1, 1));
    let (mc, mo) = (&c.models[0], &o.models[0]);
    assert_eq!((mc.atom_count(), mo.atom_count()), (3341, 3341));
    // Blank chain column: the segment ID (columns 73-76) names the chain.
    assert_eq!(mc.chains.len(), 1);
    assert_eq!(mc.chains[0].id, "4AKE");
    assert_eq!(mc.chains[0].residues.len(), 214);
    // Same atom order in both states.
    for (a, b) in mc.atoms().zip(mo.atoms()) {
        assert_eq!(a.name, b.name);
    }
    let ac = anchor_atoms(mc).unwrap();
    let ao = anchor_atoms(mo).unwrap();
    assert_eq!((ac.len(), ao.len()), (214, 214));
    assert!(ac.iter().all(|r| r.kind == AnchorKind::Protein && r.atom == "CA" && r.chain == "4AKE"));
    assert_eq!((ac[0].name.as_str(), ac[0].seq, ac[213].seq), ("MET", 1, 214));
    // First CA: "ATOM      5 CA   MET     1     -10.097  25.954  13.632"
    assert_eq!(ac[0].pos, [-10.097, 25.954, 13.632]);
    // The amplitude is the sum of the atomic numbers of the residue's atoms.
    let first = &mc.chains[0].residues[0];
    let sum: u32 = first.atoms.iter().map(|a| atomic_number(&a.element).unwrap()).sum();
    assert_eq!(ac[0].amplitude, sum as f64);
    // MET 1 (no element column): N, 3 HT, CA, HA, CB, 2 HB, CG, 2 HG, SD, CE, 3 HE, C, O
    // = 7 + 9×1 + 5×6 (CA CB CG CE C) + 16 + 8 = 72 (19 atoms).
    assert_eq!(first.atoms.len(), 19);
    assert_eq!(ac[0].amplitude, 72.0);
    let elements: String = first.atoms.iter().map(|a| a.element.as_str()).collect::<Vec<_>>().join(" ");
    assert_eq!(elements, "N H H H C H C H H C H H S C H H H C O");
}

#[test]
fn pdb_adk_round_trip_through_writer() {
    let Some(src) = test_data_file("pdb_adk_round_trip_through_writer", "structures/adk_closed.pdb") else {
        return;
    };
    let s = read_pdb(&src).unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("adk_out.pdb");
    write_pdb(&out, &s).unwrap();
    let back = read_pdb(&out).unwrap();
    assert_same_structure(&s, &back);
}

/// Names, elements, coordinates (to 3 decimals), occupancy, B, chains and residues agree.
fn assert_same_structure(a: &Structure, b: &Structure) {
    assert_eq!(a.models.len(), b.models.len());
    for (ma, mb) in a.models.iter().zip(&b.models) {
        assert_eq!(ma.chains.len(), mb.chains.len());
        for (ca, cb) in ma.chains.iter().zip(&mb.chains) {
            assert_eq!(ca.id, cb.id);
            assert_eq!(ca.residues.len(), cb.residues.len());
            for (ra, rb) in ca.residues.iter().zip(&cb.residues) {
                assert_eq!((&ra.name, ra.seq, ra.icode), (&rb.name, rb.seq, rb.icode));
                assert_eq!(ra.atoms.len(), rb.atoms.len(), "residue {} {}", ra.name, ra.seq);
                for (x, y) in ra.atoms.iter().zip(&rb.atoms) {
                    assert_eq!(
                        (&x.name, &x.element, x.hetero, x.alt_loc),
                        (&y.name, &y.element, y.hetero, y.alt_loc)
                    );
                    for k in 0..3 {
                        assert!((x.pos[k] - y.pos[k]).abs() < 5e-4, "{x:?} vs {y:?}");
                    }
                    assert!(
                        (x.occupancy - y.occupancy).abs() < 5e-3 && (x.b_factor - y.b_factor).abs() < 5e-3
                    );
                }
            }
        }
    }
}

#[test]
fn pdb_multi_model_and_ca_trajectory() {
    let Some(src) = test_data_file("pdb_multi_model_and_ca_trajectory", "structures/adk_open.pdb") else {
        return;
    };
    let s = read_pdb(&src).unwrap();
    let d = tempfile::tempdir().unwrap();
    // Three models: the structure shifted by 0, 1 and 2 Å in x.
    let mut multi = Structure::default();
    for k in 0..3 {
        let mut m = s.models[0].clone();
        for a in m.chains.iter_mut().flat_map(|c| c.residues.iter_mut().flat_map(|r| r.atoms.iter_mut())) {
            a.pos[0] += k as f64;
        }
        multi.models.push(m);
    }
    let p = d.path().join("multi.pdb");
    write_pdb(&p, &multi).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.matches("\nMODEL ").count() + text.starts_with("MODEL ") as usize, 3);
    assert_eq!(text.matches("ENDMDL").count(), 3);
    assert!(text.ends_with("END\n"));
    let back = read_pdb(&p).unwrap();
    assert_same_structure(&multi, &back);

    // Anchor-only trajectory with per-residue B-factors (segment colouring).
    let anchors = anchor_atoms(&s.models[0]).unwrap();
    let frames: Vec<Vec<[f64; 3]>> = (0..5)
        .map(|f| anchors.iter().map(|r| [r.pos[0], r.pos[1] + f as f64 * 0.5, r.pos[2]]).collect())
        .collect();
    let bfac: Vec<f64> = (0..anchors.len()).map(|i| (i / 50) as f64).collect();
    let p = d.path().join("traj.pdb");
    write_ca_models(&p, &anchors, &frames, Some(&bfac)).unwrap();
    let t = read_pdb(&p).unwrap();
    assert_eq!(t.models.len(), 5);
    for (f, m) in t.models.iter().enumerate() {
        assert_eq!(m.atom_count(), 214);
        assert_eq!(m.chains[0].id, "4AKE");
        let back = anchor_atoms(m).unwrap();
        for (i, (a, r)) in m.atoms().zip(&back).enumerate() {
            assert_eq!((a.name.as_str(), a.element.as_str(), a.b_factor), ("CA", "C", bfac[i]));
            assert!((r.pos[1] - frames[f][i][1]).abs() < 5e-4);
            assert_eq!((r.seq, &r.name), (anchors[i].seq, &anchors[i].name));
        }
    }
    let e = err_of(write_ca_models(&p, &anchors, &[frames[0][..10].to_vec()], None));
    assert!(e.contains("traj.pdb: index 0: frame has 10 positions for 214 residues"), "{e}");
}

// ---- real-world dialects ---------------------------------------------------------------

/// CHARMM/NAMD output: no element column, blank chain + segment ID, HSD/HSE, 4-letter
/// residue names, hydrogens named "HG11" (column 13), "1HB" and "HB2".
const CHARMM: &[&str] = &[
    "REMARK written by CHARMM",
    "ATOM      1  N   HSD     1       0.000   1.000   2.000  1.00  0.00      PROA",
    "ATOM      2  HN  HSD     1       0.500   1.500   2.500  1.00  0.00      PROA",
    "ATOM      3  CA  HSD     1       1.000   1.000   2.000  1.00  0.00      PROA",
    "ATOM      4  HD1 HSD     1       1.500   1.000   2.000  1.00  0.00      PROA",
    "ATOM      5  C   HSD     1       2.000   1.000   2.000  1.00  0.00      PROA",
    "ATOM      6  O   HSD     1       2.500   1.000   2.000  1.00  0.00      PROA",
    "ATOM      7  N   HSE     2       3.000   1.000   2.000  1.00  0.00      PROA",
    "ATOM      8  CA  HSE     2       3.800   1.000   2.000  1.00  0.00      PROA",
    "ATOM      9 HG11 HSE     2       4.000   1.000   2.000  1.00  0.00      PROA",
    "ATOM     10 1HB  HSE     2       4.500   1.000   2.000  1.00  0.00      PROA",
    "ATOM     11  HB2 HSE     2       5.000   1.000   2.000  0.50  9.00      PROA",
    "ATOM     12  OH2 TIP3    3       9.000   9.000   9.000  1.00  0.00      WAT",
    "ATOM     13  H1  TIP3    3       9.500   9.000   9.000  1.00  0.00      WAT",
    "END",
];

#[test]
fn pdb_charmm_dialect_with_crlf() {
    let d = tempfile::tempdir().unwrap();
    for (name, sep) in [("lf.pdb", "\n"), ("crlf.pdb", "\r\n")] {
        let p = write_tmp(&d, name, &CHARMM.join(sep));
        let s = read_pdb(&p).unwrap();
        let m = &s.models[0];
        let ids: Vec<&str> = m.chains.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["PROA", "WAT"]);
        let names: Vec<&str> = m.residues().map(|(_, r)| r.name.as_str()).collect();
        assert_eq!(names, ["HSD", "HSE", "TIP3"]);
        let el: Vec<&str> = m.atoms().map(|a| a.element.as_str()).collect();
        assert_eq!(el, ["N", "H", "C", "H", "C", "O", "N", "C", "H", "H", "H", "O", "H"], "{name}");
        let hb2 = m.atoms().nth(10).unwrap();
        assert_eq!((hb2.name.as_str(), hb2.occupancy, hb2.b_factor), ("HB2", 0.5, 9.0));
        let a = anchor_atoms(m).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].chain.as_str(), a[0].seq, a[0].name.as_str()), ("PROA", 1, "HSD"));
        assert_eq!(a[0].amplitude, (7 + 1 + 6 + 1 + 6 + 8) as f64);
        assert_eq!(a[1].amplitude, (7 + 6 + 1 + 1 + 1) as f64);
        assert_eq!(a[1].pos, [3.8, 1.0, 2.0]);
    }
}

/// Left-justified names (written by some tools), short lines, and ions whose names start in
/// column 13 (a calcium named CA must not become a Cα).
const LEFT_AND_IONS: &[&str] = &[
    "ATOM     20 N    ALA B   3      10.000  -1.250   0.500",
    "ATOM     21 CA   ALA B   3      11.000  -1.250   0.500  1.00  0.00",
    "ATOM     22 CB   ALA B   3      11.500  -1.250   0.500",
    "ATOM     23 HB1  ALA B   3      12.000  -1.250   0.500  1.00  0.00",
    "ATOM     24 C    ALA B   3      12.500  -1.250   0.500",
    "ATOM     25 O    ALA B   3      13.000  -1.250   0.500  1.00  0.00",
    "HETATM   30 CA    CA B 101      -5.000  -5.000  -5.000  1.00  0.00",
    "HETATM   31 ZN    ZN B 102      -6.000  -5.000  -5.000  1.00  0.00",
    "HETATM   32  O   HOH B 201      -7.000  -5.000  -5.000  1.00  0.00",
];

#[test]
fn pdb_left_justified_names_and_calcium() {
    let d = tempfile::tempdir().unwrap();
    let p = write_tmp(&d, "left.pdb", &LEFT_AND_IONS.join("\n"));
    let s = read_pdb(&p).unwrap();
    let m = &s.models[0];
    let el: Vec<&str> = m.atoms().map(|a| a.element.as_str()).collect();
    assert_eq!(el, ["N", "C", "C", "H", "C", "O", "Ca", "Zn", "O"]);
    assert!(m.atoms().skip(6).all(|a| a.hetero));
    // Short lines (ending after the coordinates) get occupancy 1 and B 0.
    let n = m.atoms().next().unwrap();
    assert_eq!((n.name.as_str(), n.occupancy, n.b_factor, n.pos), ("N", 1.0, 0.0, [10.0, -1.25, 0.5]));
    let a = anchor_atoms(m).unwrap();
    assert_eq!(a.len(), 1, "{a:?}"); // the calcium, zinc and water have no anchor
    assert_eq!((a[0].name.as_str(), a[0].atom.as_str(), a[0].kind), ("ALA", "CA", AnchorKind::Protein));
    assert_eq!(a[0].pos, [11.0, -1.25, 0.5]);
    assert_eq!(a[0].amplitude, (7 + 6 + 6 + 1 + 6 + 8) as f64);
}

const NUCLEIC: &[&str] = &[
    "ATOM     40  P     A C   1      20.000   0.000  -0.125  1.00  0.00           P",
    "ATOM     41  OP1   A C   1      21.000   0.000  -0.125  1.00  0.00           O",
    "ATOM     42  C1'   A C   1      22.000   0.000  -0.125  1.00  0.00           C",
    "ATOM     43  N9    A C   1      23.000   0.000  -0.125  1.00  0.00           N",
    "ATOM     44  P     U C   2      24.000   0.000  -0.125  1.00  0.00           P",
    "ATOM     45  OP1   U C   2      25.000   0.000  -0.125  1.00  0.00           O",
    "ATOM     46  OP2   U C   2      26.000   0.000  -0.125  1.00  0.00           O",
    "ATOM     47  O5'   U C   2      27.000   0.000  -0.125  1.00  0.00           O",
    "ATOM     48  C1*  DG C   3      28.000   0.000  -0.125  1.00  0.00           C",
    "ATOM     49  N9   DG C   3      29.000   0.000  -0.125  1.00  0.00           N",
];

#[test]
fn pdb_nucleic_anchors_c1_prime_then_p() {
    let d = tempfile::tempdir().unwrap();
    let p = write_tmp(&d, "na.pdb", &NUCLEIC.join("\n"));
    let s = read_pdb(&p).unwrap();
    let a = anchor_atoms(&s.models[0]).unwrap();
    let got: Vec<(&str, &str, [f64; 3])> =
        a.iter().map(|r| (r.name.as_str(), r.atom.as_str(), r.pos)).collect();
    assert_eq!(
        got,
        [
            ("A", "C1'", [22.0, 0.0, -0.125]),
            ("U", "P", [24.0, 0.0, -0.125]),
            ("DG", "C1*", [28.0, 0.0, -0.125])
        ]
    );
    assert!(a.iter().all(|r| r.kind == AnchorKind::Nucleic && r.chain == "C"));
    assert_eq!(a[0].amplitude, (15 + 8 + 6 + 7) as f64);
}

#[test]
fn pdb_alt_locs_keep_highest_occupancy() {
    let lines = [
        "ATOM      1  N   SER A   5       1.000   2.000   3.000  1.00  0.00           N",
        "ATOM      2  CA  SER A   5       1.500   2.000   3.000  1.00  0.00           C",
        "ATOM      3  OG ASER A   5       2.000   2.000   3.000  0.60  0.00           O",
        "ATOM      4  OG BSER A   5       2.100   2.200   3.000  0.40  0.00           O",
        "ATOM      5  CB ASER A   5       3.000   2.000   3.000  0.30  0.00           C",
        "ATOM      6  CB BSER A   5       3.100   2.100   3.000  0.70  0.00           C",
        "ATOM      7  CG ASER A   5       4.000   2.000   3.000  0.50  0.00           C",
        "ATOM      8  CG BSER A   5       4.100   2.000   3.000  0.50  0.00           C",
    ];
    let d = tempfile::tempdir().unwrap();
    let p = write_tmp(&d, "alt.pdb", &lines.join("\n"));
    let s = read_pdb(&p).unwrap();
    let r = &s.models[0].chains[0].residues;
    assert_eq!(r.len(), 1);
    let kept: Vec<(&str, Option<char>, f64)> =
        r[0].atoms.iter().map(|a| (a.name.as_str(), a.alt_loc, a.pos[0])).collect();
    assert_eq!(
        kept,
        [
            ("N", None, 1.0),
            ("CA", None, 1.5),
            ("OG", Some('A'), 2.0),
            ("CB", Some('B'), 3.1),
            ("CG", Some('A'), 4.0)
        ]
    );
    assert_eq!(anchor_atoms(&s.models[0]).unwrap()[0].amplitude, (7 + 6 + 8 + 6 + 6) as f64);
}

#[test]
fn pdb_models_ter_and_insertion_codes() {
    let text = "\
MODEL        1
ATOM      1  CA  GLY A  10       1.000   1.000   1.000  1.00  0.00           C
ATOM      2  CA  GLY A  10A      2.000   1.000   1.000  1.00  0.00           C
TER       3      GLY A  10A
ATOM      4  CA  GLY A  11       3.000   1.000   1.000  1.00  0.00           C
ENDMDL
MODEL        2
ATOM      1  CA  GLY A  10       1.500   1.000   1.000  1.00  0.00           C
ATOM      2  CA  GLY A  10A      2.500   1.000   1.000  1.00  0.00           C
TER       3      GLY A  10A
ATOM      4  CA  GLY A  11       3.500   1.000   1.000  1.00  0.00           C
ENDMDL
END
";
    let d = tempfile::tempdir().unwrap();
    let p = write_tmp(&d, "nmr.pdb", text);
    let s = read_pdb(&p).unwrap();
    assert_eq!(s.models.len(), 2);
    for (k, m) in s.models.iter().enumerate() {
        assert_eq!(m.chains.len(), 2, "TER splits the chain into segments");
        let a = anchor_atoms(m).unwrap();
        let ids: Vec<(i32, Option<char>, usize)> = a.iter().map(|r| (r.seq, r.icode, r.segment)).collect();
        assert_eq!(ids, [(10, None, 0), (10, Some('A'), 0), (11, None, 1)]);
        assert_eq!(a[0].pos[0], 1.0 + 0.5 * k as f64);
    }
    // The writer reproduces insertion codes, segments and models.
    let out = d.path().join("nmr_out.pdb");
    write_pdb(&out, &s).unwrap();
    assert_same_structure(&s, &read_pdb(&out).unwrap());
}

// ---- mmCIF -----------------------------------------------------------------------------

const CIF: &str = r#"data_test
# a small model: protein, RNA and a calcium ion
_entry.id test
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.type_symbol
_atom_site.label_atom_id
_atom_site.label_alt_id
_atom_site.label_comp_id
_atom_site.label_asym_id
_atom_site.label_seq_id
_atom_site.pdbx_PDB_ins_code
_atom_site.Cartn_x
_atom_site.Cartn_y
_atom_site.Cartn_z
_atom_site.occupancy
_atom_site.B_iso_or_equiv
_atom_site.auth_seq_id
_atom_site.auth_comp_id
_atom_site.auth_asym_id
_atom_site.auth_atom_id
_atom_site.pdbx_PDB_model_num
ATOM   1 N  N     . ALA A 1 ? 11.104 6.134 -6.504 1.00 25.00 1 ALA A N     1
ATOM   2 C  CA    . ALA A 1 ? 11.639 6.071 -5.147 1.00 24.50 1 ALA A CA    1
ATOM   3 C  C     . ALA A 1 ? 13.149 5.889 -5.209 1.00 23.00 1 ALA A C     1
ATOM   4 O  O     . ALA A 1 ? 13.744 6.210 -6.244 1.00 22.00 1 ALA A O     1
ATOM   5 P  P     . U   B 1 ? 20.000 0.000 -0.125 1.00 30.00 7 U   B P     1
ATOM   6 O  OP1   . U   B 1 ? 21.000 0.000 -0.125 1.00 30.00 7 U   B OP1   1
ATOM   7 C  "C1'" . U   B 1 ? 22.000 0.000 -0.125 1.00 30.00 7 U   B "C1'" 1
HETATM 8 CA CA    . CA  C . ? -5.000 -5.000 -5.000 0.50 40.00 101 CA C CA  1
#
loop_
_other.x
1
"#;

const CIF_AS_PDB: &str = "\
ATOM      1  N   ALA A   1      11.104   6.134  -6.504  1.00 25.00           N
ATOM      2  CA  ALA A   1      11.639   6.071  -5.147  1.00 24.50           C
ATOM      3  C   ALA A   1      13.149   5.889  -5.209  1.00 23.00           C
ATOM      4  O   ALA A   1      13.744   6.210  -6.244  1.00 22.00           O
TER
ATOM      5  P     U B   7      20.000   0.000  -0.125  1.00 30.00           P
ATOM      6  OP1   U B   7      21.000   0.000  -0.125  1.00 30.00           O
ATOM      7  C1'   U B   7      22.000   0.000  -0.125  1.00 30.00           C
TER
HETATM    8 CA    CA C 101      -5.000  -5.000  -5.000  0.50 40.00          CA
END
";

fn without_lines(mut s: Structure) -> Structure {
    for a in s.models.iter_mut().flat_map(|m| m.chains.iter_mut()).flat_map(|c| c.residues.iter_mut()) {
        a.atoms.iter_mut().for_each(|x| x.line = 0);
    }
    s
}

#[test]
fn pdb_mmcif_reads_like_the_equivalent_pdb() {
    let d = tempfile::tempdir().unwrap();
    let cif = write_tmp(&d, "m.cif", CIF);
    let pdb = write_tmp(&d, "m.pdb", CIF_AS_PDB);
    let a = read_structure(&cif).unwrap();
    let b = read_structure(&pdb).unwrap();
    assert_eq!(a.models[0].atom_count(), 8);
    assert_eq!(without_lines(a.clone()), without_lines(b));
    let anchors = anchor_atoms(&a.models[0]).unwrap();
    let got: Vec<(&str, &str, i32)> =
        anchors.iter().map(|r| (r.chain.as_str(), r.atom.as_str(), r.seq)).collect();
    assert_eq!(got, [("A", "CA", 1), ("B", "C1'", 7)]);
    // Errors name the file and the line of the row.
    let bad = write_tmp(&d, "bad.cif", &CIF.replace("13.149", "13.1x9"));
    let e = err_of(read_structure(&bad));
    assert!(
        e.contains("bad.cif: line 26, field _atom_site.Cartn_x: cannot parse '13.1x9' as a number"),
        "{e}"
    );
    let bad = write_tmp(&d, "nocol.cif", &CIF.replace("_atom_site.Cartn_y\n", "_atom_site.Cartn_q\n"));
    let e = err_of(read_mmcif(&bad));
    assert!(e.contains("nocol.cif") && e.contains("cartn_y: missing column"), "{e}");
    let bad = write_tmp(&d, "ragged.cif", &CIF.replace(" 101 CA C CA  1", " 101 CA C CA"));
    let e = err_of(read_mmcif(&bad));
    assert!(
        e.contains(
            "ragged.cif: line 31: the _atom_site loop has 151 values, not a multiple of its 19 columns"
        ),
        "{e}"
    );
    let e = err_of(read_mmcif(write_tmp(&d, "none.cif", "data_x\n_cell.length_a 10\n")));
    assert!(e.contains("none.cif: no _atom_site loop"), "{e}");
}

// ---- errors ----------------------------------------------------------------------------

#[test]
fn pdb_bad_inputs_name_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let mut lines = NUCLEIC.to_vec();
    lines[2] = "ATOM     42  C1'   A C   1      22.0x0   0.000  -0.125  1.00  0.00           C";
    let p = write_tmp(&d, "badxyz.pdb", &lines.join("\n"));
    let e = err_of(read_pdb(&p));
    assert!(
        e.contains("badxyz.pdb: line 3, field x (columns 31-38): cannot parse '22.0x0' as a number"),
        "{e}"
    );

    let e = err_of(read_pdb(write_tmp(&d, "empty.pdb", "")));
    assert!(e.contains("empty.pdb: empty file: no ATOM or HETATM records"), "{e}");
    let e = err_of(read_pdb(write_tmp(&d, "noatoms.pdb", "REMARK 1\nCRYST1   80.017\nEND\n")));
    assert!(e.contains("noatoms.pdb: no ATOM or HETATM records in 3 lines"), "{e}");

    let mut lines = NUCLEIC.to_vec();
    lines[1] = "ATOM     41  OP1   A C   1      21.000   0.000  -0.125  1.00  0.00          XX";
    let e = err_of(read_pdb(write_tmp(&d, "elem.pdb", &lines.join("\n"))));
    assert!(e.contains("elem.pdb: line 2, field element: unknown element 'XX'"), "{e}");

    let e = err_of(read_pdb(write_tmp(&d, "short.pdb", "ATOM      1  CA  GLY A   1       1.000   1.000")));
    assert!(e.contains("short.pdb: line 1: atom record is 46 columns long"), "{e}");
    let e =
        err_of(read_pdb(write_tmp(&d, "seq.pdb", "ATOM      1  CA  GLY A  x1       1.000   1.000   1.000")));
    assert!(e.contains("seq.pdb: line 1, field resSeq (columns 23-26): cannot parse 'x1'"), "{e}");
    let e = err_of(read_pdb(d.path().join("missing.pdb")));
    assert!(e.contains("missing.pdb: cannot read"), "{e}");

    // Unknown elements in models built in code are reported by anchor_atoms with the line.
    let mut m = read_pdb(write_tmp(&d, "ok.pdb", &NUCLEIC.join("\n"))).unwrap().models.remove(0);
    m.chains[0].residues[1].atoms[2].element = "Qq".into();
    let e = anchor_atoms(&m).unwrap_err().to_string();
    assert_eq!(e, "line 7: unknown element 'Qq' for atom OP2 of residue 2 in chain C");
}

#[test]
fn pdb_writer_rejects_values_that_do_not_fit() {
    let d = tempfile::tempdir().unwrap();
    let mut s = read_pdb(write_tmp(&d, "ok.pdb", &NUCLEIC.join("\n"))).unwrap();
    s.models[0].chains[0].residues[0].atoms[0].pos[0] = 12345.0;
    let p = d.path().join("out.pdb");
    let e = err_of(write_pdb(&p, &s));
    assert!(
        e.contains("out.pdb: field atom P of residue A 1: x = 12345 does not fit its PDB columns"),
        "{e}"
    );
    assert!(!p.exists());
    // Large serial and residue numbers use hybrid-36 and read back.
    let mut s = read_pdb(write_tmp(&d, "ok2.pdb", &NUCLEIC.join("\n"))).unwrap();
    s.models[0].chains[0].residues[0].seq = 12345;
    s.models[0].chains[0].residues[0].atoms[0].serial = 123456;
    s.models[0].chains[0].id = "LONG".into();
    write_pdb(&p, &s).unwrap();
    let back = read_pdb(&p).unwrap();
    assert_eq!(back.models[0].chains[0].residues[0].seq, 12345);
    assert_eq!(back.models[0].chains[0].residues[0].atoms[0].serial, 123456);
    assert_eq!(back.models[0].chains[0].id, "LONG");
}

#[test]
fn pdb_periodic_table() {
    assert_eq!(atomic_number("H"), Some(1));
    assert_eq!(atomic_number("ZN"), Some(30));
    assert_eq!(atomic_number("Se"), Some(34));
    assert_eq!(atomic_number("br"), Some(35));
    assert_eq!(atomic_number("I"), Some(53));
    assert_eq!(atomic_number("Og"), Some(118));
    assert_eq!(atomic_number("D"), Some(1));
    assert_eq!(atomic_number("X"), None);
    assert_eq!(canonical_element("FE"), Some("Fe"));
}

/// Standard columns: names of 1-letter elements from column 14, 2-letter elements and
/// 4-character or digit-led names from column 13, segment IDs for multi-character chains,
/// 4-letter residue names into column 21, element right-justified in 77-78.
#[test]
fn pdb_writer_columns() {
    let d = tempfile::tempdir().unwrap();
    let mut lines = LEFT_AND_IONS[..2].to_vec();
    lines.extend_from_slice(&LEFT_AND_IONS[6..7]);
    lines.extend_from_slice(&CHARMM[9..11]);
    lines.extend_from_slice(&CHARMM[12..13]);
    let s = read_pdb(write_tmp(&d, "in.pdb", &lines.join("\n"))).unwrap();
    let text = pdb_text(&s, std::path::Path::new("out.pdb")).unwrap();
    let want = "\
ATOM     20  N   ALA B   3      10.000  -1.250   0.500  1.00  0.00           N
ATOM     21  CA  ALA B   3      11.000  -1.250   0.500  1.00  0.00           C
HETATM   30 CA    CA B 101      -5.000  -5.000  -5.000  1.00  0.00          CA
TER      31       CA B 101
ATOM      9 HG11 HSE     2       4.000   1.000   2.000  1.00  0.00      PROA H
ATOM     10 1HB  HSE     2       4.500   1.000   2.000  1.00  0.00      PROA H
TER      11      HSE     2
ATOM     12  OH2 TIP3    3       9.000   9.000   9.000  1.00  0.00      WAT  O
TER      13      TIP3    3
END
";
    assert_eq!(text, want);
}

/// Left-justified names from CHARMM-style files: cysteine SG and methionine SD are sulfur,
/// not seaborgium; SE of selenomethionine is selenium.
#[test]
fn pdb_left_justified_sulfur_is_not_seaborgium() {
    let text = "\
ATOM      1 N    CYS    77     -15.069  23.057   4.591  1.00103.03      4AKE
ATOM      2 CA   CYS    77     -13.741  23.313   5.122  1.00 96.29      4AKE
ATOM      3 SG   CYS    77     -12.836  21.072   3.742  1.00 99.64      4AKE
ATOM      4 N    MSE    78     -11.069  23.057   4.591  1.00103.03      4AKE
ATOM      5 CA   MSE    78     -10.741  23.313   5.122  1.00 96.29      4AKE
ATOM      6 SE   MSE    78      -9.836  21.072   3.742  1.00 99.64      4AKE
";
    let s = cryoforge_io::pdb::parse_pdb(text.as_bytes(), std::path::Path::new("left.pdb")).unwrap();
    let atoms: Vec<_> = s.models[0].chains.iter().flat_map(|c| &c.residues).flat_map(|r| &r.atoms).collect();
    let el: Vec<&str> = atoms.iter().map(|a| a.element.as_str()).collect();
    assert_eq!(
        el,
        ["N", "C", "S", "N", "C", "SE"].map(|e| if e == "SE" { atoms[5].element.as_str() } else { e })
    );
    assert!(atoms[2].element.eq_ignore_ascii_case("S"), "{}", atoms[2].element);
    assert!(atoms[5].element.eq_ignore_ascii_case("Se"), "{}", atoms[5].element);
}
