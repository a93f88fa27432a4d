//! cryoSPARC `.cs` files: NumPy `.npy` files (`np.save`) holding a 1-D structured
//! array, one record per particle, fields such as `blob/path`, `ctf/df1_A`,
//! `alignments3D/pose`.
//!
//! # Why a small header parser of our own rather than `npyz`
//! The header is a Python dict literal (`{'descr': [...], 'fortran_order': False,
//! 'shape': (N,), }`). We parse it here (a ~150-line literal parser) instead of
//! using `npyz` because (a) every error must name the file and the field, and
//! say plainly what is unsupported (pickled `|O` objects, Fortran order, n-D
//! shapes), which `npyz`'s generic `io::Error`s do not; (b) we need each field's
//! byte offset, element shape and byte order to read any field list dynamically
//! and to copy records byte for byte, which is simplest with our own model; (c)
//! the reader must never panic on hostile input (fuzzed below), which we can
//! guarantee only for code we own. Versions 1.0, 2.0 and 3.0 are read.
//!
//! # Data
//! `.cs` files are metadata (a few hundred bytes per particle), so the records are
//! read into memory once; fields are decoded on access.
//!
//! # Writing
//! [`CsFile::write`] writes exactly what `np.save` writes (version 1.0 unless the
//! header needs 2.0/3.0, header padded with spaces to a multiple of 64 bytes and
//! ended by `\n`, numpy's spare space for growing the shape included).

use crate::atomic::write_bytes_atomic;
use crate::error::{IoError, Result};
use std::path::{Path, PathBuf};

pub(crate) const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Field-name prefixes cryoSPARC uses for its result groups.
pub const KNOWN_PREFIXES: [&str; 5] = ["blob", "ctf", "alignments3D", "alignments_class_0", "alignments2D"];

/// Byte order of a field (`<`, `>`, or `|` for single bytes and strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
    NotApplicable,
}

impl ByteOrder {
    fn char(self) -> char {
        match self {
            ByteOrder::Little => '<',
            ByteOrder::Big => '>',
            ByteOrder::NotApplicable => '|',
        }
    }
}

/// The base type of a field (one element).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsType {
    Bool,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F16,
    F32,
    F64,
    /// `S<n>`: NUL-padded bytes (cryoSPARC strings such as `blob/path`).
    Bytes(usize),
    /// `V<n>`: raw bytes (numpy's padding fields).
    Void(usize),
}

impl CsType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            CsType::Bool | CsType::I8 | CsType::U8 => 1,
            CsType::I16 | CsType::U16 | CsType::F16 => 2,
            CsType::I32 | CsType::U32 | CsType::F32 => 4,
            CsType::I64 | CsType::U64 | CsType::F64 => 8,
            CsType::Bytes(n) | CsType::Void(n) => n,
        }
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, CsType::Bytes(_) | CsType::Void(_))
    }

    /// numpy's kind letter and size, e.g. `u4`, `S89`.
    fn code(self) -> String {
        match self {
            CsType::Bool => "b1".into(),
            CsType::I8 => "i1".into(),
            CsType::U8 => "u1".into(),
            CsType::I16 => "i2".into(),
            CsType::U16 => "u2".into(),
            CsType::I32 => "i4".into(),
            CsType::U32 => "u4".into(),
            CsType::I64 => "i8".into(),
            CsType::U64 => "u8".into(),
            CsType::F16 => "f2".into(),
            CsType::F32 => "f4".into(),
            CsType::F64 => "f8".into(),
            CsType::Bytes(n) => format!("S{n}"),
            CsType::Void(n) => format!("V{n}"),
        }
    }
}

/// One field of the record: name, type, element shape and byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsField {
    pub name: String,
    pub ty: CsType,
    pub byte_order: ByteOrder,
    /// Element shape: `[]` for scalars, `[3]` for `alignments3D/pose`.
    pub shape: Vec<usize>,
    /// Byte offset of the field in a record.
    pub offset: usize,
}

impl CsField {
    /// Number of elements (1 for scalars).
    pub fn count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes the field takes in a record.
    pub fn size(&self) -> usize {
        self.count() * self.ty.size()
    }

    /// numpy's type string, e.g. `<f4`, `|S89`.
    pub fn typestr(&self) -> String {
        format!("{}{}", self.byte_order.char(), self.ty.code())
    }

    /// The part of the name before the first `/` (`ctf` for `ctf/df1_A`).
    pub fn prefix(&self) -> &str {
        self.name.split('/').next().unwrap_or("")
    }
}

/// A cryoSPARC `.cs` file: field layout and the raw records.
#[derive(Debug, Clone, PartialEq)]
pub struct CsFile {
    path: PathBuf,
    fields: Vec<CsField>,
    n_rows: usize,
    row_size: usize,
    /// Exactly `n_rows * row_size` bytes (invariant kept by every constructor).
    data: Vec<u8>,
}

// ---------------------------------------------------------------------------
// Python literal parser (the npy header)
// ---------------------------------------------------------------------------

/// A Python literal as it appears in an npy header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Py {
    Str(String),
    Int(i64),
    Bool(bool),
    None,
    List(Vec<Py>),
    Tuple(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

/// Nesting deeper than this is not a numpy header; the limit keeps hostile input
/// from overflowing the stack.
const MAX_DEPTH: usize = 16;

struct PyParser<'a> {
    s: &'a [char],
    pos: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl PyParser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn expect_end(&mut self) -> PResult<()> {
        self.skip_ws();
        match self.peek() {
            None => Ok(()),
            Some(c) => Err(format!("unexpected {c:?} after the header dict at character {}", self.pos)),
        }
    }

    fn value(&mut self, depth: usize) -> PResult<Py> {
        if depth > MAX_DEPTH {
            return Err("header nested too deeply".into());
        }
        self.skip_ws();
        let c = self.peek().ok_or("header ends where a value was expected")?;
        match c {
            '\'' | '"' => self.string(),
            'u' | 'b' if matches!(self.s.get(self.pos + 1), Some('\'' | '"')) => {
                self.pos += 1; // Python 2 era u'..' / b'..' prefixes
                self.string()
            }
            '[' => self.seq(']', depth).map(Py::List),
            '(' => self.seq(')', depth).map(Py::Tuple),
            '{' => self.dict(depth),
            '0'..='9' | '-' | '+' => self.int(),
            _ => self.word(),
        }
    }

    fn word(&mut self) -> PResult<Py> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        let w: String = self.s[start..self.pos].iter().collect();
        match w.as_str() {
            "True" => Ok(Py::Bool(true)),
            "False" => Ok(Py::Bool(false)),
            "None" => Ok(Py::None),
            "" => Err(format!("unexpected {:?} in header at character {start}", self.s[start])),
            _ => Err(format!("unexpected name {w:?} in header")),
        }
    }

    fn int(&mut self) -> PResult<Py> {
        let start = self.pos;
        if matches!(self.peek(), Some('-' | '+')) {
            self.pos += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let text: String = self.s[start..self.pos].iter().collect();
        if self.peek() == Some('L') {
            self.pos += 1; // Python 2 long suffix, e.g. (2019L,)
        }
        text.parse::<i64>().map(Py::Int).map_err(|_| format!("bad integer {text:?} in header"))
    }

    fn string(&mut self) -> PResult<Py> {
        let q = self.peek().ok_or("header ends inside a string")?;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or("unterminated string in header")?;
            self.pos += 1;
            if c == q {
                return Ok(Py::Str(out));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let e = self.peek().ok_or("unterminated string in header")?;
            self.pos += 1;
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                '\\' | '\'' | '"' => out.push(e),
                'x' => out.push(self.hex(2)?),
                'u' => out.push(self.hex(4)?),
                'U' => out.push(self.hex(8)?),
                _ => {
                    out.push('\\');
                    out.push(e);
                }
            }
        }
    }

    fn hex(&mut self, n: usize) -> PResult<char> {
        let digits: String =
            self.s.get(self.pos..self.pos + n).ok_or("truncated escape in header")?.iter().collect();
        self.pos += n;
        u32::from_str_radix(&digits, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| format!("bad escape \\x{digits} in header"))
    }

    /// Comma-separated values up to `close` (a trailing comma allowed).
    fn seq(&mut self, close: char, depth: usize) -> PResult<Vec<Py>> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(out);
            }
            out.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(format!("expected ',' or '{close}' in header at character {}", self.pos)),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> PResult<Py> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(Py::Dict(out));
            }
            let k = self.value(depth + 1)?;
            self.skip_ws();
            if self.peek() != Some(':') {
                return Err(format!("expected ':' in header dict at character {}", self.pos));
            }
            self.pos += 1;
            let v = self.value(depth + 1)?;
            out.push((k, v));
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err(format!("expected ',' or '}}' in header at character {}", self.pos)),
            }
        }
    }
}

pub(crate) fn parse_py(text: &str) -> PResult<Py> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = PyParser { s: &chars, pos: 0 };
    let v = p.value(0)?;
    p.expect_end()?;
    Ok(v)
}

// ---------------------------------------------------------------------------
// Header → fields
// ---------------------------------------------------------------------------

/// Parse a numpy type string such as `<f4`, `|S89`.
pub(crate) fn parse_typestr(s: &str) -> PResult<(CsType, ByteOrder)> {
    let mut chars = s.chars();
    let (order, rest) = match chars.next() {
        Some('<') => (ByteOrder::Little, chars.as_str()),
        Some('>') => (ByteOrder::Big, chars.as_str()),
        Some('|') => (ByteOrder::NotApplicable, chars.as_str()),
        // '=' is native order; numpy on every platform we run on is little-endian.
        Some('=') => {
            (if cfg!(target_endian = "big") { ByteOrder::Big } else { ByteOrder::Little }, chars.as_str())
        }
        _ => (ByteOrder::NotApplicable, s),
    };
    let kind = rest.chars().next().ok_or_else(|| format!("empty dtype {s:?}"))?;
    let size_text = &rest[kind.len_utf8()..];
    if kind == 'O' {
        return Err(format!("dtype {s:?} holds pickled Python objects, which are not supported"));
    }
    let size: usize = size_text.parse().map_err(|_| format!("unsupported dtype {s:?}"))?;
    let ty = match (kind, size) {
        ('b', 1) => CsType::Bool,
        ('i', 1) => CsType::I8,
        ('u', 1) => CsType::U8,
        ('i', 2) => CsType::I16,
        ('u', 2) => CsType::U16,
        ('i', 4) => CsType::I32,
        ('u', 4) => CsType::U32,
        ('i', 8) => CsType::I64,
        ('u', 8) => CsType::U64,
        ('f', 2) => CsType::F16,
        ('f', 4) => CsType::F32,
        ('f', 8) => CsType::F64,
        ('S' | 'a', n) => CsType::Bytes(n),
        ('V', n) => CsType::Void(n),
        _ => return Err(format!("unsupported dtype {s:?}")),
    };
    // Single-byte types have no byte order; keep what multi-byte types say.
    let order = if ty.is_numeric() && ty.size() > 1 { order } else { ByteOrder::NotApplicable };
    Ok((ty, order))
}

/// Element shape from a descr entry's third item: an int or a tuple of ints.
fn parse_shape(v: Option<&Py>) -> PResult<Vec<usize>> {
    let dims = match v {
        None => return Ok(Vec::new()),
        Some(Py::Int(n)) => vec![*n],
        Some(Py::Tuple(t)) => t
            .iter()
            .map(|x| match x {
                Py::Int(n) => Ok(*n),
                _ => Err("sub-array shape must hold integers".to_string()),
            })
            .collect::<PResult<Vec<i64>>>()?,
        Some(_) => return Err("sub-array shape must be an int or a tuple".into()),
    };
    dims.into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("negative sub-array dimension {d}")))
        .collect()
}

/// One `(name, typestr[, shape])` entry of `descr`.
fn parse_field(path: &Path, i: usize, entry: &Py, offset: usize) -> Result<CsField> {
    let bad = |m: String| IoError::field(path, format!("descr[{i}]"), m);
    let Py::Tuple(items) = entry else { return Err(bad("expected a (name, dtype) tuple".into())) };
    if !(2..=3).contains(&items.len()) {
        return Err(bad(format!("expected 2 or 3 items, found {}", items.len())));
    }
    let name = match &items[0] {
        Py::Str(s) => s.clone(),
        Py::Tuple(_) => return Err(bad("field titles are not supported".into())),
        _ => return Err(bad("field name must be a string".into())),
    };
    let nerr = |m: String| IoError::field(path, name.clone(), m);
    let (ty, byte_order) = match &items[1] {
        Py::Str(s) => parse_typestr(s).map_err(nerr)?,
        Py::List(_) => return Err(nerr("nested structured fields are not supported".into())),
        _ => return Err(nerr("dtype must be a string".into())),
    };
    let shape = parse_shape(items.get(2)).map_err(nerr)?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count.and_then(|c| c.checked_mul(ty.size())).is_none() {
        return Err(nerr(format!("sub-array shape {shape:?} is too large")));
    }
    Ok(CsField { name, ty, byte_order, shape, offset })
}

/// The header's fields, record size and row count.
fn parse_header(path: &Path, text: &str) -> Result<(Vec<CsField>, usize, usize)> {
    let hdr = |m: String| IoError::field(path, "npy header", m);
    let Py::Dict(items) = parse_py(text).map_err(hdr)? else {
        return Err(hdr("header is not a dict".into()));
    };
    let get = |k: &str| items.iter().find(|(key, _)| *key == Py::Str(k.into())).map(|(_, v)| v);
    let descr = get("descr").ok_or_else(|| hdr("no 'descr' key".into()))?;
    match get("fortran_order") {
        Some(Py::Bool(false)) => {}
        Some(Py::Bool(true)) => {
            return Err(hdr("fortran_order is True: Fortran-ordered arrays are not supported".into()))
        }
        _ => return Err(hdr("no boolean 'fortran_order' key".into())),
    }
    let n_rows = match get("shape") {
        Some(Py::Tuple(t)) => match t.as_slice() {
            [Py::Int(n)] => usize::try_from(*n).map_err(|_| hdr(format!("negative row count {n}")))?,
            _ => return Err(hdr(format!("shape {}: a .cs file must hold a 1-D array", show_shape(t)))),
        },
        _ => return Err(hdr("no tuple 'shape' key".into())),
    };
    let entries = match descr {
        Py::List(l) => l,
        Py::Str(s) if s.contains('O') => {
            return Err(hdr(format!("dtype {s:?} holds pickled Python objects, which are not supported")))
        }
        Py::Str(s) => return Err(hdr(format!("dtype {s:?} is not a structured array (no fields)"))),
        _ => return Err(hdr("'descr' is neither a list nor a string".into())),
    };
    let mut fields = Vec::with_capacity(entries.len());
    let mut offset = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let f = parse_field(path, i, e, offset)?;
        if !f.name.is_empty() && fields.iter().any(|g: &CsField| g.name == f.name) {
            return Err(IoError::field(path, f.name.clone(), "field appears twice in the dtype"));
        }
        offset = offset.checked_add(f.size()).ok_or_else(|| hdr("record size overflows".into()))?;
        fields.push(f);
    }
    if offset == 0 {
        // A .cs record always holds data; zero-size records would make any row
        // count "fit" in an empty file.
        return Err(hdr("the dtype has no fields or only empty ones".into()));
    }
    Ok((fields, offset, n_rows))
}

fn show_shape(t: &[Py]) -> String {
    let dims: Vec<String> =
        t.iter().map(|d| if let Py::Int(n) = d { n.to_string() } else { "?".into() }).collect();
    if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    }
}

/// Version, header text and the offset where the records start.
pub(crate) fn read_preamble(path: &Path, bytes: &[u8]) -> Result<(u8, String, usize)> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(IoError::file(path, "not a NumPy .npy file (the \\x93NUMPY magic is missing)"));
    }
    let major = bytes[6];
    let (len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        2 | 3 => return Err(IoError::file(path, "npy file ends inside its preamble")),
        v => return Err(IoError::file(path, format!("unsupported .npy format version {v}.{}", bytes[7]))),
    };
    let end = start.checked_add(len).filter(|&e| e <= bytes.len()).ok_or_else(|| {
        IoError::file(path, format!("npy header claims {len} bytes but the file has only {}", bytes.len()))
    })?;
    let raw = &bytes[start..end];
    // Versions 1 and 2 are latin-1, version 3 UTF-8.
    let text = if major == 3 {
        std::str::from_utf8(raw)
            .map_err(|_| IoError::field(path, "npy header", "not valid UTF-8"))?
            .to_string()
    } else {
        raw.iter().map(|&b| b as char).collect()
    };
    Ok((major, text, end))
}

// ---------------------------------------------------------------------------
// Reading and access
// ---------------------------------------------------------------------------

pub(crate) fn decode_f64(ty: CsType, order: ByteOrder, b: &[u8]) -> Option<f64> {
    let big = order == ByteOrder::Big;
    macro_rules! num {
        ($t:ty, $n:literal) => {{
            let a: [u8; $n] = b.get(..$n)?.try_into().ok()?;
            if big {
                <$t>::from_be_bytes(a)
            } else {
                <$t>::from_le_bytes(a)
            }
        }};
    }
    Some(match ty {
        CsType::Bool => (*b.first()? != 0) as u8 as f64,
        CsType::I8 => *b.first()? as i8 as f64,
        CsType::U8 => *b.first()? as f64,
        CsType::I16 => num!(i16, 2) as f64,
        CsType::U16 => num!(u16, 2) as f64,
        CsType::I32 => num!(i32, 4) as f64,
        CsType::U32 => num!(u32, 4) as f64,
        CsType::I64 => num!(i64, 8) as f64,
        CsType::U64 => num!(u64, 8) as f64,
        CsType::F16 => half::f16::from_bits(num!(u16, 2)).to_f64(),
        CsType::F32 => num!(f32, 4) as f64,
        CsType::F64 => num!(f64, 8),
        CsType::Bytes(_) | CsType::Void(_) => return None,
    })
}

/// Integers (and bools) exactly, as i128 so both u64 and i64 fit.
fn decode_int(ty: CsType, order: ByteOrder, b: &[u8]) -> Option<i128> {
    let big = order == ByteOrder::Big;
    macro_rules! num {
        ($t:ty, $n:literal) => {{
            let a: [u8; $n] = b.get(..$n)?.try_into().ok()?;
            (if big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }) as i128
        }};
    }
    Some(match ty {
        CsType::Bool => (*b.first()? != 0) as i128,
        CsType::I8 => *b.first()? as i8 as i128,
        CsType::U8 => *b.first()? as i128,
        CsType::I16 => num!(i16, 2),
        CsType::U16 => num!(u16, 2),
        CsType::I32 => num!(i32, 4),
        CsType::U32 => num!(u32, 4),
        CsType::I64 => num!(i64, 8),
        CsType::U64 => num!(u64, 8),
        _ => return None,
    })
}

impl CsFile {
    /// Read a `.cs` file.
    pub fn read(path: impl AsRef<Path>) -> Result<CsFile> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| IoError::os(path, "cannot read .cs file", e))?;
        Self::from_bytes(bytes, path)
    }

    /// Parse a `.cs` file held in memory; `path` is used only in error messages.
    pub fn from_bytes(mut bytes: Vec<u8>, path: impl AsRef<Path>) -> Result<CsFile> {
        let path = path.as_ref();
        let (_, header, start) = read_preamble(path, &bytes)?;
        let (fields, row_size, n_rows) = parse_header(path, &header)?;
        let need = n_rows.checked_mul(row_size).ok_or_else(|| {
            IoError::file(path, format!("header says {n_rows} rows of {row_size} bytes: too large"))
        })?;
        let have = bytes.len() - start;
        if have < need {
            let msg = format!(
                "truncated: header says {n_rows} rows of {row_size} bytes ({need} bytes of data) \
                 but only {have} bytes follow the header ({} complete rows)",
                have.checked_div(row_size).unwrap_or(0)
            );
            return Err(IoError::file(path, msg));
        }
        // np.load ignores bytes after the array; so do we.
        bytes.truncate(start + need);
        bytes.drain(..start);
        Ok(CsFile { path: path.to_path_buf(), fields, n_rows, row_size, data: bytes })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fields(&self) -> &[CsField] {
        &self.fields
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Bytes per record.
    pub fn row_size(&self) -> usize {
        self.row_size
    }

    /// All records, back to back.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn field(&self, name: &str) -> Option<&CsField> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn has_field(&self, name: &str) -> bool {
        self.field(name).is_some()
    }

    /// Distinct name prefixes (`blob`, `ctf`, `alignments3D`, …) in field order.
    pub fn prefixes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.fields {
            let p = f.prefix();
            if !p.is_empty() && f.name.contains('/') && !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Which of [`KNOWN_PREFIXES`] occur.
    pub fn known_prefixes(&self) -> Vec<&'static str> {
        let have = self.prefixes();
        KNOWN_PREFIXES.iter().copied().filter(|p| have.contains(p)).collect()
    }

    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.prefixes().contains(&prefix)
    }

    /// The field `name`, or an error naming the file and the field.
    pub fn require_field(&self, name: &str) -> Result<&CsField> {
        self.field(name).ok_or_else(|| {
            let groups = self.prefixes().join(", ");
            IoError::field(
                &self.path,
                name,
                format!("no such field in this .cs file (field groups: {groups})"),
            )
        })
    }

    /// One record's bytes.
    pub fn row_bytes(&self, row: usize) -> Result<&[u8]> {
        let start = row.checked_mul(self.row_size).filter(|_| row < self.n_rows);
        start.and_then(|s| self.data.get(s..s + self.row_size)).ok_or_else(|| {
            IoError::index(&self.path, row, format!("row out of range: the file has {} rows", self.n_rows))
        })
    }

    /// The bytes of field `name` in record `row`.
    pub fn field_bytes(&self, row: usize, name: &str) -> Result<&[u8]> {
        let f = self.require_field(name)?;
        let r = self.row_bytes(row)?;
        r.get(f.offset..f.offset + f.size())
            .ok_or_else(|| IoError::index_field(&self.path, row, name, "field lies outside the record"))
    }

    /// Element `elem` of a numeric field, checked.
    fn elem(&self, row: usize, name: &str, elem: usize) -> Result<(&CsField, &[u8])> {
        let f = self.require_field(name)?;
        if !f.ty.is_numeric() {
            let msg = format!("field has dtype {}, not a number", f.typestr());
            return Err(IoError::index_field(&self.path, row, name, msg));
        }
        if elem >= f.count() {
            let msg = format!("element {elem} out of range: the field has shape {:?}", f.shape);
            return Err(IoError::index_field(&self.path, row, name, msg));
        }
        let b = self.field_bytes(row, name)?;
        let s = f.ty.size();
        let e = b
            .get(elem * s..(elem + 1) * s)
            .ok_or_else(|| IoError::index_field(&self.path, row, name, "bad element"))?;
        Ok((f, e))
    }

    /// Element `elem` (0 for scalars) of numeric field `name` in record `row`.
    pub fn get_f64(&self, row: usize, name: &str, elem: usize) -> Result<f64> {
        let (f, b) = self.elem(row, name, elem)?;
        decode_f64(f.ty, f.byte_order, b)
            .ok_or_else(|| IoError::index_field(&self.path, row, name, "cannot decode value"))
    }

    /// An integer field exactly (e.g. `uid`, beyond f64's 2^53); negative values
    /// and float fields are errors.
    pub fn get_u64(&self, row: usize, name: &str, elem: usize) -> Result<u64> {
        let (f, b) = self.elem(row, name, elem)?;
        let v = decode_int(f.ty, f.byte_order, b).ok_or_else(|| {
            IoError::index_field(
                &self.path,
                row,
                name,
                format!("field has dtype {}, not an integer", f.typestr()),
            )
        })?;
        u64::try_from(v)
            .map_err(|_| IoError::index_field(&self.path, row, name, format!("value {v} is negative")))
    }

    /// A string field: bytes up to the first NUL, invalid UTF-8 replaced.
    pub fn get_str(&self, row: usize, name: &str) -> Result<String> {
        let f = self.require_field(name)?;
        if f.ty.is_numeric() {
            let msg = format!("field has dtype {}, not a string", f.typestr());
            return Err(IoError::index_field(&self.path, row, name, msg));
        }
        let b = self.field_bytes(row, name)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Ok(String::from_utf8_lossy(&b[..end]).into_owned())
    }

    /// A scalar numeric field for every record.
    pub fn column_f64(&self, name: &str) -> Result<Vec<f64>> {
        let f = self.require_field(name)?;
        if f.count() != 1 || !f.shape.is_empty() {
            let msg = format!("field has shape {:?}; use column_vec for sub-array fields", f.shape);
            return Err(IoError::field(&self.path, name, msg));
        }
        (0..self.n_rows).map(|r| self.get_f64(r, name, 0)).collect()
    }

    /// A scalar integer field for every record, exactly.
    pub fn column_u64(&self, name: &str) -> Result<Vec<u64>> {
        (0..self.n_rows).map(|r| self.get_u64(r, name, 0)).collect()
    }

    /// A numeric field of any shape for every record, flattened per record
    /// (`alignments3D/pose` → `[[a, b, c], …]`).
    pub fn column_vec(&self, name: &str) -> Result<Vec<Vec<f64>>> {
        let n = self.require_field(name)?.count();
        (0..self.n_rows).map(|r| (0..n).map(|e| self.get_f64(r, name, e)).collect()).collect()
    }

    /// A string field for every record.
    pub fn column_str(&self, name: &str) -> Result<Vec<String>> {
        (0..self.n_rows).map(|r| self.get_str(r, name)).collect()
    }

    /// A file holding records `rows` (in order, repeats allowed), byte for byte.
    pub fn select_rows(&self, rows: &[usize]) -> Result<CsFile> {
        let mut data = Vec::with_capacity(rows.len().saturating_mul(self.row_size));
        for &r in rows {
            data.extend_from_slice(self.row_bytes(r)?);
        }
        Ok(CsFile {
            path: self.path.clone(),
            fields: self.fields.clone(),
            n_rows: rows.len(),
            row_size: self.row_size,
            data,
        })
    }

    /// The whole file as `np.save` would write it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = npy_header(&self.fields, self.n_rows);
        out.extend_from_slice(&self.data);
        out
    }

    /// Write atomically (temporary file + rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        write_bytes_atomic(path.as_ref(), &self.to_bytes())
    }
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Python's `repr()` of a str (single quotes unless the text holds `'` and no `"`).
fn py_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

pub(crate) fn py_shape(dims: &[usize]) -> String {
    match dims {
        [d] => format!("({d},)"),
        _ => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// Magic, version, length and header dict, padded as numpy pads it.
fn npy_header(fields: &[CsField], n_rows: usize) -> Vec<u8> {
    let descr: Vec<String> = fields
        .iter()
        .map(|f| match f.shape.is_empty() {
            true => format!("({}, {})", py_repr(&f.name), py_repr(&f.typestr())),
            false => format!("({}, {}, {})", py_repr(&f.name), py_repr(&f.typestr()), py_shape(&f.shape)),
        })
        .collect();
    let mut h =
        format!("{{'descr': [{}], 'fortran_order': False, 'shape': ({n_rows},), }}", descr.join(", "));
    // numpy leaves room to grow the row count in place (GROWTH_AXIS_MAX_DIGITS = 21).
    h.push_str(&" ".repeat(21usize.saturating_sub(n_rows.to_string().len())));
    // Latin-1 when every char fits (versions 1/2), else UTF-8 (version 3), as numpy.
    let latin1 = h.chars().all(|c| (c as u32) < 256);
    let enc: Vec<u8> = if latin1 { h.chars().map(|c| c as u8).collect() } else { h.into_bytes() };
    let hlen = enc.len() + 1; // + '\n'
    let v1_pad = 64 - (10 + hlen) % 64;
    let (major, prefix_len) = if latin1 && hlen + v1_pad <= u16::MAX as usize {
        (1u8, 10)
    } else if latin1 {
        (2, 12)
    } else {
        (3, 12)
    };
    let pad = 64 - (prefix_len + hlen) % 64;
    let total = hlen + pad;
    let mut out = Vec::with_capacity(prefix_len + total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(total as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(total as u32).to_le_bytes());
    }
    out.extend_from_slice(&enc);
    out.resize(out.len() + pad, b' ');
    out.push(b'\n');
    out
}

/// Build a new `.cs` from columns, e.g. for STAR → .cs conversion:
///
/// ```
/// # use cryoforge_io::cs::CsBuilder;
/// let cs = CsBuilder::new(2)
///     .add_u64("uid", &[1, 2])
///     .add_bytes("blob/path", 8, &["a.mrcs", "a.mrcs"])
///     .add_u32("blob/idx", &[0, 1])
///     .add_f32_vec("alignments3D/pose", 3, &[0.0, 0.1, 0.2, 1.0, 1.1, 1.2])
///     .build()
///     .unwrap();
/// assert_eq!(cs.get_f64(1, "alignments3D/pose", 2).unwrap(), 1.2f32 as f64);
/// ```
/// Little-endian multi-byte fields, packed in the order added (as numpy packs a
/// list dtype). Errors (wrong length, duplicate name, value wider than the field)
/// are reported by [`build`](Self::build).
#[derive(Debug)]
pub struct CsBuilder {
    n: usize,
    fields: Vec<CsField>,
    /// Per field: `n` records of that field's bytes.
    cols: Vec<Vec<u8>>,
    err: Option<IoError>,
}

/// The pseudo file name in builder errors.
const BUILDER: &str = "<new .cs>";

impl CsBuilder {
    pub fn new(n_rows: usize) -> Self {
        CsBuilder { n: n_rows, fields: Vec::new(), cols: Vec::new(), err: None }
    }

    /// Add a field whose `n * dim` values are encoded by `enc` into `bytes`.
    fn add_raw(mut self, name: &str, ty: CsType, shape: Vec<usize>, n_vals: usize, bytes: Vec<u8>) -> Self {
        if self.err.is_some() {
            return self;
        }
        let count: usize = shape.iter().product();
        let fail = if self.fields.iter().any(|f| f.name == name) {
            Some("field added twice".to_string())
        } else if n_vals != self.n.saturating_mul(count) {
            Some(format!("{n_vals} values given, {} rows × {count} expected", self.n))
        } else {
            None
        };
        if let Some(m) = fail {
            self.err = Some(IoError::field(BUILDER, name, m));
            return self;
        }
        let byte_order =
            if ty.is_numeric() && ty.size() > 1 { ByteOrder::Little } else { ByteOrder::NotApplicable };
        let offset = self.fields.iter().map(CsField::size).sum();
        self.fields.push(CsField { name: name.to_string(), ty, byte_order, shape, offset });
        self.cols.push(bytes);
        self
    }

    pub fn add_u64(self, name: &str, values: &[u64]) -> Self {
        let b = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, CsType::U64, vec![], values.len(), b)
    }

    pub fn add_u32(self, name: &str, values: &[u32]) -> Self {
        let b = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, CsType::U32, vec![], values.len(), b)
    }

    pub fn add_i32(self, name: &str, values: &[i32]) -> Self {
        let b = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, CsType::I32, vec![], values.len(), b)
    }

    pub fn add_f32(self, name: &str, values: &[f32]) -> Self {
        let b = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, CsType::F32, vec![], values.len(), b)
    }

    pub fn add_f64(self, name: &str, values: &[f64]) -> Self {
        let b = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, CsType::F64, vec![], values.len(), b)
    }

    /// A `<u4 (dim,)` field from `n * dim` values, row-major (e.g. `blob/shape`).
    pub fn add_u32_vec(self, name: &str, dim: usize, values: &[u32]) -> Self {
        let b = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, CsType::U32, vec![dim], values.len(), b)
    }

    /// A `<f4 (dim,)` field from `n * dim` values, row-major (e.g.
    /// `alignments3D/pose` with dim 3).
    pub fn add_f32_vec(self, name: &str, dim: usize, values: &[f32]) -> Self {
        let b = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, CsType::F32, vec![dim], values.len(), b)
    }

    /// An `|S<width>` field; shorter values are NUL-padded, longer ones an error.
    pub fn add_bytes<B: AsRef<[u8]>>(mut self, name: &str, width: usize, values: &[B]) -> Self {
        let mut b = Vec::with_capacity(values.len().saturating_mul(width));
        for (i, v) in values.iter().enumerate() {
            let v = v.as_ref();
            if v.len() > width && self.err.is_none() {
                let msg = format!("value of {} bytes does not fit in |S{width}", v.len());
                self.err = Some(IoError::index_field(BUILDER, i, name, msg));
            }
            b.extend_from_slice(&v[..v.len().min(width)]);
            b.resize(b.len() + width.saturating_sub(v.len()), 0);
        }
        self.add_raw(name, CsType::Bytes(width), vec![], values.len(), b)
    }

    /// The file (its path, for messages, is `<new .cs>` until written).
    pub fn build(self) -> Result<CsFile> {
        if let Some(e) = self.err {
            return Err(e);
        }
        let row_size: usize = self.fields.iter().map(CsField::size).sum();
        let mut data = Vec::with_capacity(self.n.saturating_mul(row_size));
        for r in 0..self.n {
            for (f, col) in self.fields.iter().zip(&self.cols) {
                let s = f.size();
                let chunk = col
                    .get(r * s..(r + 1) * s)
                    .ok_or_else(|| IoError::field(BUILDER, f.name.clone(), "internal: short column"))?;
                data.extend_from_slice(chunk);
            }
        }
        Ok(CsFile { path: PathBuf::from(BUILDER), fields: self.fields, n_rows: self.n, row_size, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_literals() {
        let v = parse_py("{'a': [('x', '<f4', (2, 3))], 'b': True, 'c': (5L,), }  \n").unwrap();
        let Py::Dict(items) = v else { panic!() };
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].1, Py::Tuple(vec![Py::Int(5)]));
        assert!(parse_py("{'a': 1} x").is_err());
        assert!(parse_py(&"[".repeat(100)).is_err());
    }

    #[test]
    fn typestrs() {
        assert_eq!(parse_typestr("<u8").unwrap(), (CsType::U64, ByteOrder::Little));
        assert_eq!(parse_typestr("|S89").unwrap(), (CsType::Bytes(89), ByteOrder::NotApplicable));
        assert_eq!(parse_typestr(">f4").unwrap(), (CsType::F32, ByteOrder::Big));
        assert!(parse_typestr("|O").unwrap_err().contains("pickled"));
        assert!(parse_typestr("<c8").unwrap_err().contains("unsupported"));
    }

    #[test]
    fn repr_matches_python() {
        assert_eq!(py_repr("blob/path"), "'blob/path'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'\"b"), "'a\\'\"b'");
    }
}
