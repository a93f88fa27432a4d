//! cryoDRGN `.pkl` files: numpy arrays inside Python pickles.
//!
//! cryoDRGN stores poses as a pickled tuple `(rot float[N,3,3], trans float[N,2])` (or the
//! bare rotation array), CTF parameters as float32 `[N,9]`, and particle selections
//! (`--ind`) as an int64/int32 array. numpy pickles an array as
//! `numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')` followed by BUILD with
//! the state `(1, shape, dtype, is_fortran, raw_bytes)`, where the dtype is itself
//! `numpy.dtype('f4', False, True)` + BUILD `(3, '<', None, None, None, -1, -1, 0)`.
//!
//! # Why a pickle VM of our own rather than `serde-pickle`
//! `serde-pickle` (a dependency of this crate) was checked first. It keeps the class
//! objects it does not know as an anonymous "other global" (the module and name are lost),
//! and its BUILD *replaces* the object with the state. For `numpy.dtype('f4', …)` + BUILD
//! `(3, '<', …)` the type code `'f4'` is therefore thrown away and only the byte order
//! survives: a float32 and an int32 array become indistinguishable, and an unexpected
//! global cannot be named in an error. It cannot represent GLOBAL + REDUCE + BUILD
//! faithfully, so this module carries a small pickle virtual machine instead:
//!
//! - It only ever builds data. The only callables it knows are a fixed allow-list
//!   (`_reconstruct`, `ndarray`, `dtype`, `scalar`, `_frombuffer` under both `numpy.core`
//!   and `numpy._core`, plus `_codecs.encode`, which protocol-2 pickles use for bytes); each
//!   is interpreted by Rust code that builds a value. Any other global is an error naming it.
//! - Protocols 2–5 (the first opcode must be PROTO). Protocol-5 in-band buffers
//!   (BYTEARRAY8) are read; out-of-band buffers are not in the file, so NEXT_BUFFER is an
//!   error that says so.
//! - Memory is bounded: every length is checked against the bytes left in the input before
//!   anything is allocated; memo indices go to a map, never size a vector; objects live in
//!   an arena (so memo references and in-place BUILD/APPEND behave as in Python) and the
//!   final tree is materialised under a byte budget proportional to the input size, so a
//!   pickle that references one list from itself many times cannot explode.
//!
//! Arrays come out in C order and host byte order (`>f4`, Fortran order and 0-d scalars
//! are converted). Dictionaries keep insertion order as a vector of pairs because Python
//! keys (floats, tuples) have no total order in Rust.
//!
//! The writer emits protocol 3 (protocol 4 only when a single buffer exceeds 4 GiB) with the
//! global `numpy.core.multiarray._reconstruct`, exactly as numpy 1.x pickles arrays; numpy
//! 2.x keeps that name importable for old pickles, so both load the output.

use crate::atomic::write_atomic;
use crate::error::{IoError, Loc, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

// ------------------------------------------------------------------------------------------
// Public data model
// ------------------------------------------------------------------------------------------

/// A value decoded from (or to be encoded into) a pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum PklValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// `bytes`, `bytearray` or a Python-2 `str`.
    Bytes(Vec<u8>),
    Tuple(Vec<PklValue>),
    List(Vec<PklValue>),
    /// Key/value pairs in insertion order.
    Dict(Vec<(PklValue, PklValue)>),
    Array(NdArray),
}

/// A numpy array: `shape` (empty for a 0-d array or numpy scalar) and its elements in C
/// (row-major) order, host byte order.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

/// The elements of an [`NdArray`], one variant per numpy dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    Bool(Vec<bool>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F16(Vec<half::f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// dtype `object`: arbitrary Python values.
    Object(Vec<PklValue>),
}

/// Applies `$body` to the vector inside any numeric/bool variant (binding it to `$v`) and
/// `$obj` to the object variant.
macro_rules! each_vec {
    ($data:expr, $v:ident => $body:expr, $o:ident => $obj:expr) => {
        match $data {
            ArrayData::Bool($v) => $body,
            ArrayData::I8($v) => $body,
            ArrayData::I16($v) => $body,
            ArrayData::I32($v) => $body,
            ArrayData::I64($v) => $body,
            ArrayData::U8($v) => $body,
            ArrayData::U16($v) => $body,
            ArrayData::U32($v) => $body,
            ArrayData::U64($v) => $body,
            ArrayData::F16($v) => $body,
            ArrayData::F32($v) => $body,
            ArrayData::F64($v) => $body,
            ArrayData::Object($o) => $obj,
        }
    };
}

impl ArrayData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        each_vec!(self, v => v.len(), o => o.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// numpy's name of the dtype (`float32`, `int64`, …).
    pub fn dtype_name(&self) -> &'static str {
        self.elem().numpy_name()
    }

    fn elem(&self) -> Elem {
        match self {
            ArrayData::Bool(_) => Elem::Bool,
            ArrayData::I8(_) => Elem::I8,
            ArrayData::I16(_) => Elem::I16,
            ArrayData::I32(_) => Elem::I32,
            ArrayData::I64(_) => Elem::I64,
            ArrayData::U8(_) => Elem::U8,
            ArrayData::U16(_) => Elem::U16,
            ArrayData::U32(_) => Elem::U32,
            ArrayData::U64(_) => Elem::U64,
            ArrayData::F16(_) => Elem::F16,
            ArrayData::F32(_) => Elem::F32,
            ArrayData::F64(_) => Elem::F64,
            ArrayData::Object(_) => Elem::Object,
        }
    }

    /// Whether the dtype is a floating-point one.
    pub fn is_float(&self) -> bool {
        matches!(self, ArrayData::F16(_) | ArrayData::F32(_) | ArrayData::F64(_))
    }

    /// Element `i` as f64 for numeric dtypes (not bool or object); `None` out of range.
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        match self {
            ArrayData::I8(v) => v.get(i).map(|&x| x as f64),
            ArrayData::I16(v) => v.get(i).map(|&x| x as f64),
            ArrayData::I32(v) => v.get(i).map(|&x| x as f64),
            ArrayData::I64(v) => v.get(i).map(|&x| x as f64),
            ArrayData::U8(v) => v.get(i).map(|&x| x as f64),
            ArrayData::U16(v) => v.get(i).map(|&x| x as f64),
            ArrayData::U32(v) => v.get(i).map(|&x| x as f64),
            ArrayData::U64(v) => v.get(i).map(|&x| x as f64),
            ArrayData::F16(v) => v.get(i).map(|&x| x.to_f64()),
            ArrayData::F32(v) => v.get(i).map(|&x| x as f64),
            ArrayData::F64(v) => v.get(i).copied(),
            ArrayData::Bool(_) | ArrayData::Object(_) => None,
        }
    }

    /// Element `i` of an integer dtype, exactly; `None` for other dtypes or out of range.
    pub fn get_int(&self, i: usize) -> Option<i128> {
        match self {
            ArrayData::I8(v) => v.get(i).map(|&x| x as i128),
            ArrayData::I16(v) => v.get(i).map(|&x| x as i128),
            ArrayData::I32(v) => v.get(i).map(|&x| x as i128),
            ArrayData::I64(v) => v.get(i).map(|&x| x as i128),
            ArrayData::U8(v) => v.get(i).map(|&x| x as i128),
            ArrayData::U16(v) => v.get(i).map(|&x| x as i128),
            ArrayData::U32(v) => v.get(i).map(|&x| x as i128),
            ArrayData::U64(v) => v.get(i).map(|&x| x as i128),
            _ => None,
        }
    }
}

impl NdArray {
    /// An array, checking that the shape's element count matches the data.
    pub fn new(shape: Vec<usize>, data: ArrayData) -> std::result::Result<Self, String> {
        let n = shape_count(&shape).ok_or_else(|| format!("shape {shape:?} overflows"))?;
        if n != data.len() {
            return Err(format!("shape {shape:?} needs {n} elements, data has {}", data.len()));
        }
        Ok(NdArray { shape, data })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl PklValue {
    /// A short description of the value's kind for error messages.
    pub fn kind(&self) -> String {
        match self {
            PklValue::None => "None".into(),
            PklValue::Bool(_) => "a bool".into(),
            PklValue::Int(_) => "an int".into(),
            PklValue::Float(_) => "a float".into(),
            PklValue::Str(_) => "a str".into(),
            PklValue::Bytes(_) => "bytes".into(),
            PklValue::Tuple(t) => format!("a tuple of {}", t.len()),
            PklValue::List(l) => format!("a list of {}", l.len()),
            PklValue::Dict(_) => "a dict".into(),
            PklValue::Array(a) => {
                format!("an array of dtype {} and shape {:?}", a.data.dtype_name(), a.shape)
            }
        }
    }
}

fn shape_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// numpy element types this module reads and writes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Elem {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F16,
    F32,
    F64,
    Object,
}

impl Elem {
    /// Parses numpy's dtype code without byte order (`f4`, `i8`, `b1`, `O8`, …).
    fn parse(code: &str) -> Option<Elem> {
        Some(match code {
            "b1" | "?" => Elem::Bool,
            "i1" => Elem::I8,
            "i2" => Elem::I16,
            "i4" => Elem::I32,
            "i8" => Elem::I64,
            "u1" => Elem::U8,
            "u2" => Elem::U16,
            "u4" => Elem::U32,
            "u8" => Elem::U64,
            "f2" => Elem::F16,
            "f4" => Elem::F32,
            "f8" => Elem::F64,
            "O" | "O4" | "O8" => Elem::Object,
            _ => return None,
        })
    }

    fn code(self) -> &'static str {
        match self {
            Elem::Bool => "b1",
            Elem::I8 => "i1",
            Elem::I16 => "i2",
            Elem::I32 => "i4",
            Elem::I64 => "i8",
            Elem::U8 => "u1",
            Elem::U16 => "u2",
            Elem::U32 => "u4",
            Elem::U64 => "u8",
            Elem::F16 => "f2",
            Elem::F32 => "f4",
            Elem::F64 => "f8",
            Elem::Object => "O8",
        }
    }

    fn numpy_name(self) -> &'static str {
        match self {
            Elem::Bool => "bool",
            Elem::I8 => "int8",
            Elem::I16 => "int16",
            Elem::I32 => "int32",
            Elem::I64 => "int64",
            Elem::U8 => "uint8",
            Elem::U16 => "uint16",
            Elem::U32 => "uint32",
            Elem::U64 => "uint64",
            Elem::F16 => "float16",
            Elem::F32 => "float32",
            Elem::F64 => "float64",
            Elem::Object => "object",
        }
    }

    /// Bytes per element in the raw buffer (object arrays have no raw buffer).
    fn size(self) -> usize {
        match self {
            Elem::Bool | Elem::I8 | Elem::U8 => 1,
            Elem::I16 | Elem::U16 | Elem::F16 => 2,
            Elem::I32 | Elem::U32 | Elem::F32 => 4,
            Elem::I64 | Elem::U64 | Elem::F64 | Elem::Object => 8,
        }
    }
}

/// Decodes `raw` into elements of `N` bytes with the given byte order.
fn decode_elems<T, const N: usize>(
    raw: &[u8],
    big: bool,
    le: fn([u8; N]) -> T,
    be: fn([u8; N]) -> T,
) -> Vec<T> {
    let f = if big { be } else { le };
    raw.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// Decodes a raw numpy buffer (length already checked) into host-order elements.
fn decode_raw(elem: Elem, raw: &[u8], big: bool) -> ArrayData {
    match elem {
        Elem::Bool => ArrayData::Bool(raw.iter().map(|&b| b != 0).collect()),
        Elem::I8 => ArrayData::I8(raw.iter().map(|&b| b as i8).collect()),
        Elem::U8 => ArrayData::U8(raw.to_vec()),
        Elem::I16 => ArrayData::I16(decode_elems(raw, big, i16::from_le_bytes, i16::from_be_bytes)),
        Elem::I32 => ArrayData::I32(decode_elems(raw, big, i32::from_le_bytes, i32::from_be_bytes)),
        Elem::I64 => ArrayData::I64(decode_elems(raw, big, i64::from_le_bytes, i64::from_be_bytes)),
        Elem::U16 => ArrayData::U16(decode_elems(raw, big, u16::from_le_bytes, u16::from_be_bytes)),
        Elem::U32 => ArrayData::U32(decode_elems(raw, big, u32::from_le_bytes, u32::from_be_bytes)),
        Elem::U64 => ArrayData::U64(decode_elems(raw, big, u64::from_le_bytes, u64::from_be_bytes)),
        Elem::F16 => {
            ArrayData::F16(decode_elems(raw, big, half::f16::from_le_bytes, half::f16::from_be_bytes))
        }
        Elem::F32 => ArrayData::F32(decode_elems(raw, big, f32::from_le_bytes, f32::from_be_bytes)),
        Elem::F64 => ArrayData::F64(decode_elems(raw, big, f64::from_le_bytes, f64::from_be_bytes)),
        // Object arrays carry a list, never a raw buffer; callers handle them.
        Elem::Object => ArrayData::Object(Vec::new()),
    }
}

/// Reorders Fortran-order (column-major) elements into C order.
fn fortran_to_c<T: Clone>(v: &[T], shape: &[usize]) -> Vec<T> {
    let mut fstride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let mut idx = vec![0usize; shape.len()];
    let mut out = Vec::with_capacity(v.len());
    for _ in 0..v.len() {
        let f: usize = idx.iter().zip(&fstride).map(|(i, s)| i * s).sum();
        out.push(v[f].clone());
        // Advance the C-order multi-index (last axis fastest).
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

fn reorder_fortran(data: ArrayData, shape: &[usize]) -> ArrayData {
    match data {
        ArrayData::Bool(v) => ArrayData::Bool(fortran_to_c(&v, shape)),
        ArrayData::I8(v) => ArrayData::I8(fortran_to_c(&v, shape)),
        ArrayData::I16(v) => ArrayData::I16(fortran_to_c(&v, shape)),
        ArrayData::I32(v) => ArrayData::I32(fortran_to_c(&v, shape)),
        ArrayData::I64(v) => ArrayData::I64(fortran_to_c(&v, shape)),
        ArrayData::U8(v) => ArrayData::U8(fortran_to_c(&v, shape)),
        ArrayData::U16(v) => ArrayData::U16(fortran_to_c(&v, shape)),
        ArrayData::U32(v) => ArrayData::U32(fortran_to_c(&v, shape)),
        ArrayData::U64(v) => ArrayData::U64(fortran_to_c(&v, shape)),
        ArrayData::F16(v) => ArrayData::F16(fortran_to_c(&v, shape)),
        ArrayData::F32(v) => ArrayData::F32(fortran_to_c(&v, shape)),
        ArrayData::F64(v) => ArrayData::F64(fortran_to_c(&v, shape)),
        ArrayData::Object(v) => ArrayData::Object(fortran_to_c(&v, shape)),
    }
}

// ------------------------------------------------------------------------------------------
// The pickle VM
// ------------------------------------------------------------------------------------------

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINFLOAT: u8 = b'G';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const REDUCE: u8 = b'R';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

/// The callables a pickle may name (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    Reconstruct,
    Ndarray,
    Dtype,
    Scalar,
    FromBuffer,
    CodecsEncode,
    Bytes,
    Bytearray,
}

impl Global {
    fn lookup(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Global::Reconstruct,
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::Scalar,
            ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => Global::FromBuffer,
            ("numpy", "ndarray") => Global::Ndarray,
            ("numpy", "dtype") => Global::Dtype,
            ("_codecs", "encode") => Global::CodecsEncode,
            // Protocol 2 writes `b''` as `bytes()` and bytearrays as `bytearray(...)`.
            ("builtins" | "__builtin__", "bytes") => Global::Bytes,
            ("builtins" | "__builtin__", "bytearray") => Global::Bytearray,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Global::Reconstruct => "numpy.core.multiarray._reconstruct",
            Global::Ndarray => "numpy.ndarray",
            Global::Dtype => "numpy.dtype",
            Global::Scalar => "numpy.core.multiarray.scalar",
            Global::FromBuffer => "numpy.core.numeric._frombuffer",
            Global::CodecsEncode => "_codecs.encode",
            Global::Bytes => "builtins.bytes",
            Global::Bytearray => "builtins.bytearray",
        }
    }
}

/// A numpy dtype under construction: element type and byte order (`<`, `>`, `|`, `=`).
#[derive(Debug, Clone, Copy)]
struct Dtype {
    elem: Elem,
    order: u8,
}

impl Dtype {
    fn big_endian(self) -> bool {
        self.order == b'>' || (self.order == b'=' && cfg!(target_endian = "big"))
    }
}

type Id = usize;

/// An object in the VM's arena. Containers hold arena ids so that memo references and
/// in-place mutation (APPEND after BINPUT, BUILD) see the same object, as in Python.
#[derive(Debug, Clone)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Dtype(Dtype),
    /// `_reconstruct(ndarray, …)` before its BUILD.
    PendingArray,
    Array(NdArray),
}

impl Obj {
    fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "a bool",
            Obj::Int(_) => "an int",
            Obj::Float(_) => "a float",
            Obj::Str(_) => "a str",
            Obj::Bytes(_) => "bytes",
            Obj::Tuple(_) => "a tuple",
            Obj::List(_) => "a list",
            Obj::Dict(_) => "a dict",
            Obj::Global(_) => "a global",
            Obj::Dtype(_) => "a numpy dtype",
            Obj::PendingArray => "an unbuilt numpy array",
            Obj::Array(_) => "a numpy array",
        }
    }
}

/// Deepest nesting of containers accepted (Python's own limit is about 1000).
const MAX_DEPTH: usize = 512;

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    /// Byte offset of the opcode being executed, for error messages.
    at: usize,
    path: &'a Path,
    arena: Vec<Obj>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    /// Bytes left for materialising values (see the module documentation).
    budget: usize,
}

type VmResult<T> = std::result::Result<T, String>;

/// Decodes a whole pickle held in memory. `path` only names the source in errors.
pub fn parse_pickle(data: &[u8], path: &Path) -> Result<PklValue> {
    if data.starts_with(b"\x93NUMPY") {
        return Err(IoError::file(path, "this is a numpy .npy file, not a pickle"));
    }
    match data.first() {
        None => return Err(IoError::file(path, "empty file: not a pickle")),
        Some(&op::PROTO) => {}
        Some(&b) => {
            return Err(IoError::new(
                path,
                Loc::Byte(0),
                format!(
                "not a pickle of protocol 2 or higher: expected the PROTO opcode 0x80, found byte 0x{b:02x}"
            ),
            ))
        }
    }
    let budget = data.len().saturating_mul(4).saturating_add(1 << 20);
    let mut vm = Vm {
        data,
        pos: 0,
        at: 0,
        path,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget,
    };
    vm.run()
}

/// Reads and decodes a pickle file.
pub fn read_pickle(path: impl AsRef<Path>) -> Result<PklValue> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|e| IoError::os(path, "cannot read the pickle", e))?;
    parse_pickle(&data, path)
}

impl<'a> Vm<'a> {
    fn run(&mut self) -> Result<PklValue> {
        loop {
            self.at = self.pos;
            let Some(&code) = self.data.get(self.pos) else {
                return Err(IoError::new(
                    self.path,
                    Loc::Byte(self.pos as u64),
                    "truncated pickle: the data ends before the STOP opcode",
                ));
            };
            self.pos += 1;
            match self.step(code) {
                Ok(false) => {}
                Ok(true) => break,
                Err(msg) => return Err(IoError::new(self.path, Loc::Byte(self.at as u64), msg)),
            }
        }
        let result = self.pop().and_then(|id| self.materialise(id, 0));
        result.map_err(|msg| IoError::new(self.path, Loc::Byte(self.at as u64), msg))
    }

    // ---- input -----------------------------------------------------------------------

    /// The next `n` bytes; `n` is checked against the input before anything is allocated.
    fn take(&mut self, n: usize) -> VmResult<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(format!(
                "truncated pickle: opcode 0x{:02x} needs {n} bytes, only {left} remain",
                self.data[self.at]
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn take_arr<const N: usize>(&mut self) -> VmResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> VmResult<u8> {
        Ok(self.take_arr::<1>()?[0])
    }

    fn u32_len(&mut self) -> VmResult<usize> {
        Ok(u32::from_le_bytes(self.take_arr()?) as usize)
    }

    fn u64_len(&mut self) -> VmResult<usize> {
        let n = u64::from_le_bytes(self.take_arr()?);
        usize::try_from(n).map_err(|_| format!("length {n} does not fit in memory"))
    }

    fn line(&mut self) -> VmResult<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err("truncated pickle: GLOBAL name without a newline".into());
        };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| "GLOBAL name is not UTF-8".to_string())
    }

    fn utf8(&mut self, n: usize) -> VmResult<Obj> {
        let s = self.take(n)?;
        let s = std::str::from_utf8(s).map_err(|e| format!("string is not valid UTF-8: {e}"))?;
        Ok(Obj::Str(s.to_string()))
    }

    // ---- stack -----------------------------------------------------------------------

    fn push(&mut self, o: Obj) {
        self.arena.push(o);
        self.stack.push(self.arena.len() - 1);
    }

    fn pop(&mut self) -> VmResult<Id> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("malformed pickle: pop across a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "malformed pickle: stack underflow".to_string())
    }

    fn top(&self) -> VmResult<Id> {
        self.stack.last().copied().ok_or_else(|| "malformed pickle: stack underflow".to_string())
    }

    /// Pops everything down to the last MARK (and the mark itself).
    fn pop_mark(&mut self) -> VmResult<Vec<Id>> {
        let m = self.marks.pop().ok_or_else(|| "malformed pickle: no MARK on the stack".to_string())?;
        if m > self.stack.len() {
            return Err("malformed pickle: MARK above the stack top".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn pop_n(&mut self, n: usize) -> VmResult<Vec<Id>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return Err("malformed pickle: stack underflow".into());
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn memo_get(&mut self, key: u32) -> VmResult<()> {
        let id = *self.memo.get(&key).ok_or_else(|| format!("memo key {key} was never stored"))?;
        self.stack.push(id);
        Ok(())
    }

    fn memo_put(&mut self, key: u32) -> VmResult<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    // ---- opcodes ---------------------------------------------------------------------

    /// Executes one opcode; `Ok(true)` at STOP.
    fn step(&mut self, code: u8) -> VmResult<bool> {
        match code {
            op::STOP => return Ok(true),
            op::PROTO => {
                let v = self.u8()?;
                if !(2..=5).contains(&v) {
                    return Err(format!("unsupported pickle protocol {v} (2 to 5 are read)"));
                }
            }
            op::FRAME => {
                self.take(8)?;
            }
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let id = self.top()?;
                self.stack.push(id);
            }
            op::BINPUT => {
                let k = self.u8()? as u32;
                self.memo_put(k)?
            }
            op::LONG_BINPUT => {
                let k = u32::from_le_bytes(self.take_arr()?);
                self.memo_put(k)?
            }
            op::MEMOIZE => {
                let k = u32::try_from(self.memo.len()).map_err(|_| "memo too large".to_string())?;
                self.memo_put(k)?
            }
            op::BINGET => {
                let k = self.u8()? as u32;
                self.memo_get(k)?
            }
            op::LONG_BINGET => {
                let k = u32::from_le_bytes(self.take_arr()?);
                self.memo_get(k)?
            }
            op::READONLY_BUFFER => {
                self.top()?;
            }
            _ => self.step_value(code)?,
        }
        Ok(false)
    }

    /// Opcodes that push a literal.
    fn step_value(&mut self, code: u8) -> VmResult<()> {
        let o = match code {
            op::NONE => Obj::None,
            op::NEWTRUE => Obj::Bool(true),
            op::NEWFALSE => Obj::Bool(false),
            op::BININT1 => Obj::Int(self.u8()? as i64),
            op::BININT2 => Obj::Int(u16::from_le_bytes(self.take_arr()?) as i64),
            op::BININT => Obj::Int(i32::from_le_bytes(self.take_arr()?) as i64),
            op::LONG1 => {
                let n = self.u8()? as usize;
                Obj::Int(long_le(self.take(n)?)?)
            }
            op::LONG4 => {
                let n = self.u32_len()?;
                Obj::Int(long_le(self.take(n)?)?)
            }
            op::BINFLOAT => Obj::Float(f64::from_be_bytes(self.take_arr()?)),
            op::SHORT_BINUNICODE => {
                let n = self.u8()? as usize;
                self.utf8(n)?
            }
            op::BINUNICODE => {
                let n = self.u32_len()?;
                self.utf8(n)?
            }
            op::BINUNICODE8 => {
                let n = self.u64_len()?;
                self.utf8(n)?
            }
            op::SHORT_BINBYTES | op::SHORT_BINSTRING => {
                let n = self.u8()? as usize;
                Obj::Bytes(self.take(n)?.to_vec())
            }
            op::BINBYTES | op::BINSTRING => {
                let n = self.u32_len()?;
                Obj::Bytes(self.take(n)?.to_vec())
            }
            op::BINBYTES8 | op::BYTEARRAY8 => {
                let n = self.u64_len()?;
                Obj::Bytes(self.take(n)?.to_vec())
            }
            _ => return self.step_container(code),
        };
        self.push(o);
        Ok(())
    }

    /// Tuples, lists and dicts.
    fn step_container(&mut self, code: u8) -> VmResult<()> {
        match code {
            op::EMPTY_TUPLE => self.push(Obj::Tuple(Vec::new())),
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let items = self.pop_n((code - op::TUPLE1 + 1) as usize)?;
                self.push(Obj::Tuple(items));
            }
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push(Obj::Tuple(items));
            }
            op::EMPTY_LIST => self.push(Obj::List(Vec::new())),
            op::LIST => {
                let items = self.pop_mark()?;
                self.push(Obj::List(items));
            }
            op::APPEND => {
                let item = self.pop()?;
                self.extend_list(vec![item])?;
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            op::EMPTY_DICT => self.push(Obj::Dict(Vec::new())),
            op::DICT => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push(Obj::Dict(pairs));
            }
            op::SETITEM => {
                let kv = self.pop_n(2)?;
                self.extend_dict(kv)?;
            }
            op::SETITEMS => {
                let kv = self.pop_mark()?;
                self.extend_dict(kv)?;
            }
            _ => return self.step_object(code),
        }
        Ok(())
    }

    fn extend_list(&mut self, items: Vec<Id>) -> VmResult<()> {
        let id = self.top()?;
        match &mut self.arena[id] {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            other => Err(format!("APPEND to {}, not a list", other.kind())),
        }
    }

    fn extend_dict(&mut self, kv: Vec<Id>) -> VmResult<()> {
        let id = self.top()?;
        let new = pairs(kv)?;
        match &mut self.arena[id] {
            Obj::Dict(d) => {
                d.extend(new);
                Ok(())
            }
            other => Err(format!("SETITEM on {}, not a dict", other.kind())),
        }
    }

    /// GLOBAL, REDUCE, BUILD and the object opcodes this reader refuses.
    fn step_object(&mut self, code: u8) -> VmResult<()> {
        match code {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                let g = global(module, name)?;
                self.push(Obj::Global(g));
            }
            op::STACK_GLOBAL => {
                let [m, n] = [self.pop()?, self.pop()?];
                let (Obj::Str(name), Obj::Str(module)) = (&self.arena[m], &self.arena[n]) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                let g = global(module, name)?;
                self.push(Obj::Global(g));
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let o = self.reduce(callable, args)?;
                self.charge(data_bytes(&o))?;
                self.push(o);
            }
            op::BUILD => {
                let state = self.pop()?;
                let target = self.top()?;
                self.build(target, state)?;
                self.charge(data_bytes(&self.arena[target]))?;
            }
            op::NEWOBJ => {
                self.pop()?;
                let cls = self.pop()?;
                return Err(match &self.arena[cls] {
                    Obj::Global(g) => format!("NEWOBJ of {} is not supported", g.name()),
                    o => format!("NEWOBJ of {} is not supported", o.kind()),
                });
            }
            op::NEXT_BUFFER => {
                return Err("pickle uses an out-of-band buffer (protocol 5 NEXT_BUFFER); the data is \
                            not in the file: save it with buffers in-band"
                    .into())
            }
            c => return Err(unsupported(c)),
        }
        Ok(())
    }

    /// REDUCE: calls one of the allowed globals with `args`.
    fn reduce(&mut self, callable: Id, args: Id) -> VmResult<Obj> {
        let g = match &self.arena[callable] {
            Obj::Global(g) => *g,
            o => return Err(format!("REDUCE calls {}, not a global", o.kind())),
        };
        let args = match &self.arena[args] {
            Obj::Tuple(t) => t.clone(),
            o => {
                return Err(format!("REDUCE of {} with {} instead of an argument tuple", g.name(), o.kind()))
            }
        };
        let arg = |i: usize| -> VmResult<&Obj> {
            args.get(i)
                .map(|&id| &self.arena[id])
                .ok_or_else(|| format!("{} called with {} arguments", g.name(), args.len()))
        };
        match g {
            Global::Reconstruct => match arg(0)? {
                Obj::Global(Global::Ndarray) => Ok(Obj::PendingArray),
                o => Err(format!("{} of {} (numpy subclasses are not supported)", g.name(), o.kind())),
            },
            Global::Dtype => dtype_from_code(arg(0)?).map(Obj::Dtype),
            Global::Scalar => {
                let dt = as_dtype(arg(0)?)?;
                let raw = as_raw(arg(1)?, "scalar data")?;
                make_array(Vec::new(), dt, false, &raw).map(Obj::Array)
            }
            Global::FromBuffer => self.frombuffer(&args),
            Global::CodecsEncode => codecs_encode(arg(0)?, args.get(1).map(|&i| &self.arena[i])),
            Global::Bytes | Global::Bytearray => match args.len() {
                0 => Ok(Obj::Bytes(Vec::new())),
                1 => as_raw(arg(0)?, g.name()).map(|b| Obj::Bytes(b.into_owned())),
                _ => codecs_encode(arg(0)?, args.get(1).map(|&i| &self.arena[i])),
            },
            Global::Ndarray => Err("calling numpy.ndarray directly is not supported".into()),
        }
    }

    /// `_frombuffer(buffer, dtype, shape, order)`: numpy's protocol-5 array layout.
    fn frombuffer(&self, args: &[Id]) -> VmResult<Obj> {
        let [buf, dt, shape, order] = args else {
            return Err(format!("_frombuffer called with {} arguments, expected 4", args.len()));
        };
        let raw = as_raw(&self.arena[*buf], "_frombuffer data")?;
        let dt = as_dtype(&self.arena[*dt])?;
        let shape = self.shape(*shape)?;
        let fortran = match &self.arena[*order] {
            Obj::Str(s) if s == "C" => false,
            Obj::Str(s) if s == "F" => true,
            o => return Err(format!("_frombuffer order must be 'C' or 'F', found {}", o.kind())),
        };
        make_array(shape, dt, fortran, &raw).map(Obj::Array)
    }

    fn shape(&self, id: Id) -> VmResult<Vec<usize>> {
        let Obj::Tuple(items) = &self.arena[id] else {
            return Err(format!("array shape is {}, not a tuple", self.arena[id].kind()));
        };
        items
            .iter()
            .map(|&i| match self.arena[i] {
                Obj::Int(n) if n >= 0 => usize::try_from(n).map_err(|_| format!("dimension {n} too large")),
                ref o => Err(format!("array dimension is {}, not a non-negative int", o.kind())),
            })
            .collect()
    }

    /// BUILD: sets the state of a dtype (byte order) or an array (shape, dtype, data).
    fn build(&mut self, target: Id, state: Id) -> VmResult<()> {
        let new = match &self.arena[target] {
            Obj::Dtype(dt) => Obj::Dtype(dtype_with_state(*dt, &self.arena[state], &self.arena)?),
            Obj::PendingArray => Obj::Array(self.array_state(state)?),
            o => return Err(format!("BUILD on {} is not supported", o.kind())),
        };
        self.arena[target] = new;
        Ok(())
    }

    /// The array state `(version, shape, dtype, is_fortran, data)` (version may be absent).
    fn array_state(&mut self, state: Id) -> VmResult<NdArray> {
        let Obj::Tuple(items) = &self.arena[state] else {
            return Err(format!("array state is {}, not a tuple", self.arena[state].kind()));
        };
        let items = match items.len() {
            5 => &items[1..],
            4 => &items[..],
            n => return Err(format!("array state tuple has {n} items, expected 4 or 5")),
        };
        let [shape, dt, fortran, raw] = [items[0], items[1], items[2], items[3]];
        let shape = self.shape(shape)?;
        let dt = as_dtype(&self.arena[dt])?;
        let fortran = match self.arena[fortran] {
            Obj::Bool(b) => b,
            Obj::Int(i) => i != 0,
            ref o => return Err(format!("array is_fortran flag is {}", o.kind())),
        };
        if dt.elem == Elem::Object {
            let Obj::List(list) = &self.arena[raw] else {
                return Err(format!("object array data is {}, not a list", self.arena[raw].kind()));
            };
            let list = list.clone();
            let n = shape_count(&shape).ok_or("array shape overflows")?;
            if list.len() != n {
                return Err(format!("object array of shape {shape:?} has {} items", list.len()));
            }
            let vals = list.iter().map(|&i| self.materialise(i, 1)).collect::<VmResult<Vec<_>>>()?;
            let data = ArrayData::Object(vals);
            let data = if fortran && shape.len() > 1 { reorder_fortran(data, &shape) } else { data };
            return Ok(NdArray { shape, data });
        }
        let raw = as_raw(&self.arena[raw], "array data")?;
        make_array(shape, dt, fortran, &raw)
    }

    /// Charges `n` bytes of new data against the budget. REDUCE and BUILD allocate data that
    /// is not in the input (one buffer can be decoded many times through the memo), so they
    /// are charged like materialisation.
    fn charge(&mut self, n: usize) -> VmResult<()> {
        if n > self.budget {
            return Err("pickle builds more data than the memory budget allows".into());
        }
        self.budget -= n;
        Ok(())
    }

    /// Converts an arena object into the public value tree, charging the byte budget.
    fn materialise(&mut self, id: Id, depth: usize) -> VmResult<PklValue> {
        if depth > MAX_DEPTH {
            return Err(format!("pickle nests deeper than {MAX_DEPTH} levels (or is recursive)"));
        }
        let cost = match &self.arena[id] {
            Obj::Str(s) => s.len(),
            Obj::Bytes(b) => b.len(),
            Obj::Array(a) => a.len().saturating_mul(a.data.elem().size()),
            Obj::Tuple(t) | Obj::List(t) => t.len().saturating_mul(16),
            Obj::Dict(d) => d.len().saturating_mul(32),
            _ => 0,
        } + 16;
        if cost > self.budget {
            return Err("pickle expands shared references beyond the memory budget".into());
        }
        self.budget -= cost;
        Ok(match &self.arena[id] {
            Obj::None => PklValue::None,
            Obj::Bool(b) => PklValue::Bool(*b),
            Obj::Int(i) => PklValue::Int(*i),
            Obj::Float(f) => PklValue::Float(*f),
            Obj::Str(s) => PklValue::Str(s.clone()),
            Obj::Bytes(b) => PklValue::Bytes(b.clone()),
            Obj::Array(a) => PklValue::Array(a.clone()),
            Obj::Tuple(t) => PklValue::Tuple(self.materialise_all(&t.clone(), depth)?),
            Obj::List(t) => PklValue::List(self.materialise_all(&t.clone(), depth)?),
            Obj::Dict(d) => {
                let d = d.clone();
                let mut out = Vec::with_capacity(d.len());
                for (k, v) in d {
                    out.push((self.materialise(k, depth + 1)?, self.materialise(v, depth + 1)?));
                }
                PklValue::Dict(out)
            }
            Obj::Global(g) => {
                return Err(format!("the pickle's result contains the bare global {}", g.name()))
            }
            Obj::Dtype(_) => return Err("the pickle's result contains a bare numpy dtype".into()),
            Obj::PendingArray => return Err("numpy array without its BUILD state".into()),
        })
    }

    fn materialise_all(&mut self, ids: &[Id], depth: usize) -> VmResult<Vec<PklValue>> {
        ids.iter().map(|&i| self.materialise(i, depth + 1)).collect()
    }
}

/// Bytes of element or byte data an object holds (for the budget).
fn data_bytes(o: &Obj) -> usize {
    match o {
        Obj::Bytes(b) => b.len(),
        Obj::Array(a) => a.len().saturating_mul(a.data.elem().size()),
        _ => 0,
    }
}

fn unsupported(c: u8) -> String {
    let what = match c {
        b'I' | b'L' | b'F' | b'S' | b'V' | b'g' | b'p' => "a protocol-0 text opcode",
        b'P' | b'Q' => "a persistent ID",
        b'i' | b'o' | 0x92 => "class instantiation",
        0x82..=0x84 => "an extension-registry reference",
        0x8f..=0x91 => "a set",
        _ => "an unknown opcode",
    };
    format!("unsupported pickle opcode 0x{c:02x} ({what})")
}

fn global(module: &str, name: &str) -> VmResult<Global> {
    Global::lookup(module, name).ok_or_else(|| {
        format!(
            "disallowed global '{module}.{name}': only numpy array globals may appear in a pose/CTF pickle"
        )
    })
}

/// Little-endian two's-complement integer of LONG1/LONG4.
fn long_le(b: &[u8]) -> VmResult<i64> {
    if b.is_empty() {
        return Ok(0);
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let fill = if neg { 0xff } else { 0 };
    // Bytes beyond the 8th must be pure sign extension for the value to fit in i64.
    if b.len() > 8 && b[8..].iter().any(|&x| x != fill) {
        return Err(format!("integer of {} bytes does not fit in 64 bits", b.len()));
    }
    let mut a = [fill; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    let v = i64::from_le_bytes(a);
    if (v < 0) != neg {
        return Err(format!("integer of {} bytes does not fit in 64 bits", b.len()));
    }
    Ok(v)
}

fn pairs(items: Vec<Id>) -> VmResult<Vec<(Id, Id)>> {
    if items.len() % 2 == 1 {
        return Err("dict items come in an odd number".into());
    }
    Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

/// `numpy.dtype(code, align, copy)`: the code, optionally prefixed by a byte order.
fn dtype_from_code(o: &Obj) -> VmResult<Dtype> {
    let code = match o {
        Obj::Str(s) => s.clone(),
        Obj::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        o => return Err(format!("numpy.dtype of {}, not a type code", o.kind())),
    };
    let (order, rest) = match code.as_bytes().first() {
        Some(&c @ (b'<' | b'>' | b'|' | b'=')) => (Some(c), &code[1..]),
        _ => (None, &code[..]),
    };
    let elem = Elem::parse(rest).ok_or_else(|| format!("unsupported numpy dtype '{code}'"))?;
    let order = order.unwrap_or(if elem.size() == 1 || elem == Elem::Object { b'|' } else { b'=' });
    Ok(Dtype { elem, order })
}

/// A dtype's BUILD state: `(version, byteorder, …)` (versions 1–4) or `(byteorder, …)`.
fn dtype_with_state(dt: Dtype, state: &Obj, arena: &[Obj]) -> VmResult<Dtype> {
    let Obj::Tuple(items) = state else {
        return Err(format!("dtype state is {}, not a tuple", state.kind()));
    };
    let order_obj = match items.first().map(|&i| &arena[i]) {
        Some(Obj::Int(_)) => items.get(1).map(|&i| &arena[i]),
        first => first,
    };
    let order = match order_obj {
        Some(Obj::Str(s)) if matches!(s.as_str(), "<" | ">" | "|" | "=") => s.as_bytes()[0],
        _ => return Err("dtype state has no byte order ('<', '>', '|' or '=')".into()),
    };
    Ok(Dtype { order, ..dt })
}

fn as_dtype(o: &Obj) -> VmResult<Dtype> {
    match o {
        Obj::Dtype(d) => Ok(*d),
        o => Err(format!("expected a numpy dtype, found {}", o.kind())),
    }
}

/// Raw array bytes: `bytes`, or a `str` of code points < 256 (latin-1, as Python 2 wrote).
fn as_raw<'o>(o: &'o Obj, what: &str) -> VmResult<Cow<'o, [u8]>> {
    match o {
        Obj::Bytes(b) => Ok(Cow::Borrowed(b)),
        Obj::Str(s) => latin1(s).map(Cow::Owned),
        o => Err(format!("{what} is {}, not bytes", o.kind())),
    }
}

fn latin1(s: &str) -> VmResult<Vec<u8>> {
    s.chars()
        .map(|c| {
            u8::try_from(u32::from(c)).map_err(|_| format!("character U+{:04X} is not latin-1", c as u32))
        })
        .collect()
}

/// `_codecs.encode(text, 'latin1')`: how protocol 2 pickles `bytes`.
fn codecs_encode(text: &Obj, enc: Option<&Obj>) -> VmResult<Obj> {
    let Obj::Str(s) = text else {
        return Err(format!("_codecs.encode of {}, not a str", text.kind()));
    };
    match enc {
        Some(Obj::Str(e)) if matches!(e.as_str(), "latin1" | "latin-1" | "iso-8859-1") => {}
        Some(Obj::Str(e)) => return Err(format!("_codecs.encode with encoding '{e}' (only latin1 is read)")),
        _ => return Err("_codecs.encode without an encoding".into()),
    }
    latin1(s).map(Obj::Bytes)
}

/// Builds an array from a raw buffer, checking its length against shape × itemsize.
fn make_array(shape: Vec<usize>, dt: Dtype, fortran: bool, raw: &[u8]) -> VmResult<NdArray> {
    if dt.elem == Elem::Object {
        return Err("object array stored as raw bytes".into());
    }
    let n = shape_count(&shape).ok_or("array shape overflows")?;
    let want = n.checked_mul(dt.elem.size()).ok_or("array shape overflows")?;
    if raw.len() != want {
        return Err(format!(
            "array of shape {shape:?} and dtype {} needs {want} bytes, the pickle holds {}",
            dt.elem.numpy_name(),
            raw.len()
        ));
    }
    let data = decode_raw(dt.elem, raw, dt.big_endian());
    let data = if fortran && shape.len() > 1 { reorder_fortran(data, &shape) } else { data };
    Ok(NdArray { shape, data })
}

// ------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------

/// Encodes `value` as a pickle (protocol 3, or 4 when a buffer exceeds 4 GiB) that numpy
/// 1.x and 2.x load. `path` only names the destination in errors.
pub fn to_pickle_bytes(value: &PklValue, path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode(&mut out, value, path)?;
    Ok(out)
}

/// Writes `value` as a pickle, atomically.
pub fn write_pickle(path: impl AsRef<Path>, value: &PklValue) -> Result<()> {
    let path = path.as_ref();
    write_atomic(path, |w| encode(w, value, path))
}

fn encode<W: Write>(w: &mut W, value: &PklValue, path: &Path) -> Result<()> {
    check_encodable(value, path, 0)?;
    let proto = if needs_proto4(value) { 4 } else { 3 };
    let mut e = Enc { w, path };
    e.put(&[op::PROTO, proto])?;
    e.value(value)?;
    e.put(&[op::STOP])
}

/// Validates arrays (shape vs data) and depth before any byte is written.
fn check_encodable(v: &PklValue, path: &Path, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(IoError::file(path, format!("value nests deeper than {MAX_DEPTH} levels")));
    }
    match v {
        PklValue::Tuple(items) | PklValue::List(items) => {
            items.iter().try_for_each(|x| check_encodable(x, path, depth + 1))
        }
        PklValue::Dict(d) => d.iter().try_for_each(|(k, x)| {
            check_encodable(k, path, depth + 1)?;
            check_encodable(x, path, depth + 1)
        }),
        PklValue::Array(a) => {
            if shape_count(&a.shape) != Some(a.data.len()) {
                return Err(IoError::file(
                    path,
                    format!("cannot write an array of shape {:?} holding {} elements", a.shape, a.data.len()),
                ));
            }
            if let ArrayData::Object(o) = &a.data {
                o.iter().try_for_each(|x| check_encodable(x, path, depth + 1))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn needs_proto4(v: &PklValue) -> bool {
    let big = |n: usize| n as u64 > u32::MAX as u64;
    match v {
        PklValue::Str(s) => big(s.len()),
        PklValue::Bytes(b) => big(b.len()),
        PklValue::Tuple(t) | PklValue::List(t) => t.iter().any(needs_proto4),
        PklValue::Dict(d) => d.iter().any(|(k, x)| needs_proto4(k) || needs_proto4(x)),
        PklValue::Array(a) => match &a.data {
            ArrayData::Object(o) => o.iter().any(needs_proto4),
            d => big(d.len().saturating_mul(d.elem().size())),
        },
        _ => false,
    }
}

struct Enc<'w, W: Write> {
    w: &'w mut W,
    path: &'w Path,
}

impl<W: Write> Enc<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(|e| IoError::os(self.path, "write failed", e))
    }

    fn value(&mut self, v: &PklValue) -> Result<()> {
        match v {
            PklValue::None => self.put(&[op::NONE]),
            PklValue::Bool(b) => self.put(&[if *b { op::NEWTRUE } else { op::NEWFALSE }]),
            PklValue::Int(i) => self.int(*i),
            PklValue::Float(f) => {
                self.put(&[op::BINFLOAT])?;
                self.put(&f.to_be_bytes())
            }
            PklValue::Str(s) => self.str(s),
            PklValue::Bytes(b) => self.bytes(b),
            PklValue::Tuple(t) => self.tuple(t),
            PklValue::List(l) => {
                self.put(&[op::EMPTY_LIST])?;
                if !l.is_empty() {
                    self.put(&[op::MARK])?;
                    l.iter().try_for_each(|x| self.value(x))?;
                    self.put(&[op::APPENDS])?;
                }
                Ok(())
            }
            PklValue::Dict(d) => {
                self.put(&[op::EMPTY_DICT])?;
                if !d.is_empty() {
                    self.put(&[op::MARK])?;
                    for (k, x) in d {
                        self.value(k)?;
                        self.value(x)?;
                    }
                    self.put(&[op::SETITEMS])?;
                }
                Ok(())
            }
            PklValue::Array(a) => self.array(a),
        }
    }

    fn int(&mut self, i: i64) -> Result<()> {
        if (0..=0xff).contains(&i) {
            self.put(&[op::BININT1, i as u8])
        } else if (0..=0xffff).contains(&i) {
            self.put(&[op::BININT2])?;
            self.put(&(i as u16).to_le_bytes())
        } else if let Ok(j) = i32::try_from(i) {
            self.put(&[op::BININT])?;
            self.put(&j.to_le_bytes())
        } else {
            self.put(&[op::LONG1, 8])?;
            self.put(&i.to_le_bytes())
        }
    }

    fn str(&mut self, s: &str) -> Result<()> {
        if let Ok(n) = u32::try_from(s.len()) {
            self.put(&[op::BINUNICODE])?;
            self.put(&n.to_le_bytes())?;
        } else {
            self.put(&[op::BINUNICODE8])?;
            self.put(&(s.len() as u64).to_le_bytes())?;
        }
        self.put(s.as_bytes())
    }

    /// The bytes header (SHORT_BINBYTES, BINBYTES or BINBYTES8) for `n` bytes.
    fn bytes_header(&mut self, n: usize) -> Result<()> {
        if let Ok(k) = u8::try_from(n) {
            self.put(&[op::SHORT_BINBYTES, k])
        } else if let Ok(k) = u32::try_from(n) {
            self.put(&[op::BINBYTES])?;
            self.put(&k.to_le_bytes())
        } else {
            self.put(&[op::BINBYTES8])?;
            self.put(&(n as u64).to_le_bytes())
        }
    }

    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.bytes_header(b.len())?;
        self.put(b)
    }

    fn tuple(&mut self, t: &[PklValue]) -> Result<()> {
        match t.len() {
            0 => self.put(&[op::EMPTY_TUPLE]),
            1..=3 => {
                t.iter().try_for_each(|x| self.value(x))?;
                self.put(&[op::TUPLE1 + (t.len() as u8 - 1)])
            }
            _ => {
                self.put(&[op::MARK])?;
                t.iter().try_for_each(|x| self.value(x))?;
                self.put(&[op::TUPLE])
            }
        }
    }

    /// An array exactly as numpy pickles it (see the module documentation).
    fn array(&mut self, a: &NdArray) -> Result<()> {
        self.put(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")?;
        self.put(&[op::BININT1, 0, op::TUPLE1, op::SHORT_BINBYTES, 1, b'b', op::TUPLE3, op::REDUCE])?;
        self.put(&[op::MARK, op::BININT1, 1])?;
        let dims: Vec<PklValue> = a.shape.iter().map(|&d| PklValue::Int(d as i64)).collect();
        self.tuple(&dims)?;
        let elem = a.data.elem();
        self.put(b"cnumpy\ndtype\n")?;
        self.str(elem.code())?;
        self.put(&[op::NEWFALSE, op::NEWTRUE, op::TUPLE3, op::REDUCE, op::MARK, op::BININT1, 3])?;
        self.str(if elem.size() == 1 || elem == Elem::Object { "|" } else { "<" })?;
        self.put(&[op::NONE, op::NONE, op::NONE])?;
        self.int(-1)?;
        self.int(-1)?;
        // numpy's dtype flags: 63 marks object dtypes (refcounted items), 0 otherwise.
        self.int(if elem == Elem::Object { 63 } else { 0 })?;
        self.put(&[op::TUPLE, op::BUILD, op::NEWFALSE])?;
        if let ArrayData::Object(items) = &a.data {
            self.value(&PklValue::List(items.clone()))?;
        } else {
            self.raw(&a.data)?;
        }
        self.put(&[op::TUPLE, op::BUILD])
    }

    /// The little-endian raw buffer of a numeric array.
    fn raw(&mut self, d: &ArrayData) -> Result<()> {
        self.bytes_header(d.len() * d.elem().size())?;
        macro_rules! le {
            ($v:expr) => {{
                let mut buf = Vec::with_capacity(1 << 16);
                for chunk in $v.chunks(8192) {
                    buf.clear();
                    for x in chunk {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                    self.put(&buf)?;
                }
                Ok(())
            }};
        }
        match d {
            ArrayData::Bool(v) => self.put(&v.iter().map(|&b| b as u8).collect::<Vec<_>>()),
            ArrayData::I8(v) => le!(v),
            ArrayData::U8(v) => self.put(v),
            ArrayData::I16(v) => le!(v),
            ArrayData::I32(v) => le!(v),
            ArrayData::I64(v) => le!(v),
            ArrayData::U16(v) => le!(v),
            ArrayData::U32(v) => le!(v),
            ArrayData::U64(v) => le!(v),
            ArrayData::F16(v) => le!(v),
            ArrayData::F32(v) => le!(v),
            ArrayData::F64(v) => le!(v),
            ArrayData::Object(_) => Ok(()),
        }
    }
}

// ------------------------------------------------------------------------------------------
// cryoDRGN helpers
// ------------------------------------------------------------------------------------------

/// A cryoDRGN pose file: rotation matrices (cryoDRGN's `rot`, the RELION matrix A) and
/// optional translations as a fraction of the box.
#[derive(Debug, Clone, PartialEq)]
pub struct PosesPkl {
    pub rots: Vec<[[f64; 3]; 3]>,
    pub trans: Option<Vec<[f64; 2]>>,
}

/// Float precision of written pose arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    F32,
    F64,
}

/// Checks that `v` is a real-valued array of shape `[N, tail…]` with finite values and
/// returns `(N, values)` in C order. `what` names the element in errors.
fn real_rows(path: &Path, v: &PklValue, what: &str, tail: &[usize]) -> Result<(usize, Vec<f64>)> {
    let want = format!("[N, {}]", tail.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
    let PklValue::Array(a) = v else {
        return Err(IoError::field(
            path,
            what,
            format!("expected an array of shape {want}, found {}", v.kind()),
        ));
    };
    if a.shape.len() != tail.len() + 1 || a.shape[1..] != *tail {
        return Err(IoError::field(
            path,
            what,
            format!("expected shape {want}, found shape {:?} ({})", a.shape, a.data.dtype_name()),
        ));
    }
    let n = a.shape[0];
    let per = tail.iter().product::<usize>();
    let mut out = Vec::with_capacity(a.len());
    for i in 0..a.len() {
        let x = a.data.get_f64(i).ok_or_else(|| {
            IoError::field(
                path,
                what,
                format!("expected a numeric array, found dtype {}", a.data.dtype_name()),
            )
        })?;
        if !x.is_finite() {
            return Err(IoError::index_field(path, i / per.max(1), what, format!("value {x} is not finite")));
        }
        out.push(x);
    }
    Ok((n, out))
}

/// Reads a cryoDRGN poses pickle: a tuple `(rot [N,3,3], trans [N,2])` or a bare rotation
/// array. Any float or integer dtype is accepted.
pub fn read_poses_pkl(path: impl AsRef<Path>) -> Result<PosesPkl> {
    let path = path.as_ref();
    let v = read_pickle(path)?;
    let (rot, trans) = match &v {
        PklValue::Array(_) => (&v, None),
        PklValue::Tuple(t) | PklValue::List(t) if t.len() == 2 => (&t[0], Some(&t[1])),
        other => {
            return Err(IoError::file(
                path,
                format!("expected a tuple (rot, trans) or a rotation array, found {}", other.kind()),
            ))
        }
    };
    let (n, r) = real_rows(path, rot, "rot (element 0)", &[3, 3])?;
    let rots =
        r.chunks_exact(9).map(|m| [[m[0], m[1], m[2]], [m[3], m[4], m[5]], [m[6], m[7], m[8]]]).collect();
    let trans = match trans {
        None => None,
        Some(t) => {
            let (nt, t) = real_rows(path, t, "trans (element 1)", &[2])?;
            if nt != n {
                return Err(IoError::field(
                    path,
                    "trans (element 1)",
                    format!("has {nt} rows but rot has {n}"),
                ));
            }
            Some(t.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
        }
    };
    Ok(PosesPkl { rots, trans })
}

/// Reads a cryoDRGN CTF pickle: `[N, 9]` = D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase.
pub fn read_ctf_pkl(path: impl AsRef<Path>) -> Result<Vec<[f64; 9]>> {
    let path = path.as_ref();
    let v = read_pickle(path)?;
    let (_, vals) = real_rows(path, &v, "ctf", &[9])?;
    Ok(vals
        .chunks_exact(9)
        .map(|c| {
            let mut r = [0.0; 9];
            r.copy_from_slice(c);
            r
        })
        .collect())
}

/// Reads a cryoDRGN index pickle (`--ind`): a 1-D integer array (or a list of ints) of
/// particle indices. Negative or non-integer entries are errors naming the index.
pub fn read_index_pkl(path: impl AsRef<Path>) -> Result<Vec<usize>> {
    let path = path.as_ref();
    let v = read_pickle(path)?;
    let to_index = |i: usize, x: Option<i128>, shown: String| -> Result<usize> {
        match x {
            Some(k) if k < 0 => Err(IoError::index(path, i, format!("negative particle index {k}"))),
            Some(k) => {
                usize::try_from(k).map_err(|_| IoError::index(path, i, format!("index {k} too large")))
            }
            None => Err(IoError::index(path, i, format!("{shown} is not an integer particle index"))),
        }
    };
    match &v {
        PklValue::Array(a) if a.shape.len() == 1 => (0..a.len())
            .map(|i| {
                let shown = match a.data.get_f64(i) {
                    Some(x) => format!("value {x} ({})", a.data.dtype_name()),
                    None => format!("a {} value", a.data.dtype_name()),
                };
                to_index(i, a.data.get_int(i), shown)
            })
            .collect(),
        PklValue::List(items) | PklValue::Tuple(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                PklValue::Int(k) => to_index(i, Some(*k as i128), String::new()),
                other => to_index(i, None, other.kind()),
            })
            .collect(),
        other => Err(IoError::file(
            path,
            format!("expected a 1-D integer array of indices, found {}", other.kind()),
        )),
    }
}

fn float_array(shape: Vec<usize>, vals: impl Iterator<Item = f64>, dt: FloatDtype) -> PklValue {
    let data = match dt {
        FloatDtype::F32 => ArrayData::F32(vals.map(|x| x as f32).collect()),
        FloatDtype::F64 => ArrayData::F64(vals.collect()),
    };
    PklValue::Array(NdArray { shape, data })
}

/// Writes a cryoDRGN poses pickle in float32, the dtype of `cryodrgn parse_pose_csparc`
/// output and of the rotation files in cryoDRGN's tests (`pose.cs.pkl`, `hand_rot*.pkl`,
/// `toy_angles.pkl`). With translations the file is the tuple `(rot, trans)`, else the bare
/// rotation array. cryoDRGN casts to float32 when loading, so nothing is lost for it; use
/// [`write_poses_pkl_as`] with [`FloatDtype::F64`] to keep full precision (as
/// `parse_pose_star` does).
pub fn write_poses_pkl(
    path: impl AsRef<Path>,
    rots: &[[[f64; 3]; 3]],
    trans: Option<&[[f64; 2]]>,
) -> Result<()> {
    write_poses_pkl_as(path, rots, trans, FloatDtype::F32)
}

/// [`write_poses_pkl`] with a chosen float dtype.
pub fn write_poses_pkl_as(
    path: impl AsRef<Path>,
    rots: &[[[f64; 3]; 3]],
    trans: Option<&[[f64; 2]]>,
    dtype: FloatDtype,
) -> Result<()> {
    let path = path.as_ref();
    let rot = float_array(vec![rots.len(), 3, 3], rots.iter().flatten().flatten().copied(), dtype);
    let value = match trans {
        None => rot,
        Some(t) => {
            if t.len() != rots.len() {
                return Err(IoError::field(
                    path,
                    "trans",
                    format!("{} translations for {} rotations", t.len(), rots.len()),
                ));
            }
            let tr = float_array(vec![t.len(), 2], t.iter().flatten().copied(), dtype);
            PklValue::Tuple(vec![rot, tr])
        }
    };
    write_pickle(path, &value)
}

/// Writes a cryoDRGN CTF pickle: float32 `[N, 9]`.
pub fn write_ctf_pkl(path: impl AsRef<Path>, ctf: &[[f64; 9]]) -> Result<()> {
    let v = float_array(vec![ctf.len(), 9], ctf.iter().flatten().copied(), FloatDtype::F32);
    write_pickle(path, &v)
}

/// Writes a cryoDRGN index pickle: a 1-D int64 array.
pub fn write_index_pkl(path: impl AsRef<Path>, ind: &[usize]) -> Result<()> {
    let path = path.as_ref();
    let vals = ind
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            i64::try_from(k).map_err(|_| IoError::index(path, i, format!("index {k} exceeds int64")))
        })
        .collect::<Result<Vec<i64>>>()?;
    let v = PklValue::Array(NdArray { shape: vec![vals.len()], data: ArrayData::I64(vals) });
    write_pickle(path, &v)
}
