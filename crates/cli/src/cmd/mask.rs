//! `cryoforge mask`: a soft mask from a map, as `relion_mask_create`.

use crate::common::{ensure_parent, Ctx};
use anyhow::{bail, Context, Result};
use cryoforge_io::mrc::{self, MrcFile};
use cryoforge_recon::mask::{create_mask_detailed, MaskOptions, Threshold};
use std::path::{Path, PathBuf};

/// Make a soft mask from a map (as `relion_mask_create`).
///
/// As RELION 3.1: optionally low-pass the map (--lowpass-a), binarise it at --threshold
/// (voxels ≥ T become 1), extend the binary mask by --extend-px pixels (negative shrinks),
/// then add a raised-cosine soft edge --soft-edge-px pixels wide. Values lie in [0, 1]; the
/// mask keeps the map's pixel size and origin. Distances are exact Euclidean distance
/// transforms, so wide edges cost no more than narrow ones.
///
/// --threshold auto (or --auto) picks Otsu's threshold of the (low-passed) map: the level
/// that best separates the voxels into two classes, solvent and particle. Check the mask in
/// ChimeraX (open the map and the mask, `volume #2 level 0.5`).
///
/// Examples:
///   cryoforge mask recon/map.mrc --threshold 0.02 --lowpass-a 15 --extend-px 3 --soft-edge-px 6 -o mask.mrc
///   cryoforge mask recon/map.mrc --auto --lowpass-a 15 --extend-px 4 --soft-edge-px 8 -o mask.mrc --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The map (MRC, cubic box).
    pub map: PathBuf,
    /// Binarisation threshold in the map's units (after --lowpass-a), or `auto`.
    #[arg(long, value_name = "T|auto", allow_hyphen_values = true, required_unless_present = "auto")]
    pub threshold: Option<String>,
    /// Same as --threshold auto.
    #[arg(long, conflicts_with = "threshold")]
    pub auto: bool,
    /// Low-pass the map to this resolution (Å) before binarising (RELION --lowpass).
    #[arg(long, value_name = "A")]
    pub lowpass_a: Option<f64>,
    /// Extend the binary mask by this many pixels; negative shrinks it (RELION --extend_inimask).
    #[arg(long, default_value_t = 0.0, value_name = "PX", allow_hyphen_values = true)]
    pub extend_px: f64,
    /// Width of the raised-cosine soft edge in pixels (RELION --width_soft_edge).
    #[arg(long, default_value_t = 0.0, value_name = "PX")]
    pub soft_edge_px: f64,
    /// Pixel size in Å (default: the map's header); only the low-pass needs it.
    #[arg(long, value_name = "A")]
    pub apix: Option<f64>,
    /// The mask to write (MRC).
    #[arg(long, short, value_name = "MASK.mrc")]
    pub out: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A cubic map read from an MRC file.
pub struct CubicMap {
    pub data: Vec<f32>,
    pub n: usize,
    /// Voxel size from the header, when it defines one.
    pub apix_a: Option<f64>,
    pub origin_a: [f32; 3],
}

/// Read `path` (`what` names it in errors) and check that its box is cubic.
pub fn read_cubic_map(path: &Path, what: &str) -> Result<CubicMap> {
    let f = MrcFile::open(path)?;
    let (nx, ny, nz) = (f.nx(), f.ny(), f.nz());
    if nx != ny || ny != nz || nx < 2 {
        bail!("{}: the {what} is {nx}×{ny}×{nz}; a cubic box is needed", path.display());
    }
    let apix_a = f.header().voxel_size_opt().map(|v| v[0] as f64).filter(|a| a.is_finite() && *a > 0.0);
    let data = f.read_volume().with_context(|| format!("reading the {what}"))?;
    Ok(CubicMap { data, n: nx, apix_a, origin_a: f.origin() })
}

fn parse_threshold(a: &Args) -> Result<Threshold> {
    match a.threshold.as_deref() {
        None | Some("auto") => Ok(Threshold::Auto),
        Some(t) => match t.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Threshold::Value(v)),
            _ => bail!("--threshold {t:?}: expected a number or `auto`"),
        },
    }
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let threshold = parse_threshold(&a)?;
    let map = read_cubic_map(&a.map, "map")?;
    let apix = match (a.apix, map.apix_a) {
        (Some(p), _) if p.is_finite() && p > 0.0 => p,
        (Some(p), _) => bail!("--apix {p} must be > 0"),
        (None, Some(p)) => p,
        (None, None) if a.lowpass_a.is_some() => {
            bail!("{}: the header has no pixel size, which --lowpass-a needs; give --apix", a.map.display())
        }
        (None, None) => 1.0,
    };
    let opts = MaskOptions {
        threshold,
        lowpass_a: a.lowpass_a,
        extend_px: a.extend_px,
        soft_edge_px: a.soft_edge_px,
    };
    let t0 = std::time::Instant::now();
    let m = create_mask_detailed(&map.data, map.n, apix, &opts)
        .with_context(|| format!("masking {}", a.map.display()))?;
    ensure_parent(&a.out)?;
    let n = map.n;
    mrc::write_volume(&a.out, &m.mask, [n, n, n], apix as f32, map.origin_a)?;
    let secs = t0.elapsed().as_secs_f64();
    let volume: f64 = m.mask.iter().map(|&v| v as f64).sum();
    let fraction = volume / (n * n * n) as f64;
    if a.json {
        let j = serde_json::json!({
            "map": a.map, "mask": a.out, "box_px": n, "apix_A": apix,
            "threshold": m.threshold, "threshold_mode": if threshold == Threshold::Auto { "auto" } else { "given" },
            "lowpass_A": a.lowpass_a, "extend_px": a.extend_px, "soft_edge_px": a.soft_edge_px,
            "binary_voxels": m.binary_voxels, "extended_voxels": m.extended_voxels, "edge_voxels": m.edge_voxels,
            "mask_volume_voxels": volume, "box_fraction": fraction, "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    }
    ctx.done(format!(
        "mask {}: threshold {:.4}, {} voxels ≥ threshold, {} after extending, {:.1} % of the box ({n}³) in {secs:.2} s",
        a.out.display(),
        m.threshold,
        m.binary_voxels,
        m.extended_voxels,
        100.0 * fraction
    ));
    Ok(())
}
