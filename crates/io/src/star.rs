//! RELION STAR files: a generic reader and writer, and [`RelionParticles`], the
//! RELION semantics on top (3.0 single table; 3.1+/5 `data_optics` + `data_particles`).
//!
//! # What is parsed
//! STAR as RELION writes it: `data_NAME` blocks, each holding either one `loop_`
//! table (`_rlnX #n` column lines, then one row per line) or key–value pairs
//! (`_rlnX value`). `#` starts a comment where a token would start; values may be
//! quoted with `'` or `"` (a quote closes only when followed by whitespace or the
//! end of the line, as in STAR 1.1), `""` is the empty string. Windows line endings,
//! trailing whitespace and a last line without newline are accepted. A block holds
//! one table: RELION never mixes a loop and pairs in one block, and refusing that
//! keeps the model simple. Semicolon text fields, `save_` frames and `global_` are
//! not RELION and are refused with a clear error.
//!
//! # Storage
//! Particle STAR files reach millions of rows × ~30 columns, so a `String` per cell
//! would cost gigabytes. Each column keeps its values back to back in one `String`
//! with a `u32` end offset per row (4 bytes per cell plus the text itself); values
//! are kept as the original text (quotes removed), so unknown columns round-trip
//! exactly. The 1-based source line of every row is kept for error messages.

use crate::atomic::write_atomic;
use crate::error::{IoError, Loc, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// Table storage
// ---------------------------------------------------------------------------

/// One column: its name (without the leading `_`) and its values back to back.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    name: String,
    text: String,
    /// `ends[i]` is the end of value `i` in `text`; value `i` starts at `ends[i-1]`.
    ends: Vec<u32>,
}

impl Column {
    fn new(name: &str) -> Self {
        Column { name: name.to_string(), text: String::new(), ends: Vec::new() }
    }

    /// Appends a value; `false` when the column would exceed 4 GiB of text.
    fn push(&mut self, v: &str) -> bool {
        let Ok(end) = u32::try_from(self.text.len() + v.len()) else { return false };
        self.text.push_str(v);
        self.ends.push(end);
        true
    }

    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { *self.ends.get(i - 1)? as usize };
        self.text.get(start..end)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }
}

/// The table of one data block: named columns and rows of text values.
///
/// Rows keep their 1-based source line so errors can point into the file. A
/// key–value block is a one-row table with [`StarTable::is_pairs`] set, written
/// back as `_key value` lines.
#[derive(Debug, Clone, Default)]
pub struct StarTable {
    columns: Vec<Column>,
    n_rows: usize,
    /// Source line per row; 0 for rows that were not read from a file.
    lines: Vec<usize>,
    /// For key–value tables: the source line of each key (0 when not read).
    key_lines: Vec<usize>,
    pairs: bool,
    /// File and block name, only for error messages.
    path: PathBuf,
    block: String,
}

/// Content equality: columns, values and the pairs flag (an empty table is equal
/// to any other empty table). Source lines and file names are ignored so that a
/// table equals its own write→read round trip.
impl PartialEq for StarTable {
    fn eq(&self, o: &Self) -> bool {
        self.columns == o.columns
            && self.n_rows == o.n_rows
            && (self.pairs == o.pairs || self.columns.is_empty())
    }
}

/// A column named (`"rlnDefocusU"`, with or without the leading `_`) or by index.
pub trait ColumnKey {
    /// The column's index in `t`, or an error naming the column and the block.
    fn index_in(&self, t: &StarTable) -> Result<usize>;
}

impl ColumnKey for &str {
    fn index_in(&self, t: &StarTable) -> Result<usize> {
        t.require_column(self)
    }
}

impl ColumnKey for &String {
    fn index_in(&self, t: &StarTable) -> Result<usize> {
        t.require_column(self)
    }
}

impl ColumnKey for usize {
    fn index_in(&self, t: &StarTable) -> Result<usize> {
        if *self < t.columns.len() {
            return Ok(*self);
        }
        let msg = format!(
            "column index {self} out of range: block {} has {} columns",
            t.block_label(),
            t.columns.len()
        );
        Err(IoError::new(&t.path, Loc::File, msg))
    }
}

fn strip_underscore(name: &str) -> &str {
    name.strip_prefix('_').unwrap_or(name)
}

impl StarTable {
    /// An empty loop table (no columns, no rows).
    pub fn new() -> Self {
        Self::default()
    }

    /// `data_NAME` of the block this table was read from (for messages).
    fn block_label(&self) -> String {
        format!("data_{}", self.block)
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub fn n_columns(&self) -> usize {
        self.columns.len()
    }

    /// Column names in order, without the leading `_`.
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// Whether this is a key–value block (written as `_key value` lines).
    pub fn is_pairs(&self) -> bool {
        self.pairs
    }

    /// Make this a key–value table (`true`, needs exactly one row) or a loop.
    pub fn set_pairs(&mut self, pairs: bool) -> Result<()> {
        if pairs && self.n_rows != 1 {
            let msg = format!("a key-value block needs exactly 1 row, this table has {}", self.n_rows);
            return Err(IoError::new(&self.path, Loc::File, msg));
        }
        self.pairs = pairs;
        Ok(())
    }

    /// Index of the column `name` (with or without the leading `_`).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        let name = strip_underscore(name);
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.column_index(name).is_some()
    }

    /// Like [`column_index`](Self::column_index), but an error naming the column,
    /// the block and the file when it is missing.
    pub fn require_column(&self, name: &str) -> Result<usize> {
        let name = strip_underscore(name);
        self.column_index(name).ok_or_else(|| {
            let have = self.column_names().join(", ");
            let msg = format!("block {} has no column {name} (columns: {have})", self.block_label());
            IoError::field(&self.path, name, msg)
        })
    }

    /// The 1-based source line of `row`, when it was read from a file.
    pub fn line(&self, row: usize) -> Option<usize> {
        self.lines.get(row).copied().filter(|&l| l > 0)
    }

    /// The source line of the value at (`row`, column `ci`): for key–value blocks
    /// each key has its own line.
    fn value_line(&self, row: usize, ci: usize) -> Option<usize> {
        if self.pairs {
            if let Some(&l) = self.key_lines.get(ci).filter(|&&l| l > 0) {
                return Some(l);
            }
        }
        self.line(row)
    }

    /// An error located at a cell: `line L, field NAME` when the row came from a
    /// file, else `index ROW, field NAME`.
    pub fn cell_error(&self, row: usize, ci: usize, msg: impl Into<String>) -> IoError {
        let name = self.columns.get(ci).map(|c| c.name.clone()).unwrap_or_default();
        let loc = match self.value_line(row, ci) {
            Some(l) => Loc::LineField(l, name),
            None => Loc::IndexField(row, name),
        };
        IoError::new(&self.path, loc, msg)
    }

    fn check_row(&self, row: usize) -> Result<()> {
        if row < self.n_rows {
            return Ok(());
        }
        let msg = format!("row {row} out of range: block {} has {} rows", self.block_label(), self.n_rows);
        Err(IoError::index(&self.path, row, msg))
    }

    /// The value at (`row`, column index `ci`), or `None` when out of range.
    pub fn str_at(&self, row: usize, ci: usize) -> Option<&str> {
        self.columns.get(ci)?.get(row)
    }

    /// The text of a cell.
    pub fn get_str<C: ColumnKey>(&self, row: usize, col: C) -> Result<&str> {
        let ci = col.index_in(self)?;
        self.check_row(row)?;
        self.str_at(row, ci).ok_or_else(|| self.cell_error(row, ci, "missing value"))
    }

    /// A cell as a number; the error names the file, line and column.
    pub fn get_f64<C: ColumnKey>(&self, row: usize, col: C) -> Result<f64> {
        let ci = col.index_in(self)?;
        let s = self.get_str(row, ci)?;
        s.parse::<f64>().map_err(|_| self.cell_error(row, ci, format!("cannot parse {s:?} as a number")))
    }

    /// A cell as an integer (`"3"`, or an integral float such as `"3.000000"`).
    pub fn get_i64<C: ColumnKey>(&self, row: usize, col: C) -> Result<i64> {
        let ci = col.index_in(self)?;
        let s = self.get_str(row, ci)?;
        if let Ok(v) = s.parse::<i64>() {
            return Ok(v);
        }
        match s.parse::<f64>() {
            Ok(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Ok(v as i64),
            _ => Err(self.cell_error(row, ci, format!("cannot parse {s:?} as an integer"))),
        }
    }

    /// All values of a column as text.
    pub fn column_str<C: ColumnKey>(&self, col: C) -> Result<Vec<&str>> {
        let ci = col.index_in(self)?;
        (0..self.n_rows).map(|r| self.get_str(r, ci)).collect()
    }

    /// All values of a column as numbers; the first bad value is reported.
    pub fn column_f64<C: ColumnKey>(&self, col: C) -> Result<Vec<f64>> {
        let ci = col.index_in(self)?;
        (0..self.n_rows).map(|r| self.get_f64(r, ci)).collect()
    }

    /// Add the column `name`, or replace its values when it exists (it keeps its
    /// position). The first column of an empty table sets the number of rows.
    pub fn set_column<I, S>(&mut self, name: &str, values: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let name = strip_underscore(name);
        let mut col = Column::new(name);
        for v in values {
            if !col.push(v.as_ref()) {
                return Err(IoError::field(&self.path, name, "column holds more than 4 GiB of text"));
            }
        }
        let fresh = self.columns.is_empty();
        if !fresh && col.len() != self.n_rows {
            let msg = format!("{} values given for a table of {} rows", col.len(), self.n_rows);
            return Err(IoError::field(&self.path, name, msg));
        }
        if fresh {
            self.n_rows = col.len();
            self.lines = vec![0; col.len()];
        }
        match self.column_index(name) {
            Some(ci) => self.columns[ci] = col,
            None => {
                self.columns.push(col);
                self.key_lines.push(0);
            }
        }
        Ok(())
    }

    /// [`set_column`](Self::set_column) with numbers, written in the shortest form
    /// that reads back to the same `f64`.
    pub fn set_column_f64(&mut self, name: &str, values: &[f64]) -> Result<()> {
        self.set_column(name, values.iter().map(|&v| format_f64(v)))
    }

    /// Remove a column; `false` when it does not exist. Removing the last column
    /// empties the table.
    pub fn remove_column(&mut self, name: &str) -> bool {
        let Some(ci) = self.column_index(name) else { return false };
        self.columns.remove(ci);
        if ci < self.key_lines.len() {
            self.key_lines.remove(ci);
        }
        if self.columns.is_empty() {
            self.n_rows = 0;
            self.lines.clear();
        }
        true
    }

    /// Append a row (one value per column, in column order).
    pub fn push_row<S: AsRef<str>>(&mut self, values: &[S]) -> Result<()> {
        if values.len() != self.columns.len() || self.columns.is_empty() {
            let msg =
                format!("row has {} values but the table has {} columns", values.len(), self.columns.len());
            return Err(IoError::index(&self.path, self.n_rows, msg));
        }
        for (c, v) in self.columns.iter_mut().zip(values) {
            if !c.push(v.as_ref()) {
                return Err(IoError::field(
                    &self.path,
                    c.name.clone(),
                    "column holds more than 4 GiB of text",
                ));
            }
        }
        self.n_rows += 1;
        self.lines.push(0);
        self.pairs = false;
        Ok(())
    }

    /// A new table holding `rows` (in the given order, repeats allowed). Rows keep
    /// their source lines so later errors still point into the original file.
    pub fn select_rows(&self, rows: &[usize]) -> Result<StarTable> {
        for &r in rows {
            self.check_row(r)?;
        }
        let mut out = StarTable {
            columns: Vec::with_capacity(self.columns.len()),
            n_rows: rows.len(),
            lines: rows.iter().map(|&r| self.lines.get(r).copied().unwrap_or(0)).collect(),
            key_lines: self.key_lines.clone(),
            pairs: self.pairs && rows.len() == 1,
            path: self.path.clone(),
            block: self.block.clone(),
        };
        for c in &self.columns {
            let mut nc = Column::new(&c.name);
            for &r in rows {
                // Rows are in range (checked above); repeats can outgrow 4 GiB.
                if !nc.push(c.get(r).unwrap_or("")) {
                    return Err(IoError::field(
                        &self.path,
                        c.name.clone(),
                        "column holds more than 4 GiB of text",
                    ));
                }
            }
            out.columns.push(nc);
        }
        Ok(out)
    }

    /// Record the file and block this table belongs to (for error messages).
    fn set_origin(&mut self, path: &Path, block: &str) {
        self.path = path.to_path_buf();
        self.block = block.to_string();
    }
}

/// Shortest text that parses back to the same `f64`; exponent form outside
/// 1e-4..1e15 so huge or tiny values stay short (RELION reads both with atof).
pub fn format_f64(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !a.is_finite() || (1e-4..1e15).contains(&a) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

// ---------------------------------------------------------------------------
// Files and blocks
// ---------------------------------------------------------------------------

/// One `data_NAME` block (`name` without the `data_` prefix; may be empty).
#[derive(Debug, Clone, PartialEq)]
pub struct StarBlock {
    pub name: String,
    pub table: StarTable,
}

/// A whole STAR file: its blocks in file order.
#[derive(Debug, Clone, Default)]
pub struct StarFile {
    pub blocks: Vec<StarBlock>,
    path: PathBuf,
}

/// Content equality (blocks only; the file name is ignored).
impl PartialEq for StarFile {
    fn eq(&self, o: &Self) -> bool {
        self.blocks == o.blocks
    }
}

impl StarFile {
    /// An empty file (no blocks) to fill with [`push_block`](Self::push_block).
    pub fn new() -> Self {
        Self::default()
    }

    /// Read and parse a STAR file.
    pub fn read(path: impl AsRef<Path>) -> Result<StarFile> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| IoError::os(path, "cannot read STAR file", e))?;
        Self::parse_bytes(&bytes, path)
    }

    /// Parse STAR text held in memory; `path` is used only in error messages.
    pub fn parse_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<StarFile> {
        let path = path.as_ref();
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
            IoError::line(path, line, "not valid UTF-8 text")
        })?;
        Self::parse_str(text, path)
    }

    /// Parse STAR text; `path` is used only in error messages.
    pub fn parse_str(text: &str, path: impl AsRef<Path>) -> Result<StarFile> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut p = Parser::new(path.as_ref());
        let mut toks = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            p.line(i + 1, line, &mut toks)?;
        }
        p.finish()
    }

    /// The file name used in error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first block named `name` (`"particles"` or `"data_particles"`).
    pub fn block(&self, name: &str) -> Option<&StarBlock> {
        let name = name.strip_prefix("data_").unwrap_or(name);
        self.blocks.iter().find(|b| b.name == name)
    }

    pub fn block_mut(&mut self, name: &str) -> Option<&mut StarBlock> {
        let name = name.strip_prefix("data_").unwrap_or(name);
        self.blocks.iter_mut().find(|b| b.name == name)
    }

    /// Like [`block`](Self::block), but an error naming the file and the blocks it has.
    pub fn require_block(&self, name: &str) -> Result<&StarBlock> {
        let name = name.strip_prefix("data_").unwrap_or(name);
        self.block(name).ok_or_else(|| {
            let have: Vec<String> = self.blocks.iter().map(|b| format!("data_{}", b.name)).collect();
            let msg = format!("no block data_{name} (blocks: {})", have.join(", "));
            IoError::file(&self.path, msg)
        })
    }

    /// Append a block (the table's messages will name this file and block).
    pub fn push_block(&mut self, name: &str, mut table: StarTable) {
        let name = name.strip_prefix("data_").unwrap_or(name);
        table.set_origin(&self.path, name);
        self.blocks.push(StarBlock { name: name.to_string(), table });
    }

    /// Write RELION-style STAR atomically (temporary file + rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        write_atomic(path, |w| self.write_to(w, path))
    }

    /// The STAR text [`write`](Self::write) would produce.
    pub fn to_text(&self) -> Result<String> {
        let mut buf = Vec::new();
        self.write_to(&mut buf, Path::new("<memory>"))?;
        String::from_utf8(buf).map_err(|_| IoError::file("<memory>", "STAR text is not UTF-8"))
    }

    /// Write the STAR text to `w`; `path` names the output in error messages.
    pub fn write_to<W: Write>(&self, w: &mut W, path: &Path) -> Result<()> {
        for b in &self.blocks {
            write_block(w, b, path)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// One whitespace-separated value of a line; `quoted` values are never keywords.
#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    text: &'a str,
    quoted: bool,
}

/// Whitespace for tokens. The writer quotes values containing any of these, so
/// the two must agree.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

/// Split a line into tokens, stopping at a `#` where a token would start.
/// Positions only ever land on ASCII bytes, so slicing keeps UTF-8 intact.
fn tokenize<'a>(line: &'a str, out: &mut Vec<Token<'a>>) -> std::result::Result<(), String> {
    out.clear();
    let b = line.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] == b'#' {
            return Ok(());
        }
        let q = b[i];
        if q == b'"' || q == b'\'' {
            // STAR 1.1: a quote closes only when followed by whitespace or the end.
            let start = i + 1;
            let mut j = start;
            while j < b.len() && !(b[j] == q && (j + 1 == b.len() || is_ws(b[j + 1]))) {
                j += 1;
            }
            if j >= b.len() {
                return Err(format!("unterminated quoted value starting at column {}", i + 1));
            }
            out.push(Token { text: &line[start..j], quoted: true });
            i = j + 1;
        } else {
            let start = i;
            while i < b.len() && !is_ws(b[i]) {
                i += 1;
            }
            out.push(Token { text: &line[start..i], quoted: false });
        }
    }
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Before the first `data_`.
    Outside,
    /// After `data_NAME`, before `loop_` or the first key.
    BlockStart,
    /// After `loop_`, reading `_name` lines.
    LoopHeader,
    /// Reading rows.
    LoopRows,
    /// Reading `_key value` lines.
    Pairs,
}

struct Parser<'p> {
    path: &'p Path,
    blocks: Vec<StarBlock>,
    cur: Option<StarBlock>,
    state: State,
    /// Line of the current `loop_` (for "loop with no columns").
    loop_line: usize,
    /// Line of each column name of the current block (for duplicate messages).
    name_lines: HashMap<String, usize>,
}

impl<'p> Parser<'p> {
    fn new(path: &'p Path) -> Self {
        Parser {
            path,
            blocks: Vec::new(),
            cur: None,
            state: State::Outside,
            loop_line: 0,
            name_lines: HashMap::new(),
        }
    }

    fn err(&self, line: usize, msg: impl Into<String>) -> IoError {
        IoError::line(self.path, line, msg)
    }

    fn block_label(&self) -> String {
        self.cur.as_ref().map(|b| format!("data_{}", b.name)).unwrap_or_default()
    }

    fn line<'a>(&mut self, n: usize, line: &'a str, toks: &mut Vec<Token<'a>>) -> Result<()> {
        tokenize(line, toks).map_err(|m| self.err(n, m))?;
        let Some(first) = toks.first().copied() else { return Ok(()) };
        if !first.quoted {
            let t = first.text;
            if starts_with_ci(t, "data_") {
                return self.start_block(n, toks);
            }
            if t.eq_ignore_ascii_case("loop_") {
                return self.start_loop(n, toks);
            }
            if t.starts_with('_') {
                return self.name_line(n, toks);
            }
            let reserved = ["stop_", "global_", "save_"].iter().any(|k| starts_with_ci(t, k));
            if reserved || t.starts_with(';') {
                return Err(self.err(n, format!("unsupported STAR construct {t:?} (not written by RELION)")));
            }
        }
        self.value_line(n, toks)
    }

    fn start_block(&mut self, n: usize, toks: &[Token]) -> Result<()> {
        self.end_block()?;
        if let Some(extra) = toks.get(1) {
            return Err(self.err(n, format!("unexpected {:?} after the block name", extra.text)));
        }
        let name = toks.first().map(|t| &t.text[5..]).unwrap_or("");
        let mut table = StarTable::new();
        table.set_origin(self.path, name);
        self.cur = Some(StarBlock { name: name.to_string(), table });
        self.state = State::BlockStart;
        self.name_lines.clear();
        Ok(())
    }

    fn start_loop(&mut self, n: usize, toks: &[Token]) -> Result<()> {
        match self.state {
            State::Outside => return Err(self.err(n, "loop_ before the first data_ block")),
            State::BlockStart => {}
            _ => {
                let msg = format!(
                    "block {} already has a table: one loop_ or key-value list per block is supported",
                    self.block_label()
                );
                return Err(self.err(n, msg));
            }
        }
        if let Some(extra) = toks.get(1) {
            return Err(self.err(n, format!("unexpected {:?} after loop_", extra.text)));
        }
        self.state = State::LoopHeader;
        self.loop_line = n;
        Ok(())
    }

    /// A line starting with `_name`: a loop column, or a key–value pair.
    fn name_line(&mut self, n: usize, toks: &[Token]) -> Result<()> {
        let name = toks.first().map(|t| &t.text[1..]).unwrap_or("");
        let pairs = match self.state {
            State::Outside => return Err(self.err(n, format!("_{name} before the first data_ block"))),
            State::LoopRows => {
                let msg = format!(
                    "_{name} after the rows of the loop_ at line {} (block {}): one table per block is supported",
                    self.loop_line,
                    self.block_label()
                );
                return Err(self.err(n, msg));
            }
            State::LoopHeader => false,
            State::BlockStart | State::Pairs => true,
        };
        if let Some(&first) = self.name_lines.get(name) {
            return Err(self.err(n, format!("duplicate column _{name} (first at line {first})")));
        }
        if !pairs && toks.len() > 1 {
            return Err(self.err(
                n,
                format!("unexpected value {:?} after column name _{name} in a loop_ header", toks[1].text),
            ));
        }
        if pairs && toks.len() != 2 {
            return Err(self.err(n, format!("key _{name} needs exactly one value, found {}", toks.len() - 1)));
        }
        self.name_lines.insert(name.to_string(), n);
        let Some(b) = self.cur.as_mut() else { return Err(self.err(n, "internal: no current block")) };
        let mut col = Column::new(name);
        if pairs {
            // Cannot overflow: one value of one line.
            col.push(toks[1].text);
            let t = &mut b.table;
            t.pairs = true;
            t.n_rows = 1;
            t.lines = vec![n];
            self.state = State::Pairs;
        }
        b.table.columns.push(col);
        b.table.key_lines.push(if pairs { n } else { 0 });
        Ok(())
    }

    /// A line of values: a loop row.
    fn value_line(&mut self, n: usize, toks: &[Token]) -> Result<()> {
        match self.state {
            State::Outside => return Err(self.err(n, "text before the first data_ block")),
            State::BlockStart | State::Pairs => {
                let msg = format!(
                    "value {:?} outside a loop_ and without a _key",
                    toks.first().map(|t| t.text).unwrap_or("")
                );
                return Err(self.err(n, msg));
            }
            State::LoopHeader | State::LoopRows => {}
        }
        let label = self.block_label();
        let loop_line = self.loop_line;
        let path = self.path;
        let Some(b) = self.cur.as_mut() else { return Err(self.err(n, "internal: no current block")) };
        let t = &mut b.table;
        if t.columns.is_empty() {
            return Err(IoError::line(path, loop_line, format!("loop_ in block {label} has no columns")));
        }
        if toks.len() != t.columns.len() {
            let msg = format!(
                "row has {} values but the loop_ of block {label} has {} columns",
                toks.len(),
                t.columns.len()
            );
            return Err(IoError::line(path, n, msg));
        }
        for (c, tok) in t.columns.iter_mut().zip(toks) {
            if !c.push(tok.text) {
                return Err(IoError::line_field(
                    path,
                    n,
                    c.name.clone(),
                    "column holds more than 4 GiB of text",
                ));
            }
        }
        t.n_rows += 1;
        t.lines.push(n);
        self.state = State::LoopRows;
        Ok(())
    }

    fn end_block(&mut self) -> Result<()> {
        if self.state == State::LoopHeader && self.cur.as_ref().is_some_and(|b| b.table.columns.is_empty()) {
            let msg = format!("loop_ in block {} has no columns", self.block_label());
            return Err(self.err(self.loop_line, msg));
        }
        if let Some(b) = self.cur.take() {
            self.blocks.push(b);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<StarFile> {
        self.end_block()?;
        if self.blocks.is_empty() {
            return Err(IoError::file(self.path, "no data_ block found (empty or not a STAR file)"));
        }
        Ok(StarFile { blocks: self.blocks, path: self.path.to_path_buf() })
    }
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// Whether a value must be quoted to read back as itself: empty, containing
/// whitespace, or looking like a comment, quote, keyword or column name.
fn needs_quotes(v: &str) -> bool {
    let Some(&first) = v.as_bytes().first() else { return true };
    v.bytes().any(is_ws)
        || matches!(first, b'#' | b'\'' | b'"' | b'_' | b';' | b'$')
        || v.eq_ignore_ascii_case("loop_")
        || ["data_", "save_", "stop_", "global_"].iter().any(|k| starts_with_ci(v, k))
}

/// The value as it must appear in the file, or `None` when STAR cannot hold it
/// (a line break, or both quote characters followed by whitespace inside).
fn format_value(v: &str) -> Option<Cow<'_, str>> {
    if v.contains('\n') {
        return None;
    }
    if !needs_quotes(v) {
        return Some(Cow::Borrowed(v));
    }
    // A quote char inside the value is harmless unless followed by whitespace.
    let ok = |q: u8| !v.as_bytes().windows(2).any(|w| w[0] == q && is_ws(w[1]));
    for q in ['"', '\''] {
        if ok(q as u8) {
            return Some(Cow::Owned(format!("{q}{v}{q}")));
        }
    }
    None
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> IoError + '_ {
    move |e| IoError::os(path, "write failed", e)
}

fn write_block<W: Write>(w: &mut W, b: &StarBlock, path: &Path) -> Result<()> {
    if b.name.bytes().any(|c| is_ws(c) || c == b'\n') {
        return Err(IoError::file(path, format!("block name {:?} contains whitespace", b.name)));
    }
    let t = &b.table;
    for c in &t.columns {
        if c.name.bytes().any(|x| is_ws(x) || x == b'\n') {
            return Err(IoError::field(path, c.name.clone(), "column name contains whitespace"));
        }
    }
    write!(w, "\n# version 30001\n\ndata_{}\n\n", b.name).map_err(write_err(path))?;
    if t.columns.is_empty() {
        return Ok(());
    }
    if t.pairs {
        write_pairs(w, t, &b.name, path)
    } else {
        write_loop(w, t, &b.name, path)
    }
}

fn unwritable(path: &Path, block: &str, row: usize, col: &str) -> IoError {
    IoError::index_field(
        path,
        row,
        col,
        format!("value in block data_{block} cannot be written to STAR (line break, or both quote kinds followed by whitespace)"),
    )
}

fn write_pairs<W: Write>(w: &mut W, t: &StarTable, block: &str, path: &Path) -> Result<()> {
    let width = t.columns.iter().map(|c| c.name.chars().count()).max().unwrap_or(0);
    for c in &t.columns {
        let v = c.get(0).unwrap_or("");
        let v = format_value(v).ok_or_else(|| unwritable(path, block, 0, &c.name))?;
        writeln!(w, "_{:<width$} {v}", c.name).map_err(write_err(path))?;
    }
    writeln!(w).map_err(write_err(path))
}

fn write_loop<W: Write>(w: &mut W, t: &StarTable, block: &str, path: &Path) -> Result<()> {
    writeln!(w, "loop_").map_err(write_err(path))?;
    for (i, c) in t.columns.iter().enumerate() {
        writeln!(w, "_{} #{}", c.name, i + 1).map_err(write_err(path))?;
    }
    // Right-align each column to its widest value, as RELION does.
    let mut widths = vec![0usize; t.columns.len()];
    for (c, wd) in t.columns.iter().zip(widths.iter_mut()) {
        for r in 0..t.n_rows {
            let v =
                format_value(c.get(r).unwrap_or("")).ok_or_else(|| unwritable(path, block, r, &c.name))?;
            *wd = (*wd).max(v.chars().count());
        }
    }
    let mut line = String::new();
    for r in 0..t.n_rows {
        line.clear();
        for (c, &wd) in t.columns.iter().zip(&widths) {
            let v =
                format_value(c.get(r).unwrap_or("")).ok_or_else(|| unwritable(path, block, r, &c.name))?;
            let pad = wd.saturating_sub(v.chars().count());
            for _ in 0..=pad {
                line.push(' ');
            }
            line.push_str(&v);
        }
        line.push('\n');
        w.write_all(line.as_bytes()).map_err(write_err(path))?;
    }
    writeln!(w).map_err(write_err(path))
}

// ---------------------------------------------------------------------------
// RELION semantics
// ---------------------------------------------------------------------------

/// Which RELION layout a particle STAR file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelionVersion {
    /// RELION 3.0: one table with all columns per particle.
    Relion30,
    /// RELION 3.1, 4, 5: `data_optics` (per optics group) + `data_particles`.
    Relion31,
}

/// `"000001@path/stack.mrcs"` → `(0, "path/stack.mrcs")` (the index in the file is
/// 1-based, the result 0-based); a name without `@` is a single-image file, index 0.
pub fn split_image_name(s: &str) -> std::result::Result<(usize, &str), String> {
    let Some((idx, file)) = s.split_once('@') else {
        if s.is_empty() {
            return Err("empty image name".into());
        }
        return Ok((0, s));
    };
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("malformed image name {s:?}: expected INDEX@FILE with a 1-based integer INDEX"));
    }
    let i: usize = idx.parse().map_err(|_| format!("image index in {s:?} is too large"))?;
    if i == 0 {
        return Err(format!("image index 0 in {s:?}: RELION image indices start at 1"));
    }
    if file.is_empty() {
        return Err(format!("malformed image name {s:?}: no file after '@'"));
    }
    Ok((i - 1, file))
}

/// A RELION particle (or micrograph) STAR file with per-particle lookups that fall
/// back to the particle's optics group.
#[derive(Debug, Clone)]
pub struct RelionParticles {
    star: StarFile,
    particles: usize,
    optics: Option<usize>,
    /// Per particle: its row in the optics table; `None` when its group is bad or
    /// unknown (the error is built when the value is needed, naming the line).
    optics_row: Vec<Option<usize>>,
}

impl RelionParticles {
    /// Read and interpret a RELION STAR file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_star(StarFile::read(path)?)
    }

    /// Interpret a parsed STAR file: `data_optics` present → 3.1+ (`data_particles`,
    /// else the first other block with columns); otherwise 3.0 (`data_particles`,
    /// `data_images`, `data_`, else the first block with columns).
    pub fn from_star(star: StarFile) -> Result<Self> {
        let optics = star.blocks.iter().position(|b| b.name == "optics");
        let has_cols = |b: &StarBlock| b.table.n_columns() > 0 && b.name != "optics";
        let preferred: &[&str] = if optics.is_some() { &["particles"] } else { &["particles", "images", ""] };
        let particles = preferred
            .iter()
            .find_map(|n| star.blocks.iter().position(|b| b.name == *n && has_cols(b)))
            .or_else(|| star.blocks.iter().position(has_cols))
            .ok_or_else(|| IoError::file(&star.path, "no particle table: no data_ block with columns"))?;
        let optics_row = match optics {
            Some(o) => map_optics(&star.blocks[particles].table, &star.blocks[o].table)?,
            None => Vec::new(),
        };
        Ok(RelionParticles { star, particles, optics, optics_row })
    }

    pub fn version(&self) -> RelionVersion {
        if self.optics.is_some() {
            RelionVersion::Relion31
        } else {
            RelionVersion::Relion30
        }
    }

    pub fn star(&self) -> &StarFile {
        &self.star
    }

    pub fn into_star(self) -> StarFile {
        self.star
    }

    /// The particle table.
    pub fn particles(&self) -> &StarTable {
        &self.star.blocks[self.particles].table
    }

    /// Name of the particle block (without `data_`).
    pub fn particles_block_name(&self) -> &str {
        &self.star.blocks[self.particles].name
    }

    /// The optics table (RELION 3.1+).
    pub fn optics(&self) -> Option<&StarTable> {
        self.optics.map(|o| &self.star.blocks[o].table)
    }

    pub fn n_particles(&self) -> usize {
        self.particles().n_rows()
    }

    /// Whether `col` is a particle column or an optics column.
    pub fn has_column(&self, col: &str) -> bool {
        self.particles().has_column(col) || self.optics().is_some_and(|o| o.has_column(col))
    }

    /// The optics-table row of particle `row` (`None` for RELION 3.0).
    pub fn optics_row(&self, row: usize) -> Result<Option<usize>> {
        let Some(o) = self.optics() else { return Ok(None) };
        let p = self.particles();
        p.check_row(row)?;
        if let Some(Some(r)) = self.optics_row.get(row) {
            return Ok(Some(*r));
        }
        // Build the message now: the group value and the groups that exist.
        let groups = o.column_str("rlnOpticsGroup").map(|g| g.join(", ")).unwrap_or_default();
        let ci = p.require_column("rlnOpticsGroup")?;
        let g = p.get_i64(row, ci)?;
        let msg = format!("optics group {g} is not in data_optics (groups: {groups})");
        Err(p.cell_error(row, ci, msg))
    }

    /// Where the value of `col` for particle `row` lives: the particle table, else
    /// the particle's optics row. `None` when neither table has the column.
    pub fn locate(&self, row: usize, col: &str) -> Result<Option<(&StarTable, usize, usize)>> {
        let p = self.particles();
        p.check_row(row)?;
        if let Some(ci) = p.column_index(col) {
            return Ok(Some((p, row, ci)));
        }
        let Some(o) = self.optics() else { return Ok(None) };
        let Some(ci) = o.column_index(col) else { return Ok(None) };
        match self.optics_row(row)? {
            Some(orow) => Ok(Some((o, orow, ci))),
            None => Ok(None),
        }
    }

    /// The text of `col` for particle `row` (particle row first, then its optics
    /// group); `Ok(None)` when neither table has the column.
    pub fn value(&self, row: usize, col: &str) -> Result<Option<&str>> {
        Ok(self.locate(row, col)?.and_then(|(t, r, c)| t.str_at(r, c)))
    }

    fn missing(&self, col: &str) -> IoError {
        let col = strip_underscore(col);
        let blocks = match self.optics {
            Some(_) => format!("data_{} or data_optics", self.particles_block_name()),
            None => format!("data_{}", self.particles_block_name()),
        };
        IoError::field(&self.star.path, col, format!("no column {col} in {blocks}"))
    }

    /// `col` for particle `row` as a number; an error when the column is missing.
    pub fn f64(&self, row: usize, col: &str) -> Result<f64> {
        self.f64_opt(row, col)?.ok_or_else(|| self.missing(col))
    }

    /// `col` for particle `row` as a number, `None` when neither table has it.
    pub fn f64_opt(&self, row: usize, col: &str) -> Result<Option<f64>> {
        match self.locate(row, col)? {
            Some((t, r, c)) => t.get_f64(r, c).map(Some),
            None => Ok(None),
        }
    }

    /// `col` for every particle.
    pub fn column_f64(&self, col: &str) -> Result<Vec<f64>> {
        (0..self.n_particles()).map(|r| self.f64(r, col)).collect()
    }

    /// `rlnImageName` of particle `row` as (0-based index in the stack, stack path
    /// as written in the file).
    pub fn image_name(&self, row: usize) -> Result<(usize, String)> {
        let (t, r, c) = self.locate(row, "rlnImageName")?.ok_or_else(|| self.missing("rlnImageName"))?;
        let s = t.get_str(r, c)?;
        let (i, f) = split_image_name(s).map_err(|m| t.cell_error(r, c, m))?;
        Ok((i, f.to_string()))
    }

    /// Pixel size in Å of particle `row`: `rlnImagePixelSize` (3.1+), else
    /// `rlnPixelSize`, else RELION 3.0 `rlnDetectorPixelSize` (µm) · 1e4 /
    /// `rlnMagnification`; `None` when none is there (ask the user for --apix).
    pub fn pixel_size(&self, row: usize) -> Result<Option<f64>> {
        for c in ["rlnImagePixelSize", "rlnPixelSize"] {
            if let Some(v) = self.f64_opt(row, c)? {
                return Ok(Some(v));
            }
        }
        let det = self.f64_opt(row, "rlnDetectorPixelSize")?;
        let mag = self.f64_opt(row, "rlnMagnification")?;
        match (det, mag) {
            (Some(d), Some(m)) if m > 0.0 => Ok(Some(d * 1e4 / m)),
            (Some(_), Some(m)) => {
                let (t, r, c) =
                    self.locate(row, "rlnMagnification")?.ok_or_else(|| self.missing("rlnMagnification"))?;
                Err(t.cell_error(r, c, format!("magnification {m} is not positive")))
            }
            _ => Ok(None),
        }
    }

    /// Box size in pixels (`rlnImageSize`) of particle `row`, when present.
    pub fn image_size(&self, row: usize) -> Result<Option<usize>> {
        let Some((t, r, c)) = self.locate(row, "rlnImageSize")? else { return Ok(None) };
        let v = t.get_i64(r, c)?;
        match usize::try_from(v) {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(t.cell_error(r, c, format!("image size {v} is not positive"))),
        }
    }

    /// A STAR file with the same blocks but only the particles `rows` (in order):
    /// optics and any other blocks are kept as they are.
    pub fn select(&self, rows: &[usize]) -> Result<StarFile> {
        let mut out = self.star.clone();
        out.blocks[self.particles].table = self.particles().select_rows(rows)?;
        Ok(out)
    }
}

/// For each particle, its row in the optics table. Errors for a malformed optics
/// table; a particle whose group is missing from it maps to `None`.
fn map_optics(p: &StarTable, o: &StarTable) -> Result<Vec<Option<usize>>> {
    let Some(pc) = p.column_index("rlnOpticsGroup") else {
        // Without the column a single optics group is unambiguous.
        if o.n_rows() == 1 {
            return Ok(vec![Some(0); p.n_rows()]);
        }
        let msg = format!(
            "block data_{} has no column rlnOpticsGroup but data_optics has {} groups",
            p.block,
            o.n_rows()
        );
        return Err(IoError::field(&p.path, "rlnOpticsGroup", msg));
    };
    let oc = o.require_column("rlnOpticsGroup")?;
    let mut groups: HashMap<i64, usize> = HashMap::new();
    for r in 0..o.n_rows() {
        let g = o.get_i64(r, oc)?;
        if groups.insert(g, r).is_some() {
            return Err(o.cell_error(r, oc, format!("optics group {g} appears twice in data_optics")));
        }
    }
    // A particle's group text that is not an integer also maps to None: the
    // lookup then names its line.
    Ok((0..p.n_rows()).map(|r| p.get_i64(r, pc).ok().and_then(|g| groups.get(&g).copied())).collect())
}
