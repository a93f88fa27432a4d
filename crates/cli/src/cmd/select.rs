//! `cryoforge select`: write a subset of particles as STAR, .cs or an index pickle.

use crate::common::{ensure_parent, Ctx, ParticleArgs};
use anyhow::{bail, Result};
use cryoforge_io::{export, stack::FileKind};
use std::path::PathBuf;

/// Write a subset of particles (chosen with --ind and/or --first) as a RELION STAR or
/// cryoSPARC .cs file, keeping every column of the input; optionally write the chosen
/// indices as a cryoDRGN index pickle.
///
/// Examples:
///   cryoforge select particles.star --ind keep.pkl -o subset.star
///   cryoforge select J24_particles.cs --first 1000 -o first1000.cs --ind-out first1000.pkl
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub input: ParticleArgs,
    /// Output file: .star or .cs.
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the selected indices (into the input file) as a cryoDRGN index pickle.
    #[arg(long, value_name = "PKL")]
    pub ind_out: Option<PathBuf>,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    if a.input.ind.is_none() && a.input.first.is_none() {
        bail!("no selection: give --ind FILE and/or --first N");
    }
    let kind = cryoforge_io::stack::file_kind(&a.out);
    if !matches!(kind, FileKind::Star | FileKind::Cs) {
        bail!("{}: output must end in .star or .cs", a.out.display());
    }
    let s = a.input.load(ctx)?;
    ensure_parent(&a.out)?;
    match kind {
        FileKind::Star => export::write_star(&s, &a.out)?,
        _ => export::write_cs(&s, &a.out)?,
    }
    if let Some(p) = &a.ind_out {
        ensure_parent(p)?;
        cryoforge_io::pkl::write_index_pkl(p, &s.source_index)?;
    }
    ctx.done(format!("selected {} particles: wrote {}", s.len(), a.out.display()));
    Ok(())
}
