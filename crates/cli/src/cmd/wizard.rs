//! `cryoforge wizard`: CryoWizard's automated pipeline (paper 001; METHODS.md §5) run with
//! cryoforge's own subcommands. The decisions live in the `wizard` crate; this module is
//! its [`Runner`]: every step calls a subcommand's `run` with the arguments its recorded
//! command line shows.

use crate::cmd::demo::sub_args;
use crate::common::{Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_analysis::matrix::Matrix;
use cryoforge_io::export;
use cryoforge_io::stack::ParticleStack;
use cryoforge_wizard::pipeline::{summary_json, Done, RefineNumbers, Runner};
use cryoforge_wizard::{Wizard, WizardConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// CryoWizard: from raw particles to a final map without a reference.
///
/// 1. Score every particle: with --weights, CryoRanker (`ranker score`); without, a
///    consensus ab initio + refinement of all particles whose per-particle
///    log-likelihoods are turned into a probability by a two-component mixture.
/// 2. Initial models on the top subsets (--subsets, default 50,000 and 100,000, scaled to
///    N/2 and proportionally below for smaller sets): `abinit` (one class) → `refine`
///    from it at a 15 Å start (--ini-high-a) → orientation diagnostics.
/// 3. The gate: cFAR ≥ --cfar-min (0.15) and resolution ≤ --resolution-max-a (4 Å, at least
///    4 pixels). When no initial model passes (preferred orientation): with --weights,
///    k-means++ (k = 8, 10 restarts) on the standardised Cryo-IEF features of the top
///    8·P particles and every cluster refined; without, the top P rebalanced by viewing
///    direction (`rebalance`) and refined. The finest passing volume is the start of:
/// 4. The particle-number search: 8 sizes evenly spaced between the ranks where the score
///    drops below 0.8 and 0.3 (clamped to [30,000, 3,000,000], lower bound at most N/10;
///    spanning at least --search-min-span of the upper end), then 4 around the best; the
///    finest refinement with cFAR ≥ 0.15 wins.
///
/// Writes OUT/wizard.json (every step: status, time, folder, equivalent command; the gate
/// decisions; the search), OUT/scores.csv, one folder per step, OUT/final_map.mrc,
/// OUT/final_particles.star and OUT/report.html. --resume continues after a failure.
///
/// Examples:
///   cryoforge wizard particles.star --weights cryoranker.safetensors --out wiz/
///   cryoforge wizard J12_particles.cs --out wiz/          (no ranker: consensus scores)
///   cryoforge wizard particles.star --weights w.safetensors --out wiz/ --resume
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub input: ParticleArgs,
    /// CryoRanker weights (safetensors; the released names or `ranker train`'s). Their
    /// encoder also gives the features of the preferred-orientation branch.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Output folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Continue the run in --out (same settings), reusing the steps done.
    #[arg(long)]
    pub resume: bool,
    /// Initial-model subset sizes.
    #[arg(long, value_delimiter = ',', default_value = "50000,100000", value_name = "N,...")]
    pub subsets: Vec<usize>,
    /// Gate: minimum cFAR.
    #[arg(long, default_value_t = 0.15)]
    pub cfar_min: f64,
    /// Gate: worst accepted resolution (Å; at least 4 pixels is used).
    #[arg(long, default_value_t = 4.0, value_name = "A")]
    pub resolution_max_a: f64,
    /// Preferred-orientation branch: k-means clusters.
    #[arg(long, default_value_t = 8)]
    pub cluster_k: usize,
    /// Preferred-orientation branch: clusters with fewer particles are not refined.
    #[arg(long, default_value_t = 100)]
    pub cluster_min_particles: usize,
    /// Particle-number search: from the rank where the score drops below this…
    #[arg(long, default_value_t = 0.8)]
    pub score_high: f64,
    /// …to where it drops below this.
    #[arg(long, default_value_t = 0.3)]
    pub score_low: f64,
    /// Lower clamp of the search (at most a tenth of the particles is used).
    #[arg(long, default_value_t = 30_000)]
    pub search_min: usize,
    /// Upper clamp of the search.
    #[arg(long, default_value_t = 3_000_000)]
    pub search_max: usize,
    /// The search range spans at least this fraction of its upper end (widened downwards
    /// when the scores are so confident that few particles lie between the thresholds).
    #[arg(long, default_value_t = 0.25)]
    pub search_min_span: f64,
    /// Sizes in the first search round.
    #[arg(long, default_value_t = 8)]
    pub search_first: usize,
    /// Sizes around the best in the second round.
    #[arg(long, default_value_t = 4)]
    pub search_second: usize,
    /// Initial low-pass of every refinement (Å; CryoWizard's 15 Å).
    #[arg(long, default_value_t = 15.0, value_name = "A")]
    pub ini_high_a: f64,
    /// Symmetry of ab initio and refinement.
    #[arg(long, default_value = "C1")]
    pub sym: String,
    /// Particles are protein-dark: flip their sign in ab initio and refinement (as their
    /// `--invert`; the ranker's preprocessing takes particles as stored).
    #[arg(long)]
    pub invert: bool,
    /// Seed of every random step.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Ab initio mini-batches (as `abinit --iterations`).
    #[arg(long, default_value_t = 80, hide = true)]
    pub abinit_iterations: usize,
    /// Refinement iterations at most (as `refine --max-iter`).
    #[arg(long, default_value_t = 12, hide = true)]
    pub refine_max_iter: usize,
    /// HEALPix order of the refinements' global search (as `refine --healpix-order`).
    #[arg(long, default_value_t = 2, hide = true)]
    pub healpix_order: u32,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

struct CliRunner<'a> {
    stack: ParticleStack,
    input_label: String,
    weights: Option<PathBuf>,
    a: &'a Args,
    ctx: &'a Ctx,
    sub: Ctx,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn command(name: &str, argv: &[String]) -> String {
    let quoted: Vec<String> =
        argv.iter().map(|x| if x.contains(' ') { format!("'{x}'") } else { x.clone() }).collect();
    format!("cryoforge {name} {}", quoted.join(" "))
}

fn read_json(p: &Path) -> Result<Value> {
    Ok(cryoforge_report::rundir::read_json(p)?)
}

fn num(v: &Value, key: &str, p: &Path) -> Result<f64> {
    match v.get(key) {
        Some(Value::Number(x)) => x.as_f64().context("number"),
        Some(Value::Null) => Ok(f64::NAN),
        _ => bail!("{}: no number {key:?}", p.display()),
    }
}

impl Runner for CliRunner<'_> {
    fn particles(&self) -> usize {
        self.stack.len()
    }
    fn apix(&self) -> f64 {
        self.stack.apix_a().unwrap_or(1.0)
    }
    fn has_ranker(&self) -> bool {
        self.weights.is_some()
    }
    fn has_features(&self) -> bool {
        self.weights.is_some()
    }
    fn say(&self, msg: &str) {
        self.ctx.say(msg);
    }

    fn rank(&mut self, dir: &Path) -> Result<Done<Vec<f64>>> {
        let w = self.weights.as_ref().context("no --weights")?;
        let all = dir.join("input.star");
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        export::write_star(&self.stack, &all)?;
        let argv = vec![s(&all), "--weights".into(), s(w), "--out".into(), s(dir)];
        let a: crate::cmd::ranker::Args = sub_args(&[vec!["score".to_string()], argv.clone()].concat())?;
        crate::cmd::ranker::run(a, &self.sub)?;
        let p = dir.join("scores.csv");
        let t = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        let mut v = vec![f64::NAN; self.stack.len()];
        for (ln, line) in t.lines().enumerate().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let (Some(i), Some(x)) = (
                f.first().and_then(|x| x.parse::<usize>().ok()),
                f.last().and_then(|x| x.parse::<f64>().ok()),
            ) else {
                bail!("{}: line {}: expected index,…,score", p.display(), ln + 1);
            };
            if i >= v.len() {
                bail!("{}: line {}: index {i} beyond the {} particles", p.display(), ln + 1, v.len());
            }
            v[i] = x;
        }
        if let Some(i) = v.iter().position(|x| x.is_nan()) {
            bail!("{}: no score for particle {i}", p.display());
        }
        Ok(Done { value: v, command: command("ranker score", &argv) })
    }

    fn write_subset(&mut self, indices: &[usize], path: &Path) -> Result<()> {
        let mut sub = self.stack.clone();
        sub.select(indices)
            .with_context(|| format!("selecting {} particles of {}", indices.len(), self.input_label))?;
        export::write_star(&sub, path)?;
        Ok(())
    }

    fn abinit(&mut self, particles: &Path, dir: &Path) -> Result<Done<PathBuf>> {
        let n = ParticleStack::load(particles, &Default::default())?.len();
        let batch = 300.min((n / 2).max(1));
        let mut argv = vec![
            s(particles),
            "--out".into(),
            s(dir),
            "--sym".into(),
            self.a.sym.clone(),
            "--seed".into(),
            self.a.seed.to_string(),
            "--iterations".into(),
            self.a.abinit_iterations.to_string(),
            "--batch".into(),
            batch.to_string(),
        ];
        if self.a.invert {
            argv.push("--invert".into());
        }
        let a: crate::cmd::abinit::Args = sub_args(&argv)?;
        crate::cmd::abinit::run(a, &self.sub)?;
        let m = dir.join("class_001.mrc");
        if !m.is_file() {
            bail!("{}: ab initio wrote no class_001.mrc", dir.display());
        }
        Ok(Done { value: m, command: command("abinit", &argv) })
    }

    fn refine(&mut self, particles: &Path, reference: &Path, dir: &Path) -> Result<Done<RefineNumbers>> {
        let mut argv = vec![
            s(particles),
            "--reference".into(),
            s(reference),
            "--out".into(),
            s(dir),
            "--ini-high-a".into(),
            self.a.ini_high_a.to_string(),
            "--sym".into(),
            self.a.sym.clone(),
            "--seed".into(),
            self.a.seed.to_string(),
            "--max-iter".into(),
            self.a.refine_max_iter.to_string(),
            "--healpix-order".into(),
            self.a.healpix_order.to_string(),
        ];
        if self.a.invert {
            argv.push("--invert".into());
        }
        let a: crate::cmd::refine::Args = sub_args(&argv)?;
        crate::cmd::refine::run(a, &self.sub)?;
        let sp = dir.join("summary.json");
        let sj = read_json(&sp)?;
        let op = dir.join("orient").join("orient.json");
        let oj = read_json(&op)?;
        Ok(Done {
            value: RefineNumbers {
                particles: num(&sj, "particles", &sp)? as usize,
                resolution_a: num(&sj, "resolution_0.143_masked_A", &sp)?,
                cfar: num(&oj, "cfar", &op)?,
            },
            command: command("refine", &argv),
        })
    }

    fn log_likelihoods(&mut self, refine_dir: &Path) -> Result<Vec<f64>> {
        let p = refine_dir.join("scores.csv");
        let t = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        let mut lines = t.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let col = |n: &str| header.iter().position(|h| *h == n);
        let (Some(ii), Some(li)) = (col("index"), col("log_likelihood")) else {
            bail!("{}: line 1: expected columns index and log_likelihood", p.display());
        };
        let mut v = vec![f64::NAN; self.stack.len()];
        for (ln, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(',').collect();
            let i = f.get(ii).and_then(|x| x.parse::<usize>().ok());
            let x = f.get(li).and_then(|x| x.parse::<f64>().ok());
            match (i, x) {
                (Some(i), Some(x)) if i < v.len() => v[i] = x,
                _ => bail!("{}: line {}: bad index or log_likelihood", p.display(), ln + 2),
            }
        }
        Ok(v)
    }

    fn features(&mut self, particles: &Path, dir: &Path) -> Result<Done<Matrix>> {
        let w = self.weights.as_ref().context("no --weights")?;
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let npy = dir.join("features.npy");
        let argv = vec![s(particles), "--weights".into(), s(w), "-o".into(), s(&npy)];
        let a: crate::cmd::ief::Args = sub_args(&[vec!["features".to_string()], argv.clone()].concat())?;
        crate::cmd::ief::run(a, &self.sub)?;
        let f = cryoforge_io::npy::read_npy(&npy)?;
        let (r, c) = (f.rows(), f.row_len());
        let m = Matrix::new(f.data.iter().map(|&x| x as f64).collect(), r, c)
            .map_err(|e| anyhow::anyhow!("{}: {e}", npy.display()))?;
        Ok(Done { value: m, command: command("ief features", &argv) })
    }

    fn rebalance(&mut self, refined: &Path, out: &Path) -> Result<Done<usize>> {
        let summary = out.with_extension("json");
        // About ten particles per bin, between 12 and `rebalance`'s 500 bins.
        let n = ParticleStack::load(refined, &Default::default())?.len();
        let bins = (n / 10).clamp(12, 500);
        let argv = vec![
            s(refined),
            "-o".into(),
            s(out),
            "--bins".into(),
            bins.to_string(),
            "--seed".into(),
            self.a.seed.to_string(),
            "--summary".into(),
            s(&summary),
        ];
        let a: crate::cmd::rebalance::Args = sub_args(&argv)?;
        crate::cmd::rebalance::run(a, &self.sub)?;
        let j = read_json(&summary)?;
        Ok(Done { value: num(&j, "kept", &summary)? as usize, command: command("rebalance", &argv) })
    }
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let cfg = WizardConfig {
        subsets: a.subsets.clone(),
        cfar_min: a.cfar_min,
        resolution_max_a: a.resolution_max_a,
        cluster_k: a.cluster_k,
        cluster_min_particles: a.cluster_min_particles,
        score_high: a.score_high,
        score_low: a.score_low,
        search_min: a.search_min,
        search_max: a.search_max,
        search_min_span: a.search_min_span,
        search_first: a.search_first,
        search_second: a.search_second,
        seed: a.seed,
        ..Default::default()
    };
    cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
    if let Some(w) = &a.weights {
        if !w.is_file() {
            bail!("--weights {}: no such file", w.display());
        }
    }
    let stack = a.input.load(ctx)?;
    if stack.is_empty() {
        bail!("{}: no particles", a.input.particles.display());
    }
    stack.box_px()?;
    stack.apix_a()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let t0 = std::time::Instant::now();
    let mut runner = CliRunner {
        stack,
        input_label: a.input.particles.display().to_string(),
        weights: a.weights.clone(),
        a: &a,
        ctx,
        sub: Ctx { quiet: true, nested: true },
    };
    ctx.say(format!(
        "wizard: {} particles from {}, scoring by {}",
        runner.stack.len(),
        runner.input_label,
        if a.weights.is_some() { "CryoRanker" } else { "a consensus refinement (no --weights)" }
    ));
    let settings = serde_json::json!({
        "weights": a.weights.as_ref().map(|w| w.display().to_string()),
        "ini_high_a": a.ini_high_a,
        "sym": a.sym,
        "abinit_iterations": a.abinit_iterations,
        "refine_max_iter": a.refine_max_iter,
        "healpix_order": a.healpix_order,
        "invert": a.invert,
    });
    let wiz = Wizard::new(&a.out, &mut runner, cfg, settings, command, a.resume)?;
    let st = wiz.run();
    // The report, also after a failure (it shows how far the run got).
    if let Err(e) = crate::cmd::report::write(&a.out, &a.out.join("report.html")) {
        tracing::warn!("the report failed: {e:#}");
    }
    let st = st?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary_json(&st))?);
    }
    let f = st.final_result.as_ref().context("no final result")?;
    ctx.done(format!(
        "wizard: final map from {} particles, {:.2} Å, cFAR {:.3} in {:.0} s ({} steps): {}, report {}",
        f.candidate.particles,
        f.candidate.resolution_a,
        f.candidate.cfar,
        t0.elapsed().as_secs_f64(),
        st.steps.len(),
        a.out.join(&f.map).display(),
        a.out.join("report.html").display()
    ));
    Ok(())
}
