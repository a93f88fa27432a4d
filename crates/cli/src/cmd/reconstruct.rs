//! `cryoforge reconstruct`: homogeneous reconstruction with gold-standard FSC.

use crate::common::{ensure_dir, write_json_atomic, Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_core::filter::{bfactor_volume, lowpass_volume, spherical_mask, Edge};
use cryoforge_core::fsc::{fsc_volumes, FscCurve};
use cryoforge_io::mrc::{self, MrcFile};
use cryoforge_recon::{reconstruct, CtfCorrection, HalfSplit, ReconConfig, Regularisation, Window};
use cryoforge_report::{line_plot_png, LinePlot, Series};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Reconstruct a map from particles with known poses: CTF-weighted Fourier insertion into
/// a padded grid, half maps from a random (seeded) or given split, FSC-based (SSNR) or
/// Tikhonov regularisation, gridding correction, optional point-group symmetry.
///
/// Writes OUT/map.mrc, half_a.mrc, half_b.mrc, fsc.csv, fsc.png, summary.json and
/// report.html (a self-contained HTML report; see `cryoforge report`).
/// Particles are expected protein-bright (RELION); --invert for dark ones.
///
/// Examples:
///   cryoforge reconstruct refined.star --out recon/
///   cryoforge reconstruct particles.mrcs --poses poses.pkl --ctf ctf.pkl --out recon/
///   cryoforge reconstruct J24_particles.cs --datadir /data/P12 --symmetry C4 --out recon/
///   cryoforge reconstruct sim/particles.star --reference truth.mrc --out recon/
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub input: ParticleArgs,
    /// Output folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Oversampling of the Fourier grid.
    #[arg(long, default_value_t = 2.0)]
    pub box_pad: f64,
    /// CTF correction: wiener, phase-flip or none.
    #[arg(long, default_value = "wiener", value_parser = ["wiener", "phase-flip", "none"])]
    pub ctf_correction: String,
    /// Regularisation: ssnr (from the half-map FSC, as RELION) or tikhonov.
    #[arg(long, default_value = "ssnr", value_parser = ["ssnr", "tikhonov"])]
    pub reg: String,
    /// Tikhonov constant relative to the mean weight (with --reg tikhonov).
    #[arg(long, default_value_t = 0.01)]
    pub tikhonov: f64,
    /// Half sets: random (seeded) or star (rlnRandomSubset / alignments3D/split).
    #[arg(long, default_value = "random", value_parser = ["random", "star"])]
    pub half_split: String,
    /// Seed of the random half split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Point-group symmetry: C1, Cn, Dn, T, O or I.
    #[arg(long, default_value = "C1")]
    pub symmetry: String,
    /// Particles are protein-dark (flip their sign).
    #[arg(long)]
    pub invert: bool,
    /// Low-pass the final map to this resolution (Å).
    #[arg(long, value_name = "A")]
    pub lowpass_a: Option<f64>,
    /// Apply a B-factor (Å²) to the final map (negative sharpens).
    #[arg(long, value_name = "A2")]
    pub bfactor: Option<f64>,
    /// Soft spherical real-space window on the half maps and the map, as fractions of the
    /// half box: INNER,OUTER (1 inside INNER, raised cosine to 0 at OUTER; cryoSPARC's
    /// defaults), or `none`. It removes the noise of the box corners, where a particle that
    /// fits the box has no density; the unmasked FSC is that of the windowed half maps.
    #[arg(long, default_value = "0.85,0.99", value_name = "INNER,OUTER|none")]
    pub window: String,
    /// Mask for the masked FSC (MRC, same box); default: a soft sphere of 0.45·box.
    #[arg(long, value_name = "MRC")]
    pub mask: Option<PathBuf>,
    /// A reference map (same box) to report the FSC against.
    #[arg(long, value_name = "MRC")]
    pub reference: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    a.symmetry.parse::<cryoforge_core::symmetry::Symmetry>().map_err(anyhow::Error::msg)?;
    if !(a.box_pad >= 1.0 && a.box_pad <= 4.0) {
        bail!("--box-pad {} must lie in [1, 4]", a.box_pad);
    }
    let s = a.input.load(ctx)?;
    let d = s.box_px()?;
    let apix = s.apix_a()?;
    let read_aux = |p: &Path, what: &str| -> Result<Vec<f32>> {
        let f = MrcFile::open(p)?;
        if (f.nx(), f.ny(), f.nz()) != (d, d, d) {
            bail!("{}: {what} is {}×{}×{}, the particles' box is {d}", p.display(), f.nx(), f.ny(), f.nz());
        }
        Ok(f.read_volume()?)
    };
    let mask = match &a.mask {
        Some(p) => read_aux(p, "mask")?,
        None => spherical_mask(d, 0.45 * d as f64 - 3.0, 3.0),
    };
    let reference = a.reference.as_ref().map(|p| read_aux(p, "reference")).transpose()?;
    let cfg = ReconConfig {
        pad: a.box_pad,
        ctf_correction: match a.ctf_correction.as_str() {
            "phase-flip" => CtfCorrection::PhaseFlip,
            "none" => CtfCorrection::None,
            _ => CtfCorrection::Wiener,
        },
        regularisation: if a.reg == "tikhonov" {
            Regularisation::Tikhonov(a.tikhonov)
        } else {
            Regularisation::Ssnr
        },
        half_split: if a.half_split == "star" { HalfSplit::Star } else { HalfSplit::Random { seed: a.seed } },
        symmetry: a.symmetry.clone(),
        invert: a.invert,
        window: parse_window(&a.window)?,
        ..Default::default()
    };
    let root = cryoforge_core::dist::world().is_root();
    if root {
        ensure_dir(&a.out)?;
    }
    let t0 = std::time::Instant::now();
    let bar = ctx.progress(s.len() as u64, "reconstructing");
    // Collective across MPI ranks (each inserts its block); rank 0 writes the results.
    let mut r = reconstruct(&s, &cfg, &|n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    if !root {
        return Ok(());
    }
    if let Some(lp) = a.lowpass_a {
        lowpass_volume(&mut r.map, d, apix, lp, Edge::Cosine { width_per_a: 0.2 / lp });
    }
    if let Some(b) = a.bfactor {
        bfactor_volume(&mut r.map, d, apix, b);
    }
    let mask_apply = |v: &[f32]| -> Vec<f32> { v.iter().zip(&mask).map(|(x, m)| x * m).collect() };
    let fsc_masked = fsc_volumes(&mask_apply(&r.half_a), &mask_apply(&r.half_b), d, apix);
    let fsc_ref = reference.as_ref().map(|v| fsc_volumes(&r.map, v, d, apix));
    let origin = [0.0f32; 3];
    mrc::write_volume(a.out.join("map.mrc"), &r.map, [d, d, d], apix as f32, origin)?;
    mrc::write_volume(a.out.join("half_a.mrc"), &r.half_a, [d, d, d], apix as f32, origin)?;
    mrc::write_volume(a.out.join("half_b.mrc"), &r.half_b, [d, d, d], apix as f32, origin)?;
    write_fsc_csv(&a.out.join("fsc.csv"), &r.fsc, &fsc_masked, fsc_ref.as_ref())?;
    write_fsc_png(&a.out.join("fsc.png"), &r.fsc, &fsc_masked, fsc_ref.as_ref())?;
    let secs = t0.elapsed().as_secs_f64();
    let summary = json!({
        "particles": s.len(),
        "half_a": r.n_half[0],
        "half_b": r.n_half[1],
        "box_px": d,
        "apix_A": apix,
        "symmetry": a.symmetry,
        "ctf_correction": a.ctf_correction,
        "regularisation": a.reg,
        "half_split": a.half_split,
        "seed": a.seed,
        "window": cfg.window.map(|w| [w.inner, w.outer]),
        "resolution_0.143_unmasked_A": r.fsc.resolution_at(0.143),
        "resolution_0.143_masked_A": fsc_masked.resolution_at(0.143),
        "resolution_0.5_vs_reference_A": fsc_ref.as_ref().map(|f| f.resolution_at(0.5)),
        "seconds": secs,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "version": env!("CARGO_PKG_VERSION"),
    });
    write_json_atomic(&a.out.join("summary.json"), &summary)?;
    let report = a.out.join("report.html");
    crate::cmd::report::write(&a.out, &report)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    ctx.done(format!(
        "reconstructed {} particles in {secs:.1} s: {:.2} Å (FSC 0.143, masked); results in {} (report: {})",
        s.len(),
        fsc_masked.resolution_at(0.143),
        a.out.display(),
        report.display()
    ));
    Ok(())
}

fn parse_window(s: &str) -> Result<Option<Window>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let num = |t: &str| -> Result<f64> {
        t.parse::<f64>()
            .with_context(|| format!("--window {s:?}: {t:?} is not a number (expected INNER,OUTER or none)"))
    };
    match parts.as_slice() {
        [i, o] => {
            let w = Window { inner: num(i)?, outer: num(o)? };
            w.validate().map_err(|e| anyhow::anyhow!("--window {s:?}: {e}"))?;
            Ok(Some(w))
        }
        _ => bail!("--window {s:?}: expected INNER,OUTER (e.g. 0.85,0.99) or none"),
    }
}

fn write_fsc_csv(path: &Path, un: &FscCurve, masked: &FscCurve, reference: Option<&FscCurve>) -> Result<()> {
    let mut t = String::from("shell,frequency_per_A,resolution_A,fsc_unmasked,fsc_masked");
    if reference.is_some() {
        t.push_str(",fsc_reference");
    }
    t.push('\n');
    for k in 0..un.fsc.len() {
        let f = un.freq(k);
        let res = if f > 0.0 { 1.0 / f } else { f64::INFINITY };
        t.push_str(&format!("{k},{f:.6},{res:.4},{:.6},{:.6}", un.fsc[k], masked.fsc[k]));
        if let Some(r) = reference {
            t.push_str(&format!(",{:.6}", r.fsc[k]));
        }
        t.push('\n');
    }
    cryoforge_io::atomic::write_bytes_atomic(path, t.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn write_fsc_png(path: &Path, un: &FscCurve, masked: &FscCurve, reference: Option<&FscCurve>) -> Result<()> {
    let mut p = LinePlot::new("Fourier shell correlation", "spatial frequency (1/Å)", "FSC");
    let pts = |c: &FscCurve| (1..c.fsc.len()).map(|k| (c.freq(k), c.fsc[k])).collect::<Vec<_>>();
    p.series.push(Series { name: "half maps, unmasked".into(), points: pts(un) });
    p.series.push(Series { name: "half maps, masked".into(), points: pts(masked) });
    if let Some(r) = reference {
        p.series.push(Series { name: "map vs reference".into(), points: pts(r) });
    }
    p.hlines.push((0.143, "0.143".into()));
    p.hlines.push((0.5, "0.5".into()));
    p.y_range = Some((-0.1, 1.05));
    let png = line_plot_png(&p)?;
    cryoforge_io::atomic::write_bytes_atomic(path, &png)?;
    Ok(())
}
