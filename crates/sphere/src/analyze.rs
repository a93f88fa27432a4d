//! `sphere analyze`: everything of the shared analysis contract (latents, PCA, UMAP,
//! k-means, PC traversals with structures and Gaussian-density volumes, coords-out,
//! particles-out, clash counts, truth.json for simulated data) plus the segmentation:
//! segmentation.csv (hard assignment + soft weights per residue), segmentation.pdb (the
//! segment, 1-based, in the B-factor column), segment_counts.csv and segment_motions.csv
//! (per particle and segment: rotation angle, axis, translation).
//!
//! Decoding uses the posterior-mean segmentation and the encoder means, so results are
//! reproducible run to run (the reference samples a fresh segmentation).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use cryoforge_analysis::{
    kmeans, pc_traversal, pearson, spearman, KMeansOptions, MatrixView, Pca, UmapOptions,
};
use cryoforge_io::pdb::AnchorResidue;
use cryoforge_io::stack::{LoadOptions, ParticleStack};
use serde_json::json;

use crate::model::SphereModel;
use crate::npy;
use crate::train::{load_model, ModelMeta};
use crate::{Result, SphereError};

#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    pub ksample: usize,
    pub pc_points: usize,
    pub coords_out: Option<PathBuf>,
    pub particles_out: Option<PathBuf>,
    pub truth: Option<PathBuf>,
    pub truth_models: Option<PathBuf>,
    pub umap: bool,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            ksample: 10,
            pc_points: 10,
            coords_out: None,
            particles_out: None,
            truth: None,
            truth_models: None,
            umap: true,
        }
    }
}

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

/// Deformed structures [B][R] for latent vectors `zs` (row-major [B·zdim]).
pub fn structures_at(model: &SphereModel, zs: &[f32]) -> Result<Vec<Vec<[f64; 3]>>> {
    let zd = model.cfg.zdim;
    let b = zs.len() / zd;
    if b == 0 {
        return Ok(Vec::new());
    }
    let z = Tensor::from_vec(zs.to_vec(), (b, zd), &Device::Cpu)?;
    let m = model.decode(&z)?;
    let w = model.seg.posterior_mean()?;
    let x: Vec<Vec<Vec<f32>>> = model.deform(&w, &m)?.to_vec3()?;
    Ok(x.into_iter()
        .map(|s| s.into_iter().map(|p| [p[0] as f64, p[1] as f64, p[2] as f64]).collect())
        .collect())
}

fn n_clashes(x: &[[f64; 3]], chains: &[String]) -> usize {
    let pairs = cryoforge_nn::structure::pairs_within(x, 0.0, 4.0);
    pairs.iter().filter(|&&(i, j)| !(j == i + 1 && chains[i as usize] == chains[j as usize])).count()
}

fn rmsd(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    let s: f64 = a.iter().zip(b).map(|(p, q)| (0..3).map(|i| (p[i] - q[i]).powi(2)).sum::<f64>()).sum();
    (s / a.len().max(1) as f64).sqrt()
}

fn residues_of(meta: &ModelMeta, x0: &[[f64; 3]]) -> Vec<AnchorResidue> {
    (0..meta.chains.len())
        .map(|i| AnchorResidue {
            chain: meta.chains[i].clone(),
            segment: 0,
            seq: meta.resids[i],
            icode: None,
            name: meta.resnames[i].clone(),
            atom: "CA".into(),
            pos: x0[i],
            amplitude: meta.amplitudes[i],
            kind: cryoforge_io::pdb::AnchorKind::Protein,
        })
        .collect()
}

fn read_truth_models(path: &Path) -> Result<Vec<Vec<[f64; 3]>>> {
    let s = cryoforge_io::pdb::read_structure(path)?;
    s.models
        .iter()
        .map(|m| {
            cryoforge_io::pdb::anchor_atoms(m)
                .map(|r| r.iter().map(|a| a.pos).collect())
                .map_err(|e| SphereError::file(path, e.to_string()))
        })
        .collect()
}

/// The `model` column of a simulate truth.csv.
pub fn read_truth_models_column(path: &Path) -> Result<Vec<usize>> {
    let t =
        std::fs::read_to_string(path).map_err(|e| SphereError::file(path, format!("cannot read: {e}")))?;
    let mut lines = t.lines();
    let header = lines.next().ok_or_else(|| SphereError::file(path, "empty"))?;
    let col = header
        .split(',')
        .position(|c| c == "model")
        .ok_or_else(|| SphereError::file(path, "no `model` column"))?;
    lines
        .enumerate()
        .map(|(i, l)| {
            l.split(',')
                .nth(col)
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| SphereError::file(path, format!("line {}: bad model index", i + 2)))
        })
        .collect()
}

/// Run the analysis of `run` into `out`; returns summary.json's content.
pub fn analyze(
    run: &Path,
    out: &Path,
    o: &AnalyzeOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<serde_json::Value> {
    let (model, meta, cfg) = load_model(run)?;
    let toml_path = run.join("run.toml");
    let rt: toml::Value = toml::from_str(
        &std::fs::read_to_string(&toml_path).map_err(|e| SphereError::file(&toml_path, e.to_string()))?,
    )
    .map_err(|e| SphereError::file(&toml_path, e.to_string()))?;
    let ppath = rt
        .get("data")
        .and_then(|d| d.get("particles"))
        .and_then(|p| p.as_str())
        .ok_or_else(|| SphereError::file(&toml_path, "no [data] particles"))?;
    let n_expected =
        rt.get("data").and_then(|d| d.get("n_particles")).and_then(|v| v.as_integer()).unwrap_or(-1);
    let mut stack = ParticleStack::load(Path::new(ppath), &LoadOptions::default())?;
    if n_expected >= 0 && stack.len() as i64 != n_expected {
        if (n_expected as usize) < stack.len() {
            stack.select_ind_first(None, Some(n_expected as usize))?;
        } else {
            return Err(SphereError::file(
                Path::new(ppath),
                format!("{} particles, the run trained on {n_expected}", stack.len()),
            ));
        }
    }
    mkdir(out)?;
    let n = stack.len();
    let k = model.seg.n_segments();
    let zd = cfg.zdim;
    let dec = decode_all(&model, &meta, &stack, progress)?;
    let x0: Vec<[f64; 3]> =
        model.x0.to_vec2::<f32>()?.iter().map(|p| [p[0] as f64, p[1] as f64, p[2] as f64]).collect();
    let residues = residues_of(&meta, &x0);
    let r = residues.len();

    // Latents.
    npy::write_f32(&out.join("latents.npy"), &dec.z, &[n, zd])?;
    let mut csv = String::from("index");
    for j in 0..zd {
        csv.push_str(&format!(",z{}", j + 1));
    }
    csv.push('\n');
    for i in 0..n {
        csv.push_str(&i.to_string());
        for j in 0..zd {
            csv.push_str(&format!(",{}", dec.z[i * zd + j]));
        }
        csv.push('\n');
    }
    write(&out.join("latents.csv"), &csv)?;
    let zview = MatrixView::new(&dec.z, n, zd)?;

    // PCA.
    let pca = Pca::fit(zview, None)?;
    let proj = pca.transform(zview)?;
    let npc = pca.n_components();
    let pv: Vec<f32> = proj.as_slice().iter().map(|&v| v as f32).collect();
    npy::write_f32(&out.join("pca.npy"), &pv, &[n, npc])?;
    let mut csv = String::from("pc,variance,ratio\n");
    for j in 0..npc {
        csv.push_str(&format!(
            "{},{},{}\n",
            j + 1,
            pca.explained_variance()[j],
            pca.explained_variance_ratio()[j]
        ));
    }
    write(&out.join("pca_explained.csv"), &csv)?;

    // UMAP.
    if o.umap && zd >= 2 && n >= 4 {
        let mut uo = UmapOptions::default();
        uo.n_neighbors = uo.n_neighbors.min(n - 1);
        let u = cryoforge_analysis::umap(zview, &uo)?;
        let uv: Vec<f32> = u.embedding.as_slice().iter().map(|&v| v as f32).collect();
        npy::write_f32(&out.join("umap.npy"), &uv, &[n, 2])?;
    }

    let mut clash_rows: Vec<(String, usize)> = Vec::new();
    let chains = meta.chains.clone();
    let vol = |path: &Path, x: &[[f64; 3]]| -> Result<()> {
        let g = cryoforge_sim::density::GaussianModel::new(x.to_vec(), meta.amplitudes.clone(), cfg.sigma_a)
            .map_err(|e| SphereError::msg(e.to_string()))?;
        let v = g.render_volume(meta.box_px, meta.apix).map_err(|e| SphereError::msg(e.to_string()))?;
        let h = (meta.box_px / 2) as f32 * meta.apix as f32;
        cryoforge_io::mrc::write_volume(path, &v, [meta.box_px; 3], meta.apix as f32, [-h, -h, -h])?;
        Ok(())
    };

    // k-means.
    let kk = o.ksample.min(n).max(1);
    let km = kmeans(zview, &KMeansOptions::new(kk))?;
    let kdir = out.join("kmeans");
    mkdir(&kdir)?;
    write(&kdir.join("labels.txt"), &km.labels.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    let mut ctext = String::new();
    for c in 0..kk {
        ctext.push_str(&km.centres.row(c).iter().map(|v| format!("{v}")).collect::<Vec<_>>().join(" "));
        ctext.push('\n');
    }
    write(&kdir.join("centers.txt"), &ctext)?;
    let cind = cryoforge_analysis::cluster_centres_snapped(zview, &km)?;
    write(&kdir.join("centers_ind.txt"), &cind.iter().map(|i| format!("{i}\n")).collect::<String>())?;
    write(&kdir.join("inertia.txt"), &format!("{}\n", km.inertia))?;
    let zc: Vec<f32> = cind.iter().flat_map(|&i| dec.z[i * zd..(i + 1) * zd].to_vec()).collect();
    let cs = structures_at(&model, &zc)?;
    cryoforge_io::pdb::write_ca_models(kdir.join("centers.pdb"), &residues, &cs, None)?;
    for (c, s) in cs.iter().enumerate() {
        clash_rows.push((format!("kmeans/center_{c}"), n_clashes(s, &chains)));
    }

    // PC traversals.
    for pc in 0..npc.min(3) {
        let tr = pc_traversal(zview, &pca, pc, o.pc_points.max(2), 5.0, 95.0)?;
        let dir = out.join(format!("pc{}", pc + 1));
        mkdir(&dir)?;
        let zs: Vec<f32> =
            tr.iter().flat_map(|t| t.latent.iter().map(|&v| v as f32).collect::<Vec<_>>()).collect();
        let ss = structures_at(&model, &zs)?;
        cryoforge_io::pdb::write_ca_models(dir.join("traversal.pdb"), &residues, &ss, None)?;
        let mut zt = String::new();
        for t in &tr {
            zt.push_str(&t.latent.iter().map(|v| format!("{v}")).collect::<Vec<_>>().join(" "));
            zt.push('\n');
        }
        write(&dir.join("z_values.txt"), &zt)?;
        for (i, s) in ss.iter().enumerate() {
            vol(&dir.join(format!("vol_{i:03}.mrc")), s)?;
            clash_rows.push((format!("pc{}/{i}", pc + 1), n_clashes(s, &chains)));
        }
    }
    let mut ct = String::from("structure,n_clashes\n");
    for (s, c) in &clash_rows {
        ct.push_str(&format!("{s},{c}\n"));
    }
    write(&out.join("clash.csv"), &ct)?;

    // Per-particle structures (coords-out / particles-out), in chunks.
    let need_coords = o.coords_out.is_some() || o.particles_out.is_some() || o.truth_models.is_some();
    let mut all_coords: Vec<Vec<[f64; 3]>> = Vec::new();
    if need_coords {
        for start in (0..n).step_by(512) {
            let end = (start + 512).min(n);
            all_coords.extend(structures_at(&model, &dec.z[start * zd..end * zd])?);
        }
        if let Some(p) = &o.coords_out {
            let flat: Vec<f32> = all_coords.iter().flatten().flat_map(|p| p.map(|v| v as f32)).collect();
            npy::write_f32(p, &flat, &[n, r, 3])?;
        }
        if let Some(p) = &o.particles_out {
            cryoforge_io::pdb::write_ca_models(p, &residues, &all_coords, None)?;
        }
    }

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
    cryoforge_io::pdb::write_ca_models(out.join("segmentation.pdb"), &residues, &[x0.clone()], Some(&bf))?;
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

    // Truth.
    let truth_path = o.truth.clone().or_else(|| {
        let p = Path::new(ppath).parent().map(|d| d.join("truth.csv"))?;
        p.exists().then_some(p)
    });
    let mut truth_json = serde_json::Value::Null;
    if let Some(tp) = &truth_path {
        let frames = read_truth_models_column(tp)?;
        if frames.len() >= n {
            let frames = &frames[..n];
            let fr: Vec<f64> = frames.iter().map(|&f| f as f64).collect();
            let pc1 = proj.column(0);
            let mut tj = serde_json::Map::new();
            tj.insert("pc1_frame_spearman".into(), json!(spearman(&pc1, &fr).unwrap_or(f64::NAN)));
            tj.insert("pc1_frame_pearson".into(), json!(pearson(&pc1, &fr).unwrap_or(f64::NAN)));
            if let Some(tm) = &o.truth_models {
                let tms = read_truth_models(tm)?;
                let mut per: HashMap<usize, (f64, f64, usize)> = HashMap::new();
                let (mut sp, mut sr) = (0.0, 0.0);
                for i in 0..n {
                    let t = tms.get(frames[i]).ok_or_else(|| {
                        SphereError::file(tm, format!("no model {} (particle {i})", frames[i]))
                    })?;
                    if t.len() != r {
                        return Err(SphereError::file(
                            tm,
                            format!("{} residues, the reference has {r}", t.len()),
                        ));
                    }
                    let (a, b) = (rmsd(&all_coords[i], t), rmsd(&x0, t));
                    sp += a;
                    sr += b;
                    let e = per.entry(frames[i]).or_insert((0.0, 0.0, 0));
                    e.0 += a;
                    e.1 += b;
                    e.2 += 1;
                }
                let mut keys: Vec<usize> = per.keys().copied().collect();
                keys.sort();
                let pf: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|f| {
                        let e = per[f];
                        json!([f, e.0 / e.2 as f64, e.1 / e.2 as f64])
                    })
                    .collect();
                tj.insert("rmsd_mean_A".into(), json!(sp / n as f64));
                tj.insert("rmsd_ref_mean_A".into(), json!(sr / n as f64));
                tj.insert("per_frame_rmsd".into(), json!(pf));
            }
            truth_json = serde_json::Value::Object(tj);
            let text =
                serde_json::to_string_pretty(&truth_json).map_err(|e| SphereError::msg(e.to_string()))?;
            write(&out.join("truth.json"), &(text + "\n"))?;
        }
    }

    let summary = json!({
        "method": "cryosphere",
        "n_particles": n,
        "zdim": zd,
        "explained_variance_ratio": pca.explained_variance_ratio(),
        "kmeans": {"k": kk, "inertia": km.inertia},
        "segmentation": {
            "n_segments": k,
            "counts": counts,
            "decoded_with": "posterior mean",
        },
        "truth": truth_json,
    });
    let text = serde_json::to_string_pretty(&summary).map_err(|e| SphereError::msg(e.to_string()))?;
    write(&out.join("summary.json"), &(text + "\n"))?;
    Ok(summary)
}
