//! `cryoforge demo`: the whole pipeline on adenylate kinase in a few minutes.
//!
//! A pipeline of steps, each a library call (or a subcommand's `run`, which is glue over
//! library calls) recorded in OUT/demo.json with its status, time, folder and the
//! equivalent command line; the report is built from demo.json and the step folders.

use crate::common::{ensure_dir, write_json_atomic, Ctx};
use anyhow::{bail, Context, Result};
use clap::Parser;
use cryoforge_io::pdb::{parse_pdb, write_pdb, Structure};
use cryoforge_sim::morph::{morph, MorphSettings};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The closed (1AKE) and open (4AKE) adenylate kinase structures, embedded in the binary.
/// Source: the MDAnalysisTests package (coordinates from the PDB; see
/// data/demo/README.md and LICENSE-MDAnalysisTests.txt).
pub const ADK_CLOSED: &str = include_str!("../../../../data/demo/adk_closed.pdb");
pub const ADK_OPEN: &str = include_str!("../../../../data/demo/adk_open.pdb");

/// Run the cryoforge demo: from adenylate kinase closed and open structures (embedded in
/// the binary) build a closed→open trajectory, simulate particles imaging it (Cα
/// densities, box 64, 1.5 Å/px, CTF and noise), reconstruct a consensus map with
/// gold-standard FSC, train and analyse cryoSTAR and cryoSPHERE on the particles, and
/// write OUT/report.html showing how well PC1 of each latent space follows the true
/// frame (|Spearman|).
///
/// Default size: 3,000 particles at SNR 0.1 over 20 frames, 15 epochs per method; --quick: 1,000 particles, 5 epochs.
///
/// Examples:
///   cryoforge demo
///   cryoforge demo --quick --out /tmp/demo
///   cargo run --release -- demo
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Output folder.
    #[arg(long, short, default_value = "cryoforge-demo")]
    pub out: PathBuf,
    /// A smaller, faster demo (about 2–3 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Print demo.json (steps, times, results) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seed of every random step.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of particles (default 3000; 1000 with --quick).
    #[arg(long, hide = true)]
    pub n: Option<usize>,
    /// Signal-to-noise ratio of the particles (default 0.1).
    #[arg(long, hide = true)]
    pub snr: Option<f64>,
    /// Frames of the closed→open trajectory (default 20).
    #[arg(long, hide = true)]
    pub frames: Option<usize>,
    /// Training epochs for cryoSTAR/cryoSPHERE (default: the demo's budget).
    #[arg(long, hide = true)]
    pub epochs: Option<usize>,
    /// Training steps for cryoSTAR/cryoSPHERE (overrides the epochs; for tests).
    #[arg(long, hide = true)]
    pub steps: Option<usize>,
}

/// The resolved size of a demo run.
#[derive(Debug, Clone, Copy)]
pub struct DemoSize {
    pub n: usize,
    pub snr: f64,
    pub frames: usize,
    pub box_px: usize,
    pub apix: f64,
    pub epochs: usize,
    pub steps: Option<usize>,
}

impl DemoSize {
    pub fn from_args(a: &Args) -> DemoSize {
        DemoSize {
            n: a.n.unwrap_or(if a.quick { 1000 } else { 3000 }),
            snr: a.snr.unwrap_or(0.1),
            frames: a.frames.unwrap_or(20),
            box_px: 64,
            apix: 1.5,
            epochs: a.epochs.unwrap_or(if a.quick { 5 } else { 15 }),
            steps: a.steps,
        }
    }
}

/// The outcome of one step.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub name: String,
    /// "done", "not yet available" or "failed".
    pub status: String,
    pub seconds: f64,
    /// Folder of the step's outputs, relative to OUT ("" for none).
    pub dir: String,
    pub message: String,
}

impl StepRecord {
    fn to_json(&self) -> Value {
        json!({"name": self.name, "status": self.status, "seconds": self.seconds, "dir": self.dir, "message": self.message})
    }
}

/// Parse a subcommand's arguments as its command line would (same defaults).
pub(crate) fn sub_args<T: clap::Args>(argv: &[String]) -> Result<T> {
    #[derive(Parser)]
    #[command(name = "cryoforge")]
    struct Wrap<T: clap::Args> {
        #[command(flatten)]
        inner: T,
    }
    let w = Wrap::<T>::try_parse_from(std::iter::once("cryoforge".to_string()).chain(argv.iter().cloned()))
        .map_err(|e| anyhow::anyhow!("internal error: demo arguments {argv:?}: {e}"))?;
    Ok(w.inner)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// |Spearman| between PC1 and the true frame from a method run's analysis/truth.json.
pub fn pc1_frame_abs_spearman(run: &Path) -> Result<f64> {
    let p = run.join("analysis").join("truth.json");
    let t = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    let v: Value = serde_json::from_str(&t).with_context(|| format!("{}: invalid JSON", p.display()))?;
    v.get("pc1_frame_spearman")
        .and_then(|x| x.as_f64())
        .map(f64::abs)
        .ok_or_else(|| anyhow::anyhow!("{}: no number pc1_frame_spearman", p.display()))
}

struct Demo<'a> {
    out: PathBuf,
    ctx: &'a Ctx,
    sub: Ctx,
    steps: Vec<StepRecord>,
    methods: Vec<Value>,
    t0: Instant,
    command: String,
    size: DemoSize,
    total_steps: usize,
    seed: u64,
}

impl Demo<'_> {
    fn record(&mut self, s: StepRecord) -> Result<()> {
        self.ctx.say(format!(
            "  {}: {} ({:.1} s){}",
            s.name,
            s.status,
            s.seconds,
            if s.message.is_empty() { String::new() } else { format!(" — {}", s.message) }
        ));
        self.steps.push(s);
        self.save()
    }

    fn json(&self) -> Value {
        json!({
            "command": self.command,
            "version": env!("CARGO_PKG_VERSION"),
            "size": {"particles": self.size.n, "snr": self.size.snr, "frames": self.size.frames, "box_px": self.size.box_px, "apix_A": self.size.apix, "epochs": self.size.epochs, "steps": self.size.steps},
            "seconds": self.t0.elapsed().as_secs_f64(),
            "steps": self.steps.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
            "methods": self.methods,
        })
    }

    /// demo.json after every step, so an interrupted demo still shows how far it got.
    fn save(&self) -> Result<()> {
        write_json_atomic(&self.out.join("demo.json"), &self.json())
    }

    fn announce(&self, what: &str) {
        self.ctx.say(format!("[{}/{}] {what}", self.steps.len() + 1, self.total_steps));
    }

    fn timed(
        &mut self,
        name: &str,
        dir: &str,
        message: String,
        f: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let t = Instant::now();
        let r = f(self);
        let secs = t.elapsed().as_secs_f64();
        match r {
            Ok(()) => self.record(StepRecord {
                name: name.into(),
                status: "done".into(),
                seconds: secs,
                dir: dir.into(),
                message,
            }),
            Err(e) => {
                self.record(StepRecord {
                    name: name.into(),
                    status: "failed".into(),
                    seconds: secs,
                    dir: dir.into(),
                    message: format!("{e:#}"),
                })?;
                Err(e.context(format!(
                    "demo step {name:?} failed (see {})",
                    self.out.join("demo.json").display()
                )))
            }
        }
    }

    fn structures(&mut self) -> Result<()> {
        self.announce("writing the adenylate kinase structures and the closed→open trajectory");
        let frames = self.size.frames;
        self.timed(
            "structures",
            "structures",
            format!(
                "1AKE (closed) and 4AKE (open), {frames}-frame morph (as cryoforge morph): structures/trajectory.pdb"
            ),
            |d| {
                let dir = d.out.join("structures");
                ensure_dir(&dir)?;
                let closed = parse_pdb(ADK_CLOSED.as_bytes(), Path::new("adk_closed.pdb"))?;
                let open = parse_pdb(ADK_OPEN.as_bytes(), Path::new("adk_open.pdb"))?;
                cryoforge_io::atomic::write_bytes_atomic(&dir.join("adk_closed.pdb"), ADK_CLOSED.as_bytes())?;
                cryoforge_io::atomic::write_bytes_atomic(&dir.join("adk_open.pdb"), ADK_OPEN.as_bytes())?;
                let (c, o) = match (closed.models.first(), open.models.first()) {
                    (Some(c), Some(o)) => (c, o),
                    _ => bail!("embedded structures have no models"),
                };
                let set = MorphSettings { frames, ..MorphSettings::default() };
                let m = morph(c, o, &set).context("morphing the embedded closed → open structures")?;
                write_pdb(dir.join("trajectory.pdb"), &Structure { models: m.models })?;
                Ok(())
            },
        )
    }

    fn simulate(&mut self) -> Result<()> {
        let s = self.size;
        self.announce(&format!(
            "simulating {} particles (Cα density, box {}, {} Å/px, SNR {})",
            s.n, s.box_px, s.apix, s.snr
        ));
        let argv: Vec<String> = [
            "--models",
            &path_str(&self.out.join("structures/trajectory.pdb")),
            "--density",
            "ca",
            "--n",
            &s.n.to_string(),
            "--box",
            &s.box_px.to_string(),
            "--apix",
            &s.apix.to_string(),
            "--snr",
            &s.snr.to_string(),
            "--seed",
            &self.seed_str(),
            "--out",
            &path_str(&self.out.join("sim")),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        let msg = format!("cryoforge simulate {}", argv.join(" "));
        self.timed("simulate", "sim", msg, |d| {
            let a: crate::cmd::simulate::Args = sub_args(&argv)?;
            crate::cmd::simulate::run(a, &d.sub)
        })
    }

    fn seed_str(&self) -> String {
        self.seed.to_string()
    }

    fn reconstruct(&mut self) -> Result<()> {
        self.announce("reconstructing the consensus map (gold-standard FSC)");
        let argv: Vec<String> = [
            path_str(&self.out.join("sim/particles.star")),
            "--seed".into(),
            self.seed_str(),
            "--out".into(),
            path_str(&self.out.join("recon")),
        ]
        .to_vec();
        let msg = format!("cryoforge reconstruct {}", argv.join(" "));
        self.timed("reconstruct", "recon", msg, |d| {
            let a: crate::cmd::reconstruct::Args = sub_args(&argv)?;
            crate::cmd::reconstruct::run(a, &d.sub)
        })
    }

    /// A heterogeneity method: train on sim/particles.star into OUT/<sub>, analyse against
    /// the truth (sim/truth.csv, sim/model.pdb), read PC1–frame |Spearman|
    /// from OUT/<sub>/analysis/truth.json. Without a runner (method crate not in this
    /// build) the step is recorded as "not yet available" with the commands it will run.
    fn method(&mut self, m: &MethodStep) -> Result<()> {
        self.announce(&format!("{}: train and analyse", m.name));
        let dir = m.sub.to_string();
        let run_dir = path_str(&self.out.join(&dir));
        // Reference: the first model simulate wrote (frame 0, the closed state) in the box
        // frame, as in the cryoSTAR paper's AdK benchmark.
        let mut train: Vec<String> = vec![
            path_str(&self.out.join("sim/particles.star")),
            "--reference".into(),
            path_str(&self.out.join("sim/model.pdb")),
            if self.size.steps.is_some() { "--steps" } else { "--epochs" }.into(),
            self.size.steps.unwrap_or(self.size.epochs).to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--out".into(),
            run_dir.clone(),
        ];
        train.extend(m.demo_args.iter().map(|s| s.to_string()));
        let analyze: Vec<String> = vec![
            run_dir,
            "--truth".into(),
            path_str(&self.out.join("sim/truth.csv")),
            // The models simulate imaged, in the box frame (structures/trajectory.pdb is
            // in the PDB's own frame).
            "--truth-models".into(),
            path_str(&self.out.join("sim/model.pdb")),
        ];
        let cmds = format!(
            "`cryoforge {0} train {1}` then `cryoforge {0} analyze {2}`",
            m.sub,
            train.join(" "),
            analyze.join(" ")
        );
        let Some(runner) = m.runner else {
            let msg = format!(
                "the {} crate (cryoforge-{}) is not in this build yet; when it is, this step runs {cmds}",
                m.name, m.sub
            );
            self.methods.push(json!({"method": m.name, "dir": dir, "status": "not yet available", "pc1_frame_spearman_abs": Value::Null}));
            return self.record(StepRecord {
                name: m.name.into(),
                status: "not yet available".into(),
                seconds: 0.0,
                dir: String::new(),
                message: msg,
            });
        };
        let out = self.out.join(&dir);
        let mut rho = None;
        let r = self.timed(m.name, &dir, cmds, |d| {
            runner(&train, &analyze, &d.sub)?;
            rho = Some(pc1_frame_abs_spearman(&out)?);
            Ok(())
        });
        self.methods.push(json!({"method": m.name, "dir": dir, "status": if r.is_ok() { "done" } else { "failed" }, "pc1_frame_spearman_abs": rho}));
        self.save()?;
        r
    }
}

/// Train then analyse: `(train argv, analyze argv, ctx)`, argv as after
/// `cryoforge <sub> train` / `cryoforge <sub> analyze`.
pub type MethodRunner = fn(&[String], &[String], &Ctx) -> Result<()>;

/// `argv` with a subcommand word in front (`train`, `analyze`).
fn with_sub(word: &str, argv: &[String]) -> Vec<String> {
    std::iter::once(word.to_string()).chain(argv.iter().cloned()).collect()
}

/// cryoSTAR: `cryoforge star train …` then `cryoforge star analyze …`.
fn run_star(train: &[String], analyze: &[String], ctx: &Ctx) -> Result<()> {
    crate::cmd::star::run(sub_args(&with_sub("train", train))?, ctx)?;
    crate::cmd::star::run(sub_args(&with_sub("analyze", analyze))?, ctx)
}

/// cryoSPHERE: `cryoforge sphere train …` then `cryoforge sphere analyze …`.
fn run_sphere(train: &[String], analyze: &[String], ctx: &Ctx) -> Result<()> {
    crate::cmd::sphere::run(sub_args(&with_sub("train", train))?, ctx)?;
    crate::cmd::sphere::run(sub_args(&with_sub("analyze", analyze))?, ctx)
}

/// A heterogeneity method step of the demo.
pub struct MethodStep {
    pub name: &'static str,
    /// Subcommand and output folder (`star`, `sphere`).
    pub sub: &'static str,
    /// `None` while the method crate is not part of this build.
    pub runner: Option<MethodRunner>,
    /// Training options of the demo beyond the defaults (the demo sets only the length,
    /// --epochs, for every method). cryoSTAR runs on its defaults; cryoSPHERE uses
    /// 6 segments (AdK's LID, NMP and CORE moving as bodies) and, trained for minutes
    /// instead of the reference's 300 epochs, raised learning rates (BENCHMARKS.md §4).
    pub demo_args: &'static [&'static str],
}

/// The methods the demo runs, in order; each runner calls the method's subcommands.
pub const METHODS: [MethodStep; 2] = [
    MethodStep { name: "cryoSTAR", sub: "star", runner: Some(run_star), demo_args: &[] },
    MethodStep {
        name: "cryoSPHERE",
        sub: "sphere",
        runner: Some(run_sphere),
        demo_args: &["--n-segm", "6", "--lr", "1e-4", "--lr-segmentation", "1e-2"],
    },
];

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let size = DemoSize::from_args(&a);
    if size.n < 10 {
        bail!("--n {}: the demo needs at least 10 particles", size.n);
    }
    if size.frames < 2 {
        bail!("--frames {}: a trajectory needs at least 2 frames", size.frames);
    }
    if size.snr.is_nan() || size.snr <= 0.0 {
        bail!("--snr {} must be positive", size.snr);
    }
    ensure_dir(&a.out)?;
    let mut d = Demo {
        out: a.out.clone(),
        ctx,
        sub: Ctx { quiet: ctx.quiet, nested: true },
        steps: Vec::new(),
        methods: Vec::new(),
        t0: Instant::now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        size,
        total_steps: 4 + METHODS.len(),
        seed: a.seed,
    };
    ctx.say(format!(
        "cryoforge demo: {} particles, SNR {}, {} frames → {}",
        size.n,
        size.snr,
        size.frames,
        a.out.display()
    ));
    d.structures()?;
    d.simulate()?;
    d.reconstruct()?;
    // A method that fails is recorded and reported; the other steps and the report still run.
    let mut failed = Vec::new();
    for m in &METHODS {
        if let Err(e) = d.method(m) {
            ctx.say(format!("warning: {e:#}"));
            failed.push(m.name);
        }
    }
    d.announce("writing the report");
    let t = Instant::now();
    d.steps.push(StepRecord {
        name: "report".into(),
        status: "done".into(),
        seconds: 0.0,
        dir: String::new(),
        message: "report.html".into(),
    });
    d.save()?;
    let report = a.out.join("report.html");
    // Warnings (unreadable files) are logged by report::write.
    crate::cmd::report::write(&a.out, &report)?;
    if let Some(s) = d.steps.last_mut() {
        s.seconds = t.elapsed().as_secs_f64();
    }
    d.save()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d.json())?);
    }
    if !failed.is_empty() {
        bail!(
            "demo steps {} failed; the report {} shows what did run and why",
            failed.join(", "),
            report.display()
        );
    }
    let secs = d.t0.elapsed().as_secs_f64();
    let res: Vec<String> = d
        .methods
        .iter()
        .map(|m| {
            let name = m["method"].as_str().unwrap_or("?");
            match m["pc1_frame_spearman_abs"].as_f64() {
                Some(v) => format!("{name} PC1–frame |Spearman| {v:.3}"),
                None => format!("{name} {}", m["status"].as_str().unwrap_or("?")),
            }
        })
        .collect();
    ctx.done(format!(
        "demo finished in {secs:.0} s ({}): report {}; structures in {}, particles in {}, consensus map {}",
        res.join(", "),
        report.display(),
        a.out.join("structures").display(),
        a.out.join("sim").display(),
        a.out.join("recon/map.mrc").display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_structures_morph_into_the_demo_trajectory() {
        let c = parse_pdb(ADK_CLOSED.as_bytes(), Path::new("c.pdb")).unwrap().models.remove(0);
        let o = parse_pdb(ADK_OPEN.as_bytes(), Path::new("o.pdb")).unwrap().models.remove(0);
        assert_eq!(c.atom_count(), 3341);
        let m = morph(&c, &o, &MorphSettings { frames: 4, ..MorphSettings::default() }).unwrap();
        assert_eq!(m.models.len(), 4);
        assert!(m.end_rmsd_a > 3.0, "closed→open Cα RMSD {}", m.end_rmsd_a);
    }

    #[test]
    fn a_method_runner_is_called_with_the_demo_paths_and_its_spearman_read() {
        let d = tempfile::tempdir().unwrap();
        let ctx = Ctx { quiet: true, nested: true };
        let mut demo = Demo {
            out: d.path().to_path_buf(),
            ctx: &ctx,
            sub: Ctx { quiet: true, nested: true },
            steps: Vec::new(),
            methods: Vec::new(),
            t0: Instant::now(),
            command: "test".into(),
            size: DemoSize { n: 10, snr: 0.1, frames: 2, box_px: 64, apix: 1.5, epochs: 1, steps: None },
            total_steps: 1,
            seed: 3,
        };
        // A stand-in method: checks its arguments and writes the analysis it would.
        fn fake(train: &[String], analyze: &[String], _: &Ctx) -> Result<()> {
            assert!(
                train[0].ends_with("sim/particles.star")
                    && train.contains(&"--seed".to_string())
                    && train.contains(&"3".to_string())
            );
            let out = PathBuf::from(&train[train.len() - 1]);
            assert_eq!(analyze[0], train[train.len() - 1]);
            std::fs::create_dir_all(out.join("analysis"))?;
            std::fs::write(out.join("analysis/truth.json"), "{\"pc1_frame_spearman\": -0.91}")?;
            Ok(())
        }
        demo.method(&MethodStep { name: "fake", sub: "fake", runner: Some(fake), demo_args: &[] }).unwrap();
        assert_eq!(demo.methods[0]["pc1_frame_spearman_abs"], json!(0.91));
        assert_eq!(demo.steps[0].status, "done");
        demo.method(&MethodStep { name: "absent", sub: "absent", runner: None, demo_args: &[] }).unwrap();
        assert_eq!(demo.steps[1].status, "not yet available");
        assert!(demo.steps[1].message.contains("cryoforge absent train"));
        // A runner that fails leaves a "failed" step and an error.
        fn broken(_: &[String], _: &[String], _: &Ctx) -> Result<()> {
            bail!("diverged")
        }
        assert!(demo
            .method(&MethodStep { name: "broken", sub: "broken", runner: Some(broken), demo_args: &[] })
            .is_err());
        assert_eq!(demo.steps[2].status, "failed");
        assert_eq!(demo.methods[2]["status"], "failed");
    }
}
