//! Arguments and helpers shared by the subcommands.

use anyhow::{bail, Context, Result};
use cryoforge_io::stack::{LoadOptions, ParticleStack};
use std::path::{Path, PathBuf};

/// Global options every command sees.
pub struct Ctx {
    pub quiet: bool,
    /// Running as a step of another command (`demo`): the final line goes to stderr
    /// (silenced by --quiet) so that only the outer command's result reaches stdout.
    pub nested: bool,
}

impl Ctx {
    /// The final line of a command: where the results are. Printed even with --quiet, on
    /// stderr, so that stdout carries only machine-readable output (`--json`).
    pub fn done(&self, msg: impl AsRef<str>) {
        if self.nested {
            self.say(msg);
        } else {
            eprintln!("{}", msg.as_ref());
        }
    }
    /// A progress bar (hidden with --quiet or when stderr is not a terminal).
    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        use std::io::IsTerminal;
        if self.quiet || !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let b = indicatif::ProgressBar::new(len);
        let style =
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, ETA {eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        b.set_style(style.progress_chars("=> "));
        b.set_message(what.to_string());
        b
    }
    /// A progress or summary message, silenced by --quiet.
    pub fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }
}

/// How every command that reads particles takes them.
#[derive(clap::Args, Debug, Clone)]
pub struct ParticleArgs {
    /// Particles: a RELION .star, a cryoSPARC .cs, an .mrcs stack or a .txt list of stacks.
    pub particles: PathBuf,
    /// cryoDRGN pose pickle (rot, trans) to use instead of the file's poses.
    #[arg(long, value_name = "PKL")]
    pub poses: Option<PathBuf>,
    /// cryoDRGN CTF pickle to use instead of the file's CTF parameters.
    #[arg(long, value_name = "PKL")]
    pub ctf: Option<PathBuf>,
    /// Folder against which image paths in the STAR/.cs are resolved.
    #[arg(long, value_name = "DIR")]
    pub datadir: Option<PathBuf>,
    /// Box size in pixels, when the metadata does not give it.
    #[arg(long = "box", short = 'D', value_name = "PX")]
    pub box_px: Option<usize>,
    /// Pixel size in Å, overriding the metadata's.
    #[arg(long, value_name = "A")]
    pub apix: Option<f64>,
    /// Use only these particles: a cryoDRGN index .pkl or a text file of 0-based indices.
    #[arg(long, visible_alias = "index", value_name = "FILE")]
    pub ind: Option<PathBuf>,
    /// Use only the first N particles (after --ind).
    #[arg(long, value_name = "N")]
    pub first: Option<usize>,
    /// Override the voltage (kV).
    #[arg(long, value_name = "KV")]
    pub kv: Option<f64>,
    /// Override the spherical aberration (mm).
    #[arg(long = "cs-mm", value_name = "MM")]
    pub cs_mm: Option<f64>,
    /// Override the amplitude contrast.
    #[arg(long = "amp-contrast", short = 'w', value_name = "W")]
    pub amp_contrast: Option<f64>,
    /// Override the phase shift (degrees).
    #[arg(long = "phase-shift", value_name = "DEG")]
    pub phase_shift: Option<f64>,
    /// cryoSPARC heterogeneous refinement: shifts are stored halved (as cryoDRGN --hetrefine).
    #[arg(long)]
    pub hetrefine: bool,
}

impl ParticleArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            datadir: self.datadir.clone(),
            poses_pkl: self.poses.clone(),
            ctf_pkl: self.ctf.clone(),
            box_px: self.box_px,
            apix_a: self.apix,
            voltage_kv: self.kv,
            cs_mm: self.cs_mm,
            amp_contrast: self.amp_contrast,
            phase_shift_deg: self.phase_shift,
            hetrefine: self.hetrefine,
        }
    }

    /// The options that reload the same particles, as `[data]` entries of run.toml (read
    /// back by [`load_run_stack`]).
    pub fn run_data_entries(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let mut opt = |k: &str, p: &Option<PathBuf>| {
            if let Some(p) = p {
                v.push((k.to_string(), p.display().to_string()));
            }
        };
        opt("poses", &self.poses);
        opt("ctf", &self.ctf);
        opt("datadir", &self.datadir);
        opt("ind", &self.ind);
        if let Some(f) = self.first {
            v.push(("first".into(), f.to_string()));
        }
        if self.hetrefine {
            v.push(("hetrefine".into(), "true".into()));
        }
        v
    }

    /// Load the particles' metadata (no pixels are read) and apply --ind/--first.
    pub fn load(&self, ctx: &Ctx) -> Result<ParticleStack> {
        let mut s = ParticleStack::load(&self.particles, &self.load_options())?;
        for w in &s.warnings {
            tracing::warn!("{w}");
        }
        let ind = match &self.ind {
            Some(p) => Some(read_indices(p)?),
            None => None,
        };
        s.select_ind_first(ind.as_deref(), self.first)
            .with_context(|| format!("selecting particles of {}", self.particles.display()))?;
        ctx.say(format!("{}: {} particles", self.particles.display(), s.len()));
        Ok(s)
    }
}

/// Read particle indices from a cryoDRGN index pickle or a text file (one per line,
/// or whitespace/comma separated).
pub fn read_indices(path: &Path) -> Result<Vec<usize>> {
    let is_pkl = path.extension().is_some_and(|e| e == "pkl" || e == "pickle");
    if is_pkl {
        return Ok(cryoforge_io::pkl::read_index_pkl(path)?);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for tok in line.split(|c: char| c.is_whitespace() || c == ',').filter(|t| !t.is_empty()) {
            let v: usize = tok.parse().map_err(|_| {
                anyhow::anyhow!(
                    "{}: line {}: {tok:?} is not a particle index (0-based integer)",
                    path.display(),
                    ln + 1
                )
            })?;
            out.push(v);
        }
    }
    Ok(out)
}

/// Create the parent folder of an output file.
pub fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(p) = path.parent() {
        if !p.as_os_str().is_empty() {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create folder {}", p.display()))?;
        }
    }
    Ok(())
}

/// Create an output folder.
pub fn ensure_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create folder {}", path.display()))
}

/// Write pretty JSON atomically.
pub fn write_json_atomic(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)? + "\n";
    cryoforge_io::atomic::write_bytes_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Reloads the particles a training run used, from RUN/run.toml's `[data]` table
/// (`particles`, and when present `datadir`, `poses`, `ctf`, `box`, `apix`, `hetrefine`,
/// `ind`, `first`); the count must equal `n_particles`.
pub fn load_run_stack(run: &Path, data: &toml::map::Map<String, toml::Value>) -> Result<ParticleStack> {
    let s = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let particles = s("particles").with_context(|| format!("{}: [data] particles missing", run.display()))?;
    let opts = LoadOptions {
        datadir: s("datadir").map(PathBuf::from),
        poses_pkl: s("poses").map(PathBuf::from),
        ctf_pkl: s("ctf").map(PathBuf::from),
        box_px: data.get("box").and_then(|v| v.as_integer()).map(|v| v as usize),
        apix_a: data.get("apix").and_then(|v| v.as_float()),
        hetrefine: s("hetrefine").is_some(),
        ..Default::default()
    };
    let mut st = ParticleStack::load(Path::new(&particles), &opts)?;
    let ind = match s("ind") {
        Some(p) => Some(read_indices(Path::new(&p))?),
        None => None,
    };
    let first = s("first").and_then(|f| f.parse().ok());
    st.select_ind_first(ind.as_deref(), first)?;
    let n = data.get("n_particles").and_then(|v| v.as_integer()).unwrap_or(-1);
    if n >= 0 && st.len() != n as usize {
        bail!("{}: run.toml says {n} particles, {particles} now has {}", run.display(), st.len());
    }
    Ok(st)
}

/// RUN/run.toml's `[data]` table.
pub fn read_run_data(run: &Path) -> Result<toml::map::Map<String, toml::Value>> {
    let p = run.join("run.toml");
    let t = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let v: toml::Value = toml::from_str(&t).with_context(|| format!("{}: not valid TOML", p.display()))?;
    match v.get("data") {
        Some(toml::Value::Table(d)) => Ok(d.clone()),
        _ => bail!("{}: no [data] table", p.display()),
    }
}
