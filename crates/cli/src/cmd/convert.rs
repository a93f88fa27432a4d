//! `cryoforge convert`: between RELION STAR, cryoSPARC .cs and cryoDRGN pickles.

use crate::common::{ensure_parent, Ctx, ParticleArgs};
use anyhow::{bail, Result};
use cryoforge_io::export;
use std::path::PathBuf;

/// Convert particle metadata between RELION STAR, cryoSPARC .cs and cryoDRGN pickles.
///
/// The pickles written equal what `cryodrgn parse_pose_star` / `parse_ctf_star` /
/// `parse_pose_csparc` / `parse_ctf_csparc` write for the same input (a missing
/// rlnPhaseShift is 0, not NaN). Image stacks are never opened.
///
/// Examples:
///   cryoforge convert particles.star --poses-pkl poses.pkl --ctf-pkl ctf.pkl
///   cryoforge convert J24_particles.cs -D 180 --poses-pkl poses.pkl --star particles.star
///   cryoforge convert particles.mrcs --poses poses.pkl --ctf ctf.pkl --star particles.star
///   cryoforge convert old.star -D 300 --apix 1.035 -w 0.1 --ctf-pkl ctf.pkl
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub input: ParticleArgs,
    /// Write the poses as a cryoDRGN pickle (rot[N,3,3], trans[N,2] as box fractions).
    #[arg(long, value_name = "PKL")]
    pub poses_pkl: Option<PathBuf>,
    /// Write the CTF parameters as a cryoDRGN pickle (float32 [N, 9]).
    #[arg(long, value_name = "PKL")]
    pub ctf_pkl: Option<PathBuf>,
    /// Write a RELION STAR file (3.1 layout unless the input was a 3.0 STAR).
    #[arg(long, value_name = "STAR")]
    pub star: Option<PathBuf>,
    /// Write a cryoSPARC .cs file.
    #[arg(long, value_name = "CS")]
    pub cs: Option<PathBuf>,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    if a.poses_pkl.is_none() && a.ctf_pkl.is_none() && a.star.is_none() && a.cs.is_none() {
        bail!("nothing to write: give at least one of --poses-pkl, --ctf-pkl, --star, --cs");
    }
    let s = a.input.load(ctx)?;
    let mut written = Vec::new();
    // Validate every output before writing any, so a failure leaves nothing half done.
    if a.poses_pkl.is_some() && s.poses.is_none() {
        bail!("{}: has no poses (no rlnAngleRot/Tilt/Psi or alignments3D/pose)", a.input.particles.display());
    }
    if a.ctf_pkl.is_some() {
        s.ctf_rows()?;
    }
    if let Some(p) = &a.poses_pkl {
        ensure_parent(p)?;
        export::write_poses_pkl(&s, p)?;
        written.push(p.display().to_string());
    }
    if let Some(p) = &a.ctf_pkl {
        ensure_parent(p)?;
        export::write_ctf_pkl(&s, p)?;
        written.push(p.display().to_string());
    }
    if let Some(p) = &a.star {
        ensure_parent(p)?;
        export::write_star(&s, p)?;
        written.push(p.display().to_string());
    }
    if let Some(p) = &a.cs {
        ensure_parent(p)?;
        export::write_cs(&s, p)?;
        written.push(p.display().to_string());
    }
    ctx.done(format!("converted {} particles: wrote {}", s.len(), written.join(", ")));
    Ok(())
}
