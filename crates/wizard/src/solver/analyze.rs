//! `cryoforge solver analyze RUN`: what cryoDRGN's `analyze` gives, for CryoSolver's
//! latents (the standardised frozen features): PCA, UMAP, k-means with the decoder's
//! volume at the particle nearest each centre, volumes along the first PCs, and one STAR
//! file per cluster (the particles at the run's last poses) to re-refine.
//!
//! Output folder (default RUN/analysis):
//!
//! | file | content |
//! |---|---|
//! | latents.npy | float32 [N, zdim] (the run's z.npy) |
//! | pca.npy, pca_explained.csv | float32 [N, n_pc]; `pc,variance,ratio` |
//! | umap.npy | float32 [N, 2] |
//! | kmeans/labels.txt, centers_ind.txt, sizes.txt, vol_XXX.mrc | k-means (k = 10 by default) |
//! | pcN/z_values.txt, vol_XXX.mrc | 5th → 95th percentile along PC N, snapped to real particles |
//! | particles/cluster_XXX.star | the particles of each cluster |
//! | summary.json | n_particles, zdim, k, cluster sizes, explained variance ratio |

use super::{load_run, RunConfig};
use anyhow::{anyhow, bail, Context, Result};
use cryoforge_analysis::kmeans::{kmeans, KMeansOptions};
use cryoforge_analysis::{cluster_centres_snapped, pc_traversal, umap, Matrix, Pca, UmapOptions};
use cryoforge_io::stack::ParticleStack;
use std::path::{Path, PathBuf};

/// Options of [`analyze`].
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    pub out: PathBuf,
    /// k-means clusters.
    pub k: usize,
    /// Principal components to traverse and points per traversal.
    pub pcs: usize,
    pub points: usize,
    pub umap: bool,
    pub seed: u64,
}

impl AnalyzeOptions {
    pub fn new(out: PathBuf) -> AnalyzeOptions {
        AnalyzeOptions { out, k: 10, pcs: 2, points: 5, umap: true, seed: 0 }
    }
}

/// What [`analyze`] found.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub labels: Vec<usize>,
    pub centres_ind: Vec<usize>,
    /// Volumes at the centres (D³, data units), in cluster order.
    pub volumes: Vec<Vec<f32>>,
    pub config: RunConfig,
    pub json: serde_json::Value,
}

fn write_text(path: &Path, s: &str) -> Result<()> {
    cryoforge_io::atomic::write_bytes_atomic(path, s.as_bytes())?;
    Ok(())
}

/// Analyse run `run` (see the module docs).
pub fn analyze(run: &Path, opts: &AnalyzeOptions, say: &dyn Fn(&str)) -> Result<Analysis> {
    let (rc, dec, z) = load_run(run)?;
    let n = rc.n_particles;
    let zd = rc.decoder.zdim;
    if opts.k == 0 || opts.k > n {
        bail!("--k {}: between 1 and the number of particles ({n})", opts.k);
    }
    let out = &opts.out;
    std::fs::create_dir_all(out.join("kmeans"))
        .with_context(|| format!("{}: cannot create", out.display()))?;
    let zm = Matrix::new(z.iter().map(|&v| v as f64).collect(), n, zd).map_err(|e| anyhow!("{e}"))?;
    cryoforge_io::npy::write_npy_f32(out.join("latents.npy"), &[n, zd], &z)?;
    // PCA.
    let pca = Pca::fit(zm.view(), None).map_err(|e| anyhow!("PCA: {e}"))?;
    let pcs = pca.transform(zm.view()).map_err(|e| anyhow!("PCA: {e}"))?;
    let npc = pcs.n_cols();
    let p32: Vec<f32> = pcs.as_slice().iter().map(|&v| v as f32).collect();
    cryoforge_io::npy::write_npy_f32(out.join("pca.npy"), &[n, npc], &p32)?;
    let mut csv = String::from("pc,variance,ratio\n");
    for (j, (v, r)) in pca.explained_variance().iter().zip(pca.explained_variance_ratio()).enumerate() {
        csv.push_str(&format!("{},{v:.6},{r:.6}\n", j + 1));
    }
    write_text(&out.join("pca_explained.csv"), &csv)?;
    // UMAP.
    if opts.umap && n > 2 && zd >= 2 {
        say("UMAP of the latents");
        let u = umap(
            zm.view(),
            &UmapOptions { seed: opts.seed, n_neighbors: 15.min(n - 1), ..Default::default() },
        )
        .map_err(|e| anyhow!("UMAP: {e}"))?;
        let e: Vec<f32> = u.embedding.as_slice().iter().map(|&v| v as f32).collect();
        cryoforge_io::npy::write_npy_f32(out.join("umap.npy"), &[n, 2], &e)?;
    }
    // k-means and the centre volumes.
    say(&format!("k-means (k = {}) and the decoder's volumes at the centres", opts.k));
    let km = kmeans(zm.view(), &KMeansOptions { seed: opts.seed, ..KMeansOptions::new(opts.k) })
        .map_err(|e| anyhow!("k-means: {e}"))?;
    let cind = cluster_centres_snapped(zm.view(), &km).map_err(|e| anyhow!("{e}"))?;
    let lab: String = km.labels.iter().map(|l| format!("{l}\n")).collect();
    write_text(&out.join("kmeans/labels.txt"), &lab)?;
    write_text(
        &out.join("kmeans/centers_ind.txt"),
        &cind.iter().map(|i| format!("{i}\n")).collect::<String>(),
    )?;
    let sizes = km.cluster_sizes();
    write_text(&out.join("kmeans/sizes.txt"), &sizes.iter().map(|s| format!("{s}\n")).collect::<String>())?;
    let d = rc.box_px;
    let apix = rc.apix_a as f32;
    let vols = super::anchor_volumes(&dec, &z, &cind, rc.data_scale, rc.solver.k_max(d))?;
    for (c, v) in vols.iter().enumerate() {
        cryoforge_io::mrc::write_volume(
            out.join(format!("kmeans/vol_{c:03}.mrc")),
            v,
            [d, d, d],
            apix,
            [0.0; 3],
        )?;
    }
    // PC traversals.
    for pc in 0..opts.pcs.min(npc) {
        let dir = out.join(format!("pc{}", pc + 1));
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let pts = pc_traversal(
            zm.view(),
            &pca,
            pc,
            opts.points,
            cryoforge_analysis::DEFAULT_LO_PCT,
            cryoforge_analysis::DEFAULT_HI_PCT,
        )
        .map_err(|e| anyhow!("PC {} traversal: {e}", pc + 1))?;
        let ids: Vec<usize> = pts.iter().map(|p| p.particle_index).collect();
        let vs = super::anchor_volumes(&dec, &z, &ids, rc.data_scale, rc.solver.k_max(d))?;
        let mut zt = String::new();
        for (j, (p, v)) in pts.iter().zip(&vs).enumerate() {
            zt.push_str(&format!("{:.6} {}\n", p.value, p.particle_index));
            cryoforge_io::mrc::write_volume(
                dir.join(format!("vol_{j:03}.mrc")),
                v,
                [d, d, d],
                apix,
                [0.0; 3],
            )?;
        }
        write_text(&dir.join("z_values.txt"), &zt)?;
    }
    // Particles per cluster, at the run's poses.
    let star = run.join("particles.star");
    let stack =
        ParticleStack::load(&star, &Default::default()).with_context(|| format!("{}", star.display()))?;
    if stack.len() != n {
        bail!("{}: {} particles, the run has {n}", star.display(), stack.len());
    }
    let pdir = out.join("particles");
    std::fs::create_dir_all(&pdir).with_context(|| format!("{}: cannot create", pdir.display()))?;
    for c in 0..km.k() {
        let ids: Vec<usize> = (0..n).filter(|&i| km.labels[i] == c).collect();
        if ids.is_empty() {
            continue;
        }
        let mut s = stack.clone();
        s.select(&ids)?;
        cryoforge_io::export::write_star(&s, &pdir.join(format!("cluster_{c:03}.star")))?;
    }
    let json = serde_json::json!({
        "method": "cryosolver",
        "n_particles": n,
        "zdim": zd,
        "features": rc.features.source,
        "kmeans": { "k": km.k(), "inertia": km.inertia, "sizes": sizes, "centers_ind": cind },
        "explained_variance_ratio": pca.explained_variance_ratio().iter().take(10).collect::<Vec<_>>(),
    });
    write_text(&out.join("summary.json"), &serde_json::to_string_pretty(&json)?)?;
    Ok(Analysis { labels: km.labels, centres_ind: cind, volumes: vols, config: rc, json })
}
