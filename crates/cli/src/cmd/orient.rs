//! `cryoforge orient`: orientation diagnostics of two half maps (conical FSC, cFAR, 3DFSC
//! sphericity) and of the particles' poses (SCF*).

use super::mask::read_cubic_map;
use crate::common::{ensure_dir, write_json_atomic, Ctx};
use anyhow::{bail, Context, Result};
use cryoforge_core::symmetry::Symmetry;
use cryoforge_io::stack::{LoadOptions, ParticleStack};
use cryoforge_refine::orient::{
    azimuth_elevation_deg, orient, viewing_direction, OrientConfig, OrientReport,
};
use cryoforge_report::charts::{density_png, histogram_png, scatter_png, Colouring, ScatterPlot};
use cryoforge_report::{line_plot_png, LinePlot, Series};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Orientation diagnostics: is the resolution isotropic, and do the poses sample Fourier
/// space well? (cryoSPARC's orientation diagnostics, 3DFSC, SCF*.)
///
/// From the two half maps: the conical FSC along 3,072 axes of a Fibonacci sphere (cones of
/// half-angle 20°), the cFAR (conical FSC area ratio, min/max over the axes of the area
/// under each curve up to its 0.143 crossing; < 0.5 flags preferred orientation) and the
/// 3DFSC sphericity of the directional FSC at 0.5 (1 for isotropic resolution). From the
/// particles' poses (--particles): SCF*, the sampling compensation factor of Baldwin &
/// Lyumkis (< 0.81 flags a harmful orientation bias), and the viewing-direction density.
/// Definitions: METHODS.md §6 and the `cryoforge_refine::orient` notes.
///
/// Writes OUT/orient.json, directions.csv (per axis: direction, resolution at 0.143 and 0.5,
/// area), conical_fsc.csv (every axis's curve), conical_fsc.png, directional_resolution.png
/// (histogram), resolution_map.png, viewing_directions.png (with --particles) and report.html.
///
/// Examples:
///   cryoforge orient refine/half_a.mrc refine/half_b.mrc --particles refine/particles.star --out orient/
///   cryoforge orient half1.mrc half2.mrc --mask mask.mrc --out orient/ --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// First half map (MRC).
    pub half1: PathBuf,
    /// Second half map (MRC, same box).
    pub half2: PathBuf,
    /// Particles with refined poses (RELION .star or cryoSPARC .cs): adds SCF* and the
    /// viewing-direction density.
    #[arg(long, value_name = "STAR|CS")]
    pub particles: Option<PathBuf>,
    /// cryoDRGN pose pickle replacing the particles' poses.
    #[arg(long, value_name = "PKL", requires = "particles")]
    pub poses: Option<PathBuf>,
    /// Soft mask applied to both half maps before the FFT (same box).
    #[arg(long, value_name = "MASK.mrc")]
    pub mask: Option<PathBuf>,
    /// Point-group symmetry of the refinement (expands the poses for SCF*).
    #[arg(long, default_value = "C1")]
    pub sym: String,
    /// Output folder.
    #[arg(long, short, default_value = "orient", value_name = "DIR")]
    pub out: PathBuf,
    /// Number of cone axes (Fibonacci sphere).
    #[arg(long, default_value_t = 3072, value_name = "N")]
    pub directions: usize,
    /// Half-angle of each cone (degrees).
    #[arg(long, default_value_t = 20.0, value_name = "DEG")]
    pub cone_deg: f64,
    /// FSC threshold of the cFAR areas and directional resolutions.
    #[arg(long, default_value_t = 0.143)]
    pub fsc_threshold: f64,
    /// FSC threshold of the sphericity.
    #[arg(long, default_value_t = 0.5)]
    pub sphericity_threshold: f64,
    /// Fourier radius (voxels) of the shell whose sampling SCF* measures.
    #[arg(long, default_value_t = 50.0, value_name = "VOXELS")]
    pub scf_radius: f64,
    /// Pixel size in Å (default: half1's header).
    #[arg(long, value_name = "A")]
    pub apix: Option<f64>,
    /// Print orient.json on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let sym: Symmetry = a.sym.parse().map_err(|e| anyhow::anyhow!("--sym {:?}: {e}", a.sym))?;
    if a.directions < 2 {
        bail!("--directions {}: need at least 2 cone axes", a.directions);
    }
    if !(a.cone_deg > 0.0 && a.cone_deg <= 90.0) {
        bail!("--cone-deg {}: must be in (0, 90]", a.cone_deg);
    }
    if a.scf_radius.is_nan() || a.scf_radius < 1.0 {
        bail!("--scf-radius {}: must be ≥ 1 voxel", a.scf_radius);
    }
    let h1 = read_cubic_map(&a.half1, "first half map")?;
    let h2 = read_cubic_map(&a.half2, "second half map")?;
    let n = h1.n;
    if h2.n != n {
        bail!("{}: the second half map is {}³ but {} is {n}³", a.half2.display(), h2.n, a.half1.display());
    }
    let apix = match (a.apix, h1.apix_a) {
        (Some(p), _) if p.is_finite() && p > 0.0 => p,
        (Some(p), _) => bail!("--apix {p} must be > 0"),
        (None, Some(p)) => p,
        (None, None) => bail!("{}: the header has no pixel size; give --apix", a.half1.display()),
    };
    let mask = match &a.mask {
        Some(p) => {
            let m = read_cubic_map(p, "mask")?;
            if m.n != n {
                bail!("{}: the mask is {}³ but the half maps are {n}³", p.display(), m.n);
            }
            Some(m.data)
        }
        None => None,
    };
    let dirs = match &a.particles {
        Some(p) => {
            let opts = LoadOptions { poses_pkl: a.poses.clone(), ..Default::default() };
            let s = ParticleStack::load(p, &opts)?;
            let poses = s.poses.as_ref().with_context(|| {
                format!(
                    "{}: the particles have no poses (rlnAngleRot/Tilt/Psi); SCF* needs them",
                    p.display()
                )
            })?;
            if poses.is_empty() {
                bail!("{}: no particles", p.display());
            }
            let mut d: Vec<[f64; 3]> = poses.iter().map(|q| viewing_direction(&q.rot)).collect();
            subsample(&mut d, OrientConfig::default().scf_max_particles);
            Some(d)
        }
        None => None,
    };
    let cfg = OrientConfig {
        n_directions: a.directions,
        cone_half_angle_deg: a.cone_deg,
        cfar_threshold: a.fsc_threshold,
        sphericity_threshold: a.sphericity_threshold,
        scf_fourier_radius: a.scf_radius,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let rep = orient(&h1.data, &h2.data, n, apix, mask.as_deref(), dirs.as_deref().map(|d| (d, &sym)), &cfg);
    let secs = t0.elapsed().as_secs_f64();
    let mut meta = serde_json::Map::new();
    meta.insert("half1".into(), a.half1.display().to_string().into());
    meta.insert("half2".into(), a.half2.display().to_string().into());
    meta.insert("mask".into(), a.mask.as_ref().map(|p| p.display().to_string()).into());
    meta.insert("particles".into(), a.particles.as_ref().map(|p| p.display().to_string()).into());
    meta.insert("sym".into(), a.sym.clone().into());
    meta.insert("seconds".into(), secs.into());
    meta.insert("command".into(), std::env::args().collect::<Vec<_>>().join(" ").into());
    let json = write_outputs(&a.out, &rep, dirs.as_deref(), meta)?;
    if let Err(e) = crate::cmd::report::write(&a.out, &a.out.join("report.html")) {
        tracing::warn!("results written, but the report failed: {e:#}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    let scf = rep.scf.as_ref().map(|s| format!(", SCF* {:.3}", s.scf_star)).unwrap_or_default();
    ctx.done(format!(
        "cFAR {:.3}, sphericity {:.3}{scf}; directional resolution {:.2}–{:.2} Å{} ({secs:.1} s); results in {}",
        rep.cfar,
        rep.sphericity,
        rep.directional_resolution_best_a,
        rep.directional_resolution_worst_a,
        if rep.preferred_orientation { " — preferred orientation flagged" } else { "" },
        a.out.display()
    ));
    Ok(())
}

/// Keep at most `max` directions, evenly strided (deterministic).
fn subsample(d: &mut Vec<[f64; 3]>, max: usize) {
    if d.len() > max {
        let step = d.len() as f64 / max as f64;
        *d = (0..max).map(|i| d[(i as f64 * step) as usize]).collect();
    }
}

/// Write the files of an orient folder (orient.json last, with `meta` merged into it).
pub fn write_outputs(
    out: &Path,
    rep: &OrientReport,
    dirs: Option<&[[f64; 3]]>,
    meta: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value> {
    let (Some(dfsc), Some(global)) = (rep.dfsc.as_ref(), rep.global.as_ref()) else {
        anyhow::bail!(
            "orientation report without its FSC curves (one read back from orient.json?): nothing written"
        );
    };
    // directions.csv
    let mut csv =
        String::from("direction,x,y,z,azimuth_deg,elevation_deg,resolution_0.143_A,resolution_0.5_A,area\n");
    for (i, r) in rep.rows.iter().enumerate() {
        let (az, el) = azimuth_elevation_deg(r.direction);
        let _ = writeln!(
            csv,
            "{i},{:.6},{:.6},{:.6},{az:.3},{el:.3},{:.4},{:.4},{:.6}",
            r.direction[0], r.direction[1], r.direction[2], r.resolution_0143_a, r.resolution_05_a, r.area
        );
    }
    // conical_fsc.csv: one row per shell, one column per axis.
    let mut cc = String::from("shell,frequency_per_A,global");
    for i in 0..dfsc.curves.len() {
        let _ = write!(cc, ",d{i}");
    }
    cc.push('\n');
    for k in 0..global.fsc.len() {
        let _ = write!(cc, "{k},{:.6},{:.5}", global.freq(k), global.fsc[k]);
        for c in &dfsc.curves {
            let _ = write!(cc, ",{:.5}", c[k]);
        }
        cc.push('\n');
    }
    // Plots.
    let order = {
        let mut o: Vec<usize> = (0..rep.rows.len()).collect();
        o.sort_by(|&i, &j| rep.rows[i].area.total_cmp(&rep.rows[j].area));
        o
    };
    let mut lp = LinePlot::new("Conical FSC", "spatial frequency (1/Å)", "FSC");
    let pts = |c: &[f64]| (1..c.len()).map(|k| (global.freq(k), c[k])).collect::<Vec<_>>();
    lp.series.push(Series { name: "all directions".into(), points: pts(&global.fsc) });
    for (name, idx) in [
        ("worst axis", order[0]),
        ("median axis", order[order.len() / 2]),
        ("best axis", order[order.len() - 1]),
    ] {
        let (az, el) = azimuth_elevation_deg(dfsc.directions[idx]);
        lp.series
            .push(Series { name: format!("{name} ({az:.0}°, {el:.0}°)"), points: pts(&dfsc.curves[idx]) });
    }
    lp.hlines.push((rep.config.cfar_threshold, format!("{}", rep.config.cfar_threshold)));
    lp.hlines.push((0.5, "0.5".into()));
    lp.y_range = Some((-0.1, 1.05));
    let res: Vec<f64> = rep.rows.iter().map(|r| r.resolution_0143_a).collect();
    let finite: Vec<f64> = res.iter().copied().filter(|r| r.is_finite()).collect();
    let worst = finite.iter().copied().fold(0f64, f64::max);
    let hist = histogram_png("Directional resolution", "resolution at FSC 0.143 (Å)", &finite, 40)?;
    let mut sp = ScatterPlot::new(
        "Directional resolution by cone axis",
        "azimuth (°)",
        "elevation (°)",
        rep.rows.iter().map(|r| azimuth_elevation_deg(r.direction)).collect(),
    );
    sp.colouring = Colouring::Continuous {
        values: res.iter().map(|r| if r.is_finite() { *r } else { worst }).collect(),
        label: "resolution (Å)".into(),
    };
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("directions.csv", csv.into_bytes()),
        ("conical_fsc.csv", cc.into_bytes()),
        ("conical_fsc.png", line_plot_png(&lp)?),
        ("directional_resolution.png", hist),
        ("resolution_map.png", scatter_png(&sp)?),
    ];
    if let Some(d) = dirs {
        let pts: Vec<(f64, f64)> = d.iter().map(|v| azimuth_elevation_deg(*v)).collect();
        files.push((
            "viewing_directions.png",
            density_png(
                "Viewing directions",
                "azimuth = rlnAngleRot (°)",
                "elevation = 90° − rlnAngleTilt (°)",
                &pts,
                72,
            )?,
        ));
    }
    let mut json = serde_json::to_value(rep)?;
    if let serde_json::Value::Object(m) = &mut json {
        m.extend(meta);
    }
    ensure_dir(out)?;
    for (name, bytes) in &files {
        let path = out.join(name);
        cryoforge_io::atomic::write_bytes_atomic(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    write_json_atomic(&out.join("orient.json"), &json)?;
    Ok(json)
}
