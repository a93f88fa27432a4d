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
        if !cryoforge_core::dist::world().is_root() {
            return;
        }
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

/// Options of the latent-space analysis every heterogeneity method shares (`star analyze`,
/// `sphere analyze`): what `cryoforge_hetero::analyze_run` writes and where.
#[derive(clap::Args, Debug, Clone)]
pub struct HeteroArgs {
    /// Output folder (default RUN/analysis).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// k-means clusters.
    #[arg(long, short = 'k', default_value_t = 10)]
    pub ksample: usize,
    /// Points per PC traversal.
    #[arg(long, visible_alias = "pc-points", default_value_t = 10)]
    pub n_points: usize,
    /// Write every particle's predicted anchors: float32 [N, R, 3] .npy (Å, box frame).
    #[arg(long, value_name = "FILE.npy")]
    pub coords_out: Option<PathBuf>,
    /// Write the particles of each k-means cluster as STAR files into DIR.
    #[arg(long, value_name = "DIR")]
    pub particles_out: Option<PathBuf>,
    /// Decode these latents (.npy or text, one vector per line) into structures and volumes.
    #[arg(long, value_name = "FILE")]
    pub z: Option<PathBuf>,
    /// Ground truth of a `cryoforge simulate` dataset (default: truth.csv next to the particles).
    #[arg(long, value_name = "CSV")]
    pub truth: Option<PathBuf>,
    /// Trajectory of the true frames in the box frame (default: model.pdb next to truth.csv).
    #[arg(long, value_name = "PDB")]
    pub truth_models: Option<PathBuf>,
    /// Skip UMAP.
    #[arg(long)]
    pub no_umap: bool,
    /// Skip the Gaussian-density volumes.
    #[arg(long)]
    pub no_volumes: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the summary JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl HeteroArgs {
    /// The analysis folder: --out, or RUN/analysis.
    pub fn out_dir(&self, run: &Path) -> PathBuf {
        self.out.clone().unwrap_or_else(|| run.join("analysis"))
    }

    /// Analysis options for `method` on RUN's particles.
    pub fn options(
        &self,
        method: &str,
        run: &Path,
        stack: &ParticleStack,
    ) -> Result<cryoforge_hetero::AnalyzeOptions> {
        let mut o = cryoforge_hetero::AnalyzeOptions::new(
            method,
            self.out_dir(run),
            stack.box_px()?,
            stack.apix_a()?,
        );
        o.kmeans_k = self.ksample;
        o.traversal_points = self.n_points;
        o.umap = !self.no_umap;
        o.volumes = !self.no_volumes;
        o.seed = self.seed;
        o.coords_out = self.coords_out.clone();
        o.particles_out = self.particles_out.clone();
        o.z_file = self.z.clone();
        o.truth_csv = self.truth.clone();
        o.truth_models = self.truth_models.clone();
        o.particles_dir = stack.path.parent().map(Path::to_path_buf);
        Ok(o)
    }

    /// After the analysis: --json, the truth line, RUN/report.html and the final line.
    pub fn finish(&self, run: &Path, s: &cryoforge_hetero::Summary, ctx: &Ctx) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&s.json)?);
        }
        if let Some(t) = &s.truth {
            ctx.say(format!(
                "truth: |Spearman(PC1, frame)| {:.3}, mean RMSD {:.2} Å (reference {:.2} Å), clash fraction {:.4}",
                t["pc1_frame_spearman"].as_f64().unwrap_or(f64::NAN).abs(),
                t["rmsd_mean_A"].as_f64().unwrap_or(f64::NAN),
                t["rmsd_ref_mean_A"].as_f64().unwrap_or(f64::NAN),
                s.clash_fraction
            ));
        }
        let out_dir = self.out_dir(run);
        // The run's report (analysis written into the run folder is what it reads).
        let report = run.join("report.html");
        match crate::cmd::report::write(run, &report) {
            Ok(_) => ctx.done(format!("results in {}; report {}", out_dir.display(), report.display())),
            Err(e) => {
                tracing::warn!("analysis written, but the report failed: {e:#}");
                ctx.done(format!("results in {}", out_dir.display()));
            }
        }
        Ok(())
    }
}

/// `--device cpu | cuda | cuda:N` of the training commands.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArg {
    /// Compute device: cpu, cuda (GPU 0) or cuda:N. CUDA needs a build with
    /// `--features cuda` (nvcc at build time).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
}

impl DeviceArg {
    pub fn open(&self) -> Result<candle_core::Device> {
        Ok(cryoforge_nn::parse_device(&self.device)?)
    }
}
