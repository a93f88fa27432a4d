//! cryoDRGN .pkl: the real files from cryoDRGN's test suite, round trips, numpy interop
//! (when python3 + numpy are available) and error messages.

use cryoforge_io::pkl::*;
use cryoforge_io::test_data_file;
use serde_json::{json, Value as J};
use std::path::Path;
use std::process::Command;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- real files ------------------------------------------------------------------------

// Pinned values below come from
//   python3 -c "import pickle; r = pickle.load(open('<file>', 'rb')); print(...)"
// with numpy 2.4.6 on the shared test data.

#[test]
fn pkl_real_pose_star_pkl_float64_tuple() {
    let Some(p) = test_data_file("pkl_real_pose_star_pkl_float64_tuple", "cryodrgn/pose.star.pkl") else {
        return;
    };
    let v = read_pickle(&p).unwrap();
    let PklValue::Tuple(t) = &v else { panic!("{v:?}") };
    let PklValue::Array(r) = &t[0] else { panic!() };
    assert_eq!(r.data.dtype_name(), "float64");
    let poses = read_poses_pkl(&p).unwrap();
    assert_eq!(poses.rots.len(), 5);
    // r[0,0,0], r[4,2,1]
    assert_eq!(poses.rots[0][0][0], -0.2830989316786162);
    assert_eq!(poses.rots[4][2][1], -0.8997840560317492);
    let tr = poses.trans.unwrap();
    assert_eq!(tr.len(), 5);
    // t[0].tolist(), t[4].tolist()
    assert_eq!(tr[0], [-0.00046876666666666666, -0.00015626666666666665]);
    assert_eq!(tr[4], [-0.00015626666666666665, 0.0006770833333333334]);
}

#[test]
fn pkl_real_pose_cs_pkl_float32_tuple() {
    let Some(p) = test_data_file("pkl_real_pose_cs_pkl_float32_tuple", "cryodrgn/pose.cs.pkl") else {
        return;
    };
    let poses = read_poses_pkl(&p).unwrap();
    assert_eq!(poses.rots.len(), 2019);
    // float(r[0,0,0]), float(r[2018,2,2]): float32 values, exact in f64
    assert_eq!(poses.rots[0][0][0], 0.5816298127174377);
    assert_eq!(poses.rots[2018][2][2], -0.526727557182312);
    let tr = poses.trans.unwrap();
    assert_eq!(tr[0], [0.06296875327825546, -0.01015624962747097]);
    assert_eq!(tr[2018], [-0.020156249403953552, 0.04609375074505806]);
}

#[test]
fn pkl_real_ctf_pkls() {
    let Some(p) = test_data_file("pkl_real_ctf_pkls", "cryodrgn/ctf1.pkl") else { return };
    let c = read_ctf_pkl(&p).unwrap();
    assert_eq!(c.len(), 5);
    // c[0].astype(float).tolist()
    assert_eq!(
        c[0],
        [
            300.0,
            1.034999966621399,
            15686.0,
            17521.400390625,
            87.62906646728516,
            300.0,
            0.0010000000474974513,
            0.10000000149011612,
            0.0
        ]
    );
    let Some(p) = test_data_file("pkl_real_ctf_pkls", "cryodrgn/ctf2.pkl") else { return };
    let c = read_ctf_pkl(&p).unwrap();
    assert_eq!(c.len(), 2019);
    assert_eq!(c[0][2], 45591.37109375);
    assert_eq!(c[2018][4], 6.5543999671936035);
    assert_eq!(c[2018][7], 0.07000000029802322);
    let Some(p) = test_data_file("pkl_real_ctf_pkls", "cryodrgn/test_ctf.pkl") else { return };
    let c = read_ctf_pkl(&p).unwrap();
    assert_eq!(c.len(), 1000);
    assert_eq!(c[0], [30.0, 1.0, 0.0, 0.0, 0.0, 300.0, 0.0010000000474974513, 0.10000000149011612, 90.0]);
}

#[test]
fn pkl_real_rotation_only_and_mixed_dtype_pkls() {
    let Some(p) = test_data_file("pkl_real_rotation_only_and_mixed_dtype_pkls", "cryodrgn/hand_rot.pkl")
    else {
        return;
    };
    let poses = read_poses_pkl(&p).unwrap();
    assert_eq!(poses.rots.len(), 100);
    assert!(poses.trans.is_none());
    assert_eq!(poses.rots[0][0][0], -0.900802493095398);
    assert_eq!(poses.rots[99][1][2], 0.4861965775489807);

    let Some(p) =
        test_data_file("pkl_real_rotation_only_and_mixed_dtype_pkls", "cryodrgn/hand_rot_trans.pkl")
    else {
        return;
    };
    let poses = read_poses_pkl(&p).unwrap(); // protocol 4
    assert_eq!(poses.rots[0][0][0], -0.6646641492843628);
    let tr = poses.trans.unwrap();
    assert_eq!(tr[0], [0.006730769295245409, 0.054807692766189575]);
    assert_eq!(tr[99], [0.05865384638309479, -0.014423076994717121]);

    let Some(p) = test_data_file("pkl_real_rotation_only_and_mixed_dtype_pkls", "cryodrgn/toy_angles.pkl")
    else {
        return;
    };
    let poses = read_poses_pkl(&p).unwrap();
    assert_eq!(poses.rots.len(), 1000);
    assert_eq!(poses.rots[0][0][0], 0.6103606224060059);
    assert_eq!(poses.rots[999][2][2], -0.9730046391487122);

    // float32 rotations with float64 translations.
    let Some(p) = test_data_file("pkl_real_rotation_only_and_mixed_dtype_pkls", "cryodrgn/toy_rot_trans.pkl")
    else {
        return;
    };
    let PklValue::Tuple(t) = read_pickle(&p).unwrap() else { panic!() };
    let (PklValue::Array(r), PklValue::Array(tt)) = (&t[0], &t[1]) else { panic!() };
    assert_eq!((r.data.dtype_name(), tt.data.dtype_name()), ("float32", "float64"));
    let poses = read_poses_pkl(&p).unwrap();
    assert_eq!(poses.rots[0][0][1], 0.7738708257675171);
    let tr = poses.trans.unwrap();
    assert_eq!(tr[0], [0.11387941896441625, -0.07255188407556956]);
    assert_eq!(tr[999], [0.0509698887462742, -0.05163754800019307]);
}

// ---- round trips -----------------------------------------------------------------------

fn sample_poses(n: usize) -> (Vec<[[f64; 3]; 3]>, Vec<[f64; 2]>) {
    let mut rots = Vec::new();
    let mut trans = Vec::new();
    for i in 0..n {
        let a = i as f64 * 0.37 + 0.1;
        let (s, c) = a.sin_cos();
        rots.push([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]);
        trans.push([0.01 * i as f64 - 0.3, -0.002 * i as f64]);
    }
    (rots, trans)
}

fn as_f32(x: f64) -> f64 {
    x as f32 as f64
}

#[test]
fn pkl_poses_round_trip_f64_bit_exact_and_f32_exact_after_rounding() {
    let d = tempfile::tempdir().unwrap();
    let (rots, trans) = sample_poses(17);
    let p = d.path().join("p64.pkl");
    write_poses_pkl_as(&p, &rots, Some(&trans), FloatDtype::F64).unwrap();
    let back = read_poses_pkl(&p).unwrap();
    assert_eq!(
        back.rots.iter().flatten().flatten().map(|x| x.to_bits()).collect::<Vec<_>>(),
        rots.iter().flatten().flatten().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(back.trans.as_deref(), Some(&trans[..]));

    let p = d.path().join("p32.pkl");
    write_poses_pkl(&p, &rots, Some(&trans)).unwrap();
    let PklValue::Tuple(t) = read_pickle(&p).unwrap() else { panic!() };
    let PklValue::Array(a) = &t[0] else { panic!() };
    assert_eq!(a.data.dtype_name(), "float32");
    assert_eq!(a.shape, vec![17, 3, 3]);
    let back = read_poses_pkl(&p).unwrap();
    for (b, r) in back.rots.iter().zip(&rots) {
        for k in 0..3 {
            for l in 0..3 {
                assert_eq!(b[k][l].to_bits(), as_f32(r[k][l]).to_bits());
            }
        }
    }
    // A float32-representable input survives a second round trip bit-exactly.
    let p2 = d.path().join("p32b.pkl");
    write_poses_pkl(&p2, &back.rots, back.trans.as_deref()).unwrap();
    assert_eq!(read_poses_pkl(&p2).unwrap(), back);
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());

    // Rotations only: the bare array.
    let p3 = d.path().join("rot.pkl");
    write_poses_pkl(&p3, &rots, None).unwrap();
    assert!(matches!(read_pickle(&p3).unwrap(), PklValue::Array(_)));
    assert!(read_poses_pkl(&p3).unwrap().trans.is_none());
}

#[test]
fn pkl_ctf_and_index_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let ctf: Vec<[f64; 9]> = (0..7)
        .map(|i| [128.0, 1.5, 15000.0 + i as f64 * 10.0, 14500.5, 33.25, 300.0, 2.7, 0.1, 0.0])
        .collect();
    let p = d.path().join("ctf.pkl");
    write_ctf_pkl(&p, &ctf).unwrap();
    let PklValue::Array(a) = read_pickle(&p).unwrap() else { panic!() };
    assert_eq!((a.data.dtype_name(), a.shape.clone()), ("float32", vec![7, 9]));
    let back = read_ctf_pkl(&p).unwrap();
    let rounded: Vec<[f64; 9]> = ctf.iter().map(|r| r.map(as_f32)).collect();
    assert_eq!(back, rounded); // float32 on disk: 2.7 comes back as 2.700000047683716

    let ind = vec![0usize, 5, 17, 1 << 40, 3];
    let p = d.path().join("ind.pkl");
    write_index_pkl(&p, &ind).unwrap();
    let PklValue::Array(a) = read_pickle(&p).unwrap() else { panic!() };
    assert_eq!(a.data, ArrayData::I64(ind.iter().map(|&x| x as i64).collect()));
    assert_eq!(read_index_pkl(&p).unwrap(), ind);
    write_index_pkl(&p, &[]).unwrap();
    assert_eq!(read_index_pkl(&p).unwrap(), Vec::<usize>::new());
}

fn general_value() -> PklValue {
    use half::f16;
    let arr = |shape: Vec<usize>, data| PklValue::Array(NdArray::new(shape, data).unwrap());
    PklValue::Dict(vec![
        (
            PklValue::Str("f32".into()),
            arr(vec![2, 3], ArrayData::F32(vec![1.5, -0.0, f32::MIN_POSITIVE, 3e38, -7.25, 1e-45])),
        ),
        (
            PklValue::Str("f64".into()),
            arr(vec![3], ArrayData::F64(vec![std::f64::consts::PI, -1e300, 5e-324])),
        ),
        (PklValue::Str("i32".into()), arr(vec![4], ArrayData::I32(vec![i32::MIN, -1, 0, i32::MAX]))),
        (PklValue::Str("u64".into()), arr(vec![2], ArrayData::U64(vec![0, u64::MAX]))),
        (PklValue::Str("i8".into()), arr(vec![2], ArrayData::I8(vec![-128, 127]))),
        (PklValue::Str("u16".into()), arr(vec![1], ArrayData::U16(vec![65535]))),
        (PklValue::Str("bool".into()), arr(vec![3], ArrayData::Bool(vec![true, false, true]))),
        (PklValue::Str("u8".into()), arr(vec![2, 2], ArrayData::U8(vec![0, 1, 254, 255]))),
        (
            PklValue::Str("f16".into()),
            arr(vec![2], ArrayData::F16(vec![f16::from_f32(0.5), f16::from_f32(-2.0)])),
        ),
        (PklValue::Str("scalar".into()), arr(vec![], ArrayData::F64(vec![2.5]))),
        (PklValue::Str("empty".into()), arr(vec![0, 3], ArrayData::F32(vec![]))),
        (
            PklValue::Str("obj".into()),
            arr(vec![2], ArrayData::Object(vec![PklValue::Int(1), PklValue::Str("a".into())])),
        ),
        (
            PklValue::Str("misc".into()),
            PklValue::List(vec![
                PklValue::None,
                PklValue::Bool(true),
                PklValue::Int(-5),
                PklValue::Int(300),
                PklValue::Int(70000),
                PklValue::Int(1 << 40),
                PklValue::Int(i64::MIN),
                PklValue::Float(-0.1),
                PklValue::Bytes(vec![0, 255, 10]),
                PklValue::Str("ünïcode".into()),
                PklValue::Tuple(vec![]),
                PklValue::Tuple(vec![PklValue::Int(1)]),
                PklValue::Tuple((0..5).map(PklValue::Int).collect()),
                PklValue::List(vec![]),
                PklValue::Dict(vec![]),
            ]),
        ),
        (PklValue::Int(7), PklValue::Tuple(vec![PklValue::Float(1.0), PklValue::Float(2.0)])),
    ])
}

#[test]
fn pkl_general_value_round_trip_bit_exact() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("v.pkl");
    let v = general_value();
    write_pickle(&p, &v).unwrap();
    let back = read_pickle(&p).unwrap();
    assert_eq!(describe(&back), describe(&v)); // bit-level (hex) comparison of floats
    assert_eq!(back, v);
    // In-memory encode/decode agree with the file path.
    let bytes = to_pickle_bytes(&v, Path::new("mem")).unwrap();
    assert_eq!(bytes, std::fs::read(&p).unwrap());
    assert_eq!(parse_pickle(&bytes, Path::new("mem")).unwrap(), v);
}

#[test]
fn pkl_writer_rejects_inconsistent_array() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.pkl");
    let v = PklValue::Array(NdArray { shape: vec![2, 2], data: ArrayData::F32(vec![1.0]) });
    let e = write_pickle(&p, &v).unwrap_err().to_string();
    assert!(e.contains("bad.pkl") && e.contains("shape [2, 2]") && e.contains("1 elements"), "{e}");
    assert!(!p.exists());
    let e = write_poses_pkl(&p, &sample_poses(3).0, Some(&sample_poses(2).1)).unwrap_err().to_string();
    assert!(e.contains("2 translations for 3 rotations"), "{e}");
}

// ---- numpy interop ---------------------------------------------------------------------

/// The same description of a value that `PY_DESCRIBE` prints: floats and arrays as
/// little-endian hex so the comparison is bit-exact.
fn describe(v: &PklValue) -> J {
    match v {
        PklValue::None => json!({"t": "NoneType"}),
        PklValue::Bool(b) => json!({"t": "bool", "v": b}),
        PklValue::Int(i) => json!({"t": "int", "v": i}),
        PklValue::Float(f) => json!({"t": "float", "hex": hex(&f.to_le_bytes())}),
        PklValue::Str(s) => json!({"t": "str", "v": s}),
        PklValue::Bytes(b) => json!({"t": "bytes", "hex": hex(b)}),
        PklValue::Tuple(t) => json!({"t": "tuple", "items": t.iter().map(describe).collect::<Vec<_>>()}),
        PklValue::List(t) => json!({"t": "list", "items": t.iter().map(describe).collect::<Vec<_>>()}),
        PklValue::Dict(d) => {
            json!({"t": "dict", "items": d.iter().map(|(k, x)| json!([describe(k), describe(x)])).collect::<Vec<_>>()})
        }
        PklValue::Array(a) => {
            let body = match &a.data {
                ArrayData::Object(o) => json!(o.iter().map(describe).collect::<Vec<_>>()),
                d => json!(hex(&le_bytes(d))),
            };
            json!({"t": "ndarray", "dtype": a.data.dtype_name(), "shape": a.shape, "data": body})
        }
    }
}

fn le_bytes(d: &ArrayData) -> Vec<u8> {
    let mut out = Vec::new();
    macro_rules! le {
        ($v:expr) => {
            $v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match d {
        ArrayData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        ArrayData::I8(v) => le!(v),
        ArrayData::I16(v) => le!(v),
        ArrayData::I32(v) => le!(v),
        ArrayData::I64(v) => le!(v),
        ArrayData::U8(v) => le!(v),
        ArrayData::U16(v) => le!(v),
        ArrayData::U32(v) => le!(v),
        ArrayData::U64(v) => le!(v),
        ArrayData::F16(v) => le!(v),
        ArrayData::F32(v) => le!(v),
        ArrayData::F64(v) => le!(v),
        ArrayData::Object(_) => {}
    }
    out
}

const PY_DESCRIBE: &str = r#"
import pickle, struct, sys, json
import numpy as np
def d(x):
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            body = [d(v) for v in x.ravel(order='C')]
        else:
            body = np.ascontiguousarray(x).astype(x.dtype.newbyteorder('<')).tobytes().hex()
        dt = 'object' if x.dtype == object else str(x.dtype.newbyteorder('<'))
        return {"t": "ndarray", "dtype": dt, "shape": list(x.shape), "data": body}
    if x is None: return {"t": "NoneType"}
    if isinstance(x, bool): return {"t": "bool", "v": x}
    if isinstance(x, int): return {"t": "int", "v": x}
    if isinstance(x, float): return {"t": "float", "hex": struct.pack('<d', x).hex()}
    if isinstance(x, str): return {"t": "str", "v": x}
    if isinstance(x, (bytes, bytearray)): return {"t": "bytes", "hex": bytes(x).hex()}
    if isinstance(x, tuple): return {"t": "tuple", "items": [d(v) for v in x]}
    if isinstance(x, list): return {"t": "list", "items": [d(v) for v in x]}
    if isinstance(x, dict): return {"t": "dict", "items": [[d(k), d(v)] for k, v in x.items()]}
    raise TypeError(type(x))
for path in sys.argv[1:]:
    with open(path, 'rb') as f:
        print(json.dumps(d(pickle.load(f))))
"#;

/// The interpreter for the interop tests: `CRYOFORGE_PYTHON` (e.g. a venv with numpy 1.x),
/// else `python3`.
fn python() -> String {
    std::env::var("CRYOFORGE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn numpy_available(test: &str) -> bool {
    let ok = Command::new(python())
        .args(["-c", "import numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP {test}: {} with numpy not available", python());
    }
    ok
}

/// numpy's view of each file (one python process for all of them).
fn py_describe_all(ps: &[std::path::PathBuf]) -> Vec<J> {
    let o = Command::new(python()).args(["-c", PY_DESCRIBE]).args(ps).output().unwrap();
    assert!(o.status.success(), "python failed: {}", String::from_utf8_lossy(&o.stderr));
    let out: Vec<J> = o
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(out.len(), ps.len());
    out
}

fn py_describe(p: &Path) -> J {
    py_describe_all(&[p.to_path_buf()]).remove(0)
}

#[test]
fn pkl_numpy_loads_what_we_write() {
    if !numpy_available("pkl_numpy_loads_what_we_write") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (rots, trans) = sample_poses(4);
    type Writer<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Writer)> = vec![
        ("poses32.pkl", Box::new(|p: &Path| write_poses_pkl(p, &rots, Some(&trans)).unwrap())),
        (
            "poses64.pkl",
            Box::new(|p: &Path| write_poses_pkl_as(p, &rots, Some(&trans), FloatDtype::F64).unwrap()),
        ),
        ("rot.pkl", Box::new(|p: &Path| write_poses_pkl(p, &rots, None).unwrap())),
        (
            "ctf.pkl",
            Box::new(|p: &Path| {
                write_ctf_pkl(p, &[[64.0, 1.0, 1e4, 1.1e4, 12.5, 300.0, 2.7, 0.07, 0.0]]).unwrap()
            }),
        ),
        ("ind.pkl", Box::new(|p: &Path| write_index_pkl(p, &[3, 1, 4, 1, 5]).unwrap())),
        ("general.pkl", Box::new(|p: &Path| write_pickle(p, &general_value()).unwrap())),
    ];
    for (name, write) in &cases {
        let p = d.path().join(name);
        write(&p);
        let ours = describe(&read_pickle(&p).unwrap());
        assert_eq!(py_describe(&p), ours, "{name}");
    }
    // dtype and shape as numpy reports them.
    let py = py_describe(&d.path().join("poses32.pkl"));
    assert_eq!(py["items"][0]["dtype"], "float32");
    assert_eq!(py["items"][0]["shape"], json!([4, 3, 3]));
    assert_eq!(py["items"][1]["shape"], json!([4, 2]));
    assert_eq!(py_describe(&d.path().join("ind.pkl"))["dtype"], "int64");
}

/// numpy writes each object in several protocols and layouts; we read them all.
const PY_WRITE: &str = r#"
import pickle, sys, os
import numpy as np
out = sys.argv[1]
objs = {
  'be_f4': np.arange(12, dtype='>f4').reshape(3, 4) / 7,
  'fortran_f8': np.asfortranarray(np.arange(12, dtype='f8').reshape(3, 4) * 0.1),
  'fortran3d_i2': np.asfortranarray(np.arange(24, dtype='>i2').reshape(2, 3, 4)),
  'idx_i4': np.array([5, 0, 3], dtype=np.int32),
  'idx_list': [4, 2, 9],
  'bool': np.array([True, False, True]),
  'u8': np.arange(5, dtype=np.uint8),
  'f2': np.array([0.5, -3.0], dtype=np.float16),
  'zero_d': np.array(3.5),
  'scalar_f4': np.float32(1.5),
  'scalar_i8': np.int64(-7),
  'pose_tuple': (np.eye(3, dtype='f4')[None].repeat(2, 0), np.zeros((2, 2))),
  'dict': {'a': np.ones(2), 'b': [1, 2.5, None, True, 'x', b'yz', 2**40, -2**63], (1, 2): (3,)},
  'object': np.array([1, 'a', None], dtype=object),
  'empty': np.zeros((0, 3), dtype='f4'),
  'shared': (lambda a: (a, a, [a]))(np.arange(3)),
  'big_bytes': bytes(range(256)) * 3,
}
for proto in (2, 3, 4, 5):
    for name, o in objs.items():
        with open(os.path.join(out, f'{name}.p{proto}.pkl'), 'wb') as f:
            pickle.dump(o, f, protocol=proto)
"#;

#[test]
fn pkl_we_read_what_numpy_writes_in_protocols_2_to_5() {
    if !numpy_available("pkl_we_read_what_numpy_writes_in_protocols_2_to_5") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(python()).args(["-c", PY_WRITE]).arg(d.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let files: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 17 * 4);
    for (p, py) in files.iter().zip(py_describe_all(&files)) {
        let ours = read_pickle(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(describe(&ours), py, "{}", p.display());
    }
    let p = d.path().join("idx_i4.p5.pkl");
    assert_eq!(read_index_pkl(&p).unwrap(), vec![5, 0, 3]);
    assert_eq!(read_index_pkl(d.path().join("idx_list.p2.pkl")).unwrap(), vec![4, 2, 9]);
    let poses = read_poses_pkl(d.path().join("pose_tuple.p5.pkl")).unwrap();
    assert_eq!(poses.rots[1], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    // Fortran order is converted to C order: element [1][2] of arange*0.1 is 6*0.1.
    let PklValue::Array(a) = read_pickle(d.path().join("fortran_f8.p3.pkl")).unwrap() else { panic!() };
    assert_eq!(a.data.get_f64(6), Some(6.0 * 0.1));
}

// ---- errors ----------------------------------------------------------------------------

fn err_of<T: std::fmt::Debug>(r: cryoforge_io::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn pkl_truncated_pickle() {
    let Some(src) = test_data_file("pkl_truncated_pickle", "cryodrgn/pose.star.pkl") else { return };
    let bytes = std::fs::read(src).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cut.pkl");
    std::fs::write(&p, &bytes[..300]).unwrap(); // inside the 360-byte rotation buffer
    let e = err_of(read_poses_pkl(&p));
    assert!(e.contains("cut.pkl: byte 150: truncated pickle"), "{e}");
    std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap(); // STOP missing
    let e = err_of(read_pickle(&p));
    assert!(e.contains("cut.pkl") && e.contains("ends before the STOP"), "{e}");
}

#[test]
fn pkl_wrong_shapes_name_the_element() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("shape.pkl");
    let arr = |shape: Vec<usize>| {
        let n = shape.iter().product();
        PklValue::Array(NdArray::new(shape, ArrayData::F32(vec![0.5; n])).unwrap())
    };
    write_pickle(&p, &arr(vec![5, 3])).unwrap();
    let e = err_of(read_poses_pkl(&p));
    assert!(
        e.contains(
            "shape.pkl: field rot (element 0): expected shape [N, 3, 3], found shape [5, 3] (float32)"
        ),
        "{e}"
    );
    let e = err_of(read_ctf_pkl(&p));
    assert!(e.contains("field ctf: expected shape [N, 9], found shape [5, 3]"), "{e}");

    write_pickle(&p, &PklValue::Tuple(vec![arr(vec![4, 3, 3]), arr(vec![4, 3])])).unwrap();
    let e = err_of(read_poses_pkl(&p));
    assert!(e.contains("field trans (element 1): expected shape [N, 2], found shape [4, 3]"), "{e}");
    write_pickle(&p, &PklValue::Tuple(vec![arr(vec![4, 3, 3]), arr(vec![3, 2])])).unwrap();
    let e = err_of(read_poses_pkl(&p));
    assert!(e.contains("field trans (element 1): has 3 rows but rot has 4"), "{e}");
    write_pickle(&p, &PklValue::Tuple(vec![arr(vec![4, 3, 3])])).unwrap();
    let e = err_of(read_poses_pkl(&p));
    assert!(e.contains("expected a tuple (rot, trans) or a rotation array, found a tuple of 1"), "{e}");

    let mut rot = vec![0.0f32; 18];
    rot[11] = f32::NAN;
    write_pickle(&p, &PklValue::Array(NdArray::new(vec![2, 3, 3], ArrayData::F32(rot)).unwrap())).unwrap();
    let e = err_of(read_poses_pkl(&p));
    assert!(e.contains("index 1, field rot (element 0): value NaN is not finite"), "{e}");
}

#[test]
fn pkl_bad_indices_name_the_index() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ind.pkl");
    write_pickle(&p, &PklValue::Array(NdArray::new(vec![3], ArrayData::I64(vec![4, -2, 1])).unwrap()))
        .unwrap();
    let e = err_of(read_index_pkl(&p));
    assert!(e.contains("ind.pkl: index 1: negative particle index -2"), "{e}");
    write_pickle(&p, &PklValue::Array(NdArray::new(vec![2], ArrayData::F64(vec![1.0, 2.5])).unwrap()))
        .unwrap();
    let e = err_of(read_index_pkl(&p));
    assert!(e.contains("index 0: value 1 (float64) is not an integer particle index"), "{e}");
    write_pickle(&p, &PklValue::List(vec![PklValue::Int(1), PklValue::Float(2.0)])).unwrap();
    let e = err_of(read_index_pkl(&p));
    assert!(e.contains("index 1: a float is not an integer particle index"), "{e}");
    write_pickle(&p, &PklValue::Array(NdArray::new(vec![1, 2], ArrayData::I64(vec![1, 2])).unwrap()))
        .unwrap();
    let e = err_of(read_index_pkl(&p));
    assert!(
        e.contains("expected a 1-D integer array of indices, found an array of dtype int64 and shape [1, 2]"),
        "{e}"
    );
}

#[test]
fn pkl_disallowed_global_is_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("evil.pkl");
    // pickle.dumps of os.system('echo') at protocol 2, hand-assembled.
    std::fs::write(&p, b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.").unwrap();
    let e = err_of(read_pickle(&p));
    assert!(e.contains("evil.pkl: byte 2: disallowed global 'posix.system'"), "{e}");
    // STACK_GLOBAL form (protocol 4).
    std::fs::write(&p, b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93).").unwrap();
    let e = err_of(read_pickle(&p));
    assert!(e.contains("disallowed global 'builtins.eval'"), "{e}");
}

#[test]
fn pkl_not_a_pickle() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("text.pkl");
    std::fs::write(&p, "data_particles\nloop_\n").unwrap();
    let e = err_of(read_poses_pkl(&p));
    assert!(e.contains("text.pkl: byte 0: not a pickle of protocol 2 or higher"), "{e}");
    std::fs::write(&p, "").unwrap();
    let e = err_of(read_ctf_pkl(&p));
    assert!(e.contains("text.pkl: empty file: not a pickle"), "{e}");
    std::fs::write(&p, b"\x93NUMPY\x01\x00").unwrap();
    let e = err_of(read_pickle(&p));
    assert!(e.contains("numpy .npy file, not a pickle"), "{e}");
    let e = err_of(read_pickle(d.path().join("missing.pkl")));
    assert!(e.contains("missing.pkl: cannot read the pickle"), "{e}");
}

#[test]
fn pkl_absurd_lengths_are_rejected_before_allocating() {
    let mut b = b"\x80\x04\x8e".to_vec(); // BINBYTES8 claiming 2^62 bytes
    b.extend_from_slice(&(1u64 << 62).to_le_bytes());
    b.push(b'.');
    let e = parse_pickle(&b, Path::new("huge.pkl")).unwrap_err().to_string();
    assert!(e.contains("huge.pkl: byte 2: truncated pickle"), "{e}");
    // An array state claiming a shape of 2^56 elements over a 1-byte buffer.
    let v = PklValue::Array(NdArray::new(vec![1], ArrayData::U8(vec![1])).unwrap());
    let mut bytes = to_pickle_bytes(&v, Path::new("x")).unwrap();
    let pat = [b'(', b'K', 1, b'K', 1, 0x85]; // MARK, version 1, shape dim 1, TUPLE1
    let pos = bytes.windows(6).position(|w| w == pat).unwrap() + 3;
    let mut dim = vec![0x8a, 8]; // LONG1 of 8 bytes
    dim.extend_from_slice(&(1u64 << 56).to_le_bytes());
    bytes.splice(pos..pos + 2, dim);
    let e = parse_pickle(&bytes, Path::new("x")).unwrap_err().to_string();
    assert!(e.contains("needs 72057594037927936 bytes, the pickle holds 1"), "{e}");
}

#[test]
fn pkl_out_of_band_buffer_is_explained() {
    let e = parse_pickle(b"\x80\x05\x97.", Path::new("oob.pkl")).unwrap_err().to_string();
    assert!(e.contains("out-of-band buffer"), "{e}");
    let e = parse_pickle(b"\x80\x06N.", Path::new("p6.pkl")).unwrap_err().to_string();
    assert!(e.contains("unsupported pickle protocol 6"), "{e}");
}
