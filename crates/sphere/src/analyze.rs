//! `sphere analyze`: the shared analysis of the run-directory contract
//! ([`cryoforge_hetero::analyze_run`]: latents, PCA, UMAP, k-means, PC traversals with
//! structures and Gaussian-density volumes, clash counts, coords-out, per-cluster STAR
//! files, structures at user latents, truth.json for simulated data) with the
//! posterior-mean-segmentation deformation as the decoder, plus the cryoSPHERE extras:
//! segmentation.csv (hard assignment + soft weights per residue), segmentation.pdb (the
//! segment, 1-based, in the B-factor column), segment_counts.csv and segment_motions.csv
//! (per particle and segment: rotation angle, axis, translation). The segmentation counts
//! go into summary.json (`segmentation`).
//!
//! Decoding uses the posterior-mean segmentation and the encoder means, so results are
//! reproducible run to run (the reference samples a fresh segmentation).

use std::path::Path;

use candle_core::{Device, Tensor};
use cryoforge_io::pdb::AnchorResidue;
use cryoforge_io::stack::ParticleStack;
use serde_json::json;

use crate::model::SphereModel;
use crate::train::{load_model, ModelMeta};
use crate::{Result, SphereError};

/// Per-particle decoding of a run.
pub struct Decoded {
    /// Encoder means [N·zdim].
    pub z: Vec<f32>,
    /// Rotation angles (rad) [N·K], axes [N·K·3], translations (Å) [N·K·3].
    pub angle: Vec<f32>,
    pub axis: Vec<f32>,
    pub trans: Vec<f32>,
}

fn write(path: &Path, text: &str) -> Result<()> {
    cryoforge_io::atomic::write_bytes_atomic(path, text.as_bytes())?;
    Ok(())
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| SphereError::file(p, format!("cannot create: {e}")))
}

/// Encode every particle (encoder mean) and decode its motions.
pub fn decode_all(
    model: &SphereModel,
    meta: &ModelMeta,
    stack: &ParticleStack,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Decoded> {
    let n = stack.len();
    let d = meta.box_px;
    let k = model.seg.n_segments();
    let dev = Device::Cpu;
    let (mut z, mut angle, mut axis, mut trans) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let bs = 256;
    let mut buf = vec![0f32; d * d];
    let sign = if model.cfg.invert { -1.0 } else { 1.0 };
    for start in (0..n).step_by(bs) {
        let end = (start + bs).min(n);
        let mut imgs = Vec::with_capacity((end - start) * d * d);
        for i in start..end {
            stack.read_image(i, &mut buf)?;
            imgs.extend(buf.iter().map(|v| v * sign / meta.image_std as f32));
        }
        let x = Tensor::from_vec(imgs, (end - start, d * d), &dev)?;
        let (mu, _) = model.encode(&x)?;
        let m = model.decode(&mu)?;
        z.extend(mu.flatten_all()?.to_vec1::<f32>()?);
        angle.extend(m.angle.flatten_all()?.to_vec1::<f32>()?);
        axis.extend(m.axis.flatten_all()?.to_vec1::<f32>()?);
        trans.extend(m.trans.flatten_all()?.to_vec1::<f32>()?);
        progress(end, n);
    }
    debug_assert_eq!(angle.len(), n * k);
    Ok(Decoded { z, angle, axis, trans })
}

/// Deformed structures for latent vectors `zs` (row-major [B·zdim]) with the
/// posterior-mean segmentation: B·R anchor positions (Å, box frame), structure after
/// structure — the batched decoder of [`cryoforge_hetero::analyze_run`].
pub fn structures_at(model: &SphereModel, zs: &[f32]) -> Result<Vec<[f32; 3]>> {
    let zd = model.cfg.zdim;
    if zd == 0 || !zs.len().is_multiple_of(zd) {
        return Err(SphereError::msg(format!("{} latent values for zdim {zd}", zs.len())));
    }
    let b = zs.len() / zd;
    if b == 0 {
        return Ok(Vec::new());
    }
    let z = Tensor::from_vec(zs.to_vec(), (b, zd), &Device::Cpu)?;
    let m = model.decode(&z)?;
    let ws = model.seg.posterior_mean_blocks()?;
    let x: Vec<Vec<Vec<f32>>> = model.deform_blocks(&ws, &m)?.to_vec3()?;
    Ok(x.into_iter().flat_map(|s| s.into_iter().map(|p| [p[0], p[1], p[2]])).collect())
}

/// The reference anchors of a run in the model's residue order (RUN/reference.pdb, with
/// the amplitudes the model was trained with).
pub fn reference_residues(run: &Path, meta: &ModelMeta) -> Result<Vec<AnchorResidue>> {
    let p = run.join("reference.pdb");
    let s = cryoforge_io::pdb::read_structure(&p)?;
    let m = s.models.first().ok_or_else(|| SphereError::file(&p, "no model"))?;
    let mut res = cryoforge_io::pdb::anchor_atoms(m).map_err(|e| SphereError::file(&p, e.to_string()))?;
    if res.len() != meta.amplitudes.len() {
        return Err(SphereError::file(
            &p,
            format!("{} residues, model.json has {}", res.len(), meta.amplitudes.len()),
        ));
    }
    for (r, &a) in res.iter_mut().zip(&meta.amplitudes) {
        r.amplitude = a;
    }
    Ok(res)
}

/// Writes segmentation.csv, segmentation.pdb, segment_counts.csv and segment_motions.csv
/// into `out`; returns the summary.json `segmentation` entry (n_segments, counts).
pub fn write_segmentation(
    model: &SphereModel,
    meta: &ModelMeta,
    residues: &[AnchorResidue],
    dec: &Decoded,
    out: &Path,
) -> Result<serde_json::Value> {
    mkdir(out)?;
    let k = model.seg.n_segments();
    let r = residues.len();
    let n = dec.angle.len() / k.max(1);
    let x0: Vec<[f64; 3]> = residues.iter().map(|a| a.pos).collect();
    // Segmentation.
    let w: Vec<Vec<f32>> = model.seg.posterior_mean()?.squeeze(0)?.to_vec2()?;
    let hard: Vec<Option<usize>> = w
        .iter()
        .map(|row| {
            if row.iter().sum::<f32>() <= 0.0 {
                None
            } else {
                Some(row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0))
            }
        })
        .collect();
    let mut csv = String::from("residue,chain,resid,segment");
    for s in 0..k {
        csv.push_str(&format!(",w{}", s + 1));
    }
    csv.push('\n');
    for i in 0..r {
        let seg = hard[i].map(|s| (s + 1).to_string()).unwrap_or_else(|| "0".into());
        csv.push_str(&format!("{i},{},{},{seg}", meta.chains[i], meta.resids[i]));
        for s in 0..k {
            csv.push_str(&format!(",{:.6}", w[i][s]));
        }
        csv.push('\n');
    }
    write(&out.join("segmentation.csv"), &csv)?;
    let bf: Vec<f64> = hard.iter().map(|h| h.map(|s| (s + 1) as f64).unwrap_or(0.0)).collect();
    cryoforge_io::pdb::write_ca_models(
        out.join("segmentation.pdb"),
        residues,
        std::slice::from_ref(&x0),
        Some(&bf),
    )?;
    let mut counts = vec![0usize; k];
    for s in hard.iter().flatten() {
        counts[*s] += 1;
    }
    let mut ctext = String::from("segment,part,n_residues\n");
    let seg_part = model.seg.layout.segment_part();
    for s in 0..k {
        ctext.push_str(&format!("{},{},{}\n", s + 1, seg_part[s] + 1, counts[s]));
    }
    write(&out.join("segment_counts.csv"), &ctext)?;
    let mut mt = String::from("index,segment,angle_deg,axis_x,axis_y,axis_z,tx_A,ty_A,tz_A\n");
    for i in 0..n {
        for s in 0..k {
            let a = &dec.axis[(i * k + s) * 3..(i * k + s) * 3 + 3];
            let t = &dec.trans[(i * k + s) * 3..(i * k + s) * 3 + 3];
            mt.push_str(&format!(
                "{i},{},{:.5},{:.6},{:.6},{:.6},{:.4},{:.4},{:.4}\n",
                s + 1,
                (dec.angle[i * k + s] as f64).to_degrees(),
                a[0],
                a[1],
                a[2],
                t[0],
                t[1],
                t[2]
            ));
        }
    }
    write(&out.join("segment_motions.csv"), &mt)?;

    Ok(json!({
        "n_segments": k,
        "counts": counts,
        "decoded_with": "posterior mean",
    }))
}

/// Analyses the run `run` (trained on `stack`, in the run's particle order): encodes every
/// particle, writes the segmentation extras into `opts.out_dir` and runs the shared driver
/// with the posterior-mean deformation as decoder. `opts.method` is set to "cryosphere",
/// `opts.sigma_a` to the run's σ and the segmentation counts are added to `opts.extras`.
pub fn analyze(
    run: &Path,
    stack: &ParticleStack,
    opts: &cryoforge_hetero::AnalyzeOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<cryoforge_hetero::Summary> {
    let (model, meta, cfg) = load_model(run)?;
    let d = stack.box_px()?;
    if d != meta.box_px {
        return Err(SphereError::file(
            &stack.path,
            format!("box {d} px, the run {} was trained on {} px", run.display(), meta.box_px),
        ));
    }
    let residues = reference_residues(run, &meta)?;
    let dec = decode_all(&model, &meta, stack, progress)?;
    let seg = write_segmentation(&model, &meta, &residues, &dec, &opts.out_dir)?;
    let mut o = opts.clone();
    o.method = "cryosphere".into();
    o.sigma_a = cfg.sigma_a;
    o.extras.insert("segmentation".into(), seg);
    let m = &model;
    let decode = |z: &[f32]| structures_at(m, z).map_err(|e| e.to_string());
    Ok(cryoforge_hetero::analyze_run(&dec.z, cfg.zdim, &decode, &residues, Some(stack), &o)?)
}
