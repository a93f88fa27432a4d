//! Coarse-to-fine pose search of one particle (or a batch sharing a projection bank).
//!
//! Level 0 scores a grid: globally, every rotation of the HEALPix × in-plane grid of the
//! asymmetric unit (as one matrix product per batch of particles against the shared
//! [`Bank`]) × a square grid of shifts within the offset range; locally, a small cube of
//! rotations `exp([ω]ₓ)·A_prev` × shifts around the particle's previous pose. Each level
//! then keeps the candidates that hold `mass` (99.9 %) of the posterior over that level's
//! samples (at least `keep_min`, at most `keep_max`) and replaces each by itself and its
//! eight rotation children × itself and four shift children (cells halved,
//! [`crate::so3`]; the centre is re-scored so that a right pose can stay put), scored at a
//! band that doubles with the angular precision (the band a step supports), up to the
//! iteration's band at the last level. The posterior over the last level's samples gives
//! the best pose, the significant poses (for marginalised reconstruction), the maximum
//! probability and the angular and shift spreads.
//!
//! Memory is O(batch + bank): candidates and scratch per particle, the bank per
//! iteration and half set.

use crate::band::Band;
use crate::score::{
    bank_scores, phases, score_dense, shifted_interleaved, Bank, DenseWork, Prepared, Scoring,
};
use crate::so3::{child_offsets, perturb};
use cryoforge_core::fft::C32;
use cryoforge_core::Rot3;
use cryoforge_io::stack::Pose;
use cryoforge_sim::project::Projector;

/// One scored pose.
#[derive(Debug, Clone, Copy)]
pub struct Cand {
    pub rot: Rot3,
    pub shift: [f64; 2],
    /// Log-likelihood (+ log-prior) at the level's band.
    pub score: f32,
}

/// Band and pruning of one level.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LevelPlan {
    /// Band limit (cycles per box) and its number of entries.
    pub k: f64,
    pub n: usize,
    /// Candidates kept after this level.
    pub keep_min: usize,
    pub keep_max: usize,
}

/// How one iteration searches.
#[derive(Debug, Clone)]
pub struct SearchPlan {
    pub scoring: Scoring,
    /// Side of a level-0 rotation cell (radians) and shift cell (px).
    pub h0_rad: f64,
    pub s0_px: f64,
    /// `levels[0]` scores the level-0 grid; each further level refines.
    pub levels: Vec<LevelPlan>,
    /// Posterior mass the kept candidates must hold.
    pub mass: f64,
    /// Local searches: Gaussian prior on the angle from the previous pose (radians).
    pub prior_sigma_rad: Option<f64>,
    /// Most significant poses returned per particle.
    pub max_hits: usize,
}

/// Where level 0 starts.
pub enum Start<'a> {
    /// The bank's rotations × `offsets` around `centre` (px).
    Global { bank: &'a Bank, offsets: &'a [[f64; 2]], centre: [f64; 2] },
    /// `exp([ω]ₓ)·prev` for ω in `rot_offsets` × `prev.shift + shift_offsets`.
    Local { prev: Pose, rot_offsets: &'a [[f64; 3]], shift_offsets: &'a [[f64; 2]] },
}

/// What the search found for one particle.
#[derive(Debug, Clone)]
pub struct SearchResult {
    pub best: Pose,
    /// Log-likelihood (+ log-prior) of the best pose at the iteration's band.
    pub score: f64,
    /// Largest posterior probability of one sample (RELION's rlnMaxValueProbDistribution).
    pub max_prob: f64,
    /// Samples holding `mass` of the posterior (rlnNrOfSignificantSamples).
    pub n_significant: usize,
    /// Posterior RMS angle to the best pose (degrees) and RMS shift distance (px).
    pub ang_spread_deg: f64,
    pub shift_spread_px: f64,
    /// Significant poses with normalised posterior weights (best first).
    pub hits: Vec<(Pose, f32)>,
    /// Least-squares scale of the reference against the particle at the best pose (set by
    /// the expectation step).
    pub scale: f64,
}

/// Per-thread scratch of a search.
#[derive(Default)]
pub struct SearchWork {
    dense: DenseWork,
    scores: Vec<f32>,
    rots: Vec<Rot3>,
    shifts: Vec<[f64; 2]>,
    cands: Vec<Cand>,
    next: Vec<Cand>,
    groups: Vec<(Rot3, Vec<[f64; 2]>)>,
}

/// Everything a search of one half set shares.
pub struct SearchCtx<'a> {
    pub proj: &'a Projector,
    pub band: &'a Band,
    pub plan: &'a SearchPlan,
}

impl SearchCtx<'_> {
    /// Search one particle from level 0's candidates (global, from [`global_level0`]) or
    /// its previous pose (local).
    pub fn search(
        &self,
        prep: &Prepared,
        start: Start<'_>,
        level0: Option<Vec<Cand>>,
        w: &mut SearchWork,
    ) -> Result<SearchResult, cryoforge_sim::SimError> {
        let plan = self.plan;
        let prior_at = |rot: &Rot3| -> f32 {
            match (&start, plan.prior_sigma_rad) {
                (Start::Local { prev, .. }, Some(s)) => {
                    let a = rot.angle_to_deg(&prev.rot).to_radians();
                    (-(a * a) / (2.0 * s * s)) as f32
                }
                _ => 0.0,
            }
        };
        // Level 0.
        let mut cands = std::mem::take(&mut w.cands);
        cands.clear();
        match (&start, level0) {
            (_, Some(c)) => cands.extend(c),
            (Start::Local { prev, rot_offsets, shift_offsets }, None) => {
                w.rots.clear();
                w.rots.extend(rot_offsets.iter().map(|o| perturb(&prev.rot, *o)));
                w.shifts.clear();
                w.shifts
                    .extend(shift_offsets.iter().map(|o| [prev.shift_px[0] + o[0], prev.shift_px[1] + o[1]]));
                self.dense(prep, plan.levels[0].n, w)?;
                for (r, rot) in w.rots.iter().enumerate() {
                    let p = prior_at(rot);
                    for (s, t) in w.shifts.iter().enumerate() {
                        cands.push(Cand {
                            rot: *rot,
                            shift: *t,
                            score: w.scores[r * w.shifts.len() + s] + p,
                        });
                    }
                }
            }
            (Start::Global { .. }, None) => {
                return Err(cryoforge_sim::SimError::NonFinite {
                    what: "global search without level-0 scores",
                })
            }
        }
        let (mut h, mut s) = (plan.h0_rad, plan.s0_px);
        for level in 1..plan.levels.len() {
            prune(&mut cands, plan.mass, plan.levels[level - 1]);
            let n = plan.levels[level].n;
            let mut next = std::mem::take(&mut w.next);
            next.clear();
            let kids = child_offsets(h);
            let q = s / 4.0;
            // Candidates that share a rotation (level 0 keeps a rotation with several
            // shifts) share its children's projections.
            w.groups.clear();
            for c in &cands {
                match w.groups.iter_mut().find(|g| g.0 == c.rot) {
                    Some(g) => g.1.push(c.shift),
                    None => w.groups.push((c.rot, vec![c.shift])),
                }
            }
            let groups = std::mem::take(&mut w.groups);
            for (rot, centres) in &groups {
                // The cell's centre is scored again with its children, so that a pose that
                // is already right (e.g. true poses on clean data) can stay exactly put.
                w.rots.clear();
                w.rots.push(*rot);
                w.rots.extend(kids.iter().map(|o| perturb(rot, *o)));
                w.shifts.clear();
                for c in centres {
                    w.shifts.extend(
                        [[0.0, 0.0], [-q, -q], [q, -q], [-q, q], [q, q]]
                            .iter()
                            .map(|o| [c[0] + o[0], c[1] + o[1]]),
                    );
                }
                self.dense(prep, n, w)?;
                let ns = w.shifts.len();
                for (r, rot) in w.rots.iter().enumerate() {
                    let p = prior_at(rot);
                    for (si, t) in w.shifts.iter().enumerate() {
                        next.push(Cand { rot: *rot, shift: *t, score: w.scores[r * ns + si] + p });
                    }
                }
            }
            w.groups = groups;
            w.next = std::mem::replace(&mut cands, next);
            h /= 2.0;
            s /= 2.0;
        }
        let r = summarise(&mut cands, plan.mass, plan.max_hits);
        w.cands = cands;
        Ok(r)
    }

    fn dense(&self, prep: &Prepared, n: usize, w: &mut SearchWork) -> Result<(), cryoforge_sim::SimError> {
        w.scores.resize(w.rots.len() * w.shifts.len(), 0.0);
        score_dense(
            self.proj,
            self.band,
            n,
            prep,
            &w.rots,
            &w.shifts,
            self.plan.scoring,
            &mut w.dense,
            &mut w.scores,
        )
    }
}

/// Sort by score (best first) and keep the smallest prefix holding `mass` of the
/// posterior, clamped to the level's `[keep_min, keep_max]`.
pub fn prune(c: &mut Vec<Cand>, mass: f64, lv: LevelPlan) {
    c.sort_by(|a, b| b.score.total_cmp(&a.score));
    let keep = significant(c, mass).clamp(lv.keep_min.max(1), lv.keep_max.max(1));
    c.truncate(keep);
}

/// Number of leading (sorted) candidates holding `mass` of their posterior.
fn significant(c: &[Cand], mass: f64) -> usize {
    let Some(top) = c.first().map(|c| c.score as f64) else { return 0 };
    let total: f64 = c.iter().map(|x| (x.score as f64 - top).exp()).sum();
    let mut acc = 0.0;
    for (i, x) in c.iter().enumerate() {
        acc += (x.score as f64 - top).exp();
        if acc >= mass * total {
            return i + 1;
        }
    }
    c.len()
}

/// The posterior summary of the last level's samples.
fn summarise(c: &mut [Cand], mass: f64, max_hits: usize) -> SearchResult {
    c.sort_by(|a, b| b.score.total_cmp(&a.score));
    let best = c[0];
    let top = best.score as f64;
    let w: Vec<f64> = c.iter().map(|x| (x.score as f64 - top).exp()).collect();
    let total: f64 = w.iter().sum();
    let n_sig = significant(c, mass);
    let (mut a2, mut s2) = (0.0, 0.0);
    for (x, wi) in c.iter().zip(&w) {
        let p = wi / total;
        a2 += p * x.rot.angle_to_deg(&best.rot).powi(2);
        s2 += p * ((x.shift[0] - best.shift[0]).powi(2) + (x.shift[1] - best.shift[1]).powi(2));
    }
    // Significant poses for the reconstruction: within `mass`, at most `max_hits`, and at
    // least 1 % of the best's weight (lighter ones change a map by less than its noise).
    let nh = n_sig.min(max_hits.max(1)).min(w.iter().take_while(|&&x| x >= 0.01).count()).max(1);
    let hw: f64 = w[..nh].iter().sum();
    let hits = c[..nh]
        .iter()
        .zip(&w)
        .map(|(x, wi)| (Pose { rot: x.rot, shift_px: x.shift }, (wi / hw) as f32))
        .collect();
    SearchResult {
        best: Pose { rot: best.rot, shift_px: best.shift },
        score: top,
        max_prob: 1.0 / total,
        n_significant: n_sig,
        ang_spread_deg: a2.sqrt(),
        shift_spread_px: s2.sqrt(),
        hits,
        scale: f64::NAN,
    }
}

/// Scratch for [`global_level0`].
#[derive(Default)]
pub struct BankWork {
    y: Vec<f32>,
    q: Vec<f32>,
    cross: Vec<f32>,
    norms: Vec<f32>,
    phase: Vec<C32>,
    tx: Vec<C32>,
    ty: Vec<C32>,
}

/// Rotations per matrix product of [`global_level0`] (keeps the score block in cache).
const BANK_CHUNK: usize = 256;

/// Level 0 of a global search for a batch of particles: every bank rotation × every
/// offset around each particle's centre, as two matrix products per chunk of rotations;
/// returns each particle's best `keep_max` samples (unpruned by mass).
pub fn global_level0(
    band: &Band,
    bank: &Bank,
    preps: &[&Prepared],
    centres: &[[f64; 2]],
    offsets: &[[f64; 2]],
    scoring: Scoring,
    keep_max: usize,
    w: &mut BankWork,
) -> Vec<Vec<Cand>> {
    let n = bank.n;
    let ns = offsets.len();
    let entries = &band.entries()[..n];
    w.y.resize(preps.len() * ns * 2 * n, 0.0);
    w.q.resize(preps.len() * n, 0.0);
    w.phase.resize(n, C32::default());
    for (b, p) in preps.iter().enumerate() {
        for (s, o) in offsets.iter().enumerate() {
            let t = [centres[b][0] + o[0], centres[b][1] + o[1]];
            phases(entries, band.box_px(), t, &mut w.tx, &mut w.ty, &mut w.phase);
            let row = (b * ns + s) * 2 * n;
            shifted_interleaved(&p.base[..n], &w.phase, &mut w.y[row..row + 2 * n]);
        }
        w.q[b * n..(b + 1) * n].copy_from_slice(&p.q[..n]);
    }
    let mut tops: Vec<TopM> = (0..preps.len()).map(|_| TopM::new(keep_max)).collect();
    let mut r0 = 0;
    while r0 < bank.len() {
        let nr = BANK_CHUNK.min(bank.len() - r0);
        bank_scores(bank, r0, nr, &w.y, &w.q, ns, scoring, &mut w.cross, &mut w.norms);
        for (b, top) in tops.iter_mut().enumerate() {
            for s in 0..ns {
                let row = &w.cross[(b * ns + s) * nr..(b * ns + s + 1) * nr];
                for (r, &v) in row.iter().enumerate() {
                    if v > top.min {
                        top.push(v, (r0 + r) as u32, s as u32);
                    }
                }
            }
        }
        r0 += nr;
    }
    tops.into_iter()
        .enumerate()
        .map(|(b, t)| {
            t.items
                .into_iter()
                .map(|(score, r, s)| Cand {
                    rot: bank.rots[r as usize],
                    shift: [centres[b][0] + offsets[s as usize][0], centres[b][1] + offsets[s as usize][1]],
                    score,
                })
                .collect()
        })
        .collect()
}

/// The best `cap` (score, rotation, shift) triples seen.
struct TopM {
    cap: usize,
    items: Vec<(f32, u32, u32)>,
    /// Score to beat (−∞ until full).
    min: f32,
}

impl TopM {
    fn new(cap: usize) -> TopM {
        TopM { cap: cap.max(1), items: Vec::with_capacity(cap.max(1)), min: f32::NEG_INFINITY }
    }

    #[inline]
    fn push(&mut self, v: f32, r: u32, s: u32) {
        if self.items.len() < self.cap {
            self.items.push((v, r, s));
            if self.items.len() == self.cap {
                self.min = self.items.iter().map(|x| x.0).fold(f32::INFINITY, f32::min);
            }
            return;
        }
        if let Some(slot) = self.items.iter_mut().min_by(|a, b| a.0.total_cmp(&b.0)) {
            *slot = (v, r, s);
        }
        self.min = self.items.iter().map(|x| x.0).fold(f32::INFINITY, f32::min);
    }
}

/// Shift offsets of a square grid of `step` within a disc of `range` px (always ≥ the
/// centre).
pub fn shift_grid(range: f64, step: f64) -> Vec<[f64; 2]> {
    if range <= 0.0 || step <= 0.0 {
        return vec![[0.0, 0.0]];
    }
    let m = (range / step).floor() as i64;
    let mut out = Vec::new();
    for y in -m..=m {
        for x in -m..=m {
            let (fx, fy) = (x as f64 * step, y as f64 * step);
            if fx * fx + fy * fy <= range * range + 1e-9 {
                out.push([fx, fy]);
            }
        }
    }
    out
}

/// Rotation offsets of a cube grid: ω ∈ {−m..m}³·step (radians).
pub fn rotation_cube(m: i64, step: f64) -> Vec<[f64; 3]> {
    let mut out = Vec::new();
    for z in -m..=m {
        for y in -m..=m {
            for x in -m..=m {
                out.push([x as f64 * step, y as f64 * step, z as f64 * step]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryoforge_core::EulerRelion;

    fn cand(deg: f64, score: f32) -> Cand {
        Cand { rot: EulerRelion::new(0.0, 0.0, deg).to_rot(), shift: [0.0, 0.0], score }
    }

    /// The posterior summary: best first, weights of the significant poses sum to 1, the
    /// maximum probability is the best's share of the whole posterior, poses under 1 % of
    /// the best are not inserted, and the spread is the posterior RMS angle.
    #[test]
    fn posterior_summary_of_scored_samples() {
        let ln2 = std::f32::consts::LN_2;
        // Weights 1, 1/2, 1/4 and ~0 (e^-20): total 1.75.
        let mut c = vec![cand(2.0, -ln2), cand(0.0, 0.0), cand(4.0, -2.0 * ln2), cand(30.0, -20.0)];
        let r = summarise(&mut c, 0.999, 8);
        assert!(r.best.rot.angle_to_deg(&EulerRelion::new(0.0, 0.0, 0.0).to_rot()) < 1e-9);
        assert!((r.max_prob - 1.0 / 1.75).abs() < 1e-6, "{}", r.max_prob);
        assert_eq!(r.n_significant, 3);
        assert_eq!(r.hits.len(), 3);
        let sum: f32 = r.hits.iter().map(|h| h.1).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!((r.hits[0].1 - 1.0 / 1.75).abs() < 1e-6);
        let spread = ((0.5 * 4.0 + 0.25 * 16.0) / 1.75f64).sqrt();
        assert!((r.ang_spread_deg - spread).abs() < 1e-3, "{} vs {spread}", r.ang_spread_deg);
        // Pruning keeps the mass, within [keep_min, keep_max].
        let mut c = vec![cand(0.0, 0.0), cand(2.0, -ln2), cand(4.0, -2.0 * ln2), cand(30.0, -20.0)];
        prune(&mut c, 0.999, LevelPlan { k: 1.0, n: 1, keep_min: 1, keep_max: 8 });
        assert_eq!(c.len(), 3);
        prune(&mut c, 0.999, LevelPlan { k: 1.0, n: 1, keep_min: 1, keep_max: 2 });
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn shift_grid_is_a_disc_and_the_rotation_cube_has_its_centre() {
        let g = shift_grid(5.0, 2.0);
        assert!(g.contains(&[0.0, 0.0]) && g.iter().all(|t| t[0].hypot(t[1]) <= 5.0 + 1e-9));
        assert_eq!(g.len(), 21);
        let c = rotation_cube(1, 0.1);
        assert_eq!(c.len(), 27);
        assert!(c.contains(&[0.0, 0.0, 0.0]));
    }
}
