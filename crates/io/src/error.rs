//! One error type for every file format: it always names the file, and where
//! possible the line, record index, header field or byte offset, so a user can
//! open the file and look.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a file a problem was found.
#[derive(Debug, Clone, PartialEq)]
pub enum Loc {
    /// The file as a whole (it is missing, truncated, …).
    File,
    /// A 1-based line of a text file.
    Line(usize),
    /// A named header field or column (e.g. `nx`, `rlnImageName`).
    Field(String),
    /// A named column on a 1-based line of a text file.
    LineField(usize, String),
    /// A 0-based record (particle, image, atom) index.
    Index(usize),
    /// A named field of a 0-based record.
    IndexField(usize, String),
    /// A byte offset.
    Byte(u64),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::File => Ok(()),
            Loc::Line(l) => write!(f, "line {l}"),
            Loc::Field(n) => write!(f, "field {n}"),
            Loc::LineField(l, n) => write!(f, "line {l}, field {n}"),
            Loc::Index(i) => write!(f, "index {i}"),
            Loc::IndexField(i, n) => write!(f, "index {i}, field {n}"),
            Loc::Byte(b) => write!(f, "byte {b}"),
        }
    }
}

/// An error reading or writing a file. Display: `PATH: LOCATION: message`.
#[derive(Debug)]
pub struct IoError {
    pub path: PathBuf,
    pub loc: Loc,
    pub msg: String,
    pub source: Option<std::io::Error>,
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.loc != Loc::File {
            write!(f, ": {}", self.loc)?;
        }
        write!(f, ": {}", self.msg)?;
        if let Some(s) = &self.source {
            write!(f, " ({s})")?;
        }
        Ok(())
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl IoError {
    pub fn new(path: impl AsRef<Path>, loc: Loc, msg: impl Into<String>) -> Self {
        IoError { path: path.as_ref().to_path_buf(), loc, msg: msg.into(), source: None }
    }
    /// An operating-system error (open, read, write, rename) on `path`.
    pub fn os(path: impl AsRef<Path>, what: &str, e: std::io::Error) -> Self {
        IoError { path: path.as_ref().to_path_buf(), loc: Loc::File, msg: what.to_string(), source: Some(e) }
    }
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Self::new(path, Loc::File, msg)
    }
    pub fn line(path: impl AsRef<Path>, line: usize, msg: impl Into<String>) -> Self {
        Self::new(path, Loc::Line(line), msg)
    }
    pub fn field(path: impl AsRef<Path>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::new(path, Loc::Field(field.into()), msg)
    }
    pub fn line_field(
        path: impl AsRef<Path>,
        line: usize,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Self::new(path, Loc::LineField(line, field.into()), msg)
    }
    pub fn index(path: impl AsRef<Path>, index: usize, msg: impl Into<String>) -> Self {
        Self::new(path, Loc::Index(index), msg)
    }
    pub fn index_field(
        path: impl AsRef<Path>,
        index: usize,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Self::new(path, Loc::IndexField(index, field.into()), msg)
    }
}

pub type Result<T, E = IoError> = std::result::Result<T, E>;
