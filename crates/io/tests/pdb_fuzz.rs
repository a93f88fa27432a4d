//! The PDB and mmCIF readers never panic on mutated input.

use cryoforge_io::pdb::*;
use proptest::prelude::*;
use std::path::Path;

const PDB: &str = "\
MODEL        1
ATOM      1  N   HSD     1       0.000   1.000   2.000  1.00  0.00      PROA
ATOM      2 HG11 HSD     1       0.500   1.500   2.500  1.00  0.00      PROA
ATOM      3  CA ASER A   5       1.000   1.000   2.000  0.60  0.00           C
ATOM      4  CA BSER A   5       1.100   1.000   2.000  0.40  0.00           C
TER
HETATM    5 CA    CA B 101      -5.000  -5.000  -5.000  1.00  0.00          CA
ATOM      6  C1'   A C   1      22.000   0.000  -0.125  1.00  0.00           C
ATOM      7 N    ALA B   3      10.000  -1.250   0.500
ENDMDL
END
";

const CIF: &str = "data_x\nloop_\n_atom_site.group_PDB\n_atom_site.type_symbol\n_atom_site.label_atom_id\n\
_atom_site.label_comp_id\n_atom_site.label_asym_id\n_atom_site.label_seq_id\n_atom_site.Cartn_x\n\
_atom_site.Cartn_y\n_atom_site.Cartn_z\nATOM C CA ALA A 1 1.0 2.0 3.0\nATOM C \"C1'\" U B 2 1.5 2 3\n\
_x.note\n;multi-line\ntext\n;\n";

fn check(text: &[u8]) {
    for s in [parse_pdb(text, Path::new("f.pdb")), parse_mmcif(text, Path::new("f.pdb"))] {
        match s {
            Ok(s) => {
                for m in &s.models {
                    let _ = anchor_atoms(m);
                }
                let _ = pdb_text(&s, Path::new("f.pdb"));
            }
            Err(e) => assert!(e.to_string().starts_with("f.pdb")),
        }
    }
}

#[test]
fn pdb_seeds_parse() {
    assert_eq!(parse_pdb(PDB.as_bytes(), Path::new("s")).unwrap().models[0].atom_count(), 6);
    assert_eq!(parse_mmcif(CIF.as_bytes(), Path::new("s")).unwrap().models[0].atom_count(), 2);
}

/// A quote before the first tag once left the loop without columns (a division by zero,
/// found by the fuzz test below on CI).
#[test]
fn cif_quoted_first_tag_is_an_error() {
    let text = CIF.replacen("_atom_site.group_PDB", "\"_atom_site.group_PDB", 1);
    check(text.as_bytes());
    let e = parse_mmcif(text.as_bytes(), Path::new("f.cif")).unwrap_err().to_string();
    assert!(e.starts_with("f.cif"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, .. ProptestConfig::default() })]

    #[test]
    fn pdb_mutated_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        cif in any::<bool>(),
    ) {
        let mut b = if cif { CIF.as_bytes().to_vec() } else { PDB.as_bytes().to_vec() };
        for (idx, byte, kind) in edits {
            if b.is_empty() { break; }
            let i = idx.index(b.len());
            match kind {
                0 => b[i] = byte,
                1 => { b.truncate(i); }
                2 => b.insert(i, byte),
                _ => { b.remove(i); }
            }
        }
        check(&b);
    }

    #[test]
    fn pdb_random_lines_never_panic(lines in proptest::collection::vec("(ATOM  |HETATM|TER|MODEL|ENDMDL)[ -~]{0,85}", 0..12)) {
        check(lines.join("\n").as_bytes());
    }
}
