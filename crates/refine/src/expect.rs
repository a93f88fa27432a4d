//! The expectation step of one iteration for one half set: every particle of the half is
//! read, transformed, whitened and searched against that half's reference, in batches
//! over rayon; the residuals at the best poses give the next noise spectrum.

use crate::band::Band;
use crate::config::RefineError;
use crate::maps::ShellAcc;
use crate::score::{phases, Bank, Prepared, Scoring};
use crate::search::{global_level0, BankWork, SearchCtx, SearchPlan, SearchResult, SearchWork, Start};
use cryoforge_core::fft::{Rfft2, C32};
use cryoforge_core::CtfParams;
use cryoforge_io::stack::{ParticleStack, Pose};
use cryoforge_sim::project::Projector;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// How level 0 starts for this half's particles.
pub enum Level0<'a> {
    /// The shared bank × `offsets` around `centres[i]` (one per member).
    Global { bank: &'a Bank, offsets: &'a [[f64; 2]], centres: &'a [[f64; 2]] },
    /// Around `prev[i]` (one per member).
    Local { prev: &'a [Pose], rot_offsets: &'a [[f64; 3]], shift_offsets: &'a [[f64; 2]] },
}

/// Inputs of [`expectation`] shared by every particle of a half set.
pub struct Expect<'a> {
    pub stack: &'a ParticleStack,
    pub ctf: &'a [CtfParams],
    pub proj: &'a Projector,
    pub band: &'a Band,
    pub plan: &'a SearchPlan,
    pub sigma2: &'a [f64],
    /// −1 for protein-dark particles.
    pub sign: f32,
    pub batch: usize,
}

/// Search every particle of `members` (indices into the stack); results are in the
/// order of `members`. `progress(n)` reports particles finished (across calls of one
/// iteration, the caller's counter).
pub fn expectation(
    e: &Expect<'_>,
    members: &[usize],
    level0: &Level0<'_>,
    done: &AtomicUsize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(Vec<SearchResult>, ShellAcc), RefineError> {
    let d = e.stack.box_px()?;
    let apix = e.stack.apix_a()?;
    let fft = Rfft2::new(d);
    let shells = d / 2 + 1;
    let stop = AtomicBool::new(false);
    let ctx = SearchCtx { proj: e.proj, band: e.band, plan: e.plan };
    let nc = e.band.kx_max() + 1;
    let chunks: Vec<(usize, &[usize])> =
        members.chunks(e.batch).enumerate().map(|(c, m)| (c * e.batch, m)).collect();
    let parts: Vec<(Vec<SearchResult>, ShellAcc)> = chunks
        .par_iter()
        .map_init(
            || (fft.work(), SearchWork::default(), BankWork::default(), ResidualWork::default()),
            |(fw, sw, bw, rw), (first, chunk)| -> Result<(Vec<SearchResult>, ShellAcc), RefineError> {
                if stop.load(Ordering::Relaxed) {
                    return Ok((Vec::new(), ShellAcc::new(shells)));
                }
                let mut img = vec![0f32; d * d];
                let mut spec = vec![C32::default(); d * nc];
                let mut preps = Vec::with_capacity(chunk.len());
                for &i in chunk.iter() {
                    if let Err(err) = e.stack.read_image(i, &mut img) {
                        stop.store(true, Ordering::Relaxed);
                        return Err(err.into());
                    }
                    fft.forward_low(fw, &img, e.band.kx_max(), &mut spec);
                    let mut p = Prepared::default();
                    p.fill(e.band, &spec, Some(&e.ctf[i]), apix, e.sigma2, e.sign);
                    preps.push(p);
                }
                let l0: Vec<Option<Vec<_>>> = match level0 {
                    Level0::Global { bank, offsets, centres } => {
                        let refs: Vec<&Prepared> = preps.iter().collect();
                        let c = &centres[*first..*first + chunk.len()];
                        global_level0(
                            e.band,
                            bank,
                            &refs,
                            c,
                            offsets,
                            e.plan.scoring,
                            e.plan.levels[0].keep_max,
                            bw,
                        )
                        .into_iter()
                        .map(Some)
                        .collect()
                    }
                    Level0::Local { .. } => vec![None; chunk.len()],
                };
                let mut out = Vec::with_capacity(chunk.len());
                let mut acc = ShellAcc::new(shells);
                for (j, (p, l0)) in preps.iter().zip(l0).enumerate() {
                    let start = match level0 {
                        Level0::Global { bank, offsets, centres } => {
                            Start::Global { bank, offsets, centre: centres[first + j] }
                        }
                        Level0::Local { prev, rot_offsets, shift_offsets } => {
                            Start::Local { prev: prev[first + j], rot_offsets, shift_offsets }
                        }
                    };
                    let mut r = ctx.search(p, start, l0, sw)?;
                    r.scale = residual(e, p, &r.best, d, rw, &mut acc)?;
                    out.push(r);
                }
                let n = done.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
                progress(n);
                Ok((out, acc))
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(members.len());
    let mut acc = ShellAcc::new(shells);
    for (r, a) in parts {
        results.extend(r);
        acc = acc.merged(&a);
    }
    Ok((results, acc))
}

/// Scratch of [`residual`].
#[derive(Default)]
pub struct ResidualWork {
    proj: Vec<C32>,
    phase: Vec<C32>,
    model: Vec<C32>,
    tx: Vec<C32>,
    ty: Vec<C32>,
}

/// Add |X − a·M|² at the best pose to the per-shell sums (a = 1 for the likelihood, the
/// least-squares scale for [`Scoring::ScaleFree`]) and return the least-squares
/// (whitened) scale of the reference against the particle, a diagnostic of the grey scale.
fn residual(
    e: &Expect<'_>,
    p: &Prepared,
    best: &Pose,
    d: usize,
    w: &mut ResidualWork,
    acc: &mut ShellAcc,
) -> Result<f64, RefineError> {
    let n = e.band.len();
    w.proj.resize(n, C32::default());
    w.phase.resize(n, C32::default());
    e.proj.project_points(&best.rot, e.band.point_cache(), &mut w.proj)?;
    phases(e.band.entries(), d, best.shift_px, &mut w.tx, &mut w.ty, &mut w.phase);
    // Model M = −c·e^(+2πi k·t/D)·P; `phase` holds the conjugate phase.
    w.model.clear();
    w.model.extend((0..n).map(|j| w.proj[j] * w.phase[j].conj() * (-p.ctf[j])));
    let (mut num, mut den) = (0f64, 0f64);
    for j in 0..n {
        let wt = p.inv_sigma2[j] as f64;
        num += wt * (p.x[j].conj() * w.model[j]).re as f64;
        den += wt * w.model[j].norm_sqr() as f64;
    }
    let scale = if den > 0.0 { num / den } else { 0.0 };
    let a = match e.plan.scoring {
        Scoring::Likelihood => 1.0,
        Scoring::ScaleFree => scale.max(0.0) as f32,
    };
    for (j, en) in e.band.entries().iter().enumerate() {
        acc.sum[en.shell as usize] += (p.x[j] - w.model[j] * a).norm_sqr() as f64;
        acc.count[en.shell as usize] += 1.0;
    }
    Ok(scale)
}
