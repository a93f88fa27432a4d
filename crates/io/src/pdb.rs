//! PDB and mmCIF atomic models: reading, anchor-atom selection and writing.
//!
//! # Design
//! - **PDB** is read by our own tolerant fixed-column reader. `pdbtbx` (evaluated, not a
//!   dependency) validates strictly and rejects common real-world files (CHARMM/NAMD output with
//!   no element column and blank chains, 4-letter residue names, short lines); those are
//!   exactly the files cryo-EM flexible-fitting tools exchange, so we do not use it.
//! - **mmCIF** is read by a small `_atom_site` loop reader of our own rather than `pdbtbx`
//!   for the same reasons, and so that every error names the file and line the same way as
//!   the PDB reader. It reads the `loop_` of `_atom_site.*` columns (quoted values and
//!   `;` text fields included), preferring the `auth_*` columns that PDB files carry.
//! - **Elements**: columns 77–78 when present, else inferred from the 4-column atom name
//!   field with the PDB rule (columns 13–14 hold the element right-justified: `" CA "` is a
//!   carbon, `"CA  "` a calcium), names starting with a digit (`"1HB "`) take the first
//!   letter, 4-character names starting with `H` (`"HG11"`) are hydrogens, and residues
//!   written with left-justified names (detected per residue: a name of ≤3 characters in
//!   column 13 that is not a 2-letter element, such as `"N   "` or `"CB  "`) use the first
//!   letter unless the name is a 2-letter element on its own (an ion) or cannot be organic.
//!   Unknown element symbols are an error naming the line, so amplitudes are always defined.
//! - **Chains**: the chain ID (column 22); when blank, the segment ID (columns 73–76, as
//!   CHARMM/NAMD write them), else `"A"`. A chain segment ends at TER or when the chain ID
//!   changes; two segments may share an ID (each is its own [`Chain`]).
//! - **Alternate locations**: for each atom name in a residue, the location with the highest
//!   occupancy is kept (the first one on ties), at the position of the first occurrence.
//! - **Anchors** are chosen by atom name only (never from residue-name tables): `CA` (unless
//!   the residue is a lone calcium ion), else `C1'`/`C1*`, else `P`.
//! - The writer uses standard columns; chain IDs longer than one character go to the
//!   segment ID columns with a blank chain column, which the reader maps back. Serial
//!   numbers and residue numbers that overflow their columns use hybrid-36.

use crate::atomic::write_atomic;
use crate::error::{IoError, Result};
use std::io::Write;
use std::path::Path;

// ------------------------------------------------------------------------------------------
// Data model
// ------------------------------------------------------------------------------------------

/// An atomic model file: one or more models (NMR ensembles, trajectories).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Structure {
    pub models: Vec<Model>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    pub chains: Vec<Chain>,
}

/// A chain segment: consecutive residues with one chain ID, ended by TER or an ID change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chain {
    pub id: String,
    pub residues: Vec<Residue>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Residue {
    pub name: String,
    pub seq: i32,
    pub icode: Option<char>,
    pub atoms: Vec<Atom>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Atom {
    pub serial: u32,
    pub name: String,
    pub alt_loc: Option<char>,
    /// Element symbol in standard capitalisation (`C`, `Fe`, `Se`).
    pub element: String,
    /// Cartesian coordinates in Å.
    pub pos: [f64; 3],
    pub occupancy: f64,
    pub b_factor: f64,
    /// HETATM record.
    pub hetero: bool,
    /// 1-based line of the source file (0 for atoms built in code), for error messages.
    pub line: usize,
}

impl Model {
    /// All atoms in file order.
    pub fn atoms(&self) -> impl Iterator<Item = &Atom> {
        self.chains.iter().flat_map(|c| c.residues.iter().flat_map(|r| r.atoms.iter()))
    }

    /// All residues in file order, with their chain.
    pub fn residues(&self) -> impl Iterator<Item = (&Chain, &Residue)> {
        self.chains.iter().flat_map(|c| c.residues.iter().map(move |r| (c, r)))
    }

    pub fn atom_count(&self) -> usize {
        self.atoms().count()
    }
}

// ------------------------------------------------------------------------------------------
// Periodic table
// ------------------------------------------------------------------------------------------

const ELEMENTS: [&str; 118] = [
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K",
    "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe",
    "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu",
    "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra",
    "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db",
    "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
];

/// The element symbol in standard capitalisation, or `None` if `symbol` is not an element.
/// Deuterium and tritium (`D`, `T`) are accepted as hydrogen isotopes.
pub fn canonical_element(symbol: &str) -> Option<&'static str> {
    let s = symbol.trim();
    match s {
        "D" | "d" => return Some("D"),
        "T" | "t" => return Some("T"),
        _ => {}
    }
    ELEMENTS.iter().copied().find(|e| e.eq_ignore_ascii_case(s))
}

/// Atomic number of an element symbol (case-insensitive; `D`/`T` are 1).
pub fn atomic_number(symbol: &str) -> Option<u32> {
    match canonical_element(symbol)? {
        "D" | "T" => Some(1),
        e => ELEMENTS.iter().position(|x| *x == e).map(|i| i as u32 + 1),
    }
}

fn is_two_letter_element(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()) && canonical_element(s).is_some()
}

// ------------------------------------------------------------------------------------------
// Element inference
// ------------------------------------------------------------------------------------------

/// Whether a 4-column name field shows left-justified naming: a name of at most three
/// characters starting in column 13 whose first two characters are not an element (the PDB
/// rule reserves column 13 for 2-letter elements and 4-character names).
fn left_justified_hint(raw: &str) -> bool {
    let b = raw.as_bytes();
    let name = raw.trim_end();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && name.len() <= 3
        && !name.get(..2).is_some_and(is_two_letter_element)
}

/// Infers the element from an atom-name field (see the module documentation). `raw` is the
/// 4-column PDB field (or an mmCIF name, which is treated as left-justified); `lone` says the
/// residue has this single atom.
fn infer_element(raw: &str, left: bool, lone: bool) -> Option<&'static str> {
    let name = raw.trim();
    let b = name.as_bytes();
    let first_alpha = name.chars().find(|c| c.is_ascii_alphabetic())?;
    let one = canonical_element(&first_alpha.to_string());
    if b.first()?.is_ascii_digit() {
        return one; // "1HB", "2HG1": hydrogens numbered in front
    }
    if raw.starts_with(' ') || !b[0].is_ascii_alphabetic() {
        return one; // name starts in column 14: a 1-letter element
    }
    let two = name.get(..2).filter(|t| is_two_letter_element(t));
    if let Some(t) = two {
        // Left-justified 2-letter names starting with a biomolecular element are that
        // element's atoms (SG, SD, OG, ND1, …), except SE of selenomethionine.
        let organic_first = matches!(b[0].to_ascii_uppercase(), b'C' | b'H' | b'N' | b'O' | b'S' | b'P')
            && !name.eq_ignore_ascii_case("SE");
        let long_hydrogen = name.len() == 4 && b[0].eq_ignore_ascii_case(&b'H'); // "HG11"
        if !left && !long_hydrogen {
            return canonical_element(t); // PDB rule: "FE  ", "CA  " (calcium), "ZN  "
        }
        if left && name.len() == 2 && (lone || !organic_first) {
            return canonical_element(t); // "CA" alone is an ion; "FE" is never organic
        }
    }
    one
}

// ------------------------------------------------------------------------------------------
// Hybrid-36 (serial and residue numbers beyond the column width)
// ------------------------------------------------------------------------------------------

fn hy36_decode(s: &str, width: u32) -> Option<i64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<i64>() {
        return Some(v);
    }
    if s.len() != width as usize {
        return None;
    }
    let upper = s.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
    let lower = s.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
    let first = s.as_bytes()[0];
    if !first.is_ascii_alphabetic() || !(upper || lower) {
        return None;
    }
    let v = i64::from_str_radix(s, 36).ok()?;
    let p = 36i64.pow(width - 1);
    let base = v - 10 * p + 10i64.pow(width);
    Some(if upper { base } else { base + 26 * p })
}

fn hy36_encode(v: i64, width: u32) -> Option<String> {
    let w = width as usize;
    let p = 36i64.pow(width - 1);
    let dec_max = 10i64.pow(width);
    if v > -(10i64.pow(width - 1)) && v < dec_max {
        return Some(format!("{v:>w$}"));
    }
    let (k, upper) = if v >= dec_max && v < dec_max + 26 * p {
        (v - dec_max + 10 * p, true)
    } else if v >= dec_max + 26 * p && v < dec_max + 52 * p {
        (v - dec_max - 26 * p + 10 * p, false)
    } else {
        return None;
    };
    let mut digits = Vec::with_capacity(w);
    let mut k = k;
    for _ in 0..w {
        let d = (k % 36) as u32;
        let c = std::char::from_digit(d, 36)?;
        digits.push(if upper { c.to_ascii_uppercase() } else { c });
        k /= 36;
    }
    Some(digits.iter().rev().collect())
}

// ------------------------------------------------------------------------------------------
// Reading: shared assembly
// ------------------------------------------------------------------------------------------

/// One atom record before grouping. `atom.name` holds the raw name field until the residue
/// is finalised (element inference needs its columns); `atom.element` is empty when the file
/// gives none.
struct RawAtom {
    atom: Atom,
    model: usize,
    chain: String,
    resname: String,
    seq: i32,
    icode: Option<char>,
    /// TER (or an mmCIF entity change) came before this atom.
    new_segment: bool,
}

/// Groups atom records into models, chain segments and residues, then resolves alternate
/// locations and elements. `unpadded` says names are not PDB 4-column fields (mmCIF).
fn assemble(raws: Vec<RawAtom>, path: &Path, unpadded: bool) -> Result<Structure> {
    let mut s = Structure::default();
    let mut cur_model = None;
    for r in raws {
        let new_model = cur_model != Some(r.model);
        if new_model {
            s.models.push(Model::default());
            cur_model = Some(r.model);
        }
        let Some(m) = s.models.last_mut() else { continue };
        let chain_changed = match m.chains.last() {
            Some(c) => c.id != r.chain,
            None => true,
        };
        let new_chain = new_model || r.new_segment || chain_changed;
        if new_chain {
            m.chains.push(Chain { id: r.chain.clone(), residues: Vec::new() });
        }
        let Some(ch) = m.chains.last_mut() else { continue };
        // Microheterogeneity: alternate residue types at one position share the residue.
        let same = ch.residues.last().is_some_and(|res| {
            res.seq == r.seq && res.icode == r.icode && (res.name == r.resname || r.atom.alt_loc.is_some())
        });
        if !same {
            ch.residues.push(Residue { name: r.resname, seq: r.seq, icode: r.icode, atoms: Vec::new() });
        }
        if let Some(res) = ch.residues.last_mut() {
            res.atoms.push(r.atom);
        }
    }
    for res in s.models.iter_mut().flat_map(|m| m.chains.iter_mut().flat_map(|c| c.residues.iter_mut())) {
        finalise_residue(res, path, unpadded)?;
    }
    Ok(s)
}

/// Keeps, per atom name, the alternate location of highest occupancy (first on ties).
fn resolve_altlocs(atoms: Vec<Atom>) -> Vec<Atom> {
    if atoms.iter().all(|a| a.alt_loc.is_none()) {
        return atoms;
    }
    let mut out: Vec<Atom> = Vec::with_capacity(atoms.len());
    for a in atoms {
        let prev =
            a.alt_loc.and(out.iter().position(|o| o.alt_loc.is_some() && o.name.trim() == a.name.trim()));
        match prev {
            Some(i) if a.occupancy > out[i].occupancy => out[i] = a,
            Some(_) => {}
            None => out.push(a),
        }
    }
    out
}

/// Resolves alternate locations, validates or infers elements and trims names.
fn finalise_residue(res: &mut Residue, path: &Path, unpadded: bool) -> Result<()> {
    res.atoms = resolve_altlocs(std::mem::take(&mut res.atoms));
    let left = unpadded || res.atoms.iter().any(|a| a.element.is_empty() && left_justified_hint(&a.name));
    let lone = res.atoms.len() == 1;
    for a in &mut res.atoms {
        let el = if a.element.is_empty() {
            infer_element(&a.name, left, lone).ok_or_else(|| {
                IoError::line(
                    path,
                    a.line,
                    format!(
                        "cannot infer an element from atom name '{}' (and no element column)",
                        a.name.trim()
                    ),
                )
            })?
        } else {
            canonical_element(&a.element).ok_or_else(|| {
                IoError::line_field(
                    path,
                    a.line,
                    "element",
                    format!("unknown element '{}'", a.element.trim()),
                )
            })?
        };
        a.element = el.to_string();
        a.name = a.name.trim().to_string();
    }
    Ok(())
}

/// Reads a PDB or mmCIF file, choosing by extension (`.cif`, `.mmcif`) or, failing that,
/// by content (`data_` first).
pub fn read_structure(path: impl AsRef<Path>) -> Result<Structure> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|e| IoError::os(path, "cannot read the structure", e))?;
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let cif = match ext.as_str() {
        "cif" | "mmcif" => true,
        "pdb" | "ent" => false,
        _ => {
            let text = String::from_utf8_lossy(&data[..data.len().min(4096)]).into_owned();
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .is_some_and(|l| l.starts_with("data_"))
        }
    };
    if cif {
        parse_mmcif(&data, path)
    } else {
        parse_pdb(&data, path)
    }
}

/// Reads a PDB file.
pub fn read_pdb(path: impl AsRef<Path>) -> Result<Structure> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|e| IoError::os(path, "cannot read the PDB file", e))?;
    parse_pdb(&data, path)
}

/// Reads an mmCIF file (its `_atom_site` loop).
pub fn read_mmcif(path: impl AsRef<Path>) -> Result<Structure> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|e| IoError::os(path, "cannot read the mmCIF file", e))?;
    parse_mmcif(&data, path)
}

// ------------------------------------------------------------------------------------------
// PDB reader
// ------------------------------------------------------------------------------------------

/// Columns `a..=b` (1-based, inclusive) of a line, blank-padded when the line is short.
fn col(line: &[u8], a: usize, b: usize) -> String {
    let lo = (a - 1).min(line.len());
    let hi = b.min(line.len());
    String::from_utf8_lossy(&line[lo..hi]).into_owned()
}

fn char_at(line: &[u8], c: usize) -> Option<char> {
    line.get(c - 1).map(|&b| b as char).filter(|c| !c.is_ascii_whitespace())
}

/// Parses a PDB file held in memory. `path` only names the source in errors.
pub fn parse_pdb(data: &[u8], path: &Path) -> Result<Structure> {
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(IoError::file(path, "empty file: no ATOM or HETATM records"));
    }
    let mut raws = Vec::new();
    let (mut model, mut has_atoms, mut closed, mut ter) = (0usize, false, false, false);
    let mut last_serial = 0u32;
    let mut nlines = 0;
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            nlines = i + 1;
        }
        let rec = col(line, 1, 6);
        let rec = rec.trim_end();
        if rec == "ATOM" || rec == "HETATM" || line.starts_with(b"ATOM") {
            // Atoms after ENDMDL without a new MODEL record start another model.
            if closed && has_atoms {
                model += 1;
            }
            closed = false;
            let mut r = parse_atom_line(line, i + 1, path, last_serial)?;
            last_serial = r.atom.serial;
            r.model = model;
            r.new_segment = std::mem::take(&mut ter);
            raws.push(r);
            has_atoms = true;
        } else if rec == "MODEL" {
            if has_atoms {
                model += 1;
                has_atoms = false;
            }
            closed = false;
            ter = false;
        } else if rec == "ENDMDL" {
            closed = true;
        } else if rec == "TER" {
            ter = true;
        } else if rec == "END" {
            break;
        }
    }
    if raws.is_empty() {
        return Err(IoError::file(path, format!("no ATOM or HETATM records in {nlines} lines")));
    }
    assemble(raws, path, false)
}

fn parse_coord(line: &[u8], a: usize, b: usize, lineno: usize, path: &Path, what: &str) -> Result<f64> {
    let s = col(line, a, b);
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(IoError::line_field(
            path,
            lineno,
            format!("{what} (columns {a}-{b})"),
            format!("cannot parse '{}' as a number", s.trim()),
        )),
    }
}

/// An optional number column: blank → `default`.
fn parse_opt(
    line: &[u8],
    a: usize,
    b: usize,
    default: f64,
    lineno: usize,
    path: &Path,
    what: &str,
) -> Result<f64> {
    if col(line, a, b).trim().is_empty() {
        Ok(default)
    } else {
        parse_coord(line, a, b, lineno, path, what)
    }
}

/// Parses one ATOM/HETATM line (fixed columns; short lines are blank-padded).
fn parse_atom_line(line: &[u8], lineno: usize, path: &Path, last_serial: u32) -> Result<RawAtom> {
    if line.len() < 54 {
        return Err(IoError::line(
            path,
            lineno,
            format!("atom record is {} columns long; coordinates need columns 31-54", line.len()),
        ));
    }
    let name = col(line, 13, 16);
    let name = format!("{name:<4}");
    if name.trim().is_empty() {
        return Err(IoError::line_field(path, lineno, "name (columns 13-16)", "blank atom name"));
    }
    let x = parse_coord(line, 31, 38, lineno, path, "x")?;
    let y = parse_coord(line, 39, 46, lineno, path, "y")?;
    let z = parse_coord(line, 47, 54, lineno, path, "z")?;
    let occupancy = parse_opt(line, 55, 60, 1.0, lineno, path, "occupancy")?;
    let b_factor = parse_opt(line, 61, 66, 0.0, lineno, path, "B-factor")?;
    // Serials are informational: "*****" or garbage (common past 99999) continue the count.
    let serial = hy36_decode(&col(line, 7, 11), 5)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(last_serial.saturating_add(1));
    let seq_s = col(line, 23, 26);
    let seq = hy36_decode(&seq_s, 4).and_then(|v| i32::try_from(v).ok()).ok_or_else(|| {
        IoError::line_field(
            path,
            lineno,
            "resSeq (columns 23-26)",
            format!("cannot parse '{}' as a residue number", seq_s.trim()),
        )
    })?;
    let segid = col(line, 73, 76).trim().to_string();
    let chain = match char_at(line, 22) {
        Some(c) => c.to_string(),
        None if !segid.is_empty() => segid,
        None => "A".to_string(),
    };
    let atom = Atom {
        serial,
        name,
        alt_loc: char_at(line, 17),
        element: col(line, 77, 78).trim().to_string(),
        pos: [x, y, z],
        occupancy,
        b_factor,
        hetero: line.starts_with(b"HETATM"),
        line: lineno,
    };
    Ok(RawAtom {
        atom,
        model: 0,
        chain,
        resname: col(line, 18, 21).trim().to_string(),
        seq,
        icode: char_at(line, 27),
        new_segment: false,
    })
}

// ------------------------------------------------------------------------------------------
// mmCIF reader
// ------------------------------------------------------------------------------------------

struct Tok {
    text: String,
    line: usize,
    quoted: bool,
}

/// Splits CIF text into tokens: whitespace-separated words, `'…'`/`"…"` quoted strings (a
/// quote closes only before whitespace), `;` text fields and `#` comments.
fn cif_tokens(text: &str, path: &Path) -> Result<Vec<Tok>> {
    let mut toks = Vec::new();
    let mut field: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        if let Some((start, mut buf)) = field.take() {
            if line.starts_with(';') {
                toks.push(Tok { text: buf, line: start, quoted: true });
            } else {
                buf.push('\n');
                buf.push_str(line);
                field = Some((start, buf));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix(';') {
            field = Some((ln, rest.to_string()));
            continue;
        }
        tokenize_cif_line(line, ln, &mut toks);
    }
    if let Some((start, _)) = field {
        return Err(IoError::line(path, start, "text field opened with ';' is never closed"));
    }
    Ok(toks)
}

fn tokenize_cif_line(line: &str, ln: usize, toks: &mut Vec<Tok>) {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if b[i] == b'#' {
            break;
        }
        if b[i] == b'\'' || b[i] == b'"' {
            let q = b[i];
            // The closing quote is one followed by whitespace or the end of the line.
            let end = (i + 1..b.len())
                .find(|&j| b[j] == q && b.get(j + 1).copied().unwrap_or(b' ').is_ascii_whitespace());
            let end = end.unwrap_or(b.len());
            toks.push(Tok {
                text: String::from_utf8_lossy(&b[i + 1..end]).into_owned(),
                line: ln,
                quoted: true,
            });
            i = end + 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        toks.push(Tok { text: String::from_utf8_lossy(&b[start..i]).into_owned(), line: ln, quoted: false });
    }
}

fn is_cif_keyword(t: &Tok) -> bool {
    if t.quoted {
        return false;
    }
    let l = t.text.to_ascii_lowercase();
    l.starts_with('_')
        || l == "loop_"
        || l.starts_with("data_")
        || l.starts_with("save_")
        || l == "global_"
        || l == "stop_"
}

/// Parses an mmCIF file held in memory (its `_atom_site` loop). `path` only names the
/// source in errors.
pub fn parse_mmcif(data: &[u8], path: &Path) -> Result<Structure> {
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(IoError::file(path, "empty file: no _atom_site records"));
    }
    let text = String::from_utf8_lossy(data);
    let toks = cif_tokens(&text, path)?;
    let start = (0..toks.len()).find(|&i| {
        !toks[i].quoted
            && toks[i].text.eq_ignore_ascii_case("loop_")
            && toks
                .get(i + 1)
                .is_some_and(|t| !t.quoted && t.text.to_ascii_lowercase().starts_with("_atom_site."))
    });
    let Some(start) = start else {
        return Err(IoError::file(path, "no _atom_site loop (no atoms)"));
    };
    let mut j = start + 1;
    let mut tags = Vec::new();
    while j < toks.len() && !toks[j].quoted && toks[j].text.starts_with('_') {
        let tag = toks[j].text.to_ascii_lowercase();
        tags.push(tag.strip_prefix("_atom_site.").unwrap_or(&tag).to_string());
        j += 1;
    }
    if tags.is_empty() {
        return Err(IoError::line(path, toks[start].line, "the _atom_site loop has no column names"));
    }
    let vstart = j;
    while j < toks.len() && !is_cif_keyword(&toks[j]) {
        j += 1;
    }
    let values = &toks[vstart..j];
    if values.is_empty() {
        return Err(IoError::line(path, toks[start].line, "the _atom_site loop has no rows (no atoms)"));
    }
    if values.len() % tags.len() != 0 {
        let last = values[values.len() - 1].line;
        return Err(IoError::line(
            path,
            last,
            format!(
                "the _atom_site loop has {} values, not a multiple of its {} columns",
                values.len(),
                tags.len()
            ),
        ));
    }
    let cols = CifCols::new(&tags, path)?;
    let mut raws = Vec::with_capacity(values.len() / tags.len());
    let mut prev: Option<(String, String)> = None; // (model number, label_asym_id)
    let mut model = 0usize;
    for row in values.chunks_exact(tags.len()) {
        let mut r = cols.atom(row, path, raws.len())?;
        let key = (
            cols.get(row, &cols.model).unwrap_or("1").to_string(),
            cols.get(row, &cols.asym).unwrap_or("").to_string(),
        );
        if let Some((pm, pa)) = &prev {
            if *pm != key.0 {
                model += 1;
            } else if *pa != key.1 {
                r.new_segment = true;
            }
        }
        r.model = model;
        prev = Some(key);
        raws.push(r);
    }
    assemble(raws, path, true)
}

/// Column indices of the `_atom_site` tags we use; each lists alternatives by preference.
struct CifCols {
    group: Vec<usize>,
    id: Vec<usize>,
    element: Vec<usize>,
    name: Vec<usize>,
    alt: Vec<usize>,
    resname: Vec<usize>,
    chain: Vec<usize>,
    asym: Vec<usize>,
    seq: Vec<usize>,
    icode: Vec<usize>,
    xyz: [usize; 3],
    occ: Vec<usize>,
    b: Vec<usize>,
    model: Vec<usize>,
}

impl CifCols {
    fn new(tags: &[String], path: &Path) -> Result<Self> {
        let find = |names: &[&str]| -> Vec<usize> {
            names.iter().filter_map(|n| tags.iter().position(|t| t == n)).collect()
        };
        let need = |n: &str| -> Result<usize> {
            tags.iter()
                .position(|t| t == n)
                .ok_or_else(|| IoError::field(path, format!("_atom_site.{n}"), "missing column"))
        };
        Ok(CifCols {
            group: find(&["group_pdb"]),
            id: find(&["id"]),
            element: find(&["type_symbol"]),
            name: find(&["auth_atom_id", "label_atom_id"]),
            alt: find(&["label_alt_id"]),
            resname: find(&["auth_comp_id", "label_comp_id"]),
            chain: find(&["auth_asym_id", "label_asym_id"]),
            asym: find(&["label_asym_id", "auth_asym_id"]),
            seq: find(&["auth_seq_id", "label_seq_id"]),
            icode: find(&["pdbx_pdb_ins_code"]),
            xyz: [need("cartn_x")?, need("cartn_y")?, need("cartn_z")?],
            occ: find(&["occupancy"]),
            b: find(&["b_iso_or_equiv"]),
            model: find(&["pdbx_pdb_model_num"]),
        })
    }

    /// The first non-missing (`.`/`?`) value among the alternative columns.
    fn get<'a>(&self, row: &'a [Tok], alts: &[usize]) -> Option<&'a str> {
        alts.iter()
            .map(|&i| &row[i])
            .find(|t| t.quoted || (t.text != "." && t.text != "?"))
            .map(|t| t.text.as_str())
    }

    fn num(&self, row: &[Tok], alts: &[usize], default: f64, what: &str, path: &Path) -> Result<f64> {
        match self.get(row, alts) {
            None => Ok(default),
            Some(s) => s.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                IoError::line_field(
                    path,
                    row[0].line,
                    format!("_atom_site.{what}"),
                    format!("cannot parse '{s}' as a number"),
                )
            }),
        }
    }

    fn atom(&self, row: &[Tok], path: &Path, index: usize) -> Result<RawAtom> {
        let line = row[0].line;
        let [xi, yi, zi] = self.xyz;
        let x = self.num(row, &[xi], f64::NAN, "Cartn_x", path)?;
        let y = self.num(row, &[yi], f64::NAN, "Cartn_y", path)?;
        let z = self.num(row, &[zi], f64::NAN, "Cartn_z", path)?;
        if !(x.is_finite() && y.is_finite() && z.is_finite()) {
            return Err(IoError::line_field(path, line, "_atom_site.Cartn_x/y/z", "missing coordinate"));
        }
        let name = self.get(row, &self.name).unwrap_or("").to_string();
        if name.is_empty() {
            return Err(IoError::line_field(path, line, "_atom_site.auth_atom_id", "missing atom name"));
        }
        let seq_s = self.get(row, &self.seq).unwrap_or("");
        let seq = seq_s.parse::<i32>().map_err(|_| {
            IoError::line_field(
                path,
                line,
                "_atom_site.auth_seq_id",
                format!("cannot parse '{seq_s}' as a residue number"),
            )
        })?;
        let one_char = |alts: &[usize]| self.get(row, alts).and_then(|s| s.chars().next());
        let atom = Atom {
            serial: self.get(row, &self.id).and_then(|s| s.parse().ok()).unwrap_or(index as u32 + 1),
            name,
            alt_loc: one_char(&self.alt),
            element: self.get(row, &self.element).unwrap_or("").to_string(),
            pos: [x, y, z],
            occupancy: self.num(row, &self.occ, 1.0, "occupancy", path)?,
            b_factor: self.num(row, &self.b, 0.0, "B_iso_or_equiv", path)?,
            hetero: self.get(row, &self.group) == Some("HETATM"),
            line,
        };
        Ok(RawAtom {
            atom,
            model: 0,
            chain: self.get(row, &self.chain).unwrap_or("A").to_string(),
            resname: self.get(row, &self.resname).unwrap_or("UNK").to_string(),
            seq,
            icode: one_char(&self.icode),
            new_segment: false,
        })
    }
}

// ------------------------------------------------------------------------------------------
// Anchor atoms
// ------------------------------------------------------------------------------------------

/// Polymer type of an anchor residue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorKind {
    /// Anchored on Cα.
    Protein,
    /// Anchored on C1′ (or P when C1′ is absent).
    Nucleic,
}

/// One residue reduced to its anchor atom (coarse-grained bead).
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorResidue {
    /// Chain ID; residues of different chains must not be bonded.
    pub chain: String,
    /// Index of the chain segment in the model (segments split at TER even with one ID).
    pub segment: usize,
    pub seq: i32,
    pub icode: Option<char>,
    /// Residue name.
    pub name: String,
    /// The anchor atom's name: `CA`, `C1'`, `C1*` or `P`.
    pub atom: String,
    /// Anchor position, Å.
    pub pos: [f64; 3],
    /// Sum of the atomic numbers of all the residue's atoms (after alt-loc selection).
    pub amplitude: f64,
    pub kind: AnchorKind,
}

/// An atom whose element has no atomic number (only possible for models built in code:
/// the readers reject unknown elements).
#[derive(Debug, Clone, PartialEq)]
pub struct ElementError {
    pub line: usize,
    pub chain: String,
    pub seq: i32,
    pub atom: String,
    pub element: String,
}

impl std::fmt::Display for ElementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: unknown element '{}' for atom {} of residue {} in chain {}",
            self.line, self.element, self.atom, self.seq, self.chain
        )
    }
}

impl std::error::Error for ElementError {}

/// The anchor atom of a residue: Cα (not a lone calcium ion named CA), else C1′, else P.
fn anchor_of(res: &Residue) -> Option<(&Atom, AnchorKind)> {
    let lone_calcium = |a: &Atom| res.atoms.len() == 1 && a.element.eq_ignore_ascii_case("Ca");
    if let Some(a) = res.atoms.iter().find(|a| a.name == "CA" && !lone_calcium(a)) {
        return Some((a, AnchorKind::Protein));
    }
    if let Some(a) = res.atoms.iter().find(|a| a.name == "C1'" || a.name == "C1*") {
        return Some((a, AnchorKind::Nucleic));
    }
    res.atoms.iter().find(|a| a.name == "P").map(|a| (a, AnchorKind::Nucleic))
}

/// Reduces a model to one anchor per residue (see [`AnchorResidue`]); residues without an
/// anchor atom (ligands, water, ions) are skipped.
pub fn anchor_atoms(model: &Model) -> std::result::Result<Vec<AnchorResidue>, ElementError> {
    let mut out = Vec::new();
    for (segment, chain) in model.chains.iter().enumerate() {
        for res in &chain.residues {
            let Some((anchor, kind)) = anchor_of(res) else { continue };
            let mut amplitude = 0.0;
            for a in &res.atoms {
                let z = atomic_number(&a.element).ok_or_else(|| ElementError {
                    line: a.line,
                    chain: chain.id.clone(),
                    seq: res.seq,
                    atom: a.name.clone(),
                    element: a.element.clone(),
                })?;
                amplitude += z as f64;
            }
            out.push(AnchorResidue {
                chain: chain.id.clone(),
                segment,
                seq: res.seq,
                icode: res.icode,
                name: res.name.clone(),
                atom: anchor.name.clone(),
                pos: anchor.pos,
                amplitude,
                kind,
            });
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------

/// Writes a PDB file atomically: MODEL/ENDMDL around each model when there are several
/// (ChimeraX opens them as a multi-model / trajectory), TER after each chain, END.
pub fn write_pdb(path: impl AsRef<Path>, s: &Structure) -> Result<()> {
    let path = path.as_ref();
    // Format everything first so that a bad value leaves no output.
    let text = pdb_text(s, path)?;
    write_atomic(path, |w| w.write_all(text.as_bytes()).map_err(|e| IoError::os(path, "write failed", e)))
}

/// The PDB text of a structure; `path` only names the destination in errors.
pub fn pdb_text(s: &Structure, path: &Path) -> Result<String> {
    let mut out = String::new();
    let multi = s.models.len() > 1;
    for (mi, m) in s.models.iter().enumerate() {
        if multi {
            out.push_str(&format!("MODEL     {:>4}\n", mi + 1));
        }
        for ch in &m.chains {
            let (chain_col, segid) = chain_columns(&ch.id, path)?;
            let mut last: Option<(&Residue, u32)> = None;
            for res in &ch.residues {
                for a in &res.atoms {
                    out.push_str(&atom_line(a, res, chain_col, segid, path)?);
                    last = Some((res, a.serial));
                }
            }
            if let Some((res, serial)) = last {
                let serial = hy36_encode(serial as i64 + 1, 5).unwrap_or_else(|| "*****".into());
                let seq = hy36_encode(res.seq as i64, 4).unwrap_or_else(|| "****".into());
                let icode = res.icode.unwrap_or(' ');
                let resname = resname_field(&res.name);
                let ter = format!("TER   {serial:>5}      {resname}{chain_col}{seq:>4}{icode}");
                out.push_str(ter.trim_end());
                out.push('\n');
            }
        }
        if multi {
            out.push_str("ENDMDL\n");
        }
    }
    out.push_str("END\n");
    Ok(out)
}

/// Chain column and segment ID for a chain ID: one character goes to column 22; longer IDs
/// (CHARMM segment names) to columns 73–76 with a blank chain column.
fn chain_columns<'a>(id: &'a str, path: &Path) -> Result<(char, &'a str)> {
    let mut chars = id.chars();
    match (chars.next(), chars.next()) {
        (None, _) => Ok((' ', "")),
        (Some(c), None) => Ok((c, "")),
        _ if id.len() <= 4 && id.is_ascii() => Ok((' ', id)),
        _ => Err(IoError::field(path, "chain", format!("chain ID '{id}' is longer than 4 characters"))),
    }
}

/// The 4-column name field: 4-character names and names of 2-letter elements (or starting
/// with a digit) start in column 13, others in column 14.
fn name_field(a: &Atom) -> String {
    let n = &a.name;
    if n.len() >= 4 || n.starts_with(|c: char| c.is_ascii_digit()) || a.element.len() == 2 {
        format!("{n:<4}")
    } else {
        format!(" {n:<3}")
    }
}

/// Residue name in columns 18–21: right-justified in 18–20 as standard, or 4 characters
/// (CHARMM names such as `TIP3`) spilling into column 21.
fn resname_field(name: &str) -> String {
    if name.len() <= 3 {
        format!("{name:>3} ")
    } else {
        name.to_string()
    }
}

fn atom_line(a: &Atom, res: &Residue, chain: char, segid: &str, path: &Path) -> Result<String> {
    let what = || format!("atom {} of residue {} {}", a.name, res.name, res.seq);
    let bad = |msg: String| IoError::field(path, what(), msg);
    if a.name.len() > 4 || a.name.is_empty() {
        return Err(bad("atom names must have 1 to 4 characters".into()));
    }
    if res.name.len() > 4 {
        return Err(bad(format!("residue name '{}' is longer than 4 characters", res.name)));
    }
    for (v, lo, hi, k) in [
        (a.pos[0], -999.9995, 9999.9995, "x"),
        (a.pos[1], -999.9995, 9999.9995, "y"),
        (a.pos[2], -999.9995, 9999.9995, "z"),
        (a.occupancy, -99.995, 999.995, "occupancy"),
        (a.b_factor, -99.995, 999.995, "B-factor"),
    ] {
        if !(v > lo && v < hi) {
            return Err(bad(format!("{k} = {v} does not fit its PDB columns")));
        }
    }
    let serial = hy36_encode(a.serial as i64, 5).ok_or_else(|| bad("serial number too large".into()))?;
    let seq = hy36_encode(res.seq as i64, 4).ok_or_else(|| bad("residue number out of range".into()))?;
    let resname = resname_field(&res.name);
    Ok(format!(
        "{:<6}{serial:>5} {}{}{resname}{chain}{seq:>4}{}   {:>8.3}{:>8.3}{:>8.3}{:>6.2}{:>6.2}      {segid:<4}{:>2}\n",
        if a.hetero { "HETATM" } else { "ATOM" },
        name_field(a),
        a.alt_loc.unwrap_or(' '),
        res.icode.unwrap_or(' '),
        a.pos[0],
        a.pos[1],
        a.pos[2],
        a.occupancy,
        a.b_factor,
        a.element.to_ascii_uppercase(),
    ))
}

/// Writes anchor-only (Cα / C1′ / P) models, one per frame, for trajectories: `frames[k][i]`
/// is the position of `residues[i]` in frame k; `b_factors[i]` (e.g. a segment label for
/// colouring) goes to the B-factor column of residue i in every frame.
pub fn write_ca_models(
    path: impl AsRef<Path>,
    residues: &[AnchorResidue],
    frames: &[Vec<[f64; 3]>],
    b_factors: Option<&[f64]>,
) -> Result<()> {
    let path = path.as_ref();
    if frames.is_empty() {
        return Err(IoError::file(path, "no frames to write"));
    }
    if let Some(b) = b_factors.filter(|b| b.len() != residues.len()) {
        return Err(IoError::field(
            path,
            "b_factors",
            format!("{} values for {} residues", b.len(), residues.len()),
        ));
    }
    let mut s = Structure::default();
    for (k, frame) in frames.iter().enumerate() {
        if frame.len() != residues.len() {
            return Err(IoError::index(
                path,
                k,
                format!("frame has {} positions for {} residues", frame.len(), residues.len()),
            ));
        }
        let mut m = Model::default();
        for (i, (r, &pos)) in residues.iter().zip(frame).enumerate() {
            let new_chain =
                i == 0 || residues[i - 1].segment != r.segment || residues[i - 1].chain != r.chain;
            if new_chain {
                m.chains.push(Chain { id: r.chain.clone(), residues: Vec::new() });
            }
            let atom = Atom {
                serial: i as u32 + 1,
                name: r.atom.clone(),
                element: if r.atom == "P" { "P".into() } else { "C".into() },
                pos,
                occupancy: 1.0,
                b_factor: b_factors.map_or(0.0, |b| b[i]),
                ..Atom::default()
            };
            let res = Residue { name: r.name.clone(), seq: r.seq, icode: r.icode, atoms: vec![atom] };
            if let Some(c) = m.chains.last_mut() {
                c.residues.push(res);
            }
        }
        s.models.push(m);
    }
    write_pdb(path, &s)
}
