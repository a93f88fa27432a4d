//! The run directory of a refinement (every file written atomically):
//!
//! ```text
//! DIR/run.json                 configuration, particle set, geometry, command provenance
//! DIR/iterations.jsonl         one IterationStats per finished iteration
//! DIR/iter_NNN/                half_a.mrc, half_b.mrc (unfiltered), reference_a.mrc,
//!                              reference_b.mrc (filtered: the next references), fsc.csv,
//!                              particles.star, poses.pkl (float64, for --resume), state.json
//! DIR/particles.star           RELION 3.1 STAR: every input column, refined angles and
//!                              origins, rlnRandomSubset, rlnLogLikeliContribution,
//!                              rlnMaxValueProbDistribution, rlnNrOfSignificantSamples
//! DIR/poses.pkl                cryoDRGN poses (rot = A, trans = shift / D)
//! DIR/map.mrc, half_a.mrc, half_b.mrc, mask.mrc, fsc.csv, scores.csv, summary.json
//! ```

use crate::config::{RefineConfig, RefineError};
use crate::driver::{IterationStats, Mode, RefineOutcome, Setup, State};
use crate::search::SearchResult;
use cryoforge_core::fsc::FscCurve;
use cryoforge_core::Rot3;
use cryoforge_io::atomic::write_bytes_atomic;
use cryoforge_io::export;
use cryoforge_io::mrc;
use cryoforge_io::pkl::{self, FloatDtype};
use cryoforge_io::stack::{Origin, ParticleStack, Pose};
use cryoforge_recon::Reconstruction;
use std::path::{Path, PathBuf};

fn io_err(path: &Path, e: impl std::fmt::Display) -> RefineError {
    RefineError::Input(format!("{}: {e}", path.display()))
}

fn ensure_dir(p: &Path) -> Result<(), RefineError> {
    std::fs::create_dir_all(p).map_err(|e| io_err(p, format!("cannot create the folder: {e}")))
}

fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<(), RefineError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| io_err(path, e))?;
    Ok(write_bytes_atomic(path, text.as_bytes())?)
}

pub(crate) fn iter_dir(out: &Path, iter: usize) -> PathBuf {
    out.join(format!("iter_{iter:03}"))
}

pub(crate) fn write_run(out: &Path, cfg: &RefineConfig, s: &Setup<'_>) -> Result<(), RefineError> {
    ensure_dir(out)?;
    let run = serde_json::json!({
        "schema": 1,
        "program": "cryoforge refine",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "particles": s.stack.path.display().to_string(),
        "n_particles": s.stack.len(),
        "half_sizes": [s.members[0].len(), s.members[1].len()],
        "box_px": s.d,
        "apix_A": s.apix,
        "particle_diameter_A": s.diameter_a,
        "directions_in_asymmetric_unit": s.dirs.len(),
        "config": cfg,
    });
    write_json(&out.join("run.json"), &run)?;
    mrc::write_volume(out.join("mask.mrc"), &s.mask, [s.d; 3], s.apix as f32, [0.0; 3])?;
    Ok(())
}

/// The particle set with the given poses and half sets (for STAR and pickle output).
fn with_poses(s: &ParticleStack, poses: &[Pose], halves: &[u8]) -> ParticleStack {
    let mut o = s.clone();
    o.poses = Some(poses.to_vec());
    o.poses_origin = Some(Origin::Computed);
    o.half_subset = Some(halves.iter().map(|h| h + 1).collect());
    o
}

fn write_star(
    path: &Path,
    s: &ParticleStack,
    halves: &[u8],
    results: Option<&[SearchResult]>,
) -> Result<(), RefineError> {
    let mut extra: Vec<(&str, Vec<String>)> =
        vec![("rlnRandomSubset", halves.iter().map(|h| (h + 1).to_string()).collect())];
    if let Some(r) = results {
        extra.push(("rlnLogLikeliContribution", r.iter().map(|x| export::fmt(x.score)).collect()));
        extra.push(("rlnMaxValueProbDistribution", r.iter().map(|x| export::fmt(x.max_prob)).collect()));
        extra.push(("rlnNrOfSignificantSamples", r.iter().map(|x| x.n_significant.to_string()).collect()));
    }
    Ok(export::write_star_with(s, path, &extra)?)
}

pub(crate) fn write_fsc_csv(path: &Path, un: &FscCurve, masked: &FscCurve) -> Result<(), RefineError> {
    let mut t = String::from("shell,frequency_per_A,resolution_A,fsc_unmasked,fsc_masked\n");
    for k in 0..un.fsc.len() {
        let f = un.freq(k);
        let res = if f > 0.0 { 1.0 / f } else { f64::INFINITY };
        t.push_str(&format!(
            "{k},{f:.6},{res:.4},{:.6},{:.6}\n",
            un.fsc[k],
            masked.fsc.get(k).copied().unwrap_or(0.0)
        ));
    }
    Ok(write_bytes_atomic(path, t.as_bytes())?)
}

fn write_poses(path: &Path, poses: &[Pose], d: usize, dtype: FloatDtype) -> Result<(), RefineError> {
    let rots: Vec<[[f64; 3]; 3]> = poses.iter().map(|p| p.rot.0).collect();
    let trans: Vec<[f64; 2]> =
        poses.iter().map(|p| [p.shift_px[0] / d as f64, p.shift_px[1] / d as f64]).collect();
    Ok(pkl::write_poses_pkl_as(path, &rots, Some(&trans), dtype)?)
}

/// One iteration's folder (state.json last, so a folder with it is complete).
pub(crate) fn write_iteration(
    out: &Path,
    s: &Setup<'_>,
    state: &State,
    results: &[SearchResult],
    recon: &Reconstruction,
    fsc_masked: &FscCurve,
) -> Result<(), RefineError> {
    let dir = iter_dir(out, state.iter);
    ensure_dir(&dir)?;
    let (d, apix) = (s.d, s.apix as f32);
    mrc::write_volume(dir.join("half_a.mrc"), &recon.half_a, [d; 3], apix, [0.0; 3])?;
    mrc::write_volume(dir.join("half_b.mrc"), &recon.half_b, [d; 3], apix, [0.0; 3])?;
    // The Wiener-filtered halves the next iteration aligns against (before the low-resolution join).
    mrc::write_volume(dir.join("reference_a.mrc"), &recon.half_a_filtered, [d; 3], apix, [0.0; 3])?;
    mrc::write_volume(dir.join("reference_b.mrc"), &recon.half_b_filtered, [d; 3], apix, [0.0; 3])?;
    write_fsc_csv(&dir.join("fsc.csv"), &recon.fsc, fsc_masked)?;
    let poses: Vec<Pose> = results.iter().map(|r| r.best).collect();
    write_star(
        &dir.join("particles.star"),
        &with_poses(s.stack, &poses, &s.halves),
        &s.halves,
        Some(results),
    )?;
    write_poses(&dir.join("poses.pkl"), &poses, d, FloatDtype::F64)?;
    write_json(&dir.join("state.json"), state)
}

pub(crate) fn write_iterations(out: &Path, its: &[IterationStats]) -> Result<(), RefineError> {
    let mut t = String::new();
    for it in its {
        t.push_str(&serde_json::to_string(it).map_err(|e| io_err(out, e))?);
        t.push('\n');
    }
    Ok(write_bytes_atomic(&out.join("iterations.jsonl"), t.as_bytes())?)
}

/// The state after the last finished iteration of `out`, with its poses and references.
pub(crate) fn load_state(
    out: &Path,
    s: &Setup<'_>,
    its: &mut Vec<IterationStats>,
) -> Result<State, RefineError> {
    let path = out.join("iterations.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| io_err(&path, format!("cannot resume: no finished iteration to continue from ({e})")))?;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let it: IterationStats =
            serde_json::from_str(line).map_err(|e| io_err(&path, format!("line {}: {e}", i + 1)))?;
        its.push(it);
    }
    let last = its.last().ok_or_else(|| io_err(&path, "cannot resume: no finished iteration"))?;
    if last.mode == Mode::Final {
        return Err(io_err(out, "the refinement has already finished (its final iteration is done)"));
    }
    let dir = iter_dir(out, last.iter);
    let sp = dir.join("state.json");
    let st = std::fs::read_to_string(&sp).map_err(|e| io_err(&sp, format!("cannot resume: {e}")))?;
    let mut state: State = serde_json::from_str(&st).map_err(|e| io_err(&sp, e))?;
    let pp = pkl::read_poses_pkl(dir.join("poses.pkl"))?;
    let trans = pp.trans.unwrap_or_default();
    if pp.rots.len() != s.stack.len() || trans.len() != s.stack.len() {
        return Err(io_err(
            &dir.join("poses.pkl"),
            format!("{} poses for {} particles", pp.rots.len(), s.stack.len()),
        ));
    }
    let d = s.d as f64;
    state.poses = Some(
        pp.rots
            .iter()
            .zip(&trans)
            .map(|(r, t)| Pose { rot: Rot3(*r), shift_px: [t[0] * d, t[1] * d] })
            .collect(),
    );
    let read = |name: &str| -> Result<Vec<f32>, RefineError> {
        let f = mrc::MrcFile::open(dir.join(name))?;
        Ok(f.read_volume()?)
    };
    let (mut a, mut b) = (read("reference_a.mrc")?, read("reference_b.mrc")?);
    if a.len() != s.d.pow(3) || b.len() != s.d.pow(3) {
        return Err(io_err(&dir, "half maps of another box than the particles"));
    }
    crate::maps::join_halves_below(&mut a, &mut b, s.d, s.apix, s.cfg.low_resol_join_halves_a);
    state.refs = [a, b];
    its.truncate(state.iter);
    Ok(state)
}

/// The final outputs.
pub(crate) fn write_final(
    out: &Path,
    s: &Setup<'_>,
    o: &RefineOutcome,
    results: &[SearchResult],
) -> Result<(), RefineError> {
    let (d, apix) = (s.d, s.apix as f32);
    mrc::write_volume(out.join("map.mrc"), &o.recon.map, [d; 3], apix, [0.0; 3])?;
    mrc::write_volume(out.join("half_a.mrc"), &o.recon.half_a, [d; 3], apix, [0.0; 3])?;
    mrc::write_volume(out.join("half_b.mrc"), &o.recon.half_b, [d; 3], apix, [0.0; 3])?;
    write_fsc_csv(&out.join("fsc.csv"), &o.recon.fsc, &o.fsc_masked)?;
    let refined = with_poses(s.stack, &o.poses, &o.halves);
    write_star(&out.join("particles.star"), &refined, &o.halves, Some(results))?;
    write_poses(&out.join("poses.pkl"), &o.poses, d, FloatDtype::F32)?;
    let mut t =
        String::from("index,half,log_likelihood,max_prob,n_significant,angular_spread_deg,shift_spread_px\n");
    for (i, (st, h)) in o.stats.iter().zip(&o.halves).enumerate() {
        t.push_str(&format!(
            "{},{},{:.6},{:.6},{},{:.4},{:.4}\n",
            s.stack.source_index[i],
            h + 1,
            st.score,
            st.max_prob,
            st.n_significant,
            st.ang_spread_deg,
            st.shift_spread_px
        ));
    }
    write_bytes_atomic(&out.join("scores.csv"), t.as_bytes())?;
    let last = o.iterations.last();
    let summary = serde_json::json!({
        "particles": s.stack.len(),
        "half_a": o.halves.iter().filter(|&&h| h == 0).count(),
        "half_b": o.halves.iter().filter(|&&h| h == 1).count(),
        "box_px": d,
        "apix_A": s.apix,
        "symmetry": s.cfg.symmetry,
        "particle_diameter_A": o.diameter_a,
        "iterations": o.iterations.len(),
        "resolution_0.143_masked_A": o.fsc_masked.resolution_at(0.143),
        "resolution_0.5_masked_A": o.fsc_masked.resolution_at(0.5),
        "resolution_0.143_unmasked_A": o.recon.fsc.resolution_at(0.143),
        "final_fine_step_deg": last.map(|l| l.fine_step_deg),
        "truth_median_angle_deg": last.and_then(|l| l.truth_median_angle_deg),
        "truth_median_shift_px": last.and_then(|l| l.truth_median_shift_px),
        "truth_fraction_over_30deg": last.and_then(|l| l.truth_fraction_over_30deg),
        "seconds": o.iterations.iter().map(|i| i.search_seconds + i.reconstruct_seconds).sum::<f64>(),
        "assignment": s.cfg.assignment,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "version": env!("CARGO_PKG_VERSION"),
    });
    write_json(&out.join("summary.json"), &summary)
}
