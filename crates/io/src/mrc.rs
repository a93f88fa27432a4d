//! MRC2014 maps and image stacks: lazy, memory-mapped reading and atomic writing.
//!
//! An MRC file is a 1024-byte header (256 four-byte words), an optional extended
//! header of `nsymbt` bytes, then `nx·ny·nz` voxels, x fastest, then y, then z.
//! RELION, cryoSPARC, cryoDRGN and ChimeraX store 3-D maps (`.mrc`, `ispg` 1)
//! and particle stacks (`.mrcs`, `ispg` 0, one image per z-section) this way.
//!
//! - [`MrcFile`] opens a file, validates the header against the file size and
//!   memory-maps it; images are converted to `f32` only when asked for, so a
//!   100 GB stack costs no memory up front. All reads take `&self` and the type
//!   is `Send + Sync`, so rayon workers can share one `MrcFile`.
//! - [`write_volume`], [`write_stack`] and the streaming [`MrcStackWriter`]
//!   write little-endian float32 (mode 2) with a complete header, always through
//!   a temporary file and a rename, so an output is never left half-written.
//!
//! # Decisions where real files disagree with the spec
//!
//! - **Byte order** comes from the machine stamp (word 54): `0x44 0x44` or
//!   `0x44 0x41` little-endian, `0x11 0x11` big-endian. When the stamp is zero or
//!   unknown (old files, RELION stacks), the order in which `mode` is a known
//!   mode and `nx`, `ny`, `nz` are plausible wins, then the one whose implied
//!   size equals the file's, then little-endian. When a stamp contradicts a
//!   header that reads strictly better in the other order, the header wins
//!   (and a warning is logged).
//! - **Mode 0** is signed 8-bit per MRC2014. It is read as unsigned only when
//!   IMOD says so: `imodStamp` (word 39) is [`IMOD_STAMP`] and bit 0 of
//!   `imodFlags` (word 40, "bytes are signed") is clear.
//! - **Voxel size** is `cella / m` per axis. When `m ≤ 0` or the result is not a
//!   positive finite number (unset cells, `mx = 0`), that axis falls back to
//!   1.0 Å; [`MrcHeader::voxel_size_opt`] tells whether a fallback was used.
//! - **Tolerated**: `nversion` 0, any `exttyp`, unset statistics (`dmax < dmin`,
//!   e.g. −1/−2/−3; see [`MrcHeader::stats_set`]), a missing `"MAP "` stamp,
//!   `mapc/mapr/maps` other than 1,2,3 (data are returned in file order).
//! - **Size**: the file must be exactly `1024 + nsymbt + nx·ny·nz·bytes` long.
//!   RELION and cryoSPARC write exact files, so a shorter file is reported as
//!   truncated and a longer one as oversized, both with the two byte counts.
//! - **Non-finite values** (NaN, ±Inf) are errors naming the image index and
//!   pixel `(x, y)`, when reading (the `_unchecked` readers skip the scan) and
//!   when writing (statistics of such data would be meaningless).
//!
//! # Example
//!
//! ```
//! use cryoforge_io::mrc::{write_stack, MrcFile};
//! # fn main() -> cryoforge_io::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("particles.mrcs");
//! let (nx, ny, n) = (8, 6, 3);
//! let data: Vec<f32> = (0..nx * ny * n).map(|v| v as f32).collect();
//! write_stack(&path, &data, nx, ny, n, 1.5)?;
//!
//! let stack = MrcFile::open(&path)?;
//! assert_eq!((stack.nx(), stack.ny(), stack.n_images()), (8, 6, 3));
//! assert_eq!(stack.voxel_size(), [1.5, 1.5, 1.5]);
//! let mut image = vec![0.0; stack.image_len()];
//! stack.read_image(2, &mut image)?;
//! assert_eq!(image[..], data[2 * nx * ny..]);
//! # Ok(()) }
//! ```

use crate::error::{IoError, Loc, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Size of the fixed MRC header in bytes.
pub const HEADER_BYTES: usize = 1024;
/// IMOD's `imodStamp` (word 39): when present, `imodFlags` (word 40) is meaningful.
pub const IMOD_STAMP: i32 = 1146047817;
/// Largest voxel payload a header may describe (1 TiB); larger is a corrupt header.
pub const MAX_DATA_BYTES: u64 = 1 << 40;
/// `nversion` written by this module: MRC2014, revision 0.
pub const NVERSION_MRC2014: i32 = 20140;

/// Largest `nx` or `ny` considered plausible when guessing an unstamped byte order.
const PLAUSIBLE_SIDE: i32 = 1 << 20;
/// Voxels converted per step: bounds the scratch buffer of positioned reads.
const CHUNK_VOXELS: usize = 1 << 20;
/// Byte offset of the first of the ten 80-byte labels.
const LABELS_AT: usize = 224;
const LABEL_BYTES: usize = 80;
const MAX_LABELS: usize = 10;

// ---------------------------------------------------------------------------
// Byte order and modes
// ---------------------------------------------------------------------------

/// Byte order of the header words and the voxel data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    /// The order a machine stamp names (`0x44 0x44` / `0x44 0x41` little,
    /// `0x11 0x11` big), or `None` for a zero or unknown stamp.
    pub fn from_stamp(stamp: [u8; 4]) -> Option<ByteOrder> {
        match (stamp[0], stamp[1]) {
            (0x44, 0x44) | (0x44, 0x41) => Some(ByteOrder::Little),
            (0x11, 0x11) => Some(ByteOrder::Big),
            _ => None,
        }
    }

    /// The machine stamp written for this order.
    pub fn stamp(self) -> [u8; 4] {
        match self {
            ByteOrder::Little => [0x44, 0x44, 0, 0],
            ByteOrder::Big => [0x11, 0x11, 0, 0],
        }
    }

    fn other(self) -> ByteOrder {
        match self {
            ByteOrder::Little => ByteOrder::Big,
            ByteOrder::Big => ByteOrder::Little,
        }
    }

    fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            ByteOrder::Little => u32::from_le_bytes(b),
            ByteOrder::Big => u32::from_be_bytes(b),
        }
    }

    fn u32_bytes(self, v: u32) -> [u8; 4] {
        match self {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        }
    }
}

/// The voxel types this module reads (MRC2014 modes 0, 1, 2, 4, 6, 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MrcMode {
    /// Mode 0: signed 8-bit (the MRC2014 meaning).
    Int8,
    /// Mode 0 in an IMOD file whose flags say the bytes are unsigned.
    Uint8,
    /// Mode 1: signed 16-bit.
    Int16,
    /// Mode 2: 32-bit float.
    Float32,
    /// Mode 4: complex of two 32-bit floats (re, im); `nx` counts complex values.
    Complex64,
    /// Mode 6: unsigned 16-bit.
    Uint16,
    /// Mode 12: IEEE half-precision float.
    Float16,
}

impl MrcMode {
    /// The mode a header describes, or `None` when `mode` is unsupported.
    pub fn from_header(h: &MrcHeader) -> Option<MrcMode> {
        let imod_unsigned = h.imod_stamp == IMOD_STAMP && h.imod_flags & 1 == 0;
        Self::from_code(h.mode, imod_unsigned)
    }

    /// The mode for a `mode` number; `unsigned_bytes` picks uint8 for mode 0.
    fn from_code(code: i32, unsigned_bytes: bool) -> Option<MrcMode> {
        Some(match code {
            0 if unsigned_bytes => MrcMode::Uint8,
            0 => MrcMode::Int8,
            1 => MrcMode::Int16,
            2 => MrcMode::Float32,
            4 => MrcMode::Complex64,
            6 => MrcMode::Uint16,
            12 => MrcMode::Float16,
            _ => return None,
        })
    }

    /// The header's `mode` number.
    pub fn code(self) -> i32 {
        match self {
            MrcMode::Int8 | MrcMode::Uint8 => 0,
            MrcMode::Int16 => 1,
            MrcMode::Float32 => 2,
            MrcMode::Complex64 => 4,
            MrcMode::Uint16 => 6,
            MrcMode::Float16 => 12,
        }
    }

    /// Bytes one voxel occupies in the file.
    pub fn bytes_per_voxel(self) -> usize {
        match self {
            MrcMode::Int8 | MrcMode::Uint8 => 1,
            MrcMode::Int16 | MrcMode::Uint16 | MrcMode::Float16 => 2,
            MrcMode::Float32 => 4,
            MrcMode::Complex64 => 8,
        }
    }

    pub fn is_complex(self) -> bool {
        self == MrcMode::Complex64
    }

    /// Only float modes can hold NaN or Inf, so only they need the scan.
    fn is_float(self) -> bool {
        matches!(self, MrcMode::Float32 | MrcMode::Float16 | MrcMode::Complex64)
    }

    fn name(self) -> &'static str {
        match self {
            MrcMode::Int8 => "int8",
            MrcMode::Uint8 => "uint8",
            MrcMode::Int16 => "int16",
            MrcMode::Float32 => "float32",
            MrcMode::Complex64 => "complex64",
            MrcMode::Uint16 => "uint16",
            MrcMode::Float16 => "float16",
        }
    }
}

// ---------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------

/// The MRC2014 header, fields named as in the specification. Word numbers
/// (1-based, four bytes each) are given for the fields that need them.
#[derive(Debug, Clone, PartialEq)]
pub struct MrcHeader {
    /// Columns, rows, sections (words 1–3). For stacks, `nz` is the image count.
    pub nx: i32,
    pub ny: i32,
    pub nz: i32,
    /// Voxel type (word 4); see [`MrcMode`].
    pub mode: i32,
    /// Index of the first column, row, section (words 5–7).
    pub nxstart: i32,
    pub nystart: i32,
    pub nzstart: i32,
    /// Sampling intervals along the cell axes (words 8–10).
    pub mx: i32,
    pub my: i32,
    pub mz: i32,
    /// Cell lengths in Å (words 11–13).
    pub cella: [f32; 3],
    /// Cell angles in degrees (words 14–16).
    pub cellb: [f32; 3],
    /// Axis (1 = x, 2 = y, 3 = z) along columns, rows, sections (words 17–19).
    pub mapc: i32,
    pub mapr: i32,
    pub maps: i32,
    /// Minimum, maximum, mean density (words 20–22); `dmax < dmin` means unset.
    pub dmin: f32,
    pub dmax: f32,
    pub dmean: f32,
    /// Space group (word 23): 0 for image stacks, 1 for single volumes.
    pub ispg: i32,
    /// Extended-header length in bytes (word 24).
    pub nsymbt: i32,
    /// Extended-header type code, e.g. `b"FEI1"` (word 27).
    pub exttyp: [u8; 4],
    /// Format version, `20140` for MRC2014; 0 in older files (word 28).
    pub nversion: i32,
    /// IMOD stamp and flags (words 39, 40); see [`IMOD_STAMP`].
    pub imod_stamp: i32,
    pub imod_flags: i32,
    /// Origin in Å (words 50–52).
    pub origin: [f32; 3],
    /// `b"MAP "` in MRC2000+ files (word 53).
    pub map: [u8; 4],
    /// Machine stamp as found in the file (word 54).
    pub machst: [u8; 4],
    /// RMS deviation from the mean density (word 55); negative means unset.
    pub rms: f32,
    /// Number of labels in use (word 56), as found in the file.
    pub nlabl: i32,
    /// The first `nlabl` (at most 10) labels, NUL-terminated and trailing spaces cut.
    pub labels: Vec<String>,
    /// The byte order the header was read in, and [`to_bytes`](Self::to_bytes) writes.
    pub byte_order: ByteOrder,
}

/// Reads 1-based header words in a given byte order.
struct Words<'a> {
    b: &'a [u8; HEADER_BYTES],
    order: ByteOrder,
}

impl Words<'_> {
    fn raw(&self, word: usize) -> [u8; 4] {
        let o = (word - 1) * 4;
        [self.b[o], self.b[o + 1], self.b[o + 2], self.b[o + 3]]
    }
    fn i32(&self, word: usize) -> i32 {
        self.order.u32(self.raw(word)) as i32
    }
    fn f32(&self, word: usize) -> f32 {
        f32::from_bits(self.order.u32(self.raw(word)))
    }
    fn f32x3(&self, word: usize) -> [f32; 3] {
        [self.f32(word), self.f32(word + 1), self.f32(word + 2)]
    }
}

/// Writes 1-based header words in a given byte order.
struct WordsMut {
    b: [u8; HEADER_BYTES],
    order: ByteOrder,
}

impl WordsMut {
    fn raw(&mut self, word: usize, v: [u8; 4]) {
        let o = (word - 1) * 4;
        self.b[o..o + 4].copy_from_slice(&v);
    }
    fn i32(&mut self, word: usize, v: i32) {
        let bytes = self.order.u32_bytes(v as u32);
        self.raw(word, bytes);
    }
    fn f32(&mut self, word: usize, v: f32) {
        let bytes = self.order.u32_bytes(v.to_bits());
        self.raw(word, bytes);
    }
    fn f32x3(&mut self, word: usize, v: [f32; 3]) {
        for (k, x) in v.into_iter().enumerate() {
            self.f32(word + k, x);
        }
    }
}

/// How well the header reads in `order`: 2 for a known mode and positive,
/// not absurd `nx`, `ny`, `nz`; 1 more when the size it implies equals
/// `file_len`. A byte-swapped header almost never scores, because a swapped
/// mode is ≥ 2^24, and swapped small sizes are ≥ 2^24 too. The size term
/// settles the rare ties (mode 0 with sides that are multiples of 256).
fn order_score(b: &[u8; HEADER_BYTES], order: ByteOrder, file_len: Option<u64>) -> u8 {
    let w = Words { b, order };
    let (nx, ny, nz, mode, nsymbt) = (w.i32(1), w.i32(2), w.i32(3), w.i32(4), w.i32(24));
    let bpv = MrcMode::from_code(mode, false).map(|m| m.bytes_per_voxel() as u64);
    let side_ok = |v: i32| (1..=PLAUSIBLE_SIDE).contains(&v);
    let plausible = bpv.is_some() && side_ok(nx) && side_ok(ny) && nz >= 1;
    let expected = bpv
        .and_then(|bpv| [nx, ny, nz].iter().try_fold(bpv, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?)));
    let size = expected.and_then(|e| e.checked_add(HEADER_BYTES as u64 + u64::try_from(nsymbt).ok()?));
    let size_ok = file_len.is_some() && size == file_len;
    2 * plausible as u8 + size_ok as u8
}

/// The byte order of a header: the machine stamp's, unless the other order
/// reads strictly better; without a stamp the better order, little on a tie.
fn detect_byte_order(b: &[u8; HEADER_BYTES], file_len: Option<u64>) -> ByteOrder {
    let stamp = [b[212], b[213], b[214], b[215]];
    let score = |o| order_score(b, o, file_len);
    match ByteOrder::from_stamp(stamp) {
        // A stamp contradicted by the header itself is a writer's bug; the data win.
        Some(o) if score(o.other()) > score(o) => o.other(),
        Some(o) => o,
        None if score(ByteOrder::Big) > score(ByteOrder::Little) => ByteOrder::Big,
        None => ByteOrder::Little,
    }
}

fn parse_labels(b: &[u8; HEADER_BYTES], nlabl: i32) -> Vec<String> {
    let n = nlabl.clamp(0, MAX_LABELS as i32) as usize;
    b[LABELS_AT..]
        .chunks_exact(LABEL_BYTES)
        .take(n)
        .map(|l| {
            let end = l.iter().position(|&c| c == 0).unwrap_or(l.len());
            String::from_utf8_lossy(&l[..end]).trim_end().to_string()
        })
        .collect()
}

/// The cell length to write for `n` voxels of `apix` Å: the f32 nearest
/// `n·apix` for which a reader's `cell / n` gives `apix` back exactly, so a
/// 0.83 Å map does not read back as 0.83000004 Å. Up to four ulps either side
/// are tried; when none round-trips, the nearest value is kept.
fn cell_length(n: i32, apix: f32) -> f32 {
    let nearest = (n as f64 * apix as f64) as f32;
    let back = |c: f32| (c as f64 / n as f64) as f32;
    if back(nearest) == apix || !nearest.is_finite() || nearest <= 0.0 {
        return nearest;
    }
    let (mut up, mut down) = (nearest, nearest);
    for _ in 0..4 {
        // For positive finite floats, adjacent bit patterns are adjacent values.
        up = f32::from_bits(up.to_bits().saturating_add(1));
        down = f32::from_bits(down.to_bits().saturating_sub(1));
        for c in [up, down] {
            if c.is_finite() && back(c) == apix {
                return c;
            }
        }
    }
    nearest
}

/// One axis of the voxel size: `cell / m`, or `None` when unset or nonsense.
fn axis_voxel_size(cell: f32, m: i32) -> Option<f32> {
    // In f64, as `cell_length` assumes when it picks the cell to write.
    let v = (cell as f64 / m as f64) as f32;
    (m > 0 && v.is_finite() && v > 0.0).then_some(v)
}

impl MrcHeader {
    /// Decode a header, detecting its byte order (see the module docs). This
    /// never fails: validation against a file happens in [`MrcFile::open`],
    /// which also uses the file size to detect the byte order of unstamped files.
    pub fn from_bytes(b: &[u8; HEADER_BYTES]) -> MrcHeader {
        Self::parse(b, None)
    }

    fn parse(b: &[u8; HEADER_BYTES], file_len: Option<u64>) -> MrcHeader {
        let order = detect_byte_order(b, file_len);
        let w = Words { b, order };
        let nlabl = w.i32(56);
        MrcHeader {
            nx: w.i32(1),
            ny: w.i32(2),
            nz: w.i32(3),
            mode: w.i32(4),
            nxstart: w.i32(5),
            nystart: w.i32(6),
            nzstart: w.i32(7),
            mx: w.i32(8),
            my: w.i32(9),
            mz: w.i32(10),
            cella: w.f32x3(11),
            cellb: w.f32x3(14),
            mapc: w.i32(17),
            mapr: w.i32(18),
            maps: w.i32(19),
            dmin: w.f32(20),
            dmax: w.f32(21),
            dmean: w.f32(22),
            ispg: w.i32(23),
            nsymbt: w.i32(24),
            exttyp: w.raw(27),
            nversion: w.i32(28),
            imod_stamp: w.i32(39),
            imod_flags: w.i32(40),
            origin: w.f32x3(50),
            map: w.raw(53),
            machst: w.raw(54),
            rms: w.f32(55),
            nlabl,
            labels: parse_labels(b, nlabl),
            byte_order: order,
        }
    }

    /// Encode in `self.byte_order`. The machine stamp written is the one for
    /// that order (not `self.machst`), `nlabl` is the number of labels kept
    /// (at most 10), and labels are cut to 80 bytes; other words are zero.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut w = WordsMut { b: [0; HEADER_BYTES], order: self.byte_order };
        for (k, v) in [self.nx, self.ny, self.nz, self.mode].into_iter().enumerate() {
            w.i32(1 + k, v);
        }
        for (k, v) in
            [self.nxstart, self.nystart, self.nzstart, self.mx, self.my, self.mz].into_iter().enumerate()
        {
            w.i32(5 + k, v);
        }
        w.f32x3(11, self.cella);
        w.f32x3(14, self.cellb);
        for (k, v) in [self.mapc, self.mapr, self.maps].into_iter().enumerate() {
            w.i32(17 + k, v);
        }
        w.f32x3(20, [self.dmin, self.dmax, self.dmean]);
        w.i32(23, self.ispg);
        w.i32(24, self.nsymbt);
        w.raw(27, self.exttyp);
        w.i32(28, self.nversion);
        w.i32(39, self.imod_stamp);
        w.i32(40, self.imod_flags);
        w.f32x3(50, self.origin);
        w.raw(53, self.map);
        w.raw(54, self.byte_order.stamp());
        w.f32(55, self.rms);
        let n = self.labels.len().min(MAX_LABELS);
        w.i32(56, n as i32);
        for (k, label) in self.labels.iter().take(n).enumerate() {
            let bytes = &label.as_bytes()[..label.len().min(LABEL_BYTES)];
            let at = LABELS_AT + k * LABEL_BYTES;
            w.b[at..at + bytes.len()].copy_from_slice(bytes);
        }
        w.b
    }

    /// Voxel size in Å per axis, `cella / m`; an axis whose size is unset or
    /// not a positive finite number (e.g. `mx = 0`) falls back to 1.0.
    pub fn voxel_size(&self) -> [f32; 3] {
        self.voxel_size_axes().map(|v| v.unwrap_or(1.0))
    }

    /// Voxel size in Å when all three axes define one, else `None`.
    pub fn voxel_size_opt(&self) -> Option<[f32; 3]> {
        let [x, y, z] = self.voxel_size_axes();
        Some([x?, y?, z?])
    }

    fn voxel_size_axes(&self) -> [Option<f32>; 3] {
        [
            axis_voxel_size(self.cella[0], self.mx),
            axis_voxel_size(self.cella[1], self.my),
            axis_voxel_size(self.cella[2], self.mz),
        ]
    }

    /// Whether dmin/dmax/dmean hold statistics (finite, `dmin ≤ dmean ≤ dmax`);
    /// writers that skip them leave values with `dmax < dmin`, e.g. −1/−2/−3.
    pub fn stats_set(&self) -> bool {
        let all_finite = [self.dmin, self.dmax, self.dmean].iter().all(|v| v.is_finite());
        all_finite && self.dmin <= self.dmean && self.dmean <= self.dmax
    }

    /// Whether word 53 holds the `"MAP "` stamp (absent in pre-2000 files).
    pub fn has_map_stamp(&self) -> bool {
        &self.map == b"MAP "
    }

    /// Whether this is an image stack by the MRC2014 convention (`ispg` 0).
    /// Old files may not follow it; `.mrcs` names are the other common hint.
    pub fn is_stack(&self) -> bool {
        self.ispg == 0
    }

    /// The header of a little-endian float32 file this module writes; the
    /// statistics are set afterwards from the data.
    fn float32(dims: [i32; 3], apix: f32, origin: [f32; 3], ispg: i32) -> MrcHeader {
        let cell = dims.map(|n| cell_length(n, apix));
        MrcHeader {
            nx: dims[0],
            ny: dims[1],
            nz: dims[2],
            mode: 2,
            nxstart: 0,
            nystart: 0,
            nzstart: 0,
            mx: dims[0],
            my: dims[1],
            mz: dims[2],
            cella: cell,
            cellb: [90.0; 3],
            mapc: 1,
            mapr: 2,
            maps: 3,
            dmin: -1.0,
            dmax: -2.0,
            dmean: -3.0,
            ispg,
            nsymbt: 0,
            exttyp: [0; 4],
            nversion: NVERSION_MRC2014,
            imod_stamp: 0,
            imod_flags: 0,
            origin,
            map: *b"MAP ",
            machst: ByteOrder::Little.stamp(),
            rms: -1.0,
            nlabl: 1,
            labels: vec![format!("cryoforge {}", env!("CARGO_PKG_VERSION"))],
            byte_order: ByteOrder::Little,
        }
    }
}

// ---------------------------------------------------------------------------
// Validation of a header against its file
// ---------------------------------------------------------------------------

/// Where the voxels are, once the header has been checked against the file.
struct Layout {
    mode: MrcMode,
    dims: [usize; 3],
    data_offset: u64,
}

fn check_mode(path: &Path, h: &MrcHeader) -> Result<MrcMode> {
    MrcMode::from_header(h).ok_or_else(|| {
        let hint =
            if h.has_map_stamp() { "" } else { "; there is no \"MAP \" stamp either: is this an MRC file?" };
        IoError::field(
            path,
            "mode",
            format!(
                "unsupported mode {} (supported: 0 int8, 1 int16, 2 float32, 4 complex64, 6 uint16, \
                 12 float16){hint}",
                h.mode
            ),
        )
    })
}

fn check_dims(path: &Path, h: &MrcHeader) -> Result<[usize; 3]> {
    let mut dims = [0usize; 3];
    for (k, (name, v)) in [("nx", h.nx), ("ny", h.ny), ("nz", h.nz)].into_iter().enumerate() {
        if v <= 0 {
            return Err(IoError::field(path, name, format!("{name} = {v}: dimensions must be at least 1")));
        }
        dims[k] = v as usize;
    }
    Ok(dims)
}

/// The voxel payload in bytes, refusing products that overflow or pass 1 TiB.
fn data_bytes(path: &Path, h: &MrcHeader, mode: MrcMode, dims: [usize; 3]) -> Result<u64> {
    let bpv = mode.bytes_per_voxel() as u64;
    let total = dims.iter().try_fold(bpv, |acc, &d| acc.checked_mul(d as u64));
    match total {
        Some(t) if t <= MAX_DATA_BYTES && usize::try_from(t).is_ok() => Ok(t),
        _ => Err(IoError::field(
            path,
            "nx, ny, nz",
            format!(
                "absurd dimensions {}×{}×{} voxels × {bpv} bytes (mode {}) exceed the {MAX_DATA_BYTES}-byte \
                 limit; the header is probably corrupt",
                h.nx, h.ny, h.nz, h.mode
            ),
        )),
    }
}

fn validate_layout(path: &Path, h: &MrcHeader, file_len: u64) -> Result<Layout> {
    let mode = check_mode(path, h)?;
    let dims = check_dims(path, h)?;
    let data = data_bytes(path, h, mode, dims)?;
    if h.nsymbt < 0 {
        let msg = format!("nsymbt = {}: the extended-header length cannot be negative", h.nsymbt);
        return Err(IoError::field(path, "nsymbt", msg));
    }
    let data_offset = HEADER_BYTES as u64 + h.nsymbt as u64;
    if data_offset > file_len {
        let msg = format!(
            "extended header of nsymbt = {} bytes runs past the end of the file ({file_len} bytes)",
            h.nsymbt
        );
        return Err(IoError::field(path, "nsymbt", msg));
    }
    let have = file_len - data_offset;
    let what = format!(
        "nx×ny×nz = {}×{}×{} voxels of mode {} ({}, {} bytes), after {data_offset} header bytes",
        h.nx,
        h.ny,
        h.nz,
        h.mode,
        mode.name(),
        mode.bytes_per_voxel()
    );
    if have < data {
        let msg = format!("truncated: header says {data} bytes of data ({what}), file has {have}");
        return Err(IoError::file(path, msg));
    }
    if have > data {
        let msg = format!(
            "oversized: header says {data} bytes of data ({what}), file has {have} ({} unexpected trailing bytes)",
            have - data
        );
        return Err(IoError::file(path, msg));
    }
    Ok(Layout { mode, dims, data_offset })
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// The file's bytes: a read-only mapping, or the open file for positioned reads
/// where mapping is impossible (some network and special filesystems).
#[derive(Debug)]
enum Backing {
    Mapped(memmap2::Mmap),
    Positioned(File),
}

/// An open MRC map or stack: a validated header and lazily read voxels.
///
/// All reads take `&self`; `MrcFile` is `Send + Sync`, so workers on many
/// threads may read different images of one stack at the same time.
#[derive(Debug)]
pub struct MrcFile {
    path: PathBuf,
    header: MrcHeader,
    mode: MrcMode,
    dims: [usize; 3],
    data_offset: u64,
    backing: Backing,
}

/// Map the whole file, or fall back to positioned reads when mapping fails.
fn map_or_positioned(path: &Path, file: File, file_len: u64) -> Backing {
    // SAFETY: the mapping is read-only and private to this process. As with any
    // mapped file, another process truncating the file while it is mapped makes
    // reads fault; MRC inputs are not rewritten in place by the tools we serve,
    // and `MrcFile::open_unmapped` exists for filesystems where that happens.
    match unsafe { memmap2::Mmap::map(&file) } {
        Ok(m) if m.len() as u64 == file_len => Backing::Mapped(m),
        Ok(_) => {
            tracing::debug!("{}: file changed size while mapping; using positioned reads", path.display());
            Backing::Positioned(file)
        }
        Err(e) => {
            tracing::debug!("{}: cannot map ({e}); using positioned reads", path.display());
            Backing::Positioned(file)
        }
    }
}

/// Convert `N`-byte voxels to f32 with `f`.
fn convert<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        *o = f(a);
    }
}

/// Convert real voxels to f32; the byte order is matched once, outside the loop.
fn decode_real(mode: MrcMode, order: ByteOrder, bytes: &[u8], out: &mut [f32]) {
    use ByteOrder::{Big, Little};
    debug_assert!(!mode.is_complex(), "complex data go through read_complex_section");
    match (mode, order) {
        (MrcMode::Int8, _) => convert::<1>(bytes, out, |a| a[0] as i8 as f32),
        (MrcMode::Uint8, _) => convert::<1>(bytes, out, |a| a[0] as f32),
        (MrcMode::Int16, Little) => convert::<2>(bytes, out, |a| i16::from_le_bytes(a) as f32),
        (MrcMode::Int16, Big) => convert::<2>(bytes, out, |a| i16::from_be_bytes(a) as f32),
        (MrcMode::Uint16, Little) => convert::<2>(bytes, out, |a| u16::from_le_bytes(a) as f32),
        (MrcMode::Uint16, Big) => convert::<2>(bytes, out, |a| u16::from_be_bytes(a) as f32),
        (MrcMode::Float16, Little) => convert::<2>(bytes, out, |a| half::f16::from_le_bytes(a).to_f32()),
        (MrcMode::Float16, Big) => convert::<2>(bytes, out, |a| half::f16::from_be_bytes(a).to_f32()),
        (MrcMode::Float32, Little) => convert::<4>(bytes, out, f32::from_le_bytes),
        (MrcMode::Float32, Big) => convert::<4>(bytes, out, f32::from_be_bytes),
        // Unreachable: the real-valued readers reject complex files first.
        (MrcMode::Complex64, _) => {}
    }
}

/// The first non-finite value of `data` as (image, x, y, value), images being
/// `nx·ny` values each and counted from `first_image`.
fn first_non_finite(
    data: &[f32],
    nx: usize,
    ny: usize,
    first_image: usize,
) -> Option<(usize, usize, usize, f32)> {
    let k = data.iter().position(|v| !v.is_finite())?;
    let image_len = nx * ny;
    let p = k % image_len;
    Some((first_image + k / image_len, p % nx, p / nx, data[k]))
}

impl MrcFile {
    /// Open and validate an MRC file and memory-map it (falling back to
    /// positioned reads when mapping fails). Nothing beyond the header is read.
    pub fn open(path: impl AsRef<Path>) -> Result<MrcFile> {
        Self::open_with(path.as_ref(), true)
    }

    /// Like [`open`](Self::open) but never maps the file: every read is a
    /// positioned `pread`. For filesystems where mapping is unsafe or slow.
    pub fn open_unmapped(path: impl AsRef<Path>) -> Result<MrcFile> {
        Self::open_with(path.as_ref(), false)
    }

    fn open_with(path: &Path, map: bool) -> Result<MrcFile> {
        let file = File::open(path).map_err(|e| IoError::os(path, "cannot open MRC file", e))?;
        let meta = file.metadata().map_err(|e| IoError::os(path, "cannot stat MRC file", e))?;
        let file_len = meta.len();
        if file_len < HEADER_BYTES as u64 {
            let msg = format!("file is {file_len} bytes, shorter than the {HEADER_BYTES}-byte MRC header");
            return Err(IoError::file(path, msg));
        }
        let mut raw = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut raw, 0).map_err(|e| IoError::os(path, "cannot read the MRC header", e))?;
        let header = MrcHeader::parse(&raw, Some(file_len));
        if ByteOrder::from_stamp(header.machst).is_some_and(|o| o != header.byte_order) {
            tracing::warn!(
                "{}: machine stamp {:02x?} contradicts the header, which reads as {:?}-endian",
                path.display(),
                header.machst,
                header.byte_order
            );
        }
        let layout = validate_layout(path, &header, file_len)?;
        let backing = if map { map_or_positioned(path, file, file_len) } else { Backing::Positioned(file) };
        Ok(MrcFile {
            path: path.to_path_buf(),
            header,
            mode: layout.mode,
            dims: layout.dims,
            data_offset: layout.data_offset,
            backing,
        })
    }

    pub fn header(&self) -> &MrcHeader {
        &self.header
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn mode(&self) -> MrcMode {
        self.mode
    }
    pub fn byte_order(&self) -> ByteOrder {
        self.header.byte_order
    }
    pub fn nx(&self) -> usize {
        self.dims[0]
    }
    pub fn ny(&self) -> usize {
        self.dims[1]
    }
    pub fn nz(&self) -> usize {
        self.dims[2]
    }
    /// Number of sections: the image count of a stack, `nz` of a volume.
    pub fn n_images(&self) -> usize {
        self.dims[2]
    }
    /// Values per image (section): `nx·ny`.
    pub fn image_len(&self) -> usize {
        self.dims[0] * self.dims[1]
    }
    /// Voxel size in Å per axis (see [`MrcHeader::voxel_size`] for the fallback).
    pub fn voxel_size(&self) -> [f32; 3] {
        self.header.voxel_size()
    }
    /// Origin in Å (header words 50–52).
    pub fn origin(&self) -> [f32; 3] {
        self.header.origin
    }
    /// Byte offset of the first voxel: 1024 + `nsymbt`.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Run `f` on `len` file bytes at `offset`, mapped or read into a buffer.
    fn with_bytes<R>(&self, offset: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        match &self.backing {
            Backing::Mapped(m) => {
                let range = usize::try_from(offset).ok().and_then(|s| Some(s..s.checked_add(len)?));
                let bytes = range.and_then(|r| m.get(r)).ok_or_else(|| {
                    IoError::new(
                        &self.path,
                        Loc::Byte(offset),
                        format!("{len} bytes past the end of the file"),
                    )
                })?;
                Ok(f(bytes))
            }
            Backing::Positioned(file) => {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset).map_err(|e| IoError {
                    path: self.path.clone(),
                    loc: Loc::Byte(offset),
                    msg: format!("cannot read {len} bytes"),
                    source: Some(e),
                })?;
                Ok(f(&buf))
            }
        }
    }

    /// Decode `out.len()` real voxels starting at voxel `first_voxel`, in steps
    /// of [`CHUNK_VOXELS`] so positioned reads never buffer a whole batch.
    fn read_real(&self, first_voxel: usize, out: &mut [f32]) -> Result<()> {
        let bpv = self.mode.bytes_per_voxel();
        let order = self.header.byte_order;
        let mut voxel = first_voxel;
        for chunk in out.chunks_mut(CHUNK_VOXELS) {
            let offset = self.data_offset + (voxel * bpv) as u64;
            self.with_bytes(offset, chunk.len() * bpv, |b| decode_real(self.mode, order, b, chunk))?;
            voxel += chunk.len();
        }
        Ok(())
    }

    fn require_real(&self, index: usize) -> Result<()> {
        if self.mode.is_complex() {
            let msg = format!(
                "mode {} (complex64) holds complex values: read them with read_complex_section (image {index})",
                self.header.mode
            );
            return Err(IoError::field(&self.path, "mode", msg));
        }
        Ok(())
    }

    /// Check that `len` values starting at image `start` are whole images
    /// inside the file; returns the number of images.
    fn batch_count(&self, start: usize, len: usize) -> Result<usize> {
        self.require_real(start)?;
        let image_len = self.image_len();
        let count = len / image_len;
        if count * image_len != len {
            let msg = format!("output buffer holds {len} values, not a multiple of nx×ny = {image_len}");
            return Err(IoError::index(&self.path, start, msg));
        }
        if !matches!(start.checked_add(count), Some(end) if end <= self.n_images()) {
            let msg =
                format!("images {start}..{start}+{count} out of range: the file has {}", self.n_images());
            return Err(IoError::index(&self.path, start, msg));
        }
        Ok(count)
    }

    fn check_image_len(&self, i: usize, len: usize) -> Result<()> {
        if len != self.image_len() {
            let msg = format!("output buffer holds {len} values, one image is nx×ny = {}", self.image_len());
            return Err(IoError::index(&self.path, i, msg));
        }
        Ok(())
    }

    /// Report the first NaN/Inf in `data` (images from `first_image`).
    fn check_finite(&self, first_image: usize, data: &[f32]) -> Result<()> {
        if !self.mode.is_float() {
            return Ok(());
        }
        match first_non_finite(data, self.nx(), self.ny(), first_image) {
            None => Ok(()),
            Some((i, x, y, v)) => {
                let msg = format!("non-finite value {v} at pixel (x={x}, y={y})");
                Err(IoError::index(&self.path, i, msg))
            }
        }
    }

    /// Read image (z-section) `i` into `out` (`nx·ny` values, row-major, x
    /// fastest) as f32. A NaN or Inf is an error naming the image and pixel.
    pub fn read_image(&self, i: usize, out: &mut [f32]) -> Result<()> {
        self.check_image_len(i, out.len())?;
        self.read_images(i, out)
    }

    /// [`read_image`](Self::read_image) without the NaN/Inf scan.
    pub fn read_image_unchecked(&self, i: usize, out: &mut [f32]) -> Result<()> {
        self.check_image_len(i, out.len())?;
        self.read_images_unchecked(i, out)
    }

    /// Read the contiguous images `start..start + out.len() / (nx·ny)` into
    /// `out`, which must hold a whole number of images.
    pub fn read_images(&self, start: usize, out: &mut [f32]) -> Result<()> {
        self.read_images_unchecked(start, out)?;
        self.check_finite(start, out)
    }

    /// [`read_images`](Self::read_images) without the NaN/Inf scan.
    pub fn read_images_unchecked(&self, start: usize, out: &mut [f32]) -> Result<()> {
        self.batch_count(start, out.len())?;
        self.read_real(start * self.image_len(), out)
    }

    /// Read the whole map (`nx·ny·nz` values, x fastest, in file order) as f32;
    /// NaN/Inf are errors naming the section (index) and pixel.
    pub fn read_volume(&self) -> Result<Vec<f32>> {
        let v = self.read_volume_unchecked()?;
        self.check_finite(0, &v)?;
        Ok(v)
    }

    /// [`read_volume`](Self::read_volume) without the NaN/Inf scan.
    pub fn read_volume_unchecked(&self) -> Result<Vec<f32>> {
        self.require_real(0)?;
        let n = self.image_len() * self.n_images();
        let mut v: Vec<f32> = Vec::new();
        // A corrupt or huge file must give an error, not abort on allocation.
        v.try_reserve_exact(n).map_err(|_| {
            let msg = format!("cannot allocate {} bytes for the whole map; read it by sections", n * 4);
            IoError::file(&self.path, msg)
        })?;
        v.resize(n, 0.0);
        self.read_real(0, &mut v)?;
        Ok(v)
    }

    /// Read section `i` of a complex (mode 4) file as `nx·ny` (re, im) pairs;
    /// NaN/Inf in either part is an error naming the section and pixel.
    pub fn read_complex_section(&self, i: usize) -> Result<Vec<(f32, f32)>> {
        if !self.mode.is_complex() {
            let msg = format!(
                "mode {} ({}) is not complex: read it with read_image",
                self.header.mode,
                self.mode.name()
            );
            return Err(IoError::field(&self.path, "mode", msg));
        }
        if i >= self.n_images() {
            let msg = format!("section {i} out of range: the file has {}", self.n_images());
            return Err(IoError::index(&self.path, i, msg));
        }
        let n = self.image_len();
        let offset = self.data_offset + (i * n * 8) as u64;
        let order = self.header.byte_order;
        let word = |c: &[u8]| f32::from_bits(order.u32([c[0], c[1], c[2], c[3]]));
        let pairs: Vec<(f32, f32)> = self.with_bytes(offset, n * 8, |b| {
            b.chunks_exact(8).map(|c| (word(&c[..4]), word(&c[4..]))).collect()
        })?;
        if let Some(k) = pairs.iter().position(|(re, im)| !(re.is_finite() && im.is_finite())) {
            let (x, y) = (k % self.nx(), k / self.nx());
            let (re, im) = pairs[k];
            let msg = format!("non-finite complex value ({re}, {im}) at pixel (x={x}, y={y})");
            return Err(IoError::index(&self.path, i, msg));
        }
        Ok(pairs)
    }
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Running min/max/mean/variance in f64. Blocks are summarised on their own
/// and merged (Chan, Golub & LeVeque), so a million-image stack keeps the
/// precision a naive sum of squares would lose.
#[derive(Debug, Clone, Copy)]
struct RunningStats {
    n: u64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
}

impl RunningStats {
    fn new() -> Self {
        RunningStats { n: 0, min: f64::INFINITY, max: f64::NEG_INFINITY, mean: 0.0, m2: 0.0 }
    }

    fn add(&mut self, data: &[f32]) {
        for block in data.chunks(1 << 16) {
            self.add_block(block);
        }
    }

    fn add_block(&mut self, b: &[f32]) {
        if b.is_empty() {
            return;
        }
        let nb = b.len() as f64;
        let (mut sum, mut lo, mut hi) = (0.0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &v in b {
            let v = v as f64;
            sum += v;
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let mb = sum / nb;
        let m2b: f64 = b.iter().map(|&v| (v as f64 - mb).powi(2)).sum();
        let na = self.n as f64;
        let n = na + nb;
        let delta = mb - self.mean;
        self.mean += delta * nb / n;
        self.m2 += m2b + delta * delta * na * nb / n;
        self.n += b.len() as u64;
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
    }

    /// Set dmin, dmax, dmean and rms (the standard deviation about the mean).
    fn apply(&self, h: &mut MrcHeader) {
        if self.n == 0 {
            return;
        }
        h.dmin = self.min as f32;
        h.dmax = self.max as f32;
        h.dmean = self.mean as f32;
        h.rms = (self.m2 / self.n as f64).sqrt() as f32;
    }
}

fn dim_i32(path: &Path, name: &str, v: usize) -> Result<i32> {
    match i32::try_from(v) {
        Ok(d) if d >= 1 => Ok(d),
        _ => Err(IoError::field(path, name, format!("{name} = {v}: must be between 1 and {}", i32::MAX))),
    }
}

fn check_voxel_size(path: &Path, apix: f32) -> Result<()> {
    if apix.is_finite() && apix > 0.0 {
        return Ok(());
    }
    Err(IoError::field(path, "voxel_size", format!("voxel size {apix} Å must be a positive finite number")))
}

/// Refuse NaN/Inf: their statistics are meaningless and readers reject them.
fn check_writable(path: &Path, data: &[f32], nx: usize, ny: usize, first_image: usize) -> Result<()> {
    match first_non_finite(data, nx, ny, first_image) {
        None => Ok(()),
        Some((i, x, y, v)) => {
            let msg = format!("refusing to write non-finite value {v} at pixel (x={x}, y={y})");
            Err(IoError::index(path, i, msg))
        }
    }
}

/// Write f32 values little-endian through a bounded conversion buffer.
fn write_f32_le<W: Write>(path: &Path, w: &mut W, data: &[f32], buf: &mut Vec<u8>) -> Result<()> {
    for chunk in data.chunks(1 << 14) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(buf).map_err(|e| IoError::os(path, "write failed", e))?;
    }
    Ok(())
}

fn write_float32(
    path: &Path,
    data: &[f32],
    dims: [usize; 3],
    apix: f32,
    origin: [f32; 3],
    ispg: i32,
) -> Result<()> {
    let d = [dim_i32(path, "nx", dims[0])?, dim_i32(path, "ny", dims[1])?, dim_i32(path, "nz", dims[2])?];
    check_voxel_size(path, apix)?;
    if !origin.iter().all(|v| v.is_finite()) {
        return Err(IoError::field(path, "origin", format!("origin {origin:?} Å must be finite")));
    }
    let expected = dims[0].checked_mul(dims[1]).and_then(|v| v.checked_mul(dims[2]));
    if expected != Some(data.len()) {
        let msg =
            format!("{} values given, nx×ny×nz = {}×{}×{} needs their product", data.len(), d[0], d[1], d[2]);
        return Err(IoError::field(path, "data", msg));
    }
    check_writable(path, data, dims[0], dims[1], 0)?;
    let mut stats = RunningStats::new();
    stats.add(data);
    let mut h = MrcHeader::float32(d, apix, origin, ispg);
    stats.apply(&mut h);
    crate::atomic::write_atomic(path, |w| {
        w.write_all(&h.to_bytes()).map_err(|e| IoError::os(path, "write failed", e))?;
        write_f32_le(path, w, data, &mut Vec::new())
    })
}

/// Write a 3-D map (`ispg` 1) as little-endian float32. `data` holds
/// `nx·ny·nz` values, x fastest; the cell is `n·voxel_size_a` per axis and the
/// origin (Å) goes to words 50–52. dmin/dmax/dmean/rms come from the data.
/// NaN/Inf are refused. The file is written atomically.
pub fn write_volume(
    path: impl AsRef<Path>,
    data: &[f32],
    dims: [usize; 3],
    voxel_size_a: f32,
    origin_a: [f32; 3],
) -> Result<()> {
    write_float32(path.as_ref(), data, dims, voxel_size_a, origin_a, 1)
}

/// Write `n` images of `nx×ny` (`data` holds `nx·ny·n` values) as a
/// little-endian float32 stack (`ispg` 0) with pixel size `apix` Å, atomically.
pub fn write_stack(
    path: impl AsRef<Path>,
    data: &[f32],
    nx: usize,
    ny: usize,
    n: usize,
    apix: f32,
) -> Result<()> {
    write_float32(path.as_ref(), data, [nx, ny, n], apix, [0.0; 3], 0)
}

/// Streams images into a float32 stack of unknown length.
///
/// Images go to a temporary file beside the target; [`finish`](Self::finish)
/// writes the final header (`nz`, statistics) and renames the file into place.
/// Dropping the writer without `finish` removes the temporary file and leaves
/// the target untouched, so a crash never leaves a partial stack.
#[derive(Debug)]
pub struct MrcStackWriter {
    path: PathBuf,
    nx: usize,
    ny: usize,
    apix: f32,
    n: usize,
    stats: RunningStats,
    out: BufWriter<tempfile::NamedTempFile>,
    buf: Vec<u8>,
    /// Set after a failed write: the temporary file's content is unknown.
    failed: bool,
}

impl MrcStackWriter {
    /// Start a stack of `nx×ny` images with pixel size `apix` Å at `path`.
    pub fn create(path: impl AsRef<Path>, nx: usize, ny: usize, apix: f32) -> Result<MrcStackWriter> {
        let path = path.as_ref();
        let (dx, dy) = (dim_i32(path, "nx", nx)?, dim_i32(path, "ny", ny)?);
        check_voxel_size(path, apix)?;
        if !matches!(nx.checked_mul(ny), Some(v) if v as u64 * 4 <= MAX_DATA_BYTES) {
            return Err(IoError::field(path, "nx, ny", format!("absurd image size {nx}×{ny}")));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| IoError::os(path, "cannot create a temporary file beside the output", e))?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        // Placeholder with nz = 0: the real header is written by `finish`.
        let placeholder = MrcHeader::float32([dx, dy, 0], apix, [0.0; 3], 0);
        out.write_all(&placeholder.to_bytes()).map_err(|e| IoError::os(path, "write failed", e))?;
        Ok(MrcStackWriter {
            path: path.to_path_buf(),
            nx,
            ny,
            apix,
            n: 0,
            stats: RunningStats::new(),
            out,
            buf: Vec::new(),
            failed: false,
        })
    }

    /// Images pushed so far.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Append one `nx·ny` image.
    pub fn push(&mut self, image: &[f32]) -> Result<()> {
        if image.len() != self.nx * self.ny {
            let msg = format!(
                "image holds {} values, nx×ny = {}×{} needs {}",
                image.len(),
                self.nx,
                self.ny,
                self.nx * self.ny
            );
            return Err(IoError::index(&self.path, self.n, msg));
        }
        self.push_batch(image)
    }

    /// Append whole images (`images.len()` a multiple of `nx·ny`). The batch is
    /// checked first, so on an error none of it has been written.
    pub fn push_batch(&mut self, images: &[f32]) -> Result<()> {
        let image_len = self.nx * self.ny;
        if self.failed {
            return Err(IoError::file(&self.path, "an earlier write to this stack failed"));
        }
        let count = images.len() / image_len;
        if count * image_len != images.len() {
            let msg = format!("batch holds {} values, not a multiple of nx×ny = {image_len}", images.len());
            return Err(IoError::index(&self.path, self.n, msg));
        }
        let total = self.n + count;
        let bytes = total.checked_mul(image_len).and_then(|v| (v as u64).checked_mul(4));
        if i32::try_from(total).is_err() || !matches!(bytes, Some(b) if b <= MAX_DATA_BYTES) {
            let msg =
                format!("{total} images of {}×{} exceed what an MRC header can describe", self.nx, self.ny);
            return Err(IoError::field(&self.path, "nz", msg));
        }
        check_writable(&self.path, images, self.nx, self.ny, self.n)?;
        if let Err(e) = write_f32_le(&self.path, &mut self.out, images, &mut self.buf) {
            self.failed = true;
            return Err(e);
        }
        self.stats.add(images);
        self.n = total;
        Ok(())
    }

    /// Write the final header and move the stack into place atomically.
    /// A stack with no images is refused (its `nz` would be 0).
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        if self.failed {
            return Err(IoError::file(&path, "an earlier write to this stack failed; nothing was written"));
        }
        if self.n == 0 {
            return Err(IoError::field(
                &path,
                "nz",
                "no images were pushed; an MRC stack needs at least one",
            ));
        }
        let (dx, dy) = (dim_i32(&path, "nx", self.nx)?, dim_i32(&path, "ny", self.ny)?);
        let mut h = MrcHeader::float32([dx, dy, dim_i32(&path, "nz", self.n)?], self.apix, [0.0; 3], 0);
        self.stats.apply(&mut h);
        let tmp = self.out.into_inner().map_err(|e| IoError::os(&path, "write failed", e.into_error()))?;
        let file = tmp.as_file();
        file.write_all_at(&h.to_bytes(), 0).map_err(|e| IoError::os(&path, "write failed", e))?;
        file.sync_all().map_err(|e| IoError::os(&path, "sync failed", e))?;
        tmp.persist(&path)
            .map_err(|e| IoError::os(&path, "cannot rename the temporary file onto the output", e.error))?;
        Ok(())
    }
}
