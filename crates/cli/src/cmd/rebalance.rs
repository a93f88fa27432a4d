//! `cryoforge rebalance`: remove particles from over-represented viewing directions
//! (cryoSPARC's "Rebalance Orientations").

use crate::common::{ensure_parent, write_json_atomic, Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_io::{export, stack::FileKind, stack::Source};
use cryoforge_refine::orient::{azimuth_elevation_deg, viewing_direction};
use cryoforge_refine::rebalance::{rebalance, RebalanceConfig};
use serde_json::json;
use std::path::PathBuf;

/// Remove particles from over-represented viewing directions (as cryoSPARC's Rebalance
/// Orientations).
///
/// Each particle's viewing direction (from its refined pose) goes to the nearest of --bins
/// axes of a Fibonacci sphere; bins are ranked by occupancy and every bin above the
/// --percentile-th percentile loses particles until it holds as many as the bin at that
/// percentile. Within a bin the excluded particles are random (--seed), or the lowest by
/// --keep-best COLUMN (e.g. rlnMaxValueProbDistribution or rlnLogLikeliContribution from
/// `cryoforge refine`). Running it twice with the same settings changes nothing.
///
/// Writes OUT (.star or .cs, every input column kept), optionally the excluded particles
/// (--excluded) and a summary (--summary JSON; --json prints it).
///
/// Examples:
///   cryoforge rebalance refine/particles.star -o rebalanced.star
///   cryoforge rebalance J42_particles.cs -o rebalanced.cs --percentile 70 --bins 300
///   cryoforge rebalance refine/particles.star -o best.star --keep-best rlnMaxValueProbDistribution --excluded dropped.star
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub input: ParticleArgs,
    /// Output file: .star or .cs.
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the excluded particles (.star or .cs).
    #[arg(long, value_name = "FILE")]
    pub excluded: Option<PathBuf>,
    /// Number of viewing-direction bins.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub bins: usize,
    /// Bins above this percentile of occupancy are capped at it (0–100).
    #[arg(long, default_value_t = 80.0, value_name = "P")]
    pub percentile: f64,
    /// Within an over-populated bin keep the particles with the highest value of this STAR
    /// column (default: a random choice).
    #[arg(long, value_name = "COLUMN")]
    pub keep_best: Option<String>,
    /// Seed of the random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a JSON summary (bins, cap, counts) here.
    #[arg(long, value_name = "JSON")]
    pub summary: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    for p in std::iter::once(&a.out).chain(a.excluded.as_ref()) {
        if !matches!(cryoforge_io::stack::file_kind(p), FileKind::Star | FileKind::Cs) {
            bail!("{}: output must end in .star or .cs", p.display());
        }
    }
    if a.bins < 2 {
        bail!("--bins {}: need at least 2 bins", a.bins);
    }
    if !(0.0..=100.0).contains(&a.percentile) {
        bail!("--percentile {}: must be between 0 and 100", a.percentile);
    }
    let s = a.input.load(ctx)?;
    let path = a.input.particles.clone();
    let poses = s.poses.as_ref().with_context(|| {
        format!(
            "{}: the particles have no poses; rebalancing needs refined poses (e.g. from `cryoforge refine`)",
            path.display()
        )
    })?;
    if poses.is_empty() {
        bail!("{}: no particles", path.display());
    }
    let score = match &a.keep_best {
        None => None,
        Some(col) => {
            let Source::Star(rp) = &s.source else {
                bail!("--keep-best {col}: only a RELION STAR input has named columns");
            };
            if !rp.has_column(col) {
                bail!("{}: no column {col} (--keep-best)", path.display());
            }
            let mut v = Vec::with_capacity(s.len());
            for &row in &s.source_index {
                v.push(rp.f64(row, col)?);
            }
            Some(v)
        }
    };
    let dirs: Vec<[f64; 3]> = poses.iter().map(|p| viewing_direction(&p.rot)).collect();
    let cfg = RebalanceConfig { n_bins: a.bins, percentile: a.percentile, seed: a.seed };
    let r = rebalance(&dirs, score.as_deref(), &cfg);
    let write = |idx: &[usize], p: &PathBuf| -> Result<()> {
        let mut sub = s.clone();
        sub.select(idx)?;
        ensure_parent(p)?;
        match cryoforge_io::stack::file_kind(p) {
            FileKind::Star => export::write_star(&sub, p)?,
            _ => export::write_cs(&sub, p)?,
        }
        Ok(())
    };
    let occupied = |c: &[usize]| c.iter().filter(|&&x| x > 0).count();
    let max = |c: &[usize]| c.iter().copied().max().unwrap_or(0);
    let summary = json!({
        "input": path.display().to_string(),
        "particles": s.len(),
        "kept": r.kept.len(),
        "excluded": r.excluded.len(),
        "bins": a.bins,
        "percentile": a.percentile,
        "cap": r.cap,
        "occupied_bins": occupied(&r.counts_before),
        "max_bin_before": max(&r.counts_before),
        "max_bin_after": max(&r.counts_after),
        "keep_best": a.keep_best,
        "seed": a.seed,
        "bin_axes_azimuth_elevation_deg": cryoforge_refine::orient::fibonacci_sphere(a.bins).iter().map(|d| {
            let (az, el) = azimuth_elevation_deg(*d);
            [az, el]
        }).collect::<Vec<_>>(),
        "counts_before": r.counts_before,
        "counts_after": r.counts_after,
    });
    write(&r.kept, &a.out)?;
    if let Some(p) = &a.excluded {
        write(&r.excluded, p)?;
    }
    if let Some(p) = &a.summary {
        ensure_parent(p)?;
        write_json_atomic(p, &summary)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    ctx.done(format!(
        "kept {} of {} particles (bins capped at {} particles, the {}th percentile of {} bins); wrote {}",
        r.kept.len(),
        s.len(),
        r.cap,
        a.percentile,
        a.bins,
        a.out.display()
    ));
    Ok(())
}
