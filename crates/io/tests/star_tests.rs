//! RELION STAR reader/writer and RELION semantics: real files from the shared test
//! data (skipped with a notice when absent), synthetic files for syntax and
//! errors, and property tests (fuzzing and write→read round trips).

use cryoforge_io::star::{split_image_name, RelionParticles, RelionVersion, StarFile, StarTable};
use cryoforge_io::test_data_file;
use proptest::prelude::*;

fn parse(text: &str) -> StarFile {
    StarFile::parse_str(text, "t.star").unwrap()
}

fn parse_err(text: &str) -> String {
    StarFile::parse_str(text, "t.star").unwrap_err().to_string()
}

fn round_trip(s: &StarFile) -> StarFile {
    let text = s.to_text().unwrap();
    StarFile::parse_str(&text, "rt.star").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn assert_close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} != {b}");
}

/// A small RELION 3.1 file with two optics groups, particles before optics.
const TWO_GROUPS: &str = "\
# version 30001

data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnOpticsGroup #3
000001@stack.mrcs 10000.5 2
000002@stack.mrcs 12000 1
000003@sub/other.mrcs 13000 2

# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnVoltage #5
1 opticsGroup1 1.5 128 300
2 opticsGroup2 2.0 96 200
";

// ---------------------------------------------------------------------------
// Real files
// ---------------------------------------------------------------------------

#[test]
fn star_relion31_optics_first() {
    let Some(p) = test_data_file("relion31_optics_first", "cryodrgn/relion31.star") else { return };
    let s = StarFile::read(&p).unwrap();
    let names: Vec<&str> = s.blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["optics", "particles"]);
    let o = &s.block("optics").unwrap().table;
    assert_eq!((o.n_rows(), o.n_columns()), (1, 9));
    assert_eq!(o.line(0), Some(16));
    assert_eq!(o.get_str(0, "rlnOpticsGroupName").unwrap(), "opticsGroup1");
    let pt = &s.block("data_particles").unwrap().table;
    assert_eq!((pt.n_rows(), pt.n_columns()), (5, 26));
    assert_eq!(pt.column_names()[21], "rlnImageName");
    assert_eq!(pt.get_f64(0, "rlnDefocusU").unwrap(), 13108.082418);
    assert_eq!(pt.get_f64(4, "_rlnAngleRot").unwrap(), 162.855018);
    assert_eq!(pt.get_str(2, 21).unwrap(), "000003@relion31.mrcs");

    let rp = RelionParticles::from_star(s).unwrap();
    assert_eq!(rp.version(), RelionVersion::Relion31);
    assert_eq!(rp.n_particles(), 5);
    for r in 0..5 {
        assert_eq!(rp.image_name(r).unwrap(), (r, "relion31.mrcs".to_string()));
        assert_eq!(rp.pixel_size(r).unwrap(), Some(2.806));
        assert_eq!(rp.image_size(r).unwrap(), Some(256));
        assert_eq!(rp.f64(r, "rlnVoltage").unwrap(), 300.0);
    }
    assert_eq!(rp.f64(1, "rlnOriginXAngst").unwrap(), -0.25248);
}

/// The optics-first and particles-first files must give the same value for every
/// particle column and every optics column of every particle.
#[test]
fn star_relion31_block_order_does_not_matter() {
    let (Some(a), Some(b)) = (
        test_data_file("relion31_block_order", "cryodrgn/relion31.star"),
        test_data_file("relion31_block_order", "cryodrgn/relion31.v2.star"),
    ) else {
        return;
    };
    let a = RelionParticles::read(a).unwrap();
    let b = RelionParticles::read(b).unwrap();
    assert_eq!(b.star().blocks[0].name, "particles");
    assert_eq!(a.n_particles(), b.n_particles());
    let mut cols: Vec<String> = a.particles().column_names().iter().map(|s| s.to_string()).collect();
    cols.extend(a.optics().unwrap().column_names().iter().map(|s| s.to_string()));
    assert_eq!(cols.len(), 35);
    for r in 0..a.n_particles() {
        for c in &cols {
            let va = a.value(r, c).unwrap();
            assert!(va.is_some(), "row {r} column {c} missing");
            assert_eq!(va, b.value(r, c).unwrap(), "row {r} column {c}");
        }
        assert_eq!(a.image_name(r).unwrap(), b.image_name(r).unwrap());
        assert_eq!(a.pixel_size(r).unwrap(), b.pixel_size(r).unwrap());
        assert_eq!(a.image_size(r).unwrap(), b.image_size(r).unwrap());
    }
    assert_eq!(a.column_f64("rlnAmplitudeContrast").unwrap(), vec![0.1; 5]);
    assert_eq!(a.column_f64("rlnDefocusV").unwrap(), b.column_f64("rlnDefocusV").unwrap());
}

#[test]
fn star_relion30_pfcrt() {
    let Some(p) = test_data_file("relion30_pfcrt", "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    else {
        return;
    };
    let rp = RelionParticles::read(&p).unwrap();
    assert_eq!(rp.version(), RelionVersion::Relion30);
    assert_eq!(rp.particles_block_name(), "images");
    assert_eq!(rp.n_particles(), 5);
    assert!(rp.optics().is_none());
    for r in 0..5 {
        // 1.035 µm detector pixel · 1e4 / 10000× magnification.
        assert_close(rp.pixel_size(r).unwrap().unwrap(), 1.035);
        assert_eq!(rp.image_size(r).unwrap(), None);
    }
    assert_eq!(
        rp.image_name(4).unwrap(),
        (4, "Extract/job012/FinalRefinement-OriginalParticles-PfCRT.mrcs".into())
    );
    assert_eq!(rp.f64(0, "rlnDefocusU").unwrap(), 15686.0);
    assert_eq!(rp.f64(3, "rlnAngleRot").unwrap(), -82.83045);
    assert_eq!(rp.f64(1, "rlnOriginY").unwrap(), 0.046875);
    assert_eq!(rp.value(4, "rlnImageOriginalName").unwrap(), Some("000006@J407/imported/subtracted.mrcs"));
    assert_eq!(rp.value(0, "rlnNoSuchThing").unwrap(), None);
    assert_eq!(rp.particles().line(0), Some(28));
}

#[test]
fn star_toy_star() {
    let Some(p) = test_data_file("toy_star", "cryodrgn/toy.star") else { return };
    let rp = RelionParticles::read(&p).unwrap();
    assert_eq!(rp.version(), RelionVersion::Relion30);
    assert_eq!(rp.n_particles(), 1000);
    assert_eq!(rp.particles().n_columns(), 8);
    assert_eq!(rp.pixel_size(0).unwrap(), None, "toy.star has no pixel size: the caller asks for --apix");
    assert_eq!(rp.image_name(999).unwrap(), (999, "toy_projections.mrcs".into()));
    assert_eq!(rp.column_f64("rlnPhaseShift").unwrap(), vec![90.0; 1000]);
    assert_eq!(rp.f64(10, "rlnSphericalAberration").unwrap(), 0.001);
    assert_eq!(rp.particles().line(0), Some(12));
}

#[test]
fn star_real_files_round_trip() {
    let files = [
        "cryodrgn/relion31.star",
        "cryodrgn/relion31.v2.star",
        "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star",
        "cryodrgn/toy.star",
    ];
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let Some(p) = test_data_file("real_files_round_trip", f) else { continue };
        let s = StarFile::read(&p).unwrap();
        let out = dir.path().join("out.star");
        s.write(&out).unwrap();
        let back = StarFile::read(&out).unwrap();
        assert_eq!(s, back, "{f}");
        // Writing is deterministic: writing the re-read file gives the same text.
        assert_eq!(std::fs::read_to_string(&out).unwrap(), back.to_text().unwrap(), "{f}");
        assert!(std::fs::read_to_string(&out).unwrap().contains("# version 30001\n\ndata_"));
    }
}

// ---------------------------------------------------------------------------
// Syntax
// ---------------------------------------------------------------------------

#[test]
fn star_syntax_features() {
    let text = "# a comment line\r\n\r\ndata_\r\nloop_ \r\n_rlnA #1 \r\n_rlnB # the second\r\n\
                _rlnC\r\n# comment between rows\r\n  1   'two words'   \"\"  \r\n\
                x\t\"it's\" 'say \"hi\"' # trailing comment\r\n\
                3 a\"b c'd\r\n\r\ndata_general\n_rlnKey   \"a b\" \n_rlnN 7\n  _rlnEmpty ''";
    let s = parse(text);
    assert_eq!(s.blocks.len(), 2);
    let t = &s.block("").unwrap().table;
    assert_eq!(t.column_names(), ["rlnA", "rlnB", "rlnC"]);
    assert_eq!(t.n_rows(), 3);
    assert_eq!(t.column_str("rlnA").unwrap(), ["1", "x", "3"]);
    assert_eq!(t.column_str("rlnB").unwrap(), ["two words", "it's", "a\"b"]);
    assert_eq!(t.column_str("rlnC").unwrap(), ["", "say \"hi\"", "c'd"]);
    assert_eq!((t.line(0), t.line(1), t.line(2)), (Some(9), Some(10), Some(11)));
    let g = &s.block("general").unwrap().table;
    assert!(g.is_pairs());
    assert_eq!(g.get_str(0, "rlnKey").unwrap(), "a b");
    assert_eq!(g.get_f64(0, "rlnN").unwrap(), 7.0);
    assert_eq!(g.get_str(0, "rlnEmpty").unwrap(), "");
    let back = round_trip(&s);
    assert_eq!(back, s);
    assert!(back.block("general").unwrap().table.is_pairs());
    assert!(s.to_text().unwrap().contains("_rlnKey   \"a b\"\n"), "{}", s.to_text().unwrap());
}

#[test]
fn star_pairs_errors_name_the_key_line() {
    let s = parse("data_general\n\n_rlnA 1\n_rlnB abc\n");
    let e = s.blocks[0].table.get_f64(0, "rlnB").unwrap_err().to_string();
    assert_eq!(e, "t.star: line 4, field rlnB: cannot parse \"abc\" as a number");
}

#[test]
fn star_writer_quotes_what_needs_quoting() {
    let vals = [
        "",
        "a b",
        "#x",
        "_x",
        "data_x",
        "DATA_y",
        "loop_",
        "stop_",
        "save_a",
        "global_",
        "'q",
        "\"q",
        "a\" b",
        "x' y",
        "tab\there",
        ";semi",
        "$ref",
        "plain",
        "a#b",
        "ünïcödé",
        "ends\"",
        "a'\"b",
    ];
    let mut t = StarTable::new();
    t.set_column("rlnV", vals).unwrap();
    t.set_column("rlnW", vals.iter().rev()).unwrap();
    let mut s = StarFile::new();
    s.push_block("data_x", t);
    let back = round_trip(&s);
    assert_eq!(back, s);
    assert_eq!(back.blocks[0].table.column_str("rlnV").unwrap(), vals);
}

#[test]
fn star_unwritable_values_are_errors() {
    let mut t = StarTable::new();
    t.set_column("rlnV", ["ok", "line\nbreak"]).unwrap();
    let mut s = StarFile::new();
    s.push_block("x", t);
    let e = s.to_text().unwrap_err().to_string();
    assert!(e.contains("index 1, field rlnV") && e.contains("cannot be written"), "{e}");
    let mut t = StarTable::new();
    t.set_column("rlnV", ["a\" b' c"]).unwrap();
    let mut s = StarFile::new();
    s.push_block("x", t);
    assert!(s.to_text().is_err());
    // Nothing is left behind by a failed atomic write.
    let d = tempfile::tempdir().unwrap();
    assert!(s.write(d.path().join("o.star")).is_err());
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------
// Accessors and editing
// ---------------------------------------------------------------------------

#[test]
fn star_edit_columns_and_select_rows() {
    let mut s = parse(TWO_GROUPS);
    let t = &mut s.block_mut("particles").unwrap().table;
    assert!(t.has_column("_rlnDefocusU") && !t.has_column("rlnDefocusV"));
    t.set_column_f64("rlnDefocusV", &[1.0, 0.1, 1e-7]).unwrap();
    t.set_column("rlnDefocusU", ["1", "2", "3"]).unwrap(); // replace keeps position
    assert_eq!(t.column_names(), ["rlnImageName", "rlnDefocusU", "rlnOpticsGroup", "rlnDefocusV"]);
    assert_eq!(t.column_f64("rlnDefocusV").unwrap(), [1.0, 0.1, 1e-7]);
    let e = t.set_column("rlnX", ["1"]).unwrap_err().to_string();
    assert!(e.contains("field rlnX") && e.contains("1 values given for a table of 3 rows"), "{e}");
    assert!(t.remove_column("rlnDefocusV") && !t.remove_column("rlnDefocusV"));
    t.push_row(&["000009@s.mrcs", "9", "1"]).unwrap();
    assert_eq!(t.n_rows(), 4);
    assert_eq!(t.line(3), None);
    let e = t.push_row(&["a"]).unwrap_err().to_string();
    assert!(e.contains("1 values but the table has 3 columns"), "{e}");

    let sub = t.select_rows(&[2, 0, 2]).unwrap();
    assert_eq!(
        sub.column_str(0).unwrap(),
        ["000003@sub/other.mrcs", "000001@stack.mrcs", "000003@sub/other.mrcs"]
    );
    assert_eq!(sub.line(1), Some(9), "a selected row keeps its source line");
    let e = t.select_rows(&[7]).unwrap_err().to_string();
    assert!(e.contains("index 7") && e.contains("4 rows"), "{e}");
    let e = t.get_str(0, 9usize).unwrap_err().to_string();
    assert!(e.contains("column index 9 out of range"), "{e}");
}

#[test]
fn star_built_table_errors_use_row_index() {
    let mut t = StarTable::new();
    t.set_column("rlnA", ["1", "zz"]).unwrap();
    let mut s = StarFile::new();
    s.push_block("new", t);
    let e = s.blocks[0].table.get_f64(1, "rlnA").unwrap_err().to_string();
    assert!(e.contains("index 1, field rlnA: cannot parse \"zz\" as a number"), "{e}");
    // A two-row table cannot become a key-value block.
    assert!(s.blocks[0].table.clone().set_pairs(true).is_err());
}

#[test]
fn star_several_optics_groups_particles_first() {
    let rp = RelionParticles::from_star(parse(TWO_GROUPS)).unwrap();
    assert_eq!(rp.version(), RelionVersion::Relion31);
    assert_eq!(rp.pixel_size(0).unwrap(), Some(2.0));
    assert_eq!(rp.pixel_size(1).unwrap(), Some(1.5));
    assert_eq!(rp.image_size(2).unwrap(), Some(96));
    assert_eq!(rp.value(1, "rlnOpticsGroupName").unwrap(), Some("opticsGroup1"));
    assert_eq!(rp.f64(0, "rlnVoltage").unwrap(), 200.0);
    assert_eq!(rp.image_name(2).unwrap(), (2, "sub/other.mrcs".into()));
    assert_eq!(rp.optics_row(1).unwrap(), Some(0));

    // Subsets keep the optics table.
    let sub = RelionParticles::from_star(round_trip(&rp.select(&[2]).unwrap())).unwrap();
    assert_eq!(sub.n_particles(), 1);
    assert_eq!(sub.optics().unwrap().n_rows(), 2);
    assert_eq!(sub.pixel_size(0).unwrap(), Some(2.0));
    assert_eq!(sub.image_name(0).unwrap(), (2, "sub/other.mrcs".into()));
}

#[test]
fn star_image_names() {
    assert_eq!(split_image_name("000001@a/b.mrcs"), Ok((0, "a/b.mrcs")));
    assert_eq!(split_image_name("12@x@y.mrcs"), Ok((11, "x@y.mrcs")));
    assert_eq!(split_image_name("single.mrc"), Ok((0, "single.mrc")));
    for bad in ["", "0@a.mrcs", "@a.mrcs", "x1@a.mrcs", "1@", "-1@a", "99999999999999999999999@a"] {
        assert!(split_image_name(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[test]
fn star_error_missing_required_column() {
    let rp = RelionParticles::from_star(parse("data_particles\nloop_\n_rlnDefocusU\n1\n")).unwrap();
    let e = rp.image_name(0).unwrap_err().to_string();
    assert_eq!(e, "t.star: field rlnImageName: no column rlnImageName in data_particles");
    let s = parse("data_particles\nloop_\n_rlnDefocusU\n1\n");
    let e = s.blocks[0].table.get_str(0, "rlnImageName").unwrap_err().to_string();
    assert!(
        e.starts_with("t.star: field rlnImageName: block data_particles has no column rlnImageName"),
        "{e}"
    );
    let e = s.require_block("optics").unwrap_err().to_string();
    assert_eq!(e, "t.star: no block data_optics (blocks: data_particles)");
}

#[test]
fn star_error_wrong_value_count() {
    let e = parse_err("data_p\nloop_\n_rlnA #1\n_rlnB #2\n1 2\n3\n");
    assert_eq!(e, "t.star: line 6: row has 1 values but the loop_ of block data_p has 2 columns");
    let e = parse_err("data_p\nloop_\n_rlnA #1\n_rlnB #2\n1 2 3\n");
    assert!(e.starts_with("t.star: line 5: row has 3 values"), "{e}");
}

#[test]
fn star_error_unparsable_number() {
    let s = parse("data_p\nloop_\n_rlnDefocusU #1\n_rlnB #2\n1 2\nabc 4\n");
    let t = &s.blocks[0].table;
    assert_eq!(
        t.get_f64(1, "rlnDefocusU").unwrap_err().to_string(),
        "t.star: line 6, field rlnDefocusU: cannot parse \"abc\" as a number"
    );
    let e = t.column_f64("rlnDefocusU").unwrap_err().to_string();
    assert!(e.contains("line 6, field rlnDefocusU"), "{e}");
    let e = t.get_i64(0, "rlnDefocusU").map(|_| ()).and(t.get_i64(1, "rlnB").map(|_| ()));
    assert!(e.is_ok());
    let rp = RelionParticles::from_star(s).unwrap();
    assert!(rp.f64(1, "rlnDefocusU").unwrap_err().to_string().contains("line 6, field rlnDefocusU"));
}

#[test]
fn star_error_unknown_optics_group() {
    let text = TWO_GROUPS.replace("000002@stack.mrcs 12000 1", "000002@stack.mrcs 12000 7");
    let rp = RelionParticles::from_star(parse(&text)).unwrap();
    // Particle columns of that particle still work; optics columns name the line.
    assert_eq!(rp.f64(1, "rlnDefocusU").unwrap(), 12000.0);
    let e = rp.pixel_size(1).unwrap_err().to_string();
    assert_eq!(
        e,
        "t.star: line 10, field rlnOpticsGroup: optics group 7 is not in data_optics (groups: 1, 2)"
    );
    let text = TWO_GROUPS.replace("000002@stack.mrcs 12000 1", "000002@stack.mrcs 12000 one");
    let rp = RelionParticles::from_star(parse(&text)).unwrap();
    let e = rp.value(1, "rlnVoltage").unwrap_err().to_string();
    assert!(e.contains("line 10, field rlnOpticsGroup: cannot parse \"one\" as an integer"), "{e}");
    // Duplicate group numbers in data_optics.
    let text = TWO_GROUPS.replace("2 opticsGroup2", "1 opticsGroup2");
    let e = RelionParticles::from_star(parse(&text)).unwrap_err().to_string();
    assert!(e.contains("line 24, field rlnOpticsGroup: optics group 1 appears twice"), "{e}");
}

#[test]
fn star_error_malformed_image_name() {
    for (name, want) in
        [("0@s.mrcs", "image index 0"), ("abc@s.mrcs", "malformed image name"), ("5@", "no file")]
    {
        let text = format!("data_\nloop_\n_rlnImageName\n1@ok.mrcs\n{name}\n");
        let rp = RelionParticles::from_star(parse(&text)).unwrap();
        assert_eq!(rp.image_name(0).unwrap(), (0, "ok.mrcs".into()));
        let e = rp.image_name(1).unwrap_err().to_string();
        assert!(e.starts_with("t.star: line 5, field rlnImageName: ") && e.contains(want), "{e}");
    }
}

#[test]
fn star_error_empty_file_or_no_block() {
    for text in ["", "\n\n", "# only a comment\n# version 30001\n"] {
        assert_eq!(parse_err(text), "t.star: no data_ block found (empty or not a STAR file)");
    }
    assert_eq!(parse_err("\n1 2 3\ndata_x\n"), "t.star: line 2: text before the first data_ block");
    let e = RelionParticles::from_star(parse("data_a\ndata_b\n")).unwrap_err().to_string();
    assert!(e.contains("no particle table"), "{e}");
}

#[test]
fn star_error_loop_without_columns() {
    assert_eq!(parse_err("data_x\n\nloop_\n1 2\n"), "t.star: line 3: loop_ in block data_x has no columns");
    assert_eq!(
        parse_err("data_x\nloop_\n\ndata_y\n"),
        "t.star: line 2: loop_ in block data_x has no columns"
    );
    assert_eq!(parse_err("data_x\nloop_\n"), "t.star: line 2: loop_ in block data_x has no columns");
}

#[test]
fn star_error_other_syntax() {
    let cases = [
        ("data_x\nloop_\n_rlnA\n'abc\n", "line 4: unterminated quoted value"),
        ("data_x\nloop_\n_rlnA\n_rlnA\n", "line 4: duplicate column _rlnA (first at line 3)"),
        ("data_x\nloop_\n_rlnA\n1\n_rlnB\n", "line 5: _rlnB after the rows of the loop_ at line 2"),
        ("data_x\nloop_\n_rlnA 5\n", "line 3: unexpected value \"5\" after column name _rlnA"),
        ("data_x\n_rlnA\n", "line 2: key _rlnA needs exactly one value, found 0"),
        ("data_x\n_rlnA 1\nloop_\n", "line 3: block data_x already has a table"),
        ("data_x\n_rlnA 1\n2\n", "line 3: value \"2\" outside a loop_"),
        ("data_x extra\n", "line 1: unexpected \"extra\" after the block name"),
        ("data_x\nloop_\n_a\n;text\n", "line 4: unsupported STAR construct"),
        ("_rlnA 1\n", "line 1: _rlnA before the first data_ block"),
    ];
    for (text, want) in cases {
        let e = parse_err(text);
        assert!(e.starts_with(&format!("t.star: {want}")), "{text:?}: {e}");
    }
    let e = StarFile::parse_bytes(b"data_x\nloop_\n_a\n\xff\n", "t.star").unwrap_err().to_string();
    assert_eq!(e, "t.star: line 4: not valid UTF-8 text");
    let e = StarFile::read("/nonexistent/x.star").unwrap_err().to_string();
    assert!(e.starts_with("/nonexistent/x.star: cannot read STAR file"), "{e}");
}

#[test]
fn star_error_row_out_of_range() {
    let rp = RelionParticles::from_star(parse(TWO_GROUPS)).unwrap();
    let e = rp.f64(3, "rlnDefocusU").unwrap_err().to_string();
    assert_eq!(e, "t.star: index 3: row 3 out of range: block data_particles has 3 rows");
}

// ---------------------------------------------------------------------------
// Regressions found by the fuzzers below
// ---------------------------------------------------------------------------

#[test]
fn star_fuzz_regressions() {
    // (none found so far: the properties below ran 100 000 cases each)
    for text in ["data_", "data_\nloop_\n_", "data_\n_ ''", "data_\n_a\"", "\u{feff}data_x\n_a 1"] {
        if let Ok(s) = StarFile::parse_str(text, "f.star") {
            assert_eq!(round_trip(&s), s);
        }
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// Exercise every accessor on whatever parsed; nothing may panic.
fn poke(s: &StarFile) {
    for b in &s.blocks {
        let t = &b.table;
        for c in 0..t.n_columns() {
            let _ = t.column_f64(c);
            let _ = t.column_str(c);
        }
    }
    if let Ok(rp) = RelionParticles::from_star(s.clone()) {
        let cols: Vec<String> = rp.particles().column_names().iter().map(|c| c.to_string()).collect();
        for r in 0..rp.n_particles().min(50) {
            let _ = rp.image_name(r);
            let _ = rp.pixel_size(r);
            let _ = rp.image_size(r);
            let _ = rp.optics_row(r);
            for c in &cols {
                let _ = rp.f64(r, c);
            }
        }
        let _ = rp.select(&[0]);
    }
}

fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(pos, byte, op) in edits {
        let i = if v.is_empty() { 0 } else { pos % (v.len() + 1) };
        match op % 4 {
            0 if i < v.len() => v[i] = byte,
            1 => v.insert(i, byte),
            2 if i < v.len() => {
                v.remove(i);
            }
            _ => {
                // Insert a STAR-significant character where it hurts most.
                let special = [b'\n', b'\'', b'"', b'#', b'_', b' ', b'@', b'\r'];
                v.insert(i, special[byte as usize % special.len()]);
            }
        }
    }
    v
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

proptest! {
    // PROPTEST_CASES=100000 for a long fuzzing run; failures become regression tests above.
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn star_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(s) = StarFile::parse_bytes(&bytes, "fuzz.star") {
            poke(&s);
        }
    }

    #[test]
    fn star_mutations_never_panic_and_round_trip(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..10)) {
        let bytes = mutate(TWO_GROUPS.as_bytes(), &edits);
        if let Ok(s) = StarFile::parse_bytes(&bytes, "fuzz.star") {
            poke(&s);
            // Whatever parses must write and read back to the same content.
            let text = s.to_text().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = StarFile::parse_str(&text, "rt.star").map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn star_generated_tables_round_trip(
        cols in proptest::collection::vec("[a-zA-Z0-9_]{0,8}", 1..5),
        cells in proptest::collection::vec("[ -~\t\u{e9}]{0,6}", 0..40),
        pairs in any::<bool>(),
    ) {
        let mut names: Vec<String> = Vec::new();
        for c in cols {
            let c = format!("rln{c}");
            if !names.contains(&c) { names.push(c); }
        }
        let n_rows = if pairs { 1 } else { cells.len() / names.len() };
        let mut t = StarTable::new();
        for (i, n) in names.iter().enumerate() {
            let vals: Vec<&str> = (0..n_rows).map(|r| cells.get(r * names.len() + i).map(|s| s.as_str()).unwrap_or("")).collect();
            t.set_column(n, vals).unwrap();
        }
        if pairs { t.set_pairs(true).unwrap(); }
        let mut s = StarFile::new();
        s.push_block("gen", t);
        match s.to_text() {
            Ok(text) => {
                let back = StarFile::parse_str(&text, "rt.star").map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                prop_assert_eq!(back, s);
            }
            // Only values no STAR quoting can hold may be refused.
            Err(_) => {
                let unquotable = |c: &String| {
                    (c.contains("\" ") || c.contains("\"\t")) && (c.contains("' ") || c.contains("'\t"))
                };
                let any_unquotable = cells.iter().any(unquotable);
                prop_assert!(any_unquotable);
            }
        }
    }
}
