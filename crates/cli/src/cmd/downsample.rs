//! `cryoforge downsample`: Fourier-crop (or pad) particle images, like `cryodrgn downsample`.

use crate::common::{ensure_parent, Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_core::fft::FourierResizer;
use cryoforge_io::mrc::MrcStackWriter;
use cryoforge_io::stack::{ImageRef, ParticleStack, Source};
use rayon::prelude::*;
use std::path::PathBuf;

/// Resample particle images to a new box by cropping (or zero-padding) their centred
/// Fourier transform. The pixel size becomes apix·D/d; the sum of each image's
/// pixels is preserved, as in `cryodrgn downsample`. Streams: memory is O(batch).
///
/// Examples:
///   cryoforge downsample particles.star -d 128 -o particles.128.mrcs
///   cryoforge downsample particles.star -d 64 -o p64.mrcs --out-star p64.star
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub input: ParticleArgs,
    /// New box size in pixels (even).
    #[arg(short = 'd', long = "new-box", value_name = "PX")]
    pub new_box: usize,
    /// Output .mrcs stack.
    #[arg(short, long, value_name = "MRCS")]
    pub out: PathBuf,
    /// Also write a STAR file pointing at the new stack (metadata copied from the input).
    #[arg(long, value_name = "STAR")]
    pub out_star: Option<PathBuf>,
    /// Images processed per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let d = a.new_box;
    if d < 2 || d % 2 == 1 {
        bail!("--new-box {d}: the new box must be an even number of pixels ≥ 2");
    }
    let s = a.input.load(ctx)?;
    if s.images.is_empty() {
        bail!("{}: lists no particle images", a.input.particles.display());
    }
    let big = s.box_px()?;
    let apix = s.apix_a().unwrap_or(1.0);
    let new_apix = apix * big as f64 / d as f64;
    ensure_parent(&a.out)?;
    let mut w = MrcStackWriter::create(&a.out, d, d, new_apix as f32)?;
    let bs = a.batch_size.max(1);
    let mut inbuf = vec![0f32; bs * big * big];
    let mut outbuf = vec![0f32; bs * d * d];
    for start in (0..s.len()).step_by(bs) {
        let k = bs.min(s.len() - start);
        let ins = &mut inbuf[..k * big * big];
        ins.par_chunks_mut(big * big).enumerate().try_for_each(|(j, img)| s.read_image(start + j, img))?;
        let outs = &mut outbuf[..k * d * d];
        outs.par_chunks_mut(d * d)
            .zip(ins.par_chunks(big * big))
            .for_each_init(|| FourierResizer::new(big, d), |r, (o, i)| r.resize(i, o));
        w.push_batch(outs)?;
        ctx.say(format!("downsampled {}/{} images", start + k, s.len()));
    }
    w.finish()?;
    if let Some(star) = &a.out_star {
        write_star_for(&s, &a, new_apix, star)?;
    }
    ctx.done(format!("wrote {} images of {d}×{d} px at {new_apix:.4} Å/px to {}", s.len(), a.out.display()));
    Ok(())
}

/// A STAR for the new stack: the input's metadata with image names, pixel size and box
/// replaced, and origins (Å) unchanged.
fn write_star_for(s: &ParticleStack, a: &Args, new_apix: f64, path: &std::path::Path) -> Result<()> {
    let mut t = s.clone();
    let rel = pathdiff(&a.out, path);
    t.files = vec![rel];
    t.images = (0..s.len()).map(|i| ImageRef { file: 0, index: i as u64 }).collect();
    // Shifts in pixels shrink with the pixel size.
    let f = s.apix_a().unwrap_or(1.0) / new_apix;
    if let Some(p) = t.poses.as_mut() {
        p.iter_mut().for_each(|q| q.shift_px = [q.shift_px[0] * f, q.shift_px[1] * f]);
    }
    t.source = Source::Stack;
    t.source_index = (0..s.len()).collect();
    let t = t.with_geometry(a.new_box, new_apix);
    ensure_parent(path)?;
    cryoforge_io::export::write_star(&t, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `target` relative to the folder of `from_file` when both are relative to the same
/// place; otherwise the absolute path of `target`.
fn pathdiff(target: &std::path::Path, from_file: &std::path::Path) -> String {
    let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let t = abs(target);
    let base =
        from_file.parent().map(|p| if p.as_os_str().is_empty() { std::path::Path::new(".") } else { p });
    if let Some(b) = base {
        let b = abs(b);
        if let Ok(r) = t.strip_prefix(&b) {
            return r.display().to_string();
        }
    }
    t.display().to_string()
}
