//! `cryoforge center-model`: put an atomic model docked in a map into cryoforge's frame.

use crate::common::{ensure_parent, Ctx};
use anyhow::Result;
use cryoforge_io::mrc::MrcFile;
use cryoforge_io::pdb::{read_structure, write_pdb};
use cryoforge_sim::simulate::translate_models;
use std::path::PathBuf;

/// Write a model docked into a map (coordinates in the map's frame, as ChimeraX shows
/// them) in cryoforge's frame: (0, 0, 0) Å at voxel n/2 of the map's box. Use the output
/// as `--reference` of star/sphere training on particles of that map.
///
/// Examples:
///   cryoforge center-model docked.pdb consensus.mrc -o reference.pdb
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Atomic model (PDB/mmCIF) docked into MAP.
    pub model: PathBuf,
    /// The map (its origin, start indices, voxel size and box define the frame).
    pub map: PathBuf,
    /// Output PDB.
    #[arg(short, long)]
    pub out: PathBuf,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let f = MrcFile::open(&a.map)?;
    let h = f.header();
    let v = f.voxel_size();
    let dims = [f.nx(), f.ny(), f.nz()];
    let start = [h.nxstart, h.nystart, h.nzstart];
    let o = f.origin();
    // Voxel index i sits at origin + (start + i)·voxel; the box centre is index n/2.
    let centre: Vec<f64> =
        (0..3).map(|k| o[k] as f64 + (start[k] as f64 + (dims[k] / 2) as f64) * v[k] as f64).collect();
    let mut s = read_structure(&a.model)?;
    translate_models(&mut s.models, [-centre[0], -centre[1], -centre[2]]);
    ensure_parent(&a.out)?;
    write_pdb(&a.out, &s)?;
    ctx.done(format!(
        "moved {} by ({:.2}, {:.2}, {:.2}) Å into the frame of {}: wrote {}",
        a.model.display(),
        -centre[0],
        -centre[1],
        -centre[2],
        a.map.display(),
        a.out.display()
    ));
    Ok(())
}
