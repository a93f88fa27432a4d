//! `cryoforge pdb2map`: a density map from an atomic model (ground truth for simulations).

use crate::common::{ensure_parent, Ctx};
use anyhow::{bail, Result};
use cryoforge_io::mrc;
use cryoforge_io::pdb::read_structure;
use cryoforge_sim::simulate::{anchor_centroid, atom_specs, gaussian_model, translate_models};
use std::path::PathBuf;

/// Render an atomic model as a density map in the frame `simulate` uses: atomic (Peng 1996
/// five-Gaussian atoms, voxel-integrated, B-factors) or ca (σ = 2 Å Gaussians at Cα).
///
/// Examples:
///   cryoforge pdb2map adk.pdb --box 128 --apix 1 -o adk.mrc
///   cryoforge pdb2map sim/model.pdb --no-center --box 64 --apix 1.5 --density ca -o ca.mrc
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Atomic model (PDB/mmCIF); the first model is used unless --model-index is given.
    pub model: PathBuf,
    #[arg(long = "box", default_value_t = 128)]
    pub box_px: usize,
    #[arg(long, default_value_t = 1.0)]
    pub apix: f64,
    #[arg(long, default_value = "atomic", value_parser = ["atomic", "ca"])]
    pub density: String,
    /// Which model of a multi-model file (0-based).
    #[arg(long, default_value_t = 0)]
    pub model_index: usize,
    /// Use the coordinates as they are ((0, 0, 0) Å at the box centre) instead of moving
    /// the first model's Cα centroid there.
    #[arg(long)]
    pub no_center: bool,
    #[arg(short, long)]
    pub out: PathBuf,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let mut s = read_structure(&a.model)?;
    if a.model_index >= s.models.len() {
        bail!(
            "{}: --model-index {} but the file has {} models",
            a.model.display(),
            a.model_index,
            s.models.len()
        );
    }
    if !a.no_center {
        let c = anchor_centroid(&s.models[0])?;
        translate_models(&mut s.models, [-c[0], -c[1], -c[2]]);
    }
    let m = &s.models[a.model_index];
    let vol = if a.density == "ca" {
        gaussian_model(m)?.render_volume(a.box_px, a.apix)?
    } else {
        cryoforge_sim::atomic_density(&atom_specs(m)?, a.box_px, a.apix)?
    };
    ensure_parent(&a.out)?;
    mrc::write_volume(&a.out, &vol, [a.box_px; 3], a.apix as f32, [0.0; 3])?;
    ctx.done(format!("wrote {}³ map at {} Å/px to {}", a.box_px, a.apix, a.out.display()));
    Ok(())
}
