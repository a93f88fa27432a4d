//! `cryoforge fsc`: Fourier shell correlation between two maps (like
//! `relion_image_handler --fsc` or cryoSPARC's validation), optionally masked.

use crate::common::{ensure_parent, Ctx};
use anyhow::{bail, Result};
use cryoforge_core::fsc::fsc_volumes;
use cryoforge_io::mrc::MrcFile;
use std::path::{Path, PathBuf};

/// FSC between two maps of the same cubic box: writes shell, frequency, resolution and FSC
/// (CSV) and prints the resolutions at FSC 0.5 and 0.143. With --mask, both maps are
/// multiplied by the mask first (a soft mask avoids edge artefacts).
///
/// Examples:
///   cryoforge fsc phase2.mrc truth.mrc
///   cryoforge fsc half_a.mrc half_b.mrc --mask mask.mrc --out fsc.csv --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    pub map_a: PathBuf,
    pub map_b: PathBuf,
    /// A mask (same box) applied to both maps.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Pixel size in Å (default: map_a's header).
    #[arg(long)]
    pub apix: Option<f64>,
    /// Write the curve as CSV.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn read_cube(p: &Path, what: &str) -> Result<(Vec<f32>, usize, f32)> {
    let f = MrcFile::open(p)?;
    let (nx, ny, nz) = (f.nx(), f.ny(), f.nz());
    if nx != ny || ny != nz || nx < 2 {
        bail!("{}: {what} is {nx}×{ny}×{nz}; the FSC needs a cubic map", p.display());
    }
    let apix = f.voxel_size()[0];
    Ok((f.read_volume()?, nx, apix))
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let (mut va, n, apix_a) = read_cube(&a.map_a, "map_a")?;
    let (mut vb, nb, _) = read_cube(&a.map_b, "map_b")?;
    if nb != n {
        bail!("{}: map_b is {nb}³ but {} is {n}³", a.map_b.display(), a.map_a.display());
    }
    if let Some(mp) = &a.mask {
        let (m, nm, _) = read_cube(mp, "mask")?;
        if nm != n {
            bail!("{}: the mask is {nm}³ but the maps are {n}³", mp.display());
        }
        for ((x, y), w) in va.iter_mut().zip(vb.iter_mut()).zip(&m) {
            *x *= w;
            *y *= w;
        }
    }
    let apix = match a.apix {
        Some(p) if p.is_finite() && p > 0.0 => p,
        Some(p) => bail!("--apix {p} must be > 0"),
        None if apix_a.is_finite() && apix_a > 0.0 => apix_a as f64,
        None => bail!("{}: the header has no pixel size ({apix_a}); give --apix", a.map_a.display()),
    };
    let c = fsc_volumes(&va, &vb, n, apix);
    if let Some(o) = &a.out {
        ensure_parent(o)?;
        let mut t = String::from("shell,frequency_per_A,resolution_A,fsc\n");
        for k in 0..c.fsc.len() {
            let f = c.freq(k);
            let res = if f > 0.0 { 1.0 / f } else { f64::INFINITY };
            t.push_str(&format!("{k},{f:.6},{res:.4},{:.6}\n", c.fsc[k]));
        }
        cryoforge_io::atomic::write_bytes_atomic(o, t.as_bytes())?;
    }
    let (r05, r0143) = (c.resolution_at(0.5), c.resolution_at(0.143));
    if a.json {
        let j = serde_json::json!({
            "map_a": a.map_a, "map_b": a.map_b, "mask": a.mask, "box": n, "apix": apix,
            "resolution_0.5_A": r05, "resolution_0.143_A": r0143, "fsc": c.fsc,
        });
        println!("{j}");
    }
    ctx.done(format!("FSC 0.5 at {r05:.2} Å, 0.143 at {r0143:.2} Å ({n}³ at {apix} Å/px)"));
    Ok(())
}
