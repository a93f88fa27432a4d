//! `cryoforge simulate`: synthetic particle datasets from atomic models or maps.

use crate::common::{ensure_dir, Ctx};
use anyhow::{bail, Context, Result};
use cryoforge_io::export;
use cryoforge_io::mrc::{MrcFile, MrcStackWriter};
use cryoforge_io::pdb::{read_structure, write_pdb, Model, Structure};
use cryoforge_io::stack::{file_kind, FileKind, ImageRef, LoadOptions, ParticleStack, Pose, Source};
use cryoforge_sim::junk::{JunkKind, JunkSettings};
use cryoforge_sim::sampling::{CtfDistribution, PoseDistribution};
use cryoforge_sim::simulate::{
    anchor_centroid, simulate, translate_models, DensityKind, PoseSource, Sample, SimSettings,
};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Simulate particle images from an atomic model (PDB/mmCIF), a multi-model trajectory, or
/// a density map: Fourier-slice projection at random or given poses, shifts, the CTF
/// (protein-bright, as RELION extracts particles) and white noise at a given SNR.
///
/// Writes OUT/particles.mrcs, particles.star (RELION 3.1), poses.pkl and ctf.pkl
/// (cryoDRGN), truth.csv, run.toml and model.pdb (the model(s) used, in the frame of the
/// box: (0, 0, 0) Å at the box centre). Deterministic for a seed, whatever the threads.
///
/// Examples:
///   cryoforge simulate --model adk.pdb --n 10000 --box 128 --apix 1 --snr 0.1 --out sim/
///   cryoforge simulate --models traj.pdb --density ca --n 20000 --box 64 --apix 1.5 --out sim/
///   cryoforge simulate --model ha.pdb --n 50000 --poses preferred --po-fraction 0.6 --po-cone 36 --out po/
///   cryoforge simulate --model map.mrc --poses-from refined.star --snr 0.05 --out resim/
#[derive(clap::Args, Debug, Serialize)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Atomic model (PDB/mmCIF) or density map (MRC) to image.
    #[arg(long, conflicts_with = "models")]
    pub model: Option<PathBuf>,
    /// Multi-model PDB trajectory: each particle images one model.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Relative weight of each model of --models (text: one number per model).
    #[arg(long, value_name = "FILE")]
    pub model_weights: Option<PathBuf>,
    /// Number of particles (from the file with --poses-from).
    #[arg(long)]
    pub n: Option<usize>,
    /// Box size in pixels (even).
    #[arg(long = "box", default_value_t = 128)]
    pub box_px: usize,
    /// Pixel size in Å (default: 1, or the map's voxel size).
    #[arg(long)]
    pub apix: Option<f64>,
    /// Density of an atomic model: atomic (Peng 1996 atoms) or ca (cryoSTAR Cα Gaussians).
    #[arg(long, default_value = "atomic", value_parser = ["atomic", "ca"])]
    pub density: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pose distribution: uniform (Haar) or preferred (--po-fraction within --po-cone of z).
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "preferred"])]
    pub poses: String,
    /// Fraction of particles viewed within --po-cone of the z axis (with --poses preferred).
    #[arg(long, default_value_t = 0.6)]
    pub po_fraction: f64,
    /// Half-angle (degrees) of the preferred-view cone.
    #[arg(long, default_value_t = 30.0)]
    pub po_cone: f64,
    /// Keep only this fraction of side views (tilt within --equator-band of 90°).
    #[arg(long, default_value_t = 1.0)]
    pub side_view_retention: f64,
    /// Half-width (degrees) of the side-view band.
    #[arg(long, default_value_t = 10.0)]
    pub equator_band: f64,
    /// No particle with tilt within this many degrees of 90° (a missing cone about z).
    #[arg(long, default_value_t = 0.0)]
    pub missing_cone: f64,
    /// Reuse the poses, shifts and CTFs of a STAR or .cs file.
    #[arg(long, value_name = "STAR|CS")]
    pub poses_from: Option<PathBuf>,
    /// Move the first model's Cα centroid to the box centre (same shift for every model).
    #[arg(long, overrides_with = "no_center", default_value_t = true)]
    pub center: bool,
    /// Use the coordinates as they are, (0, 0, 0) Å at the box centre.
    #[arg(long)]
    pub no_center: bool,
    /// In-plane shifts uniform in [−T, T]² Å.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub shift_a: f64,
    /// Defocus range (Å), MIN,MAX.
    #[arg(long, default_value = "10000,25000", value_name = "MIN,MAX")]
    pub defocus_a: String,
    /// Astigmatism: dfU − dfV uniform in [0, A] Å.
    #[arg(long, default_value_t = 200.0)]
    pub astig_a: f64,
    #[arg(long, default_value_t = 300.0)]
    pub kv: f64,
    #[arg(long, default_value_t = 2.7)]
    pub cs_mm: f64,
    #[arg(long, default_value_t = 0.1)]
    pub amp_contrast: f64,
    /// CTF envelope B-factor (Å²).
    #[arg(long, default_value_t = 0.0)]
    pub bfactor: f64,
    /// Signal variance / noise variance over the box, pooled over particles; inf = no noise.
    #[arg(long, default_value = "inf")]
    pub snr: f64,
    /// Fraction of junk picks mixed in (0–1): empty picks (noise), off-centre (partial)
    /// picks, aggregates of 3–5 copies and ice blobs by default; truth.csv's `junk` column
    /// says which.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub junk: f64,
    /// Kinds of junk drawn with equal probability (comma-separated): noise, offcentre,
    /// aggregate, ice, carbon (a carbon edge across the particle), wrong-defocus (imaged at
    /// 2–4× the stated defocus), or all.
    #[arg(long, default_value = "noise,offcentre,aggregate,ice", value_name = "KINDS")]
    pub junk_kinds: String,
    /// Protein-dark particles (flip the sign).
    #[arg(long)]
    pub invert: bool,
    /// Output folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Particles per batch (memory is O(batch)).
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
}

fn parse_range(s: &str) -> Result<(f64, f64)> {
    let v: Vec<&str> = s.split(',').collect();
    if v.len() != 2 {
        bail!("--defocus-a {s:?}: expected MIN,MAX in Å");
    }
    let a: f64 = v[0].trim().parse().with_context(|| format!("--defocus-a {s:?}: bad MIN"))?;
    let b: f64 = v[1].trim().parse().with_context(|| format!("--defocus-a {s:?}: bad MAX"))?;
    Ok((a, b))
}

fn read_weights(p: &Path) -> Result<Vec<f64>> {
    let t = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
    t.split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            w.parse::<f64>()
                .map_err(|_| anyhow::anyhow!("{}: weight {} ({w:?}) is not a number", p.display(), i + 1))
        })
        .collect()
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let src_path = a
        .model
        .as_ref()
        .or(a.models.as_ref())
        .ok_or_else(|| anyhow::anyhow!("give --model FILE or --models FILE"))?;
    if a.box_px < 8 || a.box_px % 2 == 1 {
        bail!("--box {}: need an even box of at least 8 px", a.box_px);
    }
    let is_map = file_kind(src_path) == FileKind::Mrc;
    // What to image, in the frame of the box.
    let (sample, models_used, apix, center_shift) = if is_map {
        let f = MrcFile::open(src_path)?;
        if (f.nx(), f.ny(), f.nz()) != (a.box_px, a.box_px, a.box_px) {
            bail!(
                "{}: map is {}×{}×{}; give --box {} (maps are not resampled)",
                src_path.display(),
                f.nx(),
                f.ny(),
                f.nz(),
                f.nx()
            );
        }
        let apix = a.apix.unwrap_or(f.voxel_size()[0] as f64);
        (Sample::Map(f.read_volume()?), Vec::new(), apix, [0.0; 3])
    } else {
        let s = read_structure(src_path)?;
        let mut models: Vec<Model> =
            if a.models.is_some() { s.models } else { s.models.into_iter().take(1).collect() };
        if models.is_empty() {
            bail!("{}: no models", src_path.display());
        }
        let mut shift = [0.0; 3];
        if !a.no_center {
            let c = anchor_centroid(&models[0])?;
            shift = [-c[0], -c[1], -c[2]];
            translate_models(&mut models, shift);
        }
        (Sample::Models(models.clone()), models, a.apix.unwrap_or(1.0), shift)
    };
    let (dmin, dmax) = parse_range(&a.defocus_a)?;
    let pose_dist = PoseDistribution {
        po_fraction: if a.poses == "preferred" { a.po_fraction } else { 0.0 },
        po_cone_deg: a.po_cone,
        side_view_retention: a.side_view_retention,
        equator_band_deg: a.equator_band,
        missing_cone_deg: a.missing_cone,
    };
    pose_dist.check().map_err(anyhow::Error::msg)?;
    let ctf_dist = CtfDistribution {
        defocus_min_a: dmin,
        defocus_max_a: dmax,
        astigmatism_a: a.astig_a,
        voltage_kv: a.kv,
        cs_mm: a.cs_mm,
        amp_contrast: a.amp_contrast,
        bfactor_a2: a.bfactor,
    };
    ctf_dist.check().map_err(anyhow::Error::msg)?;
    let (src, n) = match &a.poses_from {
        Some(p) => {
            let s = ParticleStack::load(
                p,
                &LoadOptions { apix_a: Some(apix), box_px: Some(a.box_px), ..Default::default() },
            )?;
            let poses = s.poses.clone().ok_or_else(|| anyhow::anyhow!("{}: has no poses", p.display()))?;
            let ctf = s.require_ctf()?.to_vec();
            let n = s.len();
            (PoseSource::Given { poses, ctf }, n)
        }
        None => {
            let n =
                a.n.ok_or_else(|| anyhow::anyhow!("give --n (the number of particles) or --poses-from"))?;
            (PoseSource::Random { poses: pose_dist, ctf: ctf_dist, shift_max_a: a.shift_a }, n)
        }
    };
    let kinds = if a.junk_kinds.trim().eq_ignore_ascii_case("all") {
        JunkKind::EVERY.to_vec()
    } else {
        a.junk_kinds
            .split(',')
            .filter(|k| !k.trim().is_empty())
            .map(|k| {
                JunkKind::parse(k).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--junk-kinds: unknown kind {k:?} (noise, offcentre, aggregate, ice, carbon, wrong-defocus, all)"
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    // Aggregate copies sit 1.5 particle radii apart (the radius of the first model's
    // anchors about the box centre); for maps 30 % of the box.
    let spacing_a = models_used.first().and_then(|m| {
        let a = cryoforge_io::pdb::anchor_atoms(m).ok()?;
        let r = a.iter().map(|x| x.pos.iter().map(|v| v * v).sum::<f64>().sqrt()).fold(0.0, f64::max);
        (r > 0.0).then_some(1.5 * r)
    });
    let junk = JunkSettings { fraction: a.junk, kinds, spacing_a };
    junk.check().map_err(anyhow::Error::msg)?;
    if a.snr.is_nan() || a.snr <= 0.0 {
        bail!("--snr {} must be positive (inf for no noise)", a.snr);
    }
    let settings = SimSettings {
        n,
        box_px: a.box_px,
        apix_a: apix,
        density: if a.density == "ca" { DensityKind::Ca } else { DensityKind::Atomic },
        seed: a.seed,
        snr: a.snr,
        invert: a.invert,
        model_weights: match &a.model_weights {
            Some(p) => read_weights(p)?,
            None => Vec::new(),
        },
        batch: a.batch,
        junk,
    };
    ensure_dir(&a.out)?;
    let t0 = std::time::Instant::now();
    let stack_path = a.out.join("particles.mrcs");
    let mut w = MrcStackWriter::create(&stack_path, a.box_px, a.box_px, apix as f32)?;
    let bar = ctx.progress(n as u64, "simulating");
    let out = simulate(&sample, &src, &settings, &mut w, &mut |k| bar.set_position(k as u64))?;
    bar.finish_and_clear();
    w.finish()?;
    let secs = t0.elapsed().as_secs_f64();
    write_metadata(&a, &out.truth, apix, n)?;
    if !models_used.is_empty() {
        write_pdb(a.out.join("model.pdb"), &Structure { models: models_used })?;
    }
    let record = RunRecord {
        cryoforge_version: env!("CARGO_PKG_VERSION"),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        apix_a: apix,
        particles: n,
        center_shift_a: center_shift,
        signal_variance: out.signal_variance,
        noise_sigma: out.noise_sigma,
        seconds: secs,
        args: &a,
    };
    let text = toml::to_string(&record).context("serialising run.toml")?;
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("run.toml"), text.as_bytes())?;
    ctx.done(format!(
        "simulated {n} particles in {secs:.1} s ({:.0}/s); results in {}",
        n as f64 / secs,
        a.out.display()
    ));
    Ok(())
}

#[derive(Serialize)]
struct RunRecord<'a> {
    cryoforge_version: &'static str,
    command: String,
    apix_a: f64,
    particles: usize,
    center_shift_a: [f64; 3],
    signal_variance: f64,
    noise_sigma: f64,
    seconds: f64,
    args: &'a Args,
}

fn write_metadata(a: &Args, truth: &[cryoforge_sim::simulate::Truth], apix: f64, n: usize) -> Result<()> {
    let poses: Vec<Pose> = truth.iter().map(|t| t.pose).collect();
    let mut s = ParticleStack::from_parts(
        &a.out.join("particles.star"),
        vec!["particles.mrcs".into()],
        (0..n).map(|i| ImageRef { file: 0, index: i as u64 }).collect(),
        a.box_px,
        apix,
    );
    s.source = Source::Stack;
    s.poses = Some(poses);
    s.ctf = Some(truth.iter().map(|t| t.ctf).collect());
    export::write_star(&s, &a.out.join("particles.star"))?;
    export::write_poses_pkl(&s, &a.out.join("poses.pkl"))?;
    export::write_ctf_pkl(&s, &a.out.join("ctf.pkl"))?;
    let mut csv = String::from("index,model,rot_deg,tilt_deg,psi_deg,shift_x_A,shift_y_A,defocus_u_A,defocus_v_A,defocus_angle_deg,junk\n");
    for (i, t) in truth.iter().enumerate() {
        let e = cryoforge_core::EulerRelion::from_rot(&t.pose.rot);
        csv.push_str(&format!(
            "{i},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{:.3},{:.6},{}\n",
            t.model,
            e.rot_deg,
            e.tilt_deg,
            e.psi_deg,
            t.pose.shift_px[0] * apix,
            t.pose.shift_px[1] * apix,
            t.ctf.defocus_u_a,
            t.ctf.defocus_v_a,
            t.ctf.defocus_angle_deg,
            t.junk.map_or("none", |k| k.name())
        ));
    }
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("truth.csv"), csv.as_bytes())?;
    Ok(())
}
