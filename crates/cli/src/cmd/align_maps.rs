//! `cryoforge align-maps`: rigid-body fit of one map onto another (rotation, translation
//! and optionally the hand), as ChimeraX's "fit in map".

use super::mask::read_cubic_map;
use crate::common::{ensure_parent, write_json_atomic, Ctx};
use anyhow::{bail, Context, Result};
use cryoforge_core::EulerRelion;
use cryoforge_refine::align::{align_maps, apply, AlignOptions};
use serde_json::json;
use std::path::PathBuf;

/// Fit MOVING onto FIXED: the rotation, translation and (with --try-hand) mirror image that
/// maximise the correlation of the two maps, e.g. to dock an ab initio map onto a known one
/// or to compare maps from different programs.
///
/// Global search over rotations (15° grid on a coarse box, one FFT per rotation scores every
/// translation), then a pattern search down to --final-step-deg with sub-voxel shifts.
/// The transform maps a point p of MOVING to R·H·p + t (about the box centre; H mirrors x
/// when the other hand fits better): OUT.mrc is MOVING resampled on FIXED's grid, and
/// OUT.json (or --transform) holds R, its RELION Euler angles (ZYZ), t in Å, the hand and the
/// normalised correlation of both hands.
///
/// Examples:
///   cryoforge align-maps abinit/class_001.mrc truth.mrc -o aligned.mrc --try-hand
///   cryoforge align-maps run1/map.mrc run2/map.mrc -o run1_on_run2.mrc --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Map to move (MRC).
    pub moving: PathBuf,
    /// Map to fit onto (MRC, same box and pixel size).
    pub fixed: PathBuf,
    /// Aligned map (MRC).
    #[arg(short, long, value_name = "OUT.mrc")]
    pub out: PathBuf,
    /// Also try the mirror image (an ab initio map may have either hand).
    #[arg(long)]
    pub try_hand: bool,
    /// Where to write the transform (default: OUT with the extension .json).
    #[arg(long, value_name = "JSON")]
    pub transform: Option<PathBuf>,
    /// Box of the coarse rotation search (voxels).
    #[arg(long, default_value_t = 24, value_name = "PX")]
    pub coarse_box: usize,
    /// Largest box of the fine search (voxels; the final shift and score use the full box).
    #[arg(long, default_value_t = 96, value_name = "PX")]
    pub max_box: usize,
    /// Stop the fine search below this angular step (degrees).
    #[arg(long, default_value_t = 0.1, value_name = "DEG")]
    pub final_step_deg: f64,
    /// Print the transform as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    if !(a.final_step_deg > 0.0 && a.final_step_deg.is_finite()) {
        bail!("--final-step-deg {}: must be > 0", a.final_step_deg);
    }
    let mv = read_cubic_map(&a.moving, "moving map")?;
    let fx = read_cubic_map(&a.fixed, "fixed map")?;
    let n = fx.n;
    if mv.n != n {
        bail!(
            "{}: the moving map is {}³ but {} is {n}³; resample one onto the other's box first",
            a.moving.display(),
            mv.n,
            a.fixed.display()
        );
    }
    let apix = fx.apix_a.or(mv.apix_a).unwrap_or(1.0);
    if let (Some(p), Some(q)) = (mv.apix_a, fx.apix_a) {
        if (p - q).abs() > 1e-3 * q {
            bail!(
                "{}: pixel size {p} Å but {} has {q} Å; resample one onto the other's grid first",
                a.moving.display(),
                a.fixed.display()
            );
        }
    }
    let o = AlignOptions {
        try_hand: a.try_hand,
        coarse_box: a.coarse_box,
        max_box: a.max_box,
        final_step_deg: a.final_step_deg,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let al = align_maps(&mv.data, &fx.data, n, &o)
        .with_context(|| format!("aligning {} onto {}", a.moving.display(), a.fixed.display()))?;
    let aligned = apply(&mv.data, n, &al);
    let secs = t0.elapsed().as_secs_f64();
    let e = EulerRelion::from_rot(&al.rotation);
    let tr = json!({
        "moving": a.moving.display().to_string(),
        "fixed": a.fixed.display().to_string(),
        "aligned": a.out.display().to_string(),
        "convention": "p' = R·H·p + t about the box centre (voxel n/2); H mirrors x when hand_flipped",
        "rotation_matrix": al.rotation.0,
        "euler_relion_deg": { "rot": e.rot_deg, "tilt": e.tilt_deg, "psi": e.psi_deg },
        "shift_a": [al.shift_vox[0] * apix, al.shift_vox[1] * apix, al.shift_vox[2] * apix],
        "shift_px": al.shift_vox,
        "hand_flipped": al.flipped,
        "score": al.score,
        "other_hand_score": al.other_hand_score,
        "apix_a": apix,
        "box_px": n,
        "seconds": secs,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let tpath = a.transform.clone().unwrap_or_else(|| a.out.with_extension("json"));
    ensure_parent(&a.out)?;
    ensure_parent(&tpath)?;
    cryoforge_io::mrc::write_volume(&a.out, &aligned, [n, n, n], apix as f32, fx.origin_a)?;
    write_json_atomic(&tpath, &tr)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&tr)?);
    }
    ctx.done(format!(
        "fit score {:.4}{} after rotation (rot {:.1}°, tilt {:.1}°, psi {:.1}°) and shift ({:.2}, {:.2}, {:.2}) Å{} in {secs:.1} s; wrote {} and {}",
        al.score,
        al.other_hand_score.map(|s| format!(" (other hand {s:.4})")).unwrap_or_default(),
        e.rot_deg,
        e.tilt_deg,
        e.psi_deg,
        al.shift_vox[0] * apix,
        al.shift_vox[1] * apix,
        al.shift_vox[2] * apix,
        if al.flipped { ", hand flipped" } else { "" },
        a.out.display(),
        tpath.display()
    ));
    Ok(())
}
