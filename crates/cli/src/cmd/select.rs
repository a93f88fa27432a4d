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
    /// Keep only particles of these classes (rlnClassNumber of a STAR, e.g. from
    /// `cryoforge class2d` or `abinit`), e.g. --classes 1,4,7.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub classes: Option<Vec<usize>>,
    /// Also write the selected indices (into the input file) as a cryoDRGN index pickle.
    #[arg(long, value_name = "PKL")]
    pub ind_out: Option<PathBuf>,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    if a.input.ind.is_none() && a.input.first.is_none() && a.classes.is_none() {
        bail!("no selection: give --ind FILE, --first N and/or --classes LIST");
    }
    let kind = cryoforge_io::stack::file_kind(&a.out);
    if !matches!(kind, FileKind::Star | FileKind::Cs) {
        bail!("{}: output must end in .star or .cs", a.out.display());
    }
    let mut s = a.input.load(ctx)?;
    if let Some(keep) = &a.classes {
        let path = &a.input.particles;
        let cryoforge_io::stack::Source::Star(rp) = &s.source else {
            bail!("--classes: {} is not a RELION STAR (rlnClassNumber is read from a STAR)", path.display());
        };
        if !rp.has_column("rlnClassNumber") {
            bail!("{}: no rlnClassNumber column (--classes needs classified particles)", path.display());
        }
        let mut idx = Vec::new();
        for (j, &row) in s.source_index.iter().enumerate() {
            let c = rp.f64(row, "rlnClassNumber")?;
            if keep.iter().any(|&k| k as f64 == c) {
                idx.push(j);
            }
        }
        if idx.is_empty() {
            bail!("{}: no particle is in classes {keep:?}", path.display());
        }
        s.select(&idx)?;
    }
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
