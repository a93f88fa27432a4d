//! The pipeline's decisions and record on a fake runner: subsets written as index lists,
//! "refinements" whose resolution and cFAR follow from the particles they hold.

use anyhow::{bail, Result};
use cryoforge_analysis::matrix::Matrix;
use cryoforge_wizard::pipeline::{read_scores, Done, RefineNumbers, Runner};
use cryoforge_wizard::{read_state, Wizard, WizardConfig};
use std::cell::Cell;
use std::path::{Path, PathBuf};

const N: usize = 4000;

/// Particles 0..N: every 4th is junk (scores low); with `po`, 70 % of the good ones are
/// "top views" (feature cluster A) and the rest "side views" (cluster B).
struct Fake {
    po: bool,
    ranker: bool,
    features: bool,
    refines: Cell<usize>,
    fail_at_refine: Option<usize>,
}

fn junk(i: usize) -> bool {
    i % 4 == 3
}
fn top_view(i: usize) -> bool {
    i % 10 < 7
}

impl Fake {
    fn new(po: bool) -> Fake {
        Fake { po, ranker: true, features: true, refines: Cell::new(0), fail_at_refine: None }
    }
    fn read_subset(p: &Path) -> Vec<usize> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| l.parse().unwrap()).collect()
    }
}

impl Runner for Fake {
    fn particles(&self) -> usize {
        N
    }
    fn apix(&self) -> f64 {
        // The resolution gate becomes 4 pixels = 8 Å.
        2.0
    }
    fn has_ranker(&self) -> bool {
        self.ranker
    }
    fn has_features(&self) -> bool {
        self.features
    }
    fn say(&self, _msg: &str) {}
    fn rank(&mut self, dir: &Path) -> Result<Done<Vec<f64>>> {
        std::fs::create_dir_all(dir)?;
        // Good particles score 0.6–0.99 (decreasing with index), junk 0.05–0.35.
        let s = (0..N)
            .map(|i| {
                let t = i as f64 / N as f64;
                if junk(i) {
                    0.35 - 0.3 * t
                } else {
                    0.99 - 0.39 * t
                }
            })
            .collect();
        Ok(Done { value: s, command: "fake rank".into() })
    }
    fn write_subset(&mut self, indices: &[usize], path: &Path) -> Result<()> {
        let t: Vec<String> = indices.iter().map(|i| i.to_string()).collect();
        std::fs::write(path, t.join("\n"))?;
        Ok(())
    }
    fn abinit(&mut self, _particles: &Path, dir: &Path) -> Result<Done<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let m = dir.join("class_001.mrc");
        std::fs::write(&m, b"map")?;
        Ok(Done { value: m, command: "fake abinit".into() })
    }
    fn refine(&mut self, particles: &Path, reference: &Path, dir: &Path) -> Result<Done<RefineNumbers>> {
        assert!(reference.is_file(), "{} missing", reference.display());
        let k = self.refines.get() + 1;
        self.refines.set(k);
        if self.fail_at_refine == Some(k) {
            bail!("simulated failure");
        }
        let idx = if particles.extension().is_some_and(|e| e == "star") && particles.is_file() {
            Fake::read_subset(particles)
        } else {
            bail!("{}: no subset", particles.display())
        };
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("map.mrc"), b"map")?;
        std::fs::copy(particles, dir.join("particles.star"))?;
        let n = idx.len() as f64;
        let j = idx.iter().filter(|&&i| junk(i)).count() as f64 / n;
        let tops = idx.iter().filter(|&&i| !junk(i) && top_view(i)).count() as f64;
        let good = idx.iter().filter(|&&i| !junk(i)).count() as f64;
        // More good particles → finer; junk coarsens; top views make it anisotropic.
        let res = 4.0 + 2000.0 / good.max(1.0) + 10.0 * j;
        let cfar = if self.po { (1.0 - tops / good.max(1.0)) * 0.5 } else { 0.6 };
        Ok(Done {
            value: RefineNumbers { particles: idx.len(), resolution_a: res, cfar },
            command: "fake refine".into(),
        })
    }
    fn log_likelihoods(&mut self, _dir: &Path) -> Result<Vec<f64>> {
        Ok((0..N).map(|i| if junk(i) { 10.0 + (i % 7) as f64 } else { 50.0 + (i % 5) as f64 }).collect())
    }
    fn features(&mut self, particles: &Path, dir: &Path) -> Result<Done<Matrix>> {
        std::fs::create_dir_all(dir)?;
        let idx = Fake::read_subset(particles);
        let mut d = Vec::new();
        for &i in &idx {
            let a = if junk(i) {
                5.0
            } else if top_view(i) {
                0.0
            } else {
                10.0
            };
            d.extend([a + (i % 3) as f64 * 0.01, -a]);
        }
        Ok(Done { value: Matrix::new(d, idx.len(), 2).unwrap(), command: "fake features".into() })
    }
    fn rebalance(&mut self, refined: &Path, out: &Path) -> Result<Done<usize>> {
        // Keep all side views and as many top views.
        let idx = Fake::read_subset(refined);
        let sides: Vec<usize> = idx.iter().copied().filter(|&i| !top_view(i)).collect();
        let mut keep = sides.clone();
        keep.extend(idx.iter().copied().filter(|&i| top_view(i)).take(sides.len()));
        self.write_subset(&keep, out)?;
        Ok(Done { value: keep.len(), command: "fake rebalance".into() })
    }
}

fn cfg() -> WizardConfig {
    WizardConfig { cluster_k: 3, cluster_restarts: 3, ..Default::default() }
}

#[test]
fn clean_data_passes_the_gate_and_searches_sizes() {
    let t = tempfile::tempdir().unwrap();
    let mut r = Fake::new(false);
    let st = Wizard::new(t.path(), &mut r, cfg(), serde_json::Value::Null, "test".into(), false)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(st.status, "done");
    assert_eq!(st.scaled.subsets, vec![1000, 2000]);
    let g = st.gate.as_ref().unwrap();
    assert!(g.passed, "{}", g.reason);
    assert!(st.branch.is_none());
    // Round 1 has 8 sizes, round 2 up to 4 more; every step recorded with its folder.
    let r1 = st.search.iter().filter(|p| p.round == 1).count();
    let r2 = st.search.iter().filter(|p| p.round == 2).count();
    assert_eq!(r1, 8);
    assert!((1..=4).contains(&r2), "{r2}");
    let f = st.final_result.as_ref().unwrap();
    // The fake's best is where all good and no junk particles are (3000 good + 0 junk is
    // impossible by score order: the winner must not include most junk).
    assert!(f.passes_cfar);
    let best = st.search.iter().map(|p| p.candidate.resolution_a).fold(f64::INFINITY, f64::min);
    assert_eq!(f.candidate.resolution_a, best);
    assert!(t.path().join("final_map.mrc").is_file() && t.path().join("final_particles.star").is_file());
    let disk = read_state(t.path()).unwrap();
    assert_eq!(disk.steps.len(), st.steps.len());
    assert!(disk.steps.iter().all(|s| s.status == "done" && !s.command.is_empty() && !s.dir.is_empty()));
    let scores = read_scores(&t.path().join("scores.csv"), N).unwrap();
    assert!(scores[0] > 0.9 && scores[3] < 0.4);
}

#[test]
fn preferred_orientation_takes_the_cluster_branch() {
    let t = tempfile::tempdir().unwrap();
    let mut r = Fake::new(true);
    let st = Wizard::new(t.path(), &mut r, cfg(), serde_json::Value::Null, "test".into(), false)
        .unwrap()
        .run()
        .unwrap();
    let g = st.gate.as_ref().unwrap();
    assert!(!g.passed, "{}", g.reason);
    let b = st.branch.as_ref().unwrap();
    assert_eq!(b.method, "kmeans");
    // 3 clusters (top views, side views, junk) for each of the 2 subsets.
    assert_eq!(b.candidates.len(), 6, "{:?}", b.candidates);
    // Only the side-view cluster is isotropic enough.
    assert!(b.passed, "{}", b.reason);
    let chosen = &b.candidates[b.chosen];
    assert!(chosen.cfar >= 0.15);
    assert!(t.path().join("branch_1000/clusters.csv").is_file());
    assert_eq!(st.final_result.as_ref().unwrap().start_map, format!("{}/map.mrc", chosen.dir));
}

#[test]
fn without_features_the_branch_rebalances_and_without_ranker_a_consensus_scores() {
    let t = tempfile::tempdir().unwrap();
    let mut r = Fake::new(true);
    r.features = false;
    r.ranker = false;
    let st = Wizard::new(t.path(), &mut r, cfg(), serde_json::Value::Null, "test".into(), false)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(st.scoring, "consensus");
    assert!(st.steps.iter().any(|s| s.name == "consensus refine"));
    let scores = read_scores(&t.path().join("scores.csv"), N).unwrap();
    assert!((0..N).all(|i| if junk(i) { scores[i] < 0.1 } else { scores[i] > 0.9 }));
    let b = st.branch.as_ref().unwrap();
    assert_eq!(b.method, "rebalance");
    assert_eq!(b.candidates.len(), 2);
}

#[test]
fn a_failed_step_names_itself_and_resume_continues() {
    let t = tempfile::tempdir().unwrap();
    let mut r = Fake::new(false);
    r.fail_at_refine = Some(4);
    let e = Wizard::new(t.path(), &mut r, cfg(), serde_json::Value::Null, "test".into(), false)
        .unwrap()
        .run()
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("search_") && msg.contains("--resume") && msg.contains("simulated failure"),
        "{msg}"
    );
    let st = read_state(t.path()).unwrap();
    assert_eq!(st.status, "failed");
    assert_eq!(st.steps.last().unwrap().status, "failed");
    // Starting afresh in the same folder is refused; --resume continues.
    assert!(Wizard::new(
        t.path(),
        &mut Fake::new(false),
        cfg(),
        serde_json::Value::Null,
        "test".into(),
        false
    )
    .is_err());
    let mut r2 = Fake::new(false);
    let st = Wizard::new(t.path(), &mut r2, cfg(), serde_json::Value::Null, "test".into(), true)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(st.status, "done");
    let reused = st.steps.iter().filter(|s| s.resumed).count();
    assert_eq!(reused, 1 + 2 + 2 + 1, "score, 2 abinit, 2 initial refines, 1 search refine");
    // A step whose folder was removed runs again on the next resume.
    std::fs::remove_dir_all(t.path().join("initial_2000/refine")).unwrap();
    let mut r3 = Fake::new(false);
    let st3 = Wizard::new(t.path(), &mut r3, cfg(), serde_json::Value::Null, "test".into(), true)
        .unwrap()
        .run()
        .unwrap();
    let rerun: Vec<&str> = st3.steps.iter().filter(|s| !s.resumed).map(|s| s.name.as_str()).collect();
    assert_eq!(rerun, vec!["initial_2000 refine"]);
    // The resumed run equals an uninterrupted one.
    let u = tempfile::tempdir().unwrap();
    let full =
        Wizard::new(u.path(), &mut Fake::new(false), cfg(), serde_json::Value::Null, "test".into(), false)
            .unwrap()
            .run()
            .unwrap();
    assert_eq!(full.final_result.unwrap().candidate.particles, st.final_result.unwrap().candidate.particles);
    // Other settings are refused.
    let other = WizardConfig { cfar_min: 0.3, ..cfg() };
    let e = Wizard::new(t.path(), &mut Fake::new(false), other, serde_json::Value::Null, "test".into(), true)
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("other settings"));
}
