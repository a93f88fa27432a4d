//! `cryoforge demo`: the whole pipeline on adenylate kinase in a few minutes.
//!
//! A pipeline of steps, each a library call (or a subcommand's `run`, which is glue over
//! library calls) recorded in OUT/demo.json with its status, time, folder and the
//! equivalent command line; the report is built from demo.json and the step folders.

use crate::common::{ensure_dir, write_json_atomic, Ctx};
use anyhow::{bail, Context, Result};
use clap::Parser;
use cryoforge_io::pdb::{parse_pdb, write_pdb, Model, Structure};
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
/// Default size: 4,000 particles at SNR 0.1 over 20 frames; --quick: 1,000 particles.
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
    /// Number of particles (default 4000; 1000 with --quick).
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
}

impl DemoSize {
    pub fn from_args(a: &Args) -> DemoSize {
        DemoSize {
            n: a.n.unwrap_or(if a.quick { 1000 } else { 4000 }),
            snr: a.snr.unwrap_or(0.1),
            frames: a.frames.unwrap_or(20),
            box_px: 64,
            apix: 1.5,
            epochs: a.epochs.unwrap_or(if a.quick { 5 } else { 20 }),
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
fn sub_args<T: clap::Args>(argv: &[String]) -> Result<T> {
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

/// Superpose `mobile` onto `target` (least-squares rotation + translation of the paired
/// points, Kabsch), returning the transformed copy of `apply`.
fn kabsch_apply(target: &[[f64; 3]], mobile: &[[f64; 3]], apply: &[[f64; 3]]) -> Vec<[f64; 3]> {
    use nalgebra::{Matrix3, Vector3};
    let n = target.len().min(mobile.len()).max(1) as f64;
    let cen = |v: &[[f64; 3]]| v.iter().fold(Vector3::zeros(), |a, p| a + Vector3::from(*p)) / n;
    let (ct, cm) = (cen(target), cen(mobile));
    let mut h = Matrix3::zeros();
    for (t, m) in target.iter().zip(mobile) {
        h += (Vector3::from(*m) - cm) * (Vector3::from(*t) - ct).transpose();
    }
    let svd = h.svd(true, true);
    let (u, vt) = (svd.u.unwrap_or_else(Matrix3::identity), svd.v_t.unwrap_or_else(Matrix3::identity));
    let d = (vt.transpose() * u.transpose()).determinant().signum();
    let r = vt.transpose() * Matrix3::from_diagonal(&Vector3::new(1.0, 1.0, d)) * u.transpose();
    apply.iter().map(|p| (r * (Vector3::from(*p) - cm) + ct).into()).collect()
}

/// A closed→open trajectory: the open structure superposed on the closed one (Kabsch on
/// Cα), then every atom interpolated linearly in `frames` steps (frame 0 = closed, last =
/// open). The two structures must list the same atoms in the same order.
pub fn linear_trajectory(closed: &Model, open: &Model, frames: usize) -> Result<Vec<Model>> {
    if frames < 2 {
        bail!("a trajectory needs at least 2 frames, got {frames}");
    }
    let a: Vec<_> = closed.atoms().collect();
    let b: Vec<_> = open.atoms().collect();
    if a.len() != b.len() {
        bail!("closed and open structures have {} and {} atoms; they must match", a.len(), b.len());
    }
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if x.name != y.name {
            bail!("atom {i}: {} in the closed structure but {} in the open one", x.name, y.name);
        }
    }
    let ca = |v: &[&cryoforge_io::pdb::Atom]| {
        v.iter().filter(|x| x.name == "CA").map(|x| x.pos).collect::<Vec<_>>()
    };
    let all_b: Vec<[f64; 3]> = b.iter().map(|x| x.pos).collect();
    let b_aligned = kabsch_apply(&ca(&a), &ca(&b), &all_b);
    let mut out = Vec::with_capacity(frames);
    for f in 0..frames {
        let t = f as f64 / (frames - 1) as f64;
        let mut m = closed.clone();
        let mut k = 0;
        for c in &mut m.chains {
            for r in &mut c.residues {
                for at in &mut r.atoms {
                    let p0 = at.pos;
                    let p1 = b_aligned[k];
                    at.pos = [0, 1, 2].map(|d| p0[d] + t * (p1[d] - p0[d]));
                    k += 1;
                }
            }
        }
        out.push(m);
    }
    Ok(out)
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
            "size": {"particles": self.size.n, "snr": self.size.snr, "frames": self.size.frames, "box_px": self.size.box_px, "apix_A": self.size.apix, "epochs": self.size.epochs},
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
                "1AKE (closed) and 4AKE (open), {frames}-frame linear trajectory: structures/trajectory.pdb"
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
                let traj = linear_trajectory(c, o, frames)?;
                write_pdb(dir.join("trajectory.pdb"), &Structure { models: traj })?;
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

    /// A heterogeneity method: train on sim/particles.star, analyse against the truth.
    /// The method crates (`cryoforge-star`, `cryoforge-sphere`) are not part of this build
    /// yet; the step says so, and what it will run, instead of pretending.
    fn method(&mut self, method: &str, sub: &str) -> Result<()> {
        self.announce(&format!("{method}: train and analyse"));
        let dir = sub.to_string();
        let train = format!(
            "cryoforge {sub} train {} --epochs {} --seed {} --out {}",
            path_str(&self.out.join("sim/particles.star")),
            self.size.epochs,
            self.seed,
            path_str(&self.out.join(&dir))
        );
        let analyze = format!(
            "cryoforge {sub} analyze {} --truth {} --truth-models {}",
            path_str(&self.out.join(&dir)),
            path_str(&self.out.join("sim/truth.csv")),
            path_str(&self.out.join("structures/trajectory.pdb"))
        );
        // A run made by hand with the commands below into OUT/<sub> is picked up.
        if let Ok(v) = pc1_frame_abs_spearman(&self.out.join(&dir)) {
            self.methods.push(json!({"method": method, "dir": dir, "status": "done", "pc1_frame_spearman_abs": v}));
            let msg = format!("existing run in {} (made with `{train}` and `{analyze}`)", self.out.join(&dir).display());
            return self.record(StepRecord { name: method.into(), status: "done".into(), seconds: 0.0, dir, message: msg });
        }
        let msg = format!(
            "the {method} crate (cryoforge-{sub}) is not in this build yet; when it is, this step runs `{train}` then `{analyze}`"
        );
        self.methods.push(json!({"method": method, "dir": dir, "status": "not yet available", "pc1_frame_spearman_abs": Value::Null}));
        self.record(StepRecord {
            name: method.into(),
            status: "not yet available".into(),
            seconds: 0.0,
            dir: String::new(),
            message: msg,
        })
    }
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let size = DemoSize::from_args(&a);
    if size.n < 10 {
        bail!("--n {}: the demo needs at least 10 particles", size.n);
    }
    if size.frames < 2 {
        bail!("--frames {}: a trajectory needs at least 2 frames", size.frames);
    }
    if !(size.snr > 0.0) {
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
        total_steps: 6,
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
    d.method("cryoSTAR", "star")?;
    d.method("cryoSPHERE", "sphere")?;
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
    let r = crate::cmd::report::write(&a.out, &report)?;
    if let Some(s) = d.steps.last_mut() {
        s.seconds = t.elapsed().as_secs_f64();
    }
    d.save()?;
    // Rewrite the report so it shows the report step's own time.
    crate::cmd::report::write(&a.out, &report)?;
    for w in &r.warnings {
        ctx.say(format!("warning: {w}"));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d.json())?);
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
    fn trajectory_runs_from_closed_to_superposed_open() {
        let c = parse_pdb(ADK_CLOSED.as_bytes(), Path::new("c.pdb")).unwrap().models.remove(0);
        let o = parse_pdb(ADK_OPEN.as_bytes(), Path::new("o.pdb")).unwrap().models.remove(0);
        let t = linear_trajectory(&c, &o, 5).unwrap();
        assert_eq!(t.len(), 5);
        let ca = |m: &Model| m.atoms().filter(|a| a.name == "CA").map(|a| a.pos).collect::<Vec<_>>();
        assert_eq!(ca(&t[0]), ca(&c));
        let rmsd = |a: &[[f64; 3]], b: &[[f64; 3]]| {
            (a.iter().zip(b).map(|(p, q)| (0..3).map(|d| (p[d] - q[d]).powi(2)).sum::<f64>()).sum::<f64>()
                / a.len() as f64)
                .sqrt()
        };
        // The last frame is the open structure up to a rigid motion: its RMSD to the
        // open structure after superposition is ~0, while closed↔open differ by several Å.
        let last = ca(&t[4]);
        let back = kabsch_apply(&ca(&o), &last, &last);
        assert!(rmsd(&back, &ca(&o)) < 1e-6, "{}", rmsd(&back, &ca(&o)));
        let d_end = rmsd(&ca(&t[0]), &last);
        assert!(d_end > 3.0, "closed→open Cα RMSD {d_end}");
        // Linear: the midpoint is half-way.
        let d_mid = rmsd(&ca(&t[0]), &ca(&t[2]));
        assert!((d_mid - d_end / 2.0).abs() < 1e-6);
        assert!(linear_trajectory(&c, &o, 1).is_err());
    }
}
