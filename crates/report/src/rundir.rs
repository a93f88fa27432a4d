//! Readers for the run-directory contract files (run.toml, metrics.csv, analysis/…,
//! fsc.csv, summary.json, demo.json). Every error names the file and, where it applies,
//! the line and column.

use std::path::{Path, PathBuf};

/// An error reading a run-directory file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {msg}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub msg: String,
}

pub type Result<T> = std::result::Result<T, ReadError>;

pub(crate) fn rerr(path: &Path, msg: impl Into<String>) -> ReadError {
    ReadError { path: path.to_path_buf(), msg: msg.into() }
}

/// What kind of folder a report is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// `cryoforge reconstruct` output: summary.json + fsc.csv.
    Reconstruct,
    /// `cryoforge refine` output: iterations.jsonl + summary.json + fsc.csv.
    Refine,
    /// `cryoforge postprocess` output: summary.json + fsc.csv + postprocess.mrc.
    Postprocess,
    /// `cryoforge orient` output: orient.json.
    Orient,
    /// `cryoforge abinit` output: summary.json + classes.csv.
    Abinit,
    /// `cryoforge class2d` output: summary.json + classes.mrcs.
    Class2d,
    /// `cryoforge ranker score` output: summary.json + scores.csv + particles_scored.star.
    Ranker,
    /// A cryoSTAR / cryoSPHERE training run: run.toml with a `[run]` table.
    Run,
    /// `cryoforge simulate` output: particles.mrcs + truth.csv + run.toml.
    Simulate,
    /// `cryoforge demo` output: demo.json.
    Demo,
    /// `cryoforge pros run` output: summary.json + iter_01/train.
    Pros,
    /// `cryoforge ief cluster` output: summary.json + clusters.csv.
    Clusters,
    /// `cryoforge wizard` output: wizard.json.
    Wizard,
}

impl DirKind {
    pub fn name(self) -> &'static str {
        match self {
            DirKind::Reconstruct => "reconstruction",
            DirKind::Refine => "3D refinement",
            DirKind::Postprocess => "post-processing",
            DirKind::Orient => "orientation diagnostics",
            DirKind::Abinit => "ab initio reconstruction",
            DirKind::Class2d => "2D classification",
            DirKind::Ranker => "particle ranking",
            DirKind::Run => "training run",
            DirKind::Simulate => "simulated dataset",
            DirKind::Demo => "demo",
            DirKind::Pros => "cryoPROS",
            DirKind::Clusters => "feature clusters",
            DirKind::Wizard => "CryoWizard pipeline",
        }
    }
}

/// Decide what `dir` holds from the contract files present.
pub fn detect(dir: &Path) -> Result<DirKind> {
    if !dir.is_dir() {
        return Err(rerr(dir, "not a folder"));
    }
    if dir.join("demo.json").is_file() {
        return Ok(DirKind::Demo);
    }
    if dir.join("wizard.json").is_file() {
        return Ok(DirKind::Wizard);
    }
    if dir.join("summary.json").is_file() && dir.join("iter_01").join("train").is_dir() {
        return Ok(DirKind::Pros);
    }
    if dir.join("run.toml").is_file() {
        let t = read_toml(&dir.join("run.toml"))?;
        if t.get("run").is_some_and(|r| r.is_table()) {
            return Ok(DirKind::Run);
        }
        if dir.join("truth.csv").is_file() || dir.join("particles.mrcs").is_file() {
            return Ok(DirKind::Simulate);
        }
    }
    if dir.join("classes.mrcs").is_file() && dir.join("summary.json").is_file() {
        return Ok(DirKind::Class2d);
    }
    // (refine folders have a scores.csv too)
    if dir.join("scores.csv").is_file()
        && dir.join("particles_scored.star").is_file()
        && dir.join("summary.json").is_file()
    {
        return Ok(DirKind::Ranker);
    }
    if dir.join("classes.csv").is_file() && dir.join("summary.json").is_file() {
        return Ok(DirKind::Abinit);
    }
    if dir.join("clusters.csv").is_file() && dir.join("summary.json").is_file() {
        return Ok(DirKind::Clusters);
    }
    if dir.join("orient.json").is_file() {
        return Ok(DirKind::Orient);
    }
    if dir.join("summary.json").is_file() && dir.join("fsc.csv").is_file() {
        if dir.join("postprocess.mrc").is_file() {
            return Ok(DirKind::Postprocess);
        }
        if dir.join("iterations.jsonl").is_file() {
            return Ok(DirKind::Refine);
        }
        return Ok(DirKind::Reconstruct);
    }
    if dir.join("analysis").join("summary.json").is_file() {
        return Ok(DirKind::Run);
    }
    Err(rerr(
        dir,
        "not a cryoforge output folder: expected demo.json (demo), run.toml with a [run] table \
         (star/sphere training run), run.toml + particles.mrcs (simulate), summary.json + fsc.csv \
         (reconstruct), those + iterations.jsonl (refine) those + postprocess.mrc (postprocess) orient.json (orient) summary.json + classes.csv (abinit) or summary.json + classes.mrcs (class2d) or summary.json + scores.csv + particles_scored.star (ranker score) or summary.json + clusters.csv (ief cluster) or wizard.json (wizard)",
    ))
}

pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| rerr(path, format!("cannot read: {e}")))
}

pub fn read_toml(path: &Path) -> Result<toml::Table> {
    let t = read_text(path)?;
    t.parse::<toml::Table>().map_err(|e| rerr(path, format!("invalid TOML: {e}")))
}

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let t = read_text(path)?;
    serde_json::from_str(&t)
        .map_err(|e| rerr(path, format!("invalid JSON at line {}, column {}: {e}", e.line(), e.column())))
}

/// A CSV file: header names and rows of raw cell text (no quoting: the contract files
/// never quote).
#[derive(Debug, Clone)]
pub struct Csv {
    pub path: PathBuf,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn read(path: &Path) -> Result<Csv> {
        let t = read_text(path)?;
        let mut lines = t.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
        let (_, head) = lines.next().ok_or_else(|| rerr(path, "empty file (no header line)"))?;
        let header: Vec<String> = head.split(',').map(|s| s.trim().to_string()).collect();
        let mut rows = Vec::new();
        for (ln, l) in lines {
            let r: Vec<String> = l.split(',').map(|s| s.trim().to_string()).collect();
            if r.len() != header.len() {
                return Err(rerr(
                    path,
                    format!("line {}: {} fields, the header has {}", ln + 1, r.len(), header.len()),
                ));
            }
            rows.push(r);
        }
        Ok(Csv { path: path.to_path_buf(), header, rows })
    }

    pub fn col_index(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// A numeric column (`nan`/`inf` accepted); errors name the line and column.
    pub fn numbers(&self, col: usize) -> Result<Vec<f64>> {
        let name = self.header.get(col).cloned().unwrap_or_default();
        self.rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let s = &r[col];
                s.parse::<f64>().map_err(|_| {
                    rerr(
                        &self.path,
                        format!("data row {} (line {}), column {name}: {s:?} is not a number", i + 1, i + 2),
                    )
                })
            })
            .collect()
    }

    pub fn numbers_named(&self, name: &str) -> Result<Vec<f64>> {
        let c = self
            .col_index(name)
            .ok_or_else(|| rerr(&self.path, format!("no column {name:?} in the header")))?;
        self.numbers(c)
    }
}

/// One integer per line (k-means labels).
pub fn read_int_lines(path: &Path) -> Result<Vec<i64>> {
    read_text(path)?
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.trim()
                .parse::<i64>()
                .map_err(|_| rerr(path, format!("line {}: {l:?} is not an integer", i + 1)))
        })
        .collect()
}

/// Read a `.npy` through the io crate's reader.
pub fn read_npy(path: &Path) -> Result<cryoforge_io::npy::NpyArray> {
    cryoforge_io::npy::read_npy(path).map_err(|e| rerr(path, e.msg.clone() + &loc_suffix(&e)))
}

fn loc_suffix(e: &cryoforge_io::IoError) -> String {
    let l = e.loc.to_string();
    if l.is_empty() {
        String::new()
    } else {
        format!(" ({l})")
    }
}

/// The true trajectory frame of each particle from a `cryoforge simulate` truth.csv
/// (`model` column).
pub fn truth_frames(path: &Path) -> Result<Vec<f64>> {
    Csv::read(path)?.numbers_named("model")
}

/// Where a training run's truth.csv is: RUN/analysis/truth.csv, RUN/truth.csv, or next to
/// the particles named in run.toml `[data] particles` (as written, or relative to RUN).
pub fn find_truth_csv(run: &Path, toml: Option<&toml::Table>) -> Option<PathBuf> {
    let mut cands = vec![run.join("analysis").join("truth.csv"), run.join("truth.csv")];
    if let Some(p) =
        toml.and_then(|t| t.get("data")).and_then(|d| d.get("particles")).and_then(|p| p.as_str())
    {
        let p = PathBuf::from(p);
        for base in [p.clone(), run.join(&p)] {
            if let Some(dir) = base.parent() {
                cands.push(dir.join("truth.csv"));
            }
        }
    }
    cands.into_iter().find(|c| c.is_file())
}

/// Text of a JSON value as the file has it (numbers verbatim, strings unquoted).
pub fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// Text of a TOML value (strings unquoted).
pub fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Flatten a TOML table into `key.sub = value` rows (nested tables joined with dots).
pub fn flatten_toml(prefix: &str, t: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(sub) => flatten_toml(&key, sub, out),
            other => out.push((key, toml_text(other))),
        }
    }
}

/// Every file under `dir` (depth ≤ 4, at most `limit`), sorted, relative paths.
pub fn list_files(dir: &Path, limit: usize) -> Vec<(PathBuf, u64)> {
    fn walk(root: &Path, d: &Path, depth: usize, out: &mut Vec<(PathBuf, u64)>, limit: usize) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        let mut ents: Vec<_> = rd.flatten().collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            if out.len() >= limit {
                return;
            }
            let p = e.path();
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() && depth < 4 => walk(root, &p, depth + 1, out, limit),
                Ok(t) if t.is_file() => {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push((p.strip_prefix(root).unwrap_or(&p).to_path_buf(), size));
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, 0, &mut out, limit);
    out
}

/// What a file is and what to open it with, from its name.
pub fn open_with(path: &Path) -> (&'static str, &'static str) {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let ext = name.rsplit('.').next().unwrap_or("");
    match ext {
        "mrc" | "map" => ("density map", "ChimeraX (File > Open), or cryoforge info"),
        "mrcs" => ("particle image stack", "cryoforge info; RELION or ChimeraX to view"),
        "pdb" | "cif" => ("atomic model (multi-model files play as a trajectory)", "ChimeraX (File > Open)"),
        "star" => ("RELION STAR metadata", "RELION, cryoforge info, a text editor"),
        "cs" => ("cryoSPARC metadata", "cryoSPARC, cryoforge info"),
        "pkl" => ("cryoDRGN pickle (poses/CTF/index)", "cryoDRGN, Python pickle"),
        "npy" => ("NumPy array", "Python: numpy.load"),
        "csv" => ("table", "a spreadsheet, or Python: pandas.read_csv"),
        "json" | "jsonl" => ("JSON summary", "a text editor, jq, or Python: json"),
        "toml" => ("settings and provenance", "a text editor"),
        "txt" => ("text", "a text editor"),
        "png" => ("plot", "an image viewer"),
        "html" => ("report", "a web browser"),
        "safetensors" => ("network weights", "cryoforge (safetensors format)"),
        "ckpt" | "pt" | "bin" => ("checkpoint", "cryoforge (resume training)"),
        _ => ("file", "—"),
    }
}

/// Human-readable size.
pub fn human_size(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_errors_name_line_and_column() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.csv");
        std::fs::write(&p, "step,loss\n1,0.5\n2,abc\n").unwrap();
        let c = Csv::read(&p).unwrap();
        let e = c.numbers_named("loss").unwrap_err().to_string();
        assert!(e.contains("m.csv") && e.contains("line 3") && e.contains("loss"), "{e}");
        std::fs::write(&p, "step,loss\n1\n").unwrap();
        let e = Csv::read(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("1 fields"), "{e}");
    }

    #[test]
    fn detects_each_kind() {
        let d = tempfile::tempdir().unwrap();
        assert!(detect(d.path()).unwrap_err().to_string().contains("not a cryoforge output folder"));
        std::fs::write(d.path().join("summary.json"), "{}").unwrap();
        std::fs::write(d.path().join("fsc.csv"), "shell\n").unwrap();
        assert_eq!(detect(d.path()).unwrap(), DirKind::Reconstruct);
        std::fs::write(d.path().join("postprocess.mrc"), "").unwrap();
        assert_eq!(detect(d.path()).unwrap(), DirKind::Postprocess);
        std::fs::write(d.path().join("run.toml"), "[run]\nmethod = \"cryostar\"\n").unwrap();
        assert_eq!(detect(d.path()).unwrap(), DirKind::Run);
        std::fs::write(d.path().join("demo.json"), "{}").unwrap();
        assert_eq!(detect(d.path()).unwrap(), DirKind::Demo);
    }
}
