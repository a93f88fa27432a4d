//! The pipeline: scoring, initial models on the top subsets, the orientation gate, the
//! preferred-orientation branch, the particle-number search and the final map.
//!
//! The wizard decides; a [`Runner`] does the work. Each unit of work (score, ab initio,
//! refine, features, rebalance) is a *step* with a folder under the wizard's output, a
//! status, a wall time and the equivalent cryoforge command line, recorded in
//! OUT/wizard.json after every step. `--resume` reads that file back and skips the steps
//! already done (their results are stored there), so a run continues where it stopped.

use crate::plan::{
    first_round, passes_gate, pick, search_range, second_round, top_indices, Candidate, Scaled, WizardConfig,
};
use anyhow::{anyhow, bail, Context, Result};
use cryoforge_analysis::kmeans::{kmeans, standardize, KMeansOptions};
use cryoforge_analysis::matrix::Matrix;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A unit of work done, with the command line that does the same.
#[derive(Debug, Clone)]
pub struct Done<T> {
    pub value: T,
    pub command: String,
}

/// The numbers of a finished refinement (from its summary.json and orient/orient.json).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RefineNumbers {
    pub particles: usize,
    /// FSC 0.143 of the masked half maps (Å).
    pub resolution_a: f64,
    pub cfar: f64,
}

/// What the wizard needs done. The cryoforge binary implements it with its own
/// subcommands (`ranker score`, `abinit`, `refine`, `ief features`, `rebalance`); tests
/// implement it with fakes. Paths passed in are absolute; every folder is created by the
/// runner. A refinement folder holds map.mrc and particles.star (the `refine` contract).
pub trait Runner {
    /// Number of input particles.
    fn particles(&self) -> usize;
    /// Pixel size of the input (Å).
    fn apix(&self) -> f64;
    /// Whether ranker weights were given (otherwise particles are scored from a consensus
    /// refinement, see [`crate::score`]).
    fn has_ranker(&self) -> bool;
    /// Whether Cryo-IEF features can be computed (otherwise the preferred-orientation
    /// branch rebalances viewing directions instead of clustering features).
    fn has_features(&self) -> bool;
    /// Progress message for the user.
    fn say(&self, msg: &str);
    /// Ranker scores of every input particle, in input order.
    fn rank(&mut self, dir: &Path) -> Result<Done<Vec<f64>>>;
    /// Write the input particles at `indices` (in that order) to the STAR file `path`.
    fn write_subset(&mut self, indices: &[usize], path: &Path) -> Result<()>;
    /// Ab initio (one class) of `particles` into `dir`; returns the map's path.
    fn abinit(&mut self, particles: &Path, dir: &Path) -> Result<Done<PathBuf>>;
    /// Refinement of `particles` from `reference` into `dir`, with orientation diagnostics.
    fn refine(&mut self, particles: &Path, reference: &Path, dir: &Path) -> Result<Done<RefineNumbers>>;
    /// Per-particle log-likelihoods of a refinement folder, in input order (NaN for input
    /// particles it did not hold).
    fn log_likelihoods(&mut self, refine_dir: &Path) -> Result<Vec<f64>>;
    /// Cryo-IEF features [rows = particles of `particles` in its order].
    fn features(&mut self, particles: &Path, dir: &Path) -> Result<Done<Matrix>>;
    /// Rebalance viewing directions of a refined STAR into `out`; returns the count kept.
    fn rebalance(&mut self, refined: &Path, out: &Path) -> Result<Done<usize>>;
}

/// One step's record in wizard.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    /// "done" or "failed".
    pub status: String,
    pub seconds: f64,
    /// Folder of the step's outputs, relative to OUT.
    pub dir: String,
    /// The equivalent command line.
    pub command: String,
    pub message: String,
    /// The step's result (what `--resume` reuses).
    #[serde(default)]
    pub result: Value,
    /// Whether this run reused the record of an earlier one.
    #[serde(default)]
    pub resumed: bool,
}

/// A refinement of the particle-number search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchPoint {
    #[serde(flatten)]
    pub candidate: Candidate,
    /// 1 (evenly spaced) or 2 (around the best of round 1).
    pub round: usize,
    /// The lowest score among the particles used.
    pub min_score: f64,
    pub passes_cfar: bool,
}

/// The gate's decision on the initial models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub passed: bool,
    /// Index into `initial` of the one chosen (when passed) or of the finest.
    pub chosen: usize,
    pub reason: String,
}

/// The preferred-orientation branch's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Branch {
    /// "kmeans" (Cryo-IEF features) or "rebalance" (viewing directions).
    pub method: String,
    pub candidates: Vec<Candidate>,
    pub chosen: usize,
    pub passed: bool,
    pub reason: String,
}

/// The final result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalResult {
    #[serde(flatten)]
    pub candidate: Candidate,
    pub passes_cfar: bool,
    /// final_map.mrc and final_particles.star in OUT (copies of the winner's).
    pub map: String,
    pub star: String,
    /// The volume the search started from (relative to OUT).
    pub start_map: String,
    pub reason: String,
}

/// wizard.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub command: String,
    pub version: String,
    pub particles: usize,
    pub apix_a: f64,
    pub config: WizardConfig,
    /// The runner's own settings (refinement depth, symmetry, weights, …): a resumed run
    /// must have the same.
    #[serde(default)]
    pub settings: Value,
    pub scaled: Scaled,
    /// "ranker" or "consensus".
    pub scoring: String,
    pub steps: Vec<StepRecord>,
    pub initial: Vec<Candidate>,
    pub gate: Option<GateDecision>,
    pub branch: Option<Branch>,
    pub search_range: Option<(usize, usize)>,
    pub search: Vec<SearchPoint>,
    #[serde(rename = "final")]
    pub final_result: Option<FinalResult>,
    /// "running", "done" or "failed".
    pub status: String,
    pub seconds: f64,
}

/// Name of the state file in OUT.
pub const STATE_FILE: &str = "wizard.json";

/// Read OUT/wizard.json.
pub fn read_state(out: &Path) -> Result<State> {
    let p = out.join(STATE_FILE);
    let t = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    serde_json::from_str(&t).map_err(|e| {
        anyhow!("{}: invalid wizard state at line {}, column {}: {e}", p.display(), e.line(), e.column())
    })
}

/// The pipeline on one dataset.
pub struct Wizard<'a, R: Runner> {
    out: PathBuf,
    runner: &'a mut R,
    cfg: WizardConfig,
    sc: Scaled,
    state: State,
    prev: HashMap<String, StepRecord>,
    t0: Instant,
    seconds_before: f64,
}

impl<'a, R: Runner> Wizard<'a, R> {
    /// Set up a run in `out`; with `resume`, reuse the steps OUT/wizard.json records as done
    /// (the settings must be the same).
    pub fn new(
        out: &Path,
        runner: &'a mut R,
        cfg: WizardConfig,
        settings: Value,
        command: String,
        resume: bool,
    ) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow!(e))?;
        let n = runner.particles();
        if n == 0 {
            bail!("the input holds no particles");
        }
        let apix = runner.apix();
        let sc = cfg.scaled(n, apix);
        let mut prev = HashMap::new();
        let mut seconds_before = 0.0;
        if resume {
            let old = read_state(out)?;
            let mut diff = differing_keys(&serde_json::to_value(&old.config)?, &serde_json::to_value(&cfg)?);
            diff.extend(differing_keys(&old.settings, &settings));
            if old.particles != n {
                diff.push(format!("particles ({} then, {n} now)", old.particles));
            }
            if !diff.is_empty() {
                bail!(
                    "{}: --resume with other settings or another input ({}); \
                     rerun with the same options, or start afresh in a new --out",
                    out.join(STATE_FILE).display(),
                    diff.join(", ")
                );
            }
            seconds_before = old.seconds;
            for s in old.steps {
                if s.status == "done" {
                    prev.insert(s.name.clone(), s);
                }
            }
        } else if out.join(STATE_FILE).exists() {
            bail!(
                "{}: a wizard run is already here; continue it with --resume or choose another --out",
                out.join(STATE_FILE).display()
            );
        }
        std::fs::create_dir_all(out)
            .with_context(|| format!("{}: cannot create the folder", out.display()))?;
        let scoring = if runner.has_ranker() { "ranker" } else { "consensus" }.to_string();
        let state = State {
            command,
            version: env!("CARGO_PKG_VERSION").into(),
            particles: n,
            apix_a: apix,
            config: cfg.clone(),
            settings,
            scaled: sc.clone(),
            scoring,
            steps: Vec::new(),
            initial: Vec::new(),
            gate: None,
            branch: None,
            search_range: None,
            search: Vec::new(),
            final_result: None,
            status: "running".into(),
            seconds: seconds_before,
        };
        Ok(Wizard {
            out: out.to_path_buf(),
            runner,
            cfg,
            sc,
            state,
            prev,
            t0: Instant::now(),
            seconds_before,
        })
    }

    fn save(&mut self) -> Result<()> {
        self.state.seconds = self.seconds_before + self.t0.elapsed().as_secs_f64();
        let text = serde_json::to_string_pretty(&self.state)?;
        cryoforge_io::atomic::write_bytes_atomic(&self.out.join(STATE_FILE), text.as_bytes())?;
        Ok(())
    }

    /// Run (or reuse) one step.
    fn step<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
        dir: &str,
        f: impl FnOnce(&mut R, &Path) -> Result<Done<T>>,
    ) -> Result<T> {
        // A step done earlier is reused only while its folder is still there.
        if let Some(p) = self.prev.get(name).filter(|p| self.out.join(&p.dir).exists()) {
            if let Ok(v) = serde_json::from_value::<T>(p.result.clone()) {
                let mut rec = p.clone();
                rec.resumed = true;
                self.runner.say(&format!("  {name}: done earlier ({:.1} s), reused", rec.seconds));
                self.state.steps.push(rec);
                self.save()?;
                return Ok(v);
            }
        }
        self.runner.say(&format!(
            "[{}] {name} → {}",
            self.state.steps.len() + 1,
            self.out.join(dir).display()
        ));
        let t = Instant::now();
        let abs = self.out.join(dir);
        let r = f(self.runner, &abs);
        let seconds = t.elapsed().as_secs_f64();
        match r {
            Ok(d) => {
                let result = serde_json::to_value(&d.value)?;
                self.runner.say(&format!("  {name}: done ({seconds:.1} s)"));
                self.state.steps.push(StepRecord {
                    name: name.into(),
                    status: "done".into(),
                    seconds,
                    dir: dir.into(),
                    command: d.command,
                    message: String::new(),
                    result,
                    resumed: false,
                });
                self.save()?;
                Ok(d.value)
            }
            Err(e) => {
                self.state.steps.push(StepRecord {
                    name: name.into(),
                    status: "failed".into(),
                    seconds,
                    dir: dir.into(),
                    command: String::new(),
                    message: format!("{e:#}"),
                    result: Value::Null,
                    resumed: false,
                });
                self.state.status = "failed".into();
                self.save()?;
                Err(e.context(format!(
                    "wizard step {name:?} failed (folder {}); fix the cause and continue with `cryoforge wizard … --out {} --resume`",
                    abs.display(),
                    self.out.display()
                )))
            }
        }
    }

    /// Run the whole pipeline; returns the final state (also in OUT/wizard.json).
    pub fn run(mut self) -> Result<State> {
        self.save()?;
        let scores = self.scores()?;
        // Initial models on the top subsets.
        let subsets = self.sc.subsets.clone();
        for &p in &subsets {
            let c = self.initial(p, &scores)?;
            self.state.initial.push(c);
            self.save()?;
        }
        let (cfar_min, res_max) = (self.cfg.cfar_min, self.sc.resolution_max_a);
        let (chosen, passed) = pick(&self.state.initial, |c| passes_gate(c, cfar_min, res_max))
            .ok_or_else(|| anyhow!("no initial model was refined"))?;
        if !self.state.initial[chosen].resolution_a.is_finite() {
            bail!(
                "no initial model converged: the refinements in {} have no resolution; check the particles \
                 (box, pixel size, --invert) and the ab initio folders",
                self.state.initial.iter().map(|c| c.dir.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        let best = &self.state.initial[chosen];
        let reason = if passed {
            format!(
                "{} passes (cFAR {:.3} ≥ {cfar_min}, {:.2} Å ≤ {res_max:.2} Å)",
                best.label, best.cfar, best.resolution_a
            )
        } else {
            format!(
                "no initial model passes cFAR ≥ {cfar_min} and resolution ≤ {res_max:.2} Å (best: {} at {:.2} Å, cFAR {:.3}): preferred-orientation branch",
                best.label, best.resolution_a, best.cfar
            )
        };
        self.runner.say(&format!("gate: {reason}"));
        self.state.gate = Some(GateDecision { passed, chosen, reason });
        self.save()?;
        let start = if passed { self.state.initial[chosen].clone() } else { self.branch(&scores)? };
        let start_map = format!("{}/map.mrc", start.dir);
        // The particle-number search.
        let (lo, hi) = search_range(&scores, &self.cfg, &self.sc);
        self.state.search_range = Some((lo, hi));
        self.runner.say(&format!(
            "particle-number search from {lo} to {hi} particles (scores ≥ {} … ≥ {}, clamped to [{}, {}])",
            self.cfg.score_high, self.cfg.score_low, self.sc.search_min, self.sc.search_max
        ));
        let first = first_round(lo, hi, self.cfg.search_first);
        for &s in &first {
            self.search_point(s, 1, &scores, &start_map)?;
        }
        let ok = |c: &Candidate| c.cfar.is_finite() && c.cfar >= cfar_min;
        let cands: Vec<Candidate> = self.state.search.iter().map(|p| p.candidate.clone()).collect();
        if let Some((b, _)) = pick(&cands, ok) {
            let tried: Vec<usize> = self.state.search.iter().map(|p| p.candidate.particles).collect();
            let second = second_round(
                cands[b].particles,
                lo,
                hi,
                self.cfg.search_first,
                self.cfg.search_second,
                &tried,
            );
            for s in second {
                self.search_point(s, 2, &scores, &start_map)?;
            }
        }
        let cands: Vec<Candidate> = self.state.search.iter().map(|p| p.candidate.clone()).collect();
        let (w, passes) =
            pick(&cands, ok).ok_or_else(|| anyhow!("the particle-number search refined nothing"))?;
        let win = cands[w].clone();
        if !win.resolution_a.is_finite() {
            bail!("no refinement of the particle-number search converged (folders search_*)");
        }
        let reason = if passes {
            format!(
                "finest resolution with cFAR ≥ {cfar_min}: {} particles, {:.2} Å, cFAR {:.3}",
                win.particles, win.resolution_a, win.cfar
            )
        } else {
            format!(
                "no size reached cFAR ≥ {cfar_min}: finest resolution, {} particles, {:.2} Å, cFAR {:.3}",
                win.particles, win.resolution_a, win.cfar
            )
        };
        self.runner.say(&format!("final: {reason}"));
        for (from, to) in [("map.mrc", "final_map.mrc"), ("particles.star", "final_particles.star")] {
            let src = self.out.join(&win.dir).join(from);
            let bytes = std::fs::read(&src)
                .with_context(|| format!("{}: cannot read the winner's file", src.display()))?;
            cryoforge_io::atomic::write_bytes_atomic(&self.out.join(to), &bytes)?;
        }
        self.state.final_result = Some(FinalResult {
            candidate: win,
            passes_cfar: passes,
            map: "final_map.mrc".into(),
            star: "final_particles.star".into(),
            start_map,
            reason,
        });
        self.state.status = "done".into();
        self.save()?;
        Ok(self.state)
    }

    /// Scores of every particle, written to OUT/scores.csv (index, score).
    fn scores(&mut self) -> Result<Vec<f64>> {
        let out = self.out.clone();
        let path = out.join("scores.csv");
        if self.runner.has_ranker() {
            self.step("score", "score", |r, dir| {
                let d = r.rank(dir)?;
                write_scores(&path, &d.value)?;
                Ok(Done { value: "scores.csv".to_string(), command: d.command })
            })?;
        } else {
            let all: Vec<usize> = (0..self.state.particles).collect();
            let star = out.join("consensus").join("particles.star");
            let map: String = self.step("consensus abinit", "consensus/abinit", |r, dir| {
                std::fs::create_dir_all(out.join("consensus"))?;
                r.write_subset(&all, &star)?;
                let d = r.abinit(&star, dir)?;
                Ok(Done { value: rel(&out, &d.value), command: d.command })
            })?;
            self.step("consensus refine", "consensus/refine", |r, dir| r.refine(&star, &out.join(&map), dir))
                .map(|_: RefineNumbers| ())?;
            self.step("score", "consensus", |r, _dir| {
                let ll = r.log_likelihoods(&out.join("consensus/refine"))?;
                let s = crate::score::mixture_scores(&ll);
                write_scores(&path, &s)?;
                Ok(Done {
                    value: "scores.csv".to_string(),
                    command: "(log-likelihoods of consensus/refine/scores.csv → two-component mixture)"
                        .into(),
                })
            })?;
        }
        let s = read_scores(&path, self.state.particles)?;
        let good = s.iter().filter(|&&x| x >= self.cfg.score_high).count();
        self.runner.say(&format!(
            "scores: {good} of {} particles ≥ {} ({})",
            s.len(),
            self.cfg.score_high,
            self.state.scoring
        ));
        Ok(s)
    }

    fn initial(&mut self, p: usize, scores: &[f64]) -> Result<Candidate> {
        let out = self.out.clone();
        let tag = format!("initial_{p}");
        let star = out.join(&tag).join("particles.star");
        let idx = top_indices(scores, p);
        let map: String = self.step(&format!("{tag} abinit"), &format!("{tag}/abinit"), |r, dir| {
            std::fs::create_dir_all(out.join(&tag))?;
            r.write_subset(&idx, &star)?;
            let d = r.abinit(&star, dir)?;
            Ok(Done { value: rel(&out, &d.value), command: d.command })
        })?;
        let dir = format!("{tag}/refine");
        let nums: RefineNumbers =
            self.step(&format!("{tag} refine"), &dir, |r, d| r.refine(&star, &out.join(&map), d))?;
        Ok(Candidate {
            label: format!("initial {p}"),
            particles: nums.particles,
            resolution_a: nums.resolution_a,
            cfar: nums.cfar,
            dir,
        })
    }

    /// The preferred-orientation branch: returns the candidate the search starts from.
    fn branch(&mut self, scores: &[f64]) -> Result<Candidate> {
        let out = self.out.clone();
        let n = self.state.particles;
        let mut cands = Vec::new();
        let method = if self.runner.has_features() { "kmeans" } else { "rebalance" };
        let subsets = self.sc.subsets.clone();
        for (i, &p) in subsets.iter().enumerate() {
            let tag = format!("branch_{p}");
            let init_dir = self.state.initial[i].dir.clone();
            let reference = out.join(&init_dir).join("map.mrc");
            if method == "kmeans" {
                let m = (self.cfg.cluster_factor * p).min(n);
                let idx = top_indices(scores, m);
                let star = out.join(&tag).join("particles.star");
                let (ck, restarts, seed) = (self.cfg.cluster_k, self.cfg.cluster_restarts, self.cfg.seed);
                let feats: String =
                    self.step(&format!("{tag} features"), &format!("{tag}/features"), |r, dir| {
                        std::fs::create_dir_all(out.join(&tag))?;
                        r.write_subset(&idx, &star)?;
                        let d = r.features(&star, dir)?;
                        let f = d.value;
                        if f.n_rows() != idx.len() {
                            bail!("{} feature rows for {} particles", f.n_rows(), idx.len());
                        }
                        let k = ck.min(idx.len());
                        let (z, _) =
                            standardize(f.view()).map_err(|e| anyhow!("standardising the features: {e}"))?;
                        let opts = KMeansOptions { n_init: restarts, seed, ..KMeansOptions::new(k) };
                        let km =
                            kmeans(z.view(), &opts).map_err(|e| anyhow!("k-means on the features: {e}"))?;
                        let mut csv = String::from("index,cluster\n");
                        for (&i, &l) in idx.iter().zip(&km.labels) {
                            csv.push_str(&format!("{i},{}\n", l + 1));
                        }
                        cryoforge_io::atomic::write_bytes_atomic(
                            &out.join(&tag).join("clusters.csv"),
                            csv.as_bytes(),
                        )?;
                        Ok(Done {
                            value: format!("{tag}/clusters.csv"),
                            command: format!(
                                "{} && (k-means++ k = {k}, {} restarts, standardised features)",
                                d.command, restarts
                            ),
                        })
                    })?;
                let labels = read_clusters(&out.join(&feats))?;
                let k = labels.iter().map(|(_, c)| *c).max().unwrap_or(0);
                for c in 1..=k {
                    let members: Vec<usize> =
                        labels.iter().filter(|(_, l)| *l == c).map(|(i, _)| *i).collect();
                    if members.len() < self.cfg.cluster_min_particles {
                        self.runner.say(&format!(
                            "  {tag} cluster {c}: {} particles, below {}: not refined",
                            members.len(),
                            self.cfg.cluster_min_particles
                        ));
                        continue;
                    }
                    let dir = format!("{tag}/cluster_{c:02}");
                    let cstar = out.join(&dir).join("particles.star");
                    let nums: RefineNumbers =
                        self.step(&format!("{tag} cluster {c} refine"), &format!("{dir}/refine"), |r, d| {
                            std::fs::create_dir_all(out.join(&dir))?;
                            r.write_subset(&members, &cstar)?;
                            r.refine(&cstar, &reference, d)
                        })?;
                    cands.push(Candidate {
                        label: format!("cluster {c} of the top {m} (initial {p})"),
                        particles: nums.particles,
                        resolution_a: nums.resolution_a,
                        cfar: nums.cfar,
                        dir: format!("{dir}/refine"),
                    });
                }
            } else {
                let refined = out.join(&init_dir).join("particles.star");
                let bal = out.join(&tag).join("rebalanced.star");
                let kept: usize = self.step(&format!("{tag} rebalance"), &tag, |r, _d| {
                    std::fs::create_dir_all(out.join(&tag))?;
                    r.rebalance(&refined, &bal)
                })?;
                let dir = format!("{tag}/refine");
                let nums: RefineNumbers =
                    self.step(&format!("{tag} refine"), &dir, |r, d| r.refine(&bal, &reference, d))?;
                cands.push(Candidate {
                    label: format!("initial {p} rebalanced ({kept} kept)"),
                    particles: nums.particles,
                    resolution_a: nums.resolution_a,
                    cfar: nums.cfar,
                    dir,
                });
            }
            self.state.branch = Some(Branch {
                method: method.into(),
                candidates: cands.clone(),
                chosen: 0,
                passed: false,
                reason: "running".into(),
            });
            self.save()?;
        }
        let (cfar_min, res_max) = (self.cfg.cfar_min, self.sc.resolution_max_a);
        let Some((b, passed)) = pick(&cands, |c| passes_gate(c, cfar_min, res_max)) else {
            // Every cluster was too small: start from the finest initial model.
            let g = self.state.gate.as_ref().map_or(0, |g| g.chosen);
            let c = self.state.initial[g].clone();
            self.state.branch = Some(Branch {
                method: method.into(),
                candidates: cands,
                chosen: 0,
                passed: false,
                reason: format!(
                    "every cluster was below {} particles: the search starts from {}",
                    self.cfg.cluster_min_particles, c.label
                ),
            });
            self.save()?;
            return Ok(c);
        };
        let mut c = cands[b].clone();
        let g = self.state.gate.as_ref().map_or(0, |g| g.chosen);
        let init = self.state.initial[g].clone();
        let reason = if passed {
            format!("{} passes (cFAR {:.3}, {:.2} Å)", c.label, c.cfar, c.resolution_a)
        } else if c.resolution_a.partial_cmp(&init.resolution_a) != Some(std::cmp::Ordering::Less) {
            // Nothing passes and the branch did not improve: the finest volume overall.
            let r = format!(
                "none passes the gate and no branch volume is finer than {} ({:.2} Å): the search starts from it",
                init.label, init.resolution_a
            );
            c = init.clone();
            r
        } else {
            format!(
                "none passes the gate: finest resolution, {} ({:.2} Å, cFAR {:.3})",
                c.label, c.resolution_a, c.cfar
            )
        };
        self.runner.say(&format!("preferred-orientation branch ({method}): {reason}"));
        // A branch candidate that did not converge is no start: fall back to the initial model.
        let start = if c.resolution_a.is_finite() { c } else { init };
        self.state.branch =
            Some(Branch { method: method.into(), candidates: cands, chosen: b, passed, reason });
        self.save()?;
        Ok(start)
    }

    fn search_point(&mut self, s: usize, round: usize, scores: &[f64], start_map: &str) -> Result<()> {
        let out = self.out.clone();
        let tag = format!("search_{s}");
        let idx = top_indices(scores, s);
        let min_score = idx.last().map_or(f64::NAN, |&i| scores[i]);
        let star = out.join(&tag).join("particles.star");
        let reference = out.join(start_map);
        let dir = format!("{tag}/refine");
        let nums: RefineNumbers = self.step(&format!("{tag} refine"), &dir, |r, d| {
            std::fs::create_dir_all(out.join(&tag))?;
            r.write_subset(&idx, &star)?;
            r.refine(&star, &reference, d)
        })?;
        let c = Candidate {
            label: format!("search {s}"),
            particles: nums.particles,
            resolution_a: nums.resolution_a,
            cfar: nums.cfar,
            dir,
        };
        let passes_cfar = c.cfar.is_finite() && c.cfar >= self.cfg.cfar_min;
        self.runner.say(&format!(
            "  {s} particles (scores ≥ {min_score:.3}): {:.2} Å, cFAR {:.3}",
            c.resolution_a, c.cfar
        ));
        self.state.search.push(SearchPoint { candidate: c, round, min_score, passes_cfar });
        self.save()
    }
}

/// Keys of two JSON objects whose values differ, as "key (then → now)".
fn differing_keys(a: &Value, b: &Value) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| x.get(*k) != y.get(*k))
                .map(|k| {
                    let show = |v: Option<&Value>| v.map_or("unset".to_string(), |v| v.to_string());
                    format!("{k}: {} then, {} now", show(x.get(k)), show(y.get(k)))
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![format!("{a} then, {b} now")],
    }
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}

/// Write index,score rows.
pub fn write_scores(path: &Path, s: &[f64]) -> Result<()> {
    let mut t = String::with_capacity(16 * s.len() + 16);
    t.push_str("index,score\n");
    for (i, v) in s.iter().enumerate() {
        t.push_str(&format!("{i},{v:.6}\n"));
    }
    cryoforge_io::atomic::write_bytes_atomic(path, t.as_bytes())?;
    Ok(())
}

/// Read the scores of `n` particles written by [`write_scores`].
pub fn read_scores(path: &Path, n: usize) -> Result<Vec<f64>> {
    let t = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = vec![f64::NAN; n];
    let mut seen = 0usize;
    for (ln, line) in t.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut it = line.split(',');
        let (Some(i), Some(v)) = (it.next(), it.next()) else {
            bail!("{}: line {}: expected index,score", path.display(), ln + 1);
        };
        let i: usize = i
            .trim()
            .parse()
            .map_err(|_| anyhow!("{}: line {}: index {i:?} is not a number", path.display(), ln + 1))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{}: line {}: score {v:?} is not a number", path.display(), ln + 1))?;
        if i >= n {
            bail!("{}: line {}: index {i} but the input holds {n} particles", path.display(), ln + 1);
        }
        out[i] = v;
        seen += 1;
    }
    if seen != n {
        bail!("{}: {seen} scores for {n} particles", path.display());
    }
    Ok(out)
}

fn read_clusters(path: &Path) -> Result<Vec<(usize, usize)>> {
    let t = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut v = Vec::new();
    for (ln, line) in t.lines().enumerate().skip(1) {
        let mut it = line.split(',');
        let parse = |x: Option<&str>| x.and_then(|s| s.trim().parse::<usize>().ok());
        match (parse(it.next()), parse(it.next())) {
            (Some(i), Some(c)) if c >= 1 => v.push((i, c)),
            _ => bail!("{}: line {}: expected index,cluster (cluster ≥ 1)", path.display(), ln + 1),
        }
    }
    Ok(v)
}

/// The numbers the report shows, from a state (resolution against particle count and
/// against the lowest score used).
pub fn curve_points(st: &State) -> Vec<(usize, f64, f64, f64)> {
    let mut v: Vec<(usize, f64, f64, f64)> = st
        .search
        .iter()
        .map(|p| (p.candidate.particles, p.candidate.resolution_a, p.min_score, p.candidate.cfar))
        .collect();
    v.sort_by_key(|x| x.0);
    v
}

/// A JSON summary of a state for `--json`.
pub fn summary_json(st: &State) -> Value {
    json!({
        "particles": st.particles,
        "scoring": st.scoring,
        "status": st.status,
        "initial": st.initial,
        "gate": st.gate,
        "branch": st.branch,
        "search_range": st.search_range,
        "search": st.search,
        "final": st.final_result,
        "seconds": st.seconds,
    })
}
