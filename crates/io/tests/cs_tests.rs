//! cryoSPARC .cs reader/writer: the two real files of the shared test data
//! (skipped with a notice when absent), byte-exact round trips, the builder, a
//! check that numpy loads what we write (skipped when numpy is absent), malformed
//! inputs, and fuzzing.

use cryoforge_io::cs::{ByteOrder, CsBuilder, CsFile, CsType};
use cryoforge_io::test_data_file;
use proptest::prelude::*;

/// An npy v1.0 file from a header dict text and raw records (padding as numpy).
fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    h.push_str(&" ".repeat(63 - (10 + h.len()) % 64));
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend((h.len() as u16).to_le_bytes());
    v.extend(h.as_bytes());
    v.extend(data);
    v
}

fn err(bytes: Vec<u8>) -> String {
    CsFile::from_bytes(bytes, "x.cs").unwrap_err().to_string()
}

fn f(v: f32) -> f64 {
    v as f64
}

/// A small file with the usual kinds of fields, made with the builder.
fn sample() -> CsFile {
    CsBuilder::new(3)
        .add_u64("uid", &[u64::MAX, 1, 2_714_306_824_294_111_763])
        .add_bytes("blob/path", 12, &[">J1/a.mrcs", "J1/bb.mrcs", "twelve_bytes"])
        .add_u32("blob/idx", &[0, 7, 4_000_000_000])
        .add_u32_vec("blob/shape", 2, &[64, 64, 64, 64, 128, 128])
        .add_f32("blob/psize_A", &[1.5, 2.25, -0.0])
        .add_f32_vec(
            "alignments3D/pose",
            3,
            &[0.1, 0.2, 0.3, 1.0, 2.0, 3.0, -1.0, f32::MAX, f32::MIN_POSITIVE],
        )
        .add_f64("ctf/df1_A", &[12345.678, 0.0, 1e300])
        .add_i32("alignments_class_0/class", &[-1, 0, 5])
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Real files (values read with numpy 2.4: `np.load(f)[row][field]`)
// ---------------------------------------------------------------------------

#[test]
fn cs_refinement_file() {
    let Some(p) = test_data_file("refinement_file", "cryodrgn/cryosparc_P12_J24_001_particles.cs") else {
        return;
    };
    let cs = CsFile::read(&p).unwrap();
    assert_eq!(cs.n_rows(), 2019);
    assert_eq!(cs.fields().len(), 34);
    assert_eq!(cs.row_size(), 246);
    let shape = cs.field("blob/shape").unwrap();
    assert_eq!(
        (shape.ty, shape.byte_order, shape.shape.clone(), shape.offset),
        (CsType::U32, ByteOrder::Little, vec![2], 101)
    );
    assert_eq!(cs.field("blob/path").unwrap().ty, CsType::Bytes(89));
    assert_eq!(cs.field("blob/path").unwrap().typestr(), "|S89");
    assert_eq!(cs.known_prefixes(), ["blob", "ctf", "alignments3D"]);
    assert!(cs.has_prefix("alignments3D") && !cs.has_prefix("alignments2D"));

    // Row 0, as numpy prints it.
    assert_eq!(cs.get_u64(0, "uid", 0).unwrap(), 15494748553812943456);
    assert_eq!(
        cs.get_str(0, "blob/path").unwrap(),
        "J19/extract/20150917_05196_DNA-TET-25k-DE20_raw.region_000.sum-all_003-072_particles.mrc"
    );
    assert_eq!(cs.get_str(0, "ctf/type").unwrap(), "ctffind4");
    assert_eq!(cs.get_f64(0, "blob/idx", 0).unwrap(), 0.0);
    assert_eq!(cs.get_f64(0, "blob/psize_A", 0).unwrap(), f(2.95));
    assert_eq!(cs.get_f64(0, "ctf/accel_kv", 0).unwrap(), 200.0);
    assert_eq!(cs.get_f64(0, "ctf/amp_contrast", 0).unwrap(), f(0.07));
    assert_eq!(cs.get_f64(0, "ctf/df1_A", 0).unwrap(), f(45591.37));
    assert_eq!(cs.get_f64(0, "ctf/df2_A", 0).unwrap(), f(45309.793));
    assert_eq!(cs.get_f64(0, "ctf/df_angle_rad", 0).unwrap(), f(-1.3636448));
    let poses = cs.column_vec("alignments3D/pose").unwrap();
    assert_eq!(poses.len(), 2019);
    assert_eq!(poses[0], [f(2.3386633), f(-0.25595567), f(-1.2236784)]);
    assert_eq!(cs.column_vec("alignments3D/shift").unwrap()[0], [f(11.334375), f(-1.828125)]);
    assert_eq!(cs.column_vec("blob/shape").unwrap()[7], [180.0, 180.0]);

    // Last row.
    assert_eq!(cs.get_u64(2018, "uid", 0).unwrap(), 2601904955171077498);
    assert_eq!(cs.get_u64(2018, "blob/idx", 0).unwrap(), 124);
    assert_eq!(cs.column_f64("ctf/df1_A").unwrap()[2018], f(22815.318));
    assert_eq!(cs.get_f64(2018, "ctf/df_angle_rad", 0).unwrap(), f(0.11439586));
    assert_eq!(poses[2018], [f(0.55047995), f(3.2572987), f(-1.5672901)]);
    assert_eq!(cs.get_f64(2018, "alignments3D/shift", 1).unwrap(), f(8.296875));
    assert_eq!(cs.column_u64("uid").unwrap()[2018], 2601904955171077498);
}

#[test]
fn cs_import_file() {
    let Some(p) = test_data_file("import_file", "cryodrgn/cryosparc_J2_particles_exported.cs") else {
        return;
    };
    let cs = CsFile::read(&p).unwrap();
    assert_eq!(cs.n_rows(), 22);
    assert_eq!(cs.row_size(), 282);
    assert_eq!(cs.known_prefixes(), ["blob", "ctf", "alignments2D"]);
    let paths = cs.column_str("blob/path").unwrap();
    assert!(paths.iter().all(|p| p.starts_with('>')));
    assert_eq!(paths[0], ">J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs");
    assert_eq!(cs.get_u64(0, "uid", 0).unwrap(), 2714306824294111763);
    assert_eq!(cs.get_u64(0, "blob/import_sig", 0).unwrap(), 1467678264753543796);
    assert_eq!(cs.get_str(0, "ctf/type").unwrap(), "imported");
    assert_eq!(cs.get_f64(0, "blob/psize_A", 0).unwrap(), f(1.3450001));
    assert_eq!(cs.get_f64(0, "ctf/cs_mm", 0).unwrap(), f(2.7));
    assert_eq!(cs.get_f64(0, "ctf/df1_A", 0).unwrap(), f(16412.178));
    assert_eq!(cs.get_f64(0, "ctf/df2_A", 0).unwrap(), f(16236.26));
    assert_eq!(cs.get_f64(0, "ctf/df_angle_rad", 0).unwrap(), f(0.86163914));
    assert_eq!(cs.field("ctf/tetra_A").unwrap().shape, [4]);
    assert_eq!(cs.column_vec("ctf/anisomag").unwrap()[0], [0.0; 4]);
    assert_eq!(cs.column_vec("alignments2D/shift").unwrap()[0], [0.0, 12.0]);
    assert_eq!(cs.get_f64(0, "alignments2D/pose", 0).unwrap(), f(5.8985004));
    assert_eq!(cs.get_f64(0, "alignments2D/alpha_min", 0).unwrap(), f(1.126687));
    assert_eq!(cs.get_u64(0, "alignments2D/class", 0).unwrap(), 4);
    assert_eq!(cs.get_u64(21, "uid", 0).unwrap(), 683087828395958158);
    assert_eq!(cs.get_u64(21, "blob/idx", 0).unwrap(), 21);
    assert_eq!(cs.get_f64(21, "alignments2D/pose", 0).unwrap(), f(1.0258262));
    assert_eq!(cs.column_vec("alignments2D/shift").unwrap()[21], [-6.0, -6.0]);
    assert_eq!(cs.column_f64("alignments2D/class").unwrap()[21], 3.0);
}

#[test]
fn cs_real_files_select_write_read_preserve_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["cryodrgn/cryosparc_P12_J24_001_particles.cs", "cryodrgn/cryosparc_J2_particles_exported.cs"]
    {
        let Some(p) = test_data_file("real_files_select_write_read", name) else { continue };
        let cs = CsFile::read(&p).unwrap();
        let rows = [5, 0, cs.n_rows() - 1, 5];
        let sub = cs.select_rows(&rows).unwrap();
        let out = dir.path().join("sub.cs");
        sub.write(&out).unwrap();
        let back = CsFile::read(&out).unwrap();
        assert_eq!(back.fields(), cs.fields());
        assert_eq!(back.n_rows(), 4);
        for (i, &r) in rows.iter().enumerate() {
            for fd in cs.fields() {
                assert_eq!(
                    back.field_bytes(i, &fd.name).unwrap(),
                    cs.field_bytes(r, &fd.name).unwrap(),
                    "{name} {}",
                    fd.name
                );
            }
        }
        // Data starts on a 64-byte boundary and the header ends with '\n'.
        let bytes = std::fs::read(&out).unwrap();
        let start = bytes.len() - back.data().len();
        assert_eq!(start % 64, 0);
        assert_eq!(bytes[start - 1], b'\n');
        // The whole file survives write → read unchanged.
        let all = dir.path().join("all.cs");
        cs.write(&all).unwrap();
        assert_eq!(CsFile::read(&all).unwrap().data(), cs.data());
    }
}

// ---------------------------------------------------------------------------
// Builder, writer
// ---------------------------------------------------------------------------

#[test]
fn cs_builder_round_trip() {
    let cs = sample();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("new.cs");
    cs.write(&p).unwrap();
    let back = CsFile::read(&p).unwrap();
    assert_eq!(back.fields(), cs.fields());
    assert_eq!(back.data(), cs.data());
    assert_eq!(back.column_u64("uid").unwrap(), [u64::MAX, 1, 2_714_306_824_294_111_763]);
    assert_eq!(back.column_str("blob/path").unwrap(), [">J1/a.mrcs", "J1/bb.mrcs", "twelve_bytes"]);
    assert_eq!(back.column_u64("blob/idx").unwrap(), [0, 7, 4_000_000_000]);
    assert_eq!(back.column_vec("blob/shape").unwrap(), [[64.0, 64.0], [64.0, 64.0], [128.0, 128.0]]);
    assert_eq!(back.column_f64("blob/psize_A").unwrap(), [1.5, 2.25, 0.0]);
    assert_eq!(back.column_vec("alignments3D/pose").unwrap()[2], [-1.0, f(f32::MAX), f(f32::MIN_POSITIVE)]);
    assert_eq!(back.column_f64("ctf/df1_A").unwrap(), [12345.678, 0.0, 1e300]);
    assert_eq!(back.column_f64("alignments_class_0/class").unwrap(), [-1.0, 0.0, 5.0]);
    assert_eq!(back.known_prefixes(), ["blob", "ctf", "alignments3D", "alignments_class_0"]);
    let e = back.get_u64(0, "alignments_class_0/class", 0).unwrap_err().to_string();
    assert!(e.contains("index 0, field alignments_class_0/class: value -1 is negative"), "{e}");
    let hdr = String::from_utf8_lossy(&std::fs::read(&p).unwrap()[10..]).to_string();
    assert!(hdr.starts_with("{'descr': [('uid', '<u8'), ('blob/path', '|S12'), ('blob/idx', '<u4'), ('blob/shape', '<u4', (2,)),"), "{hdr}");
    assert!(hdr.contains("'fortran_order': False, 'shape': (3,), }"), "{hdr}");
}

#[test]
fn cs_builder_errors() {
    let e = CsBuilder::new(2).add_u64("uid", &[1]).build().unwrap_err().to_string();
    assert_eq!(e, "<new .cs>: field uid: 1 values given, 2 rows × 1 expected");
    let e = CsBuilder::new(1).add_u32("a", &[1]).add_f32("a", &[1.0]).build().unwrap_err().to_string();
    assert!(e.contains("field a: field added twice"), "{e}");
    let e = CsBuilder::new(1).add_bytes("p", 3, &["toolong"]).build().unwrap_err().to_string();
    assert!(e.contains("index 0, field p: value of 7 bytes does not fit in |S3"), "{e}");
    let e = CsBuilder::new(2).add_f32_vec("pose", 3, &[0.0; 5]).build().unwrap_err().to_string();
    assert!(e.contains("5 values given, 2 rows × 3 expected"), "{e}");
}

#[test]
fn cs_access_errors() {
    let cs = sample();
    let e = cs.get_f64(0, "nope", 0).unwrap_err().to_string();
    assert!(e.starts_with("<new .cs>: field nope: no such field"), "{e}");
    let e = cs.get_f64(3, "uid", 0).unwrap_err().to_string();
    assert_eq!(e, "<new .cs>: index 3: row out of range: the file has 3 rows");
    let e = cs.get_f64(1, "blob/path", 0).unwrap_err().to_string();
    assert_eq!(e, "<new .cs>: index 1, field blob/path: field has dtype |S12, not a number");
    let e = cs.get_f64(1, "alignments3D/pose", 3).unwrap_err().to_string();
    assert!(e.contains("index 1, field alignments3D/pose: element 3 out of range"), "{e}");
    let e = cs.column_f64("alignments3D/pose").unwrap_err().to_string();
    assert!(e.contains("use column_vec"), "{e}");
    assert!(cs.get_str(0, "uid").unwrap_err().to_string().contains("not a string"));
    assert!(cs.get_u64(0, "blob/psize_A", 0).unwrap_err().to_string().contains("not an integer"));
    assert!(cs.select_rows(&[0, 3]).unwrap_err().to_string().contains("index 3"));
}

/// Every supported base type, both byte orders, decoded from hand-made bytes.
#[test]
fn cs_all_dtypes_and_byte_orders() {
    let header = "{'descr': [('b', '|b1'), ('i1', '|i1'), ('u1', '|u1'), ('i2', '<i2'), ('u2', '>u2'), \
                  ('i4', '>i4'), ('i8', '<i8'), ('f2', '<f2'), ('f4', '>f4'), ('f8', '<f8'), ('v', '|V3'), \
                  ('m', '<f4', (2, 2))], 'fortran_order': False, 'shape': (1,), }";
    let mut d = vec![1u8, 0xff, 0xff];
    d.extend((-2i16).to_le_bytes());
    d.extend(513u16.to_be_bytes());
    d.extend((-70000i32).to_be_bytes());
    d.extend(i64::MIN.to_le_bytes());
    d.extend(0x3c00u16.to_le_bytes()); // f16 1.0
    d.extend(1.5f32.to_be_bytes());
    d.extend(std::f64::consts::PI.to_le_bytes());
    d.extend([9, 8, 7]);
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        d.extend(v.to_le_bytes());
    }
    let cs = CsFile::from_bytes(npy(header, &d), "x.cs").unwrap();
    let g = |n: &str| cs.get_f64(0, n, 0).unwrap();
    assert_eq!(
        [g("b"), g("i1"), g("u1"), g("i2"), g("u2"), g("i4")],
        [1.0, -1.0, 255.0, -2.0, 513.0, -70000.0]
    );
    assert_eq!([g("f2"), g("f4"), g("f8")], [1.0, 1.5, std::f64::consts::PI]);
    assert_eq!(cs.get_f64(0, "i8", 0).unwrap(), i64::MIN as f64);
    assert_eq!(cs.field_bytes(0, "v").unwrap(), [9, 8, 7]);
    assert_eq!(cs.field("m").unwrap().shape, [2, 2]);
    assert_eq!(cs.column_vec("m").unwrap()[0], [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(cs.field("u2").unwrap().byte_order, ByteOrder::Big);
    // Written back with the same type strings and bytes.
    let back = CsFile::from_bytes(cs.to_bytes(), "y.cs").unwrap();
    assert_eq!(back.fields(), cs.fields());
    assert_eq!(back.data(), cs.data());
}

#[test]
fn cs_npy_versions_2_and_3() {
    let cs = sample();
    let bytes = cs.to_bytes();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    for major in [2u8, 3] {
        let mut v = b"\x93NUMPY".to_vec();
        v.extend([major, 0]);
        v.extend((hlen as u32 - 2).to_le_bytes());
        v.extend(&bytes[10..10 + hlen - 2]);
        v.extend(cs.data());
        let back = CsFile::from_bytes(v, "v.cs").unwrap();
        assert_eq!(back.data(), cs.data(), "version {major}");
    }
    // Non-latin-1 field names need version 3 (UTF-8).
    let cs = CsBuilder::new(1).add_f32("ctf/\u{3b1}\u{2603}", &[1.0]).build().unwrap();
    let bytes = cs.to_bytes();
    assert_eq!(bytes[6], 3);
    assert_eq!(CsFile::from_bytes(bytes, "u.cs").unwrap().field("ctf/\u{3b1}\u{2603}").unwrap().offset, 0);
}

/// numpy must load what we write, with the same values; with numpy ≥ 2 our
/// bytes must equal `np.save`'s exactly.
#[test]
fn cs_numpy_loads_our_files() {
    let ok = std::process::Command::new("python3").args(["-c", "import numpy"]).output();
    if !ok.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("SKIP numpy_loads_our_files: python3 with numpy not available");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ours.cs");
    let cs = sample();
    cs.write(&p).unwrap();
    let script = r#"
import io, sys, numpy as np
a = np.load(sys.argv[1])
out = [str(a.shape[0]), str(a.dtype.itemsize)]
for n in a.dtype.names:
    v = a[n]
    if v.dtype.kind == 'S':
        out.append(n + '=' + '|'.join(x.decode() for x in v))
    else:
        out.append(n + '=' + '|'.join(repr(float(x)) for x in v.reshape(-1)))
b = io.BytesIO(); np.save(b, a)
same = b.getvalue() == open(sys.argv[1], 'rb').read()
out.append('same=' + str(same or int(np.__version__.split('.')[0]) < 2))
print('\n'.join(out))
"#;
    let o = std::process::Command::new("python3").arg("-c").arg(script).arg(&p).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "3");
    assert_eq!(lines[1], cs.row_size().to_string());
    assert_eq!(lines[3], "blob/path=>J1/a.mrcs|J1/bb.mrcs|twelve_bytes");
    for fd in cs.fields().iter().filter(|f| f.ty.is_numeric()) {
        let line = lines.iter().find(|l| l.starts_with(&format!("{}=", fd.name))).unwrap();
        let np: Vec<f64> = line.split_once('=').unwrap().1.split('|').map(|x| x.parse().unwrap()).collect();
        let ours: Vec<f64> = cs.column_vec(&fd.name).unwrap().concat();
        assert_eq!(np, ours, "{}", fd.name);
    }
    assert_eq!(lines.last().unwrap(), &"same=True", "our bytes differ from np.save's");
}

// ---------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------

#[test]
fn cs_error_not_npy() {
    assert_eq!(
        err(b"hello, this is not numpy".to_vec()),
        "x.cs: not a NumPy .npy file (the \\x93NUMPY magic is missing)"
    );
    assert!(err(Vec::new()).contains("not a NumPy .npy file"));
    assert!(err(b"\x93NUMPY\x09\x00\x10\x00".to_vec()).contains("unsupported .npy format version 9.0"));
    let mut v = npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", &[0; 4]);
    v[8] = 0xff;
    v[9] = 0xff;
    assert!(err(v).contains("npy header claims 65535 bytes but the file has only"));
}

#[test]
fn cs_error_truncated() {
    let bytes = sample().to_bytes();
    let cut = bytes.len() - 10;
    let e = err(bytes[..cut].to_vec());
    let rs = sample().row_size();
    let want = format!(
        "x.cs: truncated: header says 3 rows of {rs} bytes ({} bytes of data) but only {} bytes follow the header (2 complete rows)",
        3 * rs,
        3 * rs - 10
    );
    assert_eq!(e, want);
    let Some(p) = test_data_file("error_truncated", "cryodrgn/cryosparc_P12_J24_001_particles.cs") else {
        return;
    };
    let mut b = std::fs::read(p).unwrap();
    b.truncate(b.len() - 246 * 2019 + 1000);
    let e = err(b);
    assert!(e.contains("2019 rows of 246 bytes (496674 bytes of data) but only 1000 bytes"), "{e}");
}

#[test]
fn cs_error_unsupported_dtypes() {
    let h = |descr: &str, shape: &str, fo: &str| {
        npy(&format!("{{'descr': {descr}, 'fortran_order': {fo}, 'shape': {shape}, }}"), &[0; 64])
    };
    let cases = [
        (h("[('a', '<c8')]", "(1,)", "False"), "x.cs: field a: unsupported dtype \"<c8\""),
        (h("[('a', '<U4')]", "(1,)", "False"), "x.cs: field a: unsupported dtype \"<U4\""),
        (
            h("[('uid', '<u8'), ('obj', '|O')]", "(1,)", "False"),
            "x.cs: field obj: dtype \"|O\" holds pickled Python objects, which are not supported",
        ),
        (h("'|O'", "(1,)", "False"), "x.cs: field npy header: dtype \"|O\" holds pickled Python objects"),
        (h("'<f4'", "(1,)", "False"), "x.cs: field npy header: dtype \"<f4\" is not a structured array"),
        (
            h("[('a', '<f4')]", "(1,)", "True"),
            "x.cs: field npy header: fortran_order is True: Fortran-ordered arrays are not supported",
        ),
        (
            h("[('a', '<f4')]", "(2, 3)", "False"),
            "x.cs: field npy header: shape (2, 3): a .cs file must hold a 1-D array",
        ),
        (
            h("[('a', '<f4')]", "()", "False"),
            "x.cs: field npy header: shape (): a .cs file must hold a 1-D array",
        ),
        (
            h("[('a', [('x', '<f4')])]", "(1,)", "False"),
            "x.cs: field a: nested structured fields are not supported",
        ),
        (h("[(('t', 'a'), '<f4')]", "(1,)", "False"), "x.cs: field descr[0]: field titles are not supported"),
        (h("[('a', '<f4'), ('a', '<f4')]", "(1,)", "False"), "x.cs: field a: field appears twice"),
        (h("[]", "(1,)", "False"), "x.cs: field npy header: the dtype has no fields"),
        (h("[('a', '<f4', (-1,))]", "(1,)", "False"), "x.cs: field a: negative sub-array dimension -1"),
        (h("[('a', '<f4')]", "(-5,)", "False"), "x.cs: field npy header: negative row count -5"),
        (
            npy("{'descr': [('a', '<f4')], 'shape': (1,)}", &[0; 4]),
            "x.cs: field npy header: no boolean 'fortran_order'",
        ),
        (npy("not a dict", &[]), "x.cs: field npy header: unexpected name \"not\""),
    ];
    for (bytes, want) in cases {
        let e = err(bytes);
        assert!(e.starts_with(want), "want {want}\n got {e}");
    }
}

#[test]
fn cs_fuzz_regressions() {
    // (none found so far: the properties below ran 100 000 cases each)
    let huge = npy(
        "{'descr': [('a', '<f4', (4611686018427387904, 4))], 'fortran_order': False, 'shape': (1,), }",
        &[],
    );
    assert!(err(huge).contains("too large"));
    let huge =
        npy("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (9223372036854775807,), }", &[]);
    assert!(err(huge).contains("too large"));
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// Every accessor on whatever parsed; nothing may panic.
fn poke(cs: &CsFile) {
    let _ = cs.prefixes();
    let _ = cs.known_prefixes();
    for fd in cs.fields() {
        for r in 0..cs.n_rows().min(8) {
            let _ = cs.get_str(r, &fd.name);
            let _ = cs.get_u64(r, &fd.name, 0);
            for e in 0..fd.count().min(8) {
                let _ = cs.get_f64(r, &fd.name, e);
            }
        }
        if cs.n_rows() <= 64 {
            let _ = cs.column_f64(&fd.name);
            let _ = cs.column_vec(&fd.name);
        }
    }
    if cs.n_rows() > 0 {
        if let Ok(sub) = cs.select_rows(&[cs.n_rows() - 1, 0]) {
            let back = CsFile::from_bytes(sub.to_bytes(), "rt.cs").expect("a selection must read back");
            assert_eq!(back.data(), sub.data());
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

proptest! {
    // PROPTEST_CASES=100000 for a long fuzzing run; failures become regression tests above.
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cs_mutations_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8)) {
        let mut v = sample().to_bytes();
        for (pos, byte, op) in edits {
            // Most edits land in the header, where the parsing happens.
            let i = pos % (v.len().min(400) + 1);
            match op {
                0 if i < v.len() => v[i] = byte,
                1 => v.insert(i, byte),
                _ if i < v.len() => { v.remove(i); }
                _ => {}
            }
        }
        if let Ok(cs) = CsFile::from_bytes(v, "fuzz.cs") {
            poke(&cs);
        }
    }

    #[test]
    fn cs_header_text_mutations_never_panic(pos in 0usize..400, text in "[\\[\\]\\(\\)\\{\\}',:0-9a-zA-Z<>|= -]{0,12}", del in 0usize..12) {
        let base = "{'descr': [('uid', '<u8'), ('p', '|S4'), ('s', '<u4', (2,)), ('f', '>f4')], 'fortran_order': False, 'shape': (2,), }";
        let i = pos % (base.len() + 1);
        let j = (i + del).min(base.len());
        let h = format!("{}{}{}", &base[..i], text, &base[j..]);
        if let Ok(cs) = CsFile::from_bytes(npy(&h, &[7u8; 64]), "fuzz.cs") {
            poke(&cs);
        }
    }

    #[test]
    fn cs_random_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend(tail);
        if let Ok(cs) = CsFile::from_bytes(v, "fuzz.cs") {
            poke(&cs);
        }
    }
}
