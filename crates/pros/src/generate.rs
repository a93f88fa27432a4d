//! Auxiliary particles: the trained HVAE sampled from its conditional prior at
//! Haar-uniform poses, each with the CTF and shift of a raw particle (raw particle
//! i mod N for auxiliary particle i), written as a float32 MRC stack and a RELION 3.1 STAR
//! whose particles carry `rlnCryoprosAuxiliary 1` (an extra column RELION and cryoSPARC
//! keep and ignore).

use crate::condition::Conditioner;
use crate::config::ProsConfig;
use crate::metrics::{histogram_kl, snr_db};
use crate::model::{normal, pose_vectors, Hvae};
use crate::{ProsError, Result};
use candle_core::{Device, Tensor};
use cryoforge_core::rotation::uniform_rotation;
use cryoforge_io::stack::{ImageRef, ParticleStack, Pose, Source};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// The STAR column that marks auxiliary particles.
pub const AUX_COLUMN: &str = "rlnCryoprosAuxiliary";

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Number of auxiliary particles (default: as many as raw particles).
    pub n: Option<usize>,
    pub seed: u64,
    /// Prior temperature (the paper samples at 1).
    pub temperature: f64,
    pub batch_size: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { n: None, seed: 0, temperature: 1.0, batch_size: 16 }
    }
}

/// What generation wrote and how the particles compare with the raw ones.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    pub n: usize,
    pub stack: PathBuf,
    pub star: PathBuf,
    #[serde(skip)]
    pub poses: Vec<Pose>,
    /// Quality on the first ≤ 256 particles: histogram KL (generated vs their raw source
    /// particle; for scale, the same KL between two different raw particles), SNR (dB) of
    /// generated and raw particles, and the correlation of a generated particle with the
    /// noise-free conditioning image at its own pose vs at another particle's pose.
    pub histogram_kl: f64,
    pub histogram_kl_raw_vs_raw: f64,
    pub snr_db_generated: f64,
    pub snr_db_raw: f64,
    pub corr_own_pose: f64,
    pub corr_other_pose: f64,
    pub seconds: f64,
}

/// Pearson correlation (`cryoforge_analysis`); 0 for a constant image.
fn corr(a: &[f32], b: &[f32]) -> f64 {
    cryoforge_analysis::traverse::pearson(a, b).unwrap_or(0.0)
}

/// Generates into `out_dir` (auxiliary.mrcs, auxiliary.star, generate.json). `cond` must
/// carry the run's projection scale.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &Hvae,
    cfg: &ProsConfig,
    cond: &Conditioner,
    raw: &ParticleStack,
    out_dir: &Path,
    opts: &GenerateOptions,
    device: &Device,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Generated> {
    let t0 = std::time::Instant::now();
    let d = model.d;
    if raw.box_px()? != d {
        return Err(ProsError::msg(format!(
            "{}: particles are {} px, the model was trained on {d} px",
            raw.path.display(),
            raw.box_px()?
        )));
    }
    let apix = raw.apix_a()?;
    let n_raw = raw.len();
    if n_raw == 0 {
        return Err(ProsError::msg(format!("{}: no particles", raw.path.display())));
    }
    let raw_poses = raw.poses.as_ref().ok_or_else(|| ProsError::msg("raw particles without poses"))?;
    let n = opts.n.unwrap_or(n_raw);
    if n == 0 {
        return Err(ProsError::msg("--n must be positive"));
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|e| ProsError::msg(format!("{}: cannot create: {e}", out_dir.display())))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ 0x4155_5850);
    let poses: Vec<Pose> = (0..n)
        .map(|i| Pose {
            rot: uniform_rotation(rng.gen(), rng.gen(), rng.gen()),
            shift_px: raw_poses[i % n_raw].shift_px,
        })
        .collect();
    let ctfs: Option<Vec<_>> = raw.ctf.as_ref().map(|c| (0..n).map(|i| c[i % n_raw]).collect());
    let stack_path = out_dir.join("auxiliary.mrcs");
    let mut writer = cryoforge_io::mrc::MrcStackWriter::create(&stack_path, d, d, apix as f32)?;
    let dd = d * d;
    let n_check = n.min(256);
    let mut kept: Vec<f32> = Vec::with_capacity(n_check * dd);
    let bs = opts.batch_size.max(1);
    let inv_scale = (1.0 / cfg.image_scale) as f32;
    let mut i = 0;
    while i < n {
        let b = bs.min(n - i);
        let p = &poses[i..i + b];
        let c = ctfs.as_ref().map(|c| &c[i..i + b]);
        let v = Tensor::from_vec(cond.batch(p, c)?, (b, 1, d, d), device)?;
        let cnd = model.condition(&v, &pose_vectors(p, d, device)?)?;
        let mut noise = |_l: usize, shape: &[usize]| normal(&mut rng, shape, device);
        let out = model.generate(&cnd, opts.temperature, &mut noise)?;
        let mut imgs: Vec<f32> = out.flatten_all()?.to_vec1()?;
        imgs.iter_mut().for_each(|x| *x *= inv_scale);
        if imgs.iter().any(|x| !x.is_finite()) {
            return Err(ProsError::msg(format!(
                "generated particles {i}..{} are not finite: the model's weights are damaged",
                i + b
            )));
        }
        writer.push_batch(&imgs)?;
        if kept.len() < n_check * dd {
            let take = (n_check * dd - kept.len()).min(imgs.len());
            kept.extend_from_slice(&imgs[..take]);
        }
        i += b;
        on_progress(i, n);
    }
    // Quality against the raw particles the CTFs came from.
    let mut raw_imgs = vec![0f32; n_check * dd];
    for k in 0..n_check {
        raw.read_image(k % n_raw, &mut raw_imgs[k * dd..(k + 1) * dd])?;
    }
    let hk = histogram_kl(&kept, &raw_imgs, dd);
    let rolled: Vec<f32> =
        (0..n_check).flat_map(|k| raw_imgs[((k + 1) % n_check) * dd..][..dd].to_vec()).collect();
    let hk_rr = if n_check > 1 { histogram_kl(&rolled, &raw_imgs, dd) } else { 0.0 };
    let (mut own, mut other) = (0.0, 0.0);
    let mut img = vec![0f32; dd];
    for k in 0..n_check {
        let g = &kept[k * dd..(k + 1) * dd];
        let ctf = ctfs.as_ref().map(|c| &c[k]);
        cond.image(&poses[k], ctf, &mut img)?;
        own += corr(g, &img);
        let j = (k + n_check / 2 + 1) % n;
        cond.image(&Pose { rot: poses[j].rot, shift_px: poses[k].shift_px }, ctf, &mut img)?;
        other += corr(g, &img);
    }
    // Metadata: a fresh RELION 3.1 STAR beside the stack.
    let star_path = out_dir.join("auxiliary.star");
    let mut s = ParticleStack::from_parts(
        &star_path,
        vec!["auxiliary.mrcs".into()],
        (0..n).map(|k| ImageRef { file: 0, index: k as u64 }).collect(),
        d,
        apix,
    );
    s.source = Source::Stack;
    s.poses = Some(poses.clone());
    s.ctf = ctfs;
    writer.finish()?;
    cryoforge_io::export::write_star_with(&s, &star_path, &[(AUX_COLUMN, vec!["1".to_string(); n])])?;
    let out = Generated {
        n,
        stack: stack_path,
        star: star_path,
        poses,
        histogram_kl: hk,
        histogram_kl_raw_vs_raw: hk_rr,
        snr_db_generated: snr_db(&kept, d),
        snr_db_raw: snr_db(&raw_imgs, d),
        corr_own_pose: own / n_check as f64,
        corr_other_pose: other / n_check as f64,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let j = serde_json::to_vec_pretty(&out).map_err(|e| ProsError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&out_dir.join("generate.json"), &j)?;
    Ok(out)
}
