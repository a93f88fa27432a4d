//! cryoforge-hetero: the method-independent half of `cryoforge <method> analyze` for the
//! methods that deform a reference Cα model per particle (cryoSTAR, cryoSPHERE).
//!
//! A method supplies the per-particle latents and a decoder (latent → anchor coordinates
//! in Å, box frame: (0, 0, 0) at the box centre); [`analyze_run`] writes every file of the
//! run-directory contract into `opts.out_dir` (normally RUN/analysis):
//!
//! | file | content |
//! |---|---|
//! | latents.npy / latents.csv | float32 [N, zdim], particle order; `index,z1,..` |
//! | pca.npy / pca_explained.csv | float32 [N, n_pc]; `pc,variance,ratio` |
//! | umap.npy | float32 [N, 2] (zdim ≥ 2, unless `umap = false`) |
//! | kmeans/labels.txt, centers.txt, centers_ind.txt, centers.pdb, inertia.txt | k-means (k = 10), structures decoded at the particles nearest the centres |
//! | pc1/ pc2/ pc3/ traversal.pdb, z_values.txt, vol_XXX.mrc | 5th → 95th percentile along each PC, snapped to real particles, with Gaussian-density volumes |
//! | clash.csv | `structure,n_clashes` for every written structure |
//! | coords.npy | float32 [N, R, 3] at `coords_out` when given |
//! | particles/cluster_XXX.star | the particles of each k-means cluster (`particles_out`) |
//! | zfile/structures.pdb, vol_XXX.mrc | structures/volumes at user latents (`z_file`) |
//! | truth.json | with a `cryoforge simulate` truth.csv (and its model.pdb or `truth_models`) |
//! | summary.json | method, n_particles, zdim, explained_variance_ratio, kmeans {k, inertia}, extras |
//!
//! The API (stable; cryoSPHERE calls it too):
//!
//! ```no_run
//! use cryoforge_hetero::{analyze_run, AnalyzeOptions};
//! # fn f(latents: Vec<f32>, reference: Vec<cryoforge_io::pdb::AnchorResidue>) -> cryoforge_hetero::Result<()> {
//! let zdim = 8;
//! let r = reference.len();
//! // Batched decoder: n latents (flat, n·zdim) → n·R anchor positions (Å).
//! let decode = move |z: &[f32]| -> Result<Vec<[f32; 3]>, String> { Ok(vec![[0f32; 3]; z.len() / zdim * r]) };
//! let opts = AnalyzeOptions::new("cryostar", "RUN/analysis".into(), 64, 1.5);
//! let summary = analyze_run(&latents, zdim, &decode, &reference, None, &opts)?;
//! println!("{}", summary.json);
//! # Ok(()) }
//! ```

pub mod npy;

use cryoforge_analysis::{
    cluster_centres_snapped, kmeans, pc_traversal, pearson, spearman, umap, KMeansOptions, MatrixView, Pca,
    UmapOptions,
};
use cryoforge_io::pdb::{read_structure, write_ca_models, AnchorResidue};
use cryoforge_io::stack::ParticleStack;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use npy::{read_latents, read_npy, read_npy_2d, write_npy_f32};

/// Errors of the analysis driver (each names the file or the step).
#[derive(Debug, thiserror::Error)]
pub enum HeteroError {
    #[error(transparent)]
    Io(#[from] cryoforge_io::IoError),
    #[error("analysis: {0}")]
    Analysis(#[from] cryoforge_analysis::AnalysisError),
    #[error("{0}")]
    Msg(String),
}

impl HeteroError {
    pub fn msg(m: impl Into<String>) -> HeteroError {
        HeteroError::Msg(m.into())
    }
}

pub type Result<T> = std::result::Result<T, HeteroError>;

/// A batched decoder: `n` latent vectors (flat, `n·zdim` values) → `n·R` anchor positions
/// (Å, box frame), structure after structure. Errors are messages.
pub type Decoder<'a> = dyn Fn(&[f32]) -> std::result::Result<Vec<[f32; 3]>, String> + Sync + 'a;

/// Settings of [`analyze_run`]. [`AnalyzeOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// "cryostar" | "cryosphere" (summary.json `method`).
    pub method: String,
    /// Output folder (RUN/analysis).
    pub out_dir: PathBuf,
    /// Box (px) and pixel size (Å) of the Gaussian-density volumes.
    pub box_px: usize,
    pub apix_a: f64,
    /// Gaussian width σ (Å) of the volumes (cryoSTAR 2 Å).
    pub sigma_a: f64,
    /// k-means clusters (10).
    pub kmeans_k: usize,
    /// Principal components to traverse (3) and points per traversal (10).
    pub n_traverse_pcs: usize,
    pub traversal_points: usize,
    /// Traversal percentiles (5, 95).
    pub lo_pct: f64,
    pub hi_pct: f64,
    /// Compute UMAP (zdim ≥ 2).
    pub umap: bool,
    /// Write Gaussian-density volumes.
    pub volumes: bool,
    /// Non-adjacent anchors closer than this are a clash (4 Å).
    pub clash_cutoff_a: f64,
    pub seed: u64,
    /// float32 [N, R, 3] of every particle's decoded structure.
    pub coords_out: Option<PathBuf>,
    /// Folder for one STAR file per k-means cluster (needs the stack).
    pub particles_out: Option<PathBuf>,
    /// Decode these latents (.npy or text) into zfile/.
    pub z_file: Option<PathBuf>,
    /// `cryoforge simulate` truth.csv (index, model columns); None: look for truth.csv next
    /// to the particles (`particles_dir`).
    pub truth_csv: Option<PathBuf>,
    /// Trajectory of the true frames in the box frame (default: model.pdb next to the truth).
    pub truth_models: Option<PathBuf>,
    /// Folder of the particle file (to find truth.csv/model.pdb automatically).
    pub particles_dir: Option<PathBuf>,
    /// Method extras merged into summary.json.
    pub extras: serde_json::Map<String, serde_json::Value>,
    /// Decoder batch size.
    pub decode_batch: usize,
}

impl AnalyzeOptions {
    pub fn new(method: &str, out_dir: PathBuf, box_px: usize, apix_a: f64) -> AnalyzeOptions {
        AnalyzeOptions {
            method: method.to_string(),
            out_dir,
            box_px,
            apix_a,
            sigma_a: 2.0,
            kmeans_k: 10,
            n_traverse_pcs: 3,
            traversal_points: 10,
            lo_pct: 5.0,
            hi_pct: 95.0,
            umap: true,
            volumes: true,
            clash_cutoff_a: 4.0,
            seed: 0,
            coords_out: None,
            particles_out: None,
            z_file: None,
            truth_csv: None,
            truth_models: None,
            particles_dir: None,
            extras: serde_json::Map::new(),
            decode_batch: 512,
        }
    }
}

/// What [`analyze_run`] computed (also written as summary.json / truth.json).
#[derive(Debug, Clone)]
pub struct Summary {
    pub json: serde_json::Value,
    pub truth: Option<serde_json::Value>,
    /// Fraction of all particles' decoded structures with at least one clash.
    pub clash_fraction: f64,
}

/// Example particles next to the model's rendering of them: `examples.npy` float32
/// [M, 2, D, D] (particle as read, prediction: the decoded structure's Cα Gaussian image
/// with the particle's pose, shift and −CTF — the forward model the methods train with)
/// and `examples.txt` (their particle indices), for up to 8 particles spread over the set.
/// Skipped when the particles have no poses.
fn write_examples(
    st: &ParticleStack,
    all: &[[f32; 3]],
    reference: &[AnchorResidue],
    opts: &AnalyzeOptions,
    out: &Path,
) -> Result<()> {
    let Some(poses) = st.poses.as_ref() else { return Ok(()) };
    let (n, r, d) = (st.len(), reference.len(), opts.box_px);
    let m = n.min(8);
    if m == 0 || all.len() < n * r {
        return Ok(());
    }
    let imager = cryoforge_sim::gaussian_image::GaussianImager::new(d, opts.apix_a)
        .map_err(|e| HeteroError::msg(format!("example renderings: {e}")))?;
    let mut work = imager.work();
    let amps: Vec<f64> = reference.iter().map(|a| a.amplitude).collect();
    let (mut data, mut idx) = (Vec::with_capacity(m * 2 * d * d), String::new());
    let (mut img, mut pred, mut ctf) = (vec![0f32; d * d], vec![0f32; d * d], vec![0f32; d * d]);
    for j in 0..m {
        let i = j * n / m;
        st.read_image(i, &mut img)?;
        let centres: Vec<[f64; 3]> = all[i * r..(i + 1) * r].iter().map(|p| p.map(f64::from)).collect();
        let model = cryoforge_sim::density::GaussianModel::new(centres, amps.clone(), opts.sigma_a)
            .map_err(|e| HeteroError::msg(format!("example renderings: {e}")))?;
        let c = st.ctf.as_ref().map(|c| {
            cryoforge_core::ctf::ctf_grid_centered(&c[i], d, opts.apix_a, &mut ctf);
            ctf.iter_mut().for_each(|v| *v = -*v);
            &ctf[..]
        });
        imager
            .image(&model, &poses[i].rot, poses[i].shift_px, c, &mut work, &mut pred)
            .map_err(|e| HeteroError::msg(format!("example renderings: {e}")))?;
        data.extend_from_slice(&img);
        data.extend_from_slice(&pred);
        idx.push_str(&format!("{}\n", st.source_index[i]));
    }
    write_npy_f32(&out.join("examples.npy"), &data, &[m, 2, d, d])?;
    write_text(&out.join("examples.txt"), &idx)?;
    Ok(())
}

fn io_err(p: &Path, e: impl std::fmt::Display) -> HeteroError {
    HeteroError::msg(format!("{}: {e}", p.display()))
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| io_err(p, format!("cannot create folder: {e}")))
}

fn write_text(p: &Path, s: &str) -> Result<()> {
    cryoforge_io::atomic::write_bytes_atomic(p, s.as_bytes())?;
    Ok(())
}

/// Pairs (i, j) that are not chain neighbours: |i − j| > 1 or different chain segments.
fn bonded(refs: &[AnchorResidue], i: usize, j: usize) -> bool {
    j == i + 1 && refs[i].segment == refs[j].segment && refs[i].chain == refs[j].chain
}

/// Non-adjacent anchor pairs closer than `cutoff` Å in one structure (chain neighbours
/// (i, i+1) of one segment excluded). O(R²) with early rejection per axis.
pub fn count_clashes(coords: &[[f32; 3]], refs: &[AnchorResidue], cutoff: f64) -> usize {
    let c2 = (cutoff * cutoff) as f32;
    let cut = cutoff as f32;
    let mut n = 0;
    for i in 0..coords.len() {
        for j in i + 1..coords.len() {
            let dx = coords[i][0] - coords[j][0];
            if dx.abs() >= cut {
                continue;
            }
            let dy = coords[i][1] - coords[j][1];
            let dz = coords[i][2] - coords[j][2];
            if dx * dx + dy * dy + dz * dz < c2 && !bonded(refs, i, j) {
                n += 1;
            }
        }
    }
    n
}

fn decode_all(decode: &Decoder<'_>, z: &[f32], zdim: usize, r: usize, batch: usize) -> Result<Vec<[f32; 3]>> {
    let n = z.len() / zdim;
    let mut out = Vec::with_capacity(n * r);
    for chunk in z.chunks(batch.max(1) * zdim) {
        let c = decode(chunk).map_err(|e| HeteroError::msg(format!("decoder: {e}")))?;
        if c.len() != chunk.len() / zdim * r {
            return Err(HeteroError::msg(format!(
                "decoder returned {} positions for {} structures of {r} residues",
                c.len(),
                chunk.len() / zdim
            )));
        }
        out.extend(c);
    }
    Ok(out)
}

fn write_structures(path: &Path, refs: &[AnchorResidue], coords: &[[f32; 3]]) -> Result<()> {
    let r = refs.len();
    let frames: Vec<Vec<[f64; 3]>> = coords
        .chunks(r)
        .map(|s| s.iter().map(|p| [p[0] as f64, p[1] as f64, p[2] as f64]).collect())
        .collect();
    write_ca_models(path, refs, &frames, None)?;
    Ok(())
}

fn write_volumes(
    dir: &Path,
    refs: &[AnchorResidue],
    coords: &[[f32; 3]],
    opts: &AnalyzeOptions,
) -> Result<()> {
    if !opts.volumes {
        return Ok(());
    }
    let r = refs.len();
    let amps: Vec<f64> = refs.iter().map(|a| a.amplitude).collect();
    let n = opts.box_px;
    let o = -((n / 2) as f64 * opts.apix_a) as f32;
    let structs: Vec<&[[f32; 3]]> = coords.chunks(r).collect();
    structs.par_iter().enumerate().try_for_each(|(k, s)| -> Result<()> {
        let centres: Vec<[f64; 3]> = s.iter().map(|p| [p[0] as f64, p[1] as f64, p[2] as f64]).collect();
        let g = cryoforge_sim::GaussianModel::new(centres, amps.clone(), opts.sigma_a)
            .map_err(|e| HeteroError::msg(format!("structure {k}: {e}")))?;
        let v =
            g.render_volume(n, opts.apix_a).map_err(|e| HeteroError::msg(format!("structure {k}: {e}")))?;
        cryoforge_io::mrc::write_volume(
            dir.join(format!("vol_{k:03}.mrc")),
            &v,
            [n, n, n],
            opts.apix_a as f32,
            [o; 3],
        )?;
        Ok(())
    })
}

fn rmsd32(a: &[[f32; 3]], b: &[[f64; 3]]) -> f64 {
    let s: f64 =
        a.iter().zip(b).map(|(p, q)| (0..3).map(|d| (p[d] as f64 - q[d]).powi(2)).sum::<f64>()).sum();
    (s / a.len().max(1) as f64).sqrt()
}

/// Local chain geometry error of one structure against the truth: for the sequence offsets
/// 2, 3, 4, the sum of |d_pred(i, i+k) − d_true(i, i+k)| over residue pairs of the same chain
/// segment, and the number of such pairs (the cryoSTAR paper's check that per-residue
/// deformation keeps secondary structure).
fn local_geometry_error(
    pred: &[[f32; 3]],
    truth: &[[f64; 3]],
    reference: &[AnchorResidue],
) -> [(f64, usize); 3] {
    let dist32 =
        |a: &[f32; 3], b: &[f32; 3]| (0..3).map(|d| (a[d] as f64 - b[d] as f64).powi(2)).sum::<f64>().sqrt();
    let dist64 = |a: &[f64; 3], b: &[f64; 3]| (0..3).map(|d| (a[d] - b[d]).powi(2)).sum::<f64>().sqrt();
    let mut out = [(0.0, 0usize); 3];
    for (slot, k) in [2usize, 3, 4].into_iter().enumerate() {
        for i in 0..pred.len().saturating_sub(k) {
            let j = i + k;
            if reference[i].segment != reference[j].segment || reference[i].chain != reference[j].chain {
                continue;
            }
            out[slot].0 += (dist32(&pred[i], &pred[j]) - dist64(&truth[i], &truth[j])).abs();
            out[slot].1 += 1;
        }
    }
    out
}

/// Reads `cryoforge simulate`'s truth.csv → frame (model column) per original particle index.
pub fn read_truth_frames(path: &Path) -> Result<HashMap<usize, usize>> {
    let t = std::fs::read_to_string(path).map_err(|e| io_err(path, format!("cannot read: {e}")))?;
    let mut lines = t.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').map(str::trim).collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| io_err(path, format!("line 1: no column '{name}'")))
    };
    let (ci, cm) = (col("index")?, col("model")?);
    let mut out = HashMap::new();
    for (ln, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let get = |c: usize, name: &str| -> Result<usize> {
            f.get(c).and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
                io_err(path, format!("line {}, field {name}: not a non-negative integer", ln + 2))
            })
        };
        out.insert(get(ci, "index")?, get(cm, "model")?);
    }
    Ok(out)
}

/// Runs the whole analysis (see the crate docs). `latents`: [N, zdim] row-major in particle
/// order; `decode`: batched decoder; `reference`: the anchors of the reference model (the
/// residue order of the decoder's output; amplitudes for the volumes); `stack`: the run's
/// particles (for `particles_out` and the original indices that truth.csv refers to).
pub fn analyze_run(
    latents: &[f32],
    zdim: usize,
    decode: &Decoder<'_>,
    reference: &[AnchorResidue],
    stack: Option<&ParticleStack>,
    opts: &AnalyzeOptions,
) -> Result<Summary> {
    if zdim == 0 || latents.is_empty() || !latents.len().is_multiple_of(zdim) {
        return Err(HeteroError::msg(format!("latents: {} values for zdim {zdim}", latents.len())));
    }
    let n = latents.len() / zdim;
    if let Some(s) = stack.filter(|s| s.len() != n) {
        return Err(HeteroError::msg(format!("{} latents for {} particles", n, s.len())));
    }
    let r = reference.len();
    let out = &opts.out_dir;
    mkdir(out)?;
    // Latents.
    write_npy_f32(&out.join("latents.npy"), latents, &[n, zdim])?;
    let mut csv = String::from("index");
    for d in 0..zdim {
        csv.push_str(&format!(",z{}", d + 1));
    }
    csv.push('\n');
    for (i, row) in latents.chunks(zdim).enumerate() {
        csv.push_str(&i.to_string());
        for v in row {
            csv.push_str(&format!(",{v}"));
        }
        csv.push('\n');
    }
    write_text(&out.join("latents.csv"), &csv)?;
    let z = MatrixView::new(latents, n, zdim)?;

    // PCA.
    let pca = Pca::fit(z, None)?;
    let pcs = pca.transform(z)?;
    let n_pc = pcs.n_cols();
    let pcs32: Vec<f32> = pcs.as_slice().iter().map(|&v| v as f32).collect();
    write_npy_f32(&out.join("pca.npy"), &pcs32, &[n, n_pc])?;
    let mut s = String::from("pc,variance,ratio\n");
    for (j, (v, q)) in pca.explained_variance().iter().zip(pca.explained_variance_ratio()).enumerate() {
        s.push_str(&format!("{},{v},{q}\n", j + 1));
    }
    write_text(&out.join("pca_explained.csv"), &s)?;

    // UMAP.
    if opts.umap && zdim >= 2 && n >= 4 {
        let u = umap(z, &UmapOptions { seed: opts.seed, n_neighbors: 15.min(n - 1), ..Default::default() })?;
        let e: Vec<f32> = u.embedding.as_slice().iter().map(|&v| v as f32).collect();
        write_npy_f32(&out.join("umap.npy"), &e, &[n, 2])?;
    }

    let mut clash_rows: Vec<(String, usize)> = Vec::new();

    // k-means.
    let k = opts.kmeans_k.min(n);
    let km = kmeans(z, &KMeansOptions { seed: opts.seed, ..KMeansOptions::new(k) })?;
    let kdir = out.join("kmeans");
    mkdir(&kdir)?;
    write_text(&kdir.join("labels.txt"), &km.labels.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    let mut c = String::new();
    for i in 0..km.centres.n_rows() {
        let row: Vec<String> = km.centres.row(i).iter().map(|v| format!("{v}")).collect();
        c.push_str(&row.join(" "));
        c.push('\n');
    }
    write_text(&kdir.join("centers.txt"), &c)?;
    let cind = cluster_centres_snapped(z, &km)?;
    write_text(&kdir.join("centers_ind.txt"), &cind.iter().map(|i| format!("{i}\n")).collect::<String>())?;
    write_text(&kdir.join("inertia.txt"), &format!("{}\n", km.inertia))?;
    let zc: Vec<f32> = cind.iter().flat_map(|&i| z.row(i).iter().copied()).collect();
    let cc = decode_all(decode, &zc, zdim, r, opts.decode_batch)?;
    write_structures(&kdir.join("centers.pdb"), reference, &cc)?;
    write_volumes(&kdir, reference, &cc, opts)?;
    for (j, s) in cc.chunks(r).enumerate() {
        clash_rows.push((format!("kmeans/center_{j:03}"), count_clashes(s, reference, opts.clash_cutoff_a)));
    }

    // PC traversals.
    for pc in 0..opts.n_traverse_pcs.min(n_pc) {
        let pts = pc_traversal(z, &pca, pc, opts.traversal_points, opts.lo_pct, opts.hi_pct)?;
        let dir = out.join(format!("pc{}", pc + 1));
        mkdir(&dir)?;
        let mut zt = String::from("# point pc_value particle_index particle_pc_value z...\n");
        for (m, p) in pts.iter().enumerate() {
            let zs: Vec<String> = p.latent.iter().map(|v| format!("{v}")).collect();
            zt.push_str(&format!(
                "{m} {} {} {} {}\n",
                p.value,
                p.particle_index,
                p.particle_value,
                zs.join(" ")
            ));
        }
        write_text(&dir.join("z_values.txt"), &zt)?;
        let zp: Vec<f32> = pts.iter().flat_map(|p| z.row(p.particle_index).iter().copied()).collect();
        let tc = decode_all(decode, &zp, zdim, r, opts.decode_batch)?;
        write_structures(&dir.join("traversal.pdb"), reference, &tc)?;
        write_volumes(&dir, reference, &tc, opts)?;
        for (j, s) in tc.chunks(r).enumerate() {
            clash_rows.push((
                format!("pc{}/point_{j:03}", pc + 1),
                count_clashes(s, reference, opts.clash_cutoff_a),
            ));
        }
    }

    // User latents.
    if let Some(zf) = &opts.z_file {
        let (zu, nu) = read_latents(zf, zdim)?;
        if nu == 0 {
            return Err(io_err(zf, "no latent vectors"));
        }
        let dir = out.join("zfile");
        mkdir(&dir)?;
        let uc = decode_all(decode, &zu, zdim, r, opts.decode_batch)?;
        write_structures(&dir.join("structures.pdb"), reference, &uc)?;
        write_volumes(&dir, reference, &uc, opts)?;
        for (j, s) in uc.chunks(r).enumerate() {
            clash_rows
                .push((format!("zfile/structure_{j:03}"), count_clashes(s, reference, opts.clash_cutoff_a)));
        }
    }

    // Per-particle structures: clash fraction, --coords-out, truth.
    let truth_csv = opts
        .truth_csv
        .clone()
        .or_else(|| opts.particles_dir.as_ref().map(|d| d.join("truth.csv")).filter(|p| p.is_file()));
    let all = decode_all(decode, latents, zdim, r, opts.decode_batch)?;
    let clashing: usize =
        all.par_chunks(r).map(|s| usize::from(count_clashes(s, reference, opts.clash_cutoff_a) > 0)).sum();
    let clash_fraction = clashing as f64 / n as f64;
    if let Some(p) = &opts.coords_out {
        let flat: Vec<f32> = all.iter().flat_map(|p| *p).collect();
        write_npy_f32(p, &flat, &[n, r, 3])?;
    }
    if let Some(st) = stack {
        write_examples(st, &all, reference, opts, out)?;
    }
    let mut s = String::from("structure,n_clashes\n");
    for (name, c) in &clash_rows {
        s.push_str(&format!("{name},{c}\n"));
    }
    write_text(&out.join("clash.csv"), &s)?;

    // Particles per cluster.
    if let Some(dir) = &opts.particles_out {
        let st = stack.ok_or_else(|| HeteroError::msg("--particles-out needs the run's particles"))?;
        mkdir(dir)?;
        for c in 0..k {
            let idx: Vec<usize> = (0..n).filter(|&i| km.labels[i] == c).collect();
            if idx.is_empty() {
                continue;
            }
            let mut sub = st.clone();
            sub.select(&idx)?;
            cryoforge_io::export::write_star(&sub, &dir.join(format!("cluster_{c:03}.star")))?;
        }
    }

    // Truth.
    let mut truth = None;
    if let Some(tp) = truth_csv {
        let frames_of = read_truth_frames(&tp)?;
        let frame: Vec<usize> = (0..n)
            .map(|i| {
                let src = stack.map_or(i, |s| s.source_index[i]);
                frames_of
                    .get(&src)
                    .copied()
                    .ok_or_else(|| io_err(&tp, format!("no row for particle index {src}")))
            })
            .collect::<Result<_>>()?;
        let fr: Vec<f64> = frame.iter().map(|&f| f as f64).collect();
        let pc1: Vec<f64> = pcs.column(0);
        // A one-state data set (every particle from the same frame) or a constant PC1 has no
        // correlation: null, not a failed analysis.
        let varies = |v: &[f64]| v.iter().any(|x| *x != v[0]);
        let (rho, r_lin) = if varies(&fr) && varies(&pc1) {
            (Some(spearman(&pc1, &fr)?), Some(pearson(&pc1, &fr)?))
        } else {
            (None, None)
        };
        let rho_median = frame_median_spearman(&pc1, &frame)?;
        let mut tj = serde_json::json!({
            "truth_csv": tp,
            "pc1_frame_spearman": rho,
            "pc1_frame_median_spearman": rho_median,
            "pc1_frame_pearson": r_lin,
            "clash_fraction": clash_fraction,
        });
        let models_path = opts.truth_models.clone().or_else(|| {
            let p = tp.parent().unwrap_or(Path::new(".")).join("model.pdb");
            p.is_file().then_some(p)
        });
        if let Some(mp) = models_path {
            let st = read_structure(&mp)?;
            let mut traj: Vec<Vec<[f64; 3]>> = Vec::with_capacity(st.models.len());
            for (mi, m) in st.models.iter().enumerate() {
                let a = cryoforge_io::pdb::anchor_atoms(m).map_err(|e| io_err(&mp, e))?;
                if a.len() != r {
                    return Err(io_err(
                        &mp,
                        format!("model {}: {} anchor residues, the reference has {r}", mi + 1, a.len()),
                    ));
                }
                traj.push(a.iter().map(|x| x.pos).collect());
            }
            let ref_pos: Vec<[f32; 3]> =
                reference.iter().map(|a| [a.pos[0] as f32, a.pos[1] as f32, a.pos[2] as f32]).collect();
            let nf = traj.len();
            let mut acc = vec![(0f64, 0f64, 0usize); nf];
            let mut sum = (0f64, 0f64);
            let mut local = [(0f64, 0usize); 3];
            for i in 0..n {
                let f = frame[i];
                let t = traj.get(f).ok_or_else(|| {
                    io_err(&mp, format!("truth frame {f} of particle {i}, but only {nf} models"))
                })?;
                let rp = rmsd32(&all[i * r..(i + 1) * r], t);
                let rr = rmsd32(&ref_pos, t);
                for (acc_k, e) in
                    local.iter_mut().zip(local_geometry_error(&all[i * r..(i + 1) * r], t, reference))
                {
                    acc_k.0 += e.0;
                    acc_k.1 += e.1;
                }
                acc[f].0 += rp;
                acc[f].1 += rr;
                acc[f].2 += 1;
                sum.0 += rp;
                sum.1 += rr;
            }
            let per: Vec<serde_json::Value> = acc
                .iter()
                .enumerate()
                .filter(|(_, a)| a.2 > 0)
                .map(|(f, a)| serde_json::json!([f, a.0 / a.2 as f64, a.1 / a.2 as f64]))
                .collect();
            tj["truth_models"] = serde_json::json!(mp);
            tj["rmsd_mean_A"] = serde_json::json!(sum.0 / n as f64);
            tj["rmsd_ref_mean_A"] = serde_json::json!(sum.1 / n as f64);
            tj["per_frame_rmsd"] = serde_json::Value::Array(per);
            // Mean |d_pred − d_true| of Cα i→i+2, i+3, i+4 (same chain), Å.
            tj["local_geometry_error_A"] = serde_json::json!(local
                .iter()
                .map(|(s, c)| if *c > 0 { Some(s / *c as f64) } else { None })
                .collect::<Vec<_>>());
        }
        write_text(
            &out.join("truth.json"),
            &serde_json::to_string_pretty(&tj).map_err(|e| HeteroError::msg(e.to_string()))?,
        )?;
        truth = Some(tj);
    }

    let mut sj = serde_json::json!({
        "method": opts.method,
        "n_particles": n,
        "zdim": zdim,
        "n_residues": r,
        "explained_variance_ratio": pca.explained_variance_ratio(),
        "kmeans": {"k": k, "inertia": km.inertia, "sizes": km.cluster_sizes()},
        "clash_fraction": clash_fraction,
    });
    if let Some(o) = sj.as_object_mut() {
        for (key, v) in &opts.extras {
            o.insert(key.clone(), v.clone());
        }
        if let Some(t) = &truth {
            o.insert("truth".into(), t.clone());
        }
    }
    write_text(
        &out.join("summary.json"),
        &serde_json::to_string_pretty(&sj).map_err(|e| HeteroError::msg(e.to_string()))?,
    )?;
    Ok(Summary { json: sj, truth, clash_fraction })
}

/// Spearman correlation between each frame's median PC1 and the frame index, over the
/// frames that have particles: does PC1 order the states, whatever the per-particle spread?
/// `None` with fewer than two frames or constant medians.
pub fn frame_median_spearman(pc1: &[f64], frame: &[usize]) -> Result<Option<f64>> {
    let mut by: std::collections::BTreeMap<usize, Vec<f64>> = std::collections::BTreeMap::new();
    for (&v, &f) in pc1.iter().zip(frame) {
        if v.is_finite() {
            by.entry(f).or_default().push(v);
        }
    }
    let (mut fs, mut med) = (Vec::new(), Vec::new());
    for (f, mut v) in by {
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        med.push(if v.len() % 2 == 1 { v[m] } else { 0.5 * (v[m - 1] + v[m]) });
        fs.push(f as f64);
    }
    if fs.len() < 2 || med.iter().all(|x| *x == med[0]) {
        return Ok(None);
    }
    Ok(Some(spearman(&med, &fs)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_median_spearman_ranks_the_frames_medians() {
        // Medians 5, 1.5, 3.5 for frames 0, 1, 2: ranks (2, 0, 1) against (0, 1, 2) → −0.5.
        let pc1 = [0.0, 10.0, 1.0, 2.0, 3.0, 4.0];
        let frame = [0, 0, 1, 1, 2, 2];
        let r = frame_median_spearman(&pc1, &frame).unwrap().unwrap();
        assert!((r + 0.5).abs() < 1e-12, "{r}");
        // Noisy particles whose medians still climb with the frame: per-frame ρ = 1.
        let pc1 = [0.0, 9.0, -5.0, 1.0, 12.0, -3.0, 2.0, 15.0, -1.0];
        let frame = [0, 0, 0, 1, 1, 1, 2, 2, 2];
        let r = frame_median_spearman(&pc1, &frame).unwrap().unwrap();
        assert!((r - 1.0).abs() < 1e-12, "{r}");
        assert_eq!(frame_median_spearman(&[1.0, 2.0], &[3, 3]).unwrap(), None);
    }
    use cryoforge_io::pdb::AnchorKind;

    #[test]
    fn local_geometry_error_is_zero_for_the_truth_and_counts_same_chain_pairs() {
        let mut refs = chain(6);
        let truth: Vec<[f64; 3]> = (0..6).map(|i| [3.8 * i as f64, 0.0, 0.0]).collect();
        let same: Vec<[f32; 3]> = truth.iter().map(|p| p.map(|x| x as f32)).collect();
        let e = local_geometry_error(&same, &truth, &refs);
        assert_eq!(e.map(|x| x.1), [4, 3, 2]);
        assert!(e.iter().all(|x| x.0 < 1e-5));
        // Scaling the chain by 1.1 changes every i→i+k distance by 0.1·3.8·k.
        let big: Vec<[f32; 3]> = truth.iter().map(|p| p.map(|x| (1.1 * x) as f32)).collect();
        let e = local_geometry_error(&big, &truth, &refs);
        for (slot, k) in [2.0, 3.0, 4.0].into_iter().enumerate() {
            assert!((e[slot].0 / e[slot].1 as f64 - 0.38 * k).abs() < 1e-4, "{e:?}");
        }
        // Pairs across a chain break are not counted.
        for r in refs.iter_mut().skip(3) {
            r.chain = "B".into();
        }
        assert_eq!(local_geometry_error(&same, &truth, &refs).map(|x| x.1), [2, 0, 0]);
    }

    fn chain(n: usize) -> Vec<AnchorResidue> {
        (0..n)
            .map(|i| AnchorResidue {
                chain: "A".into(),
                segment: 0,
                seq: i as i32 + 1,
                icode: None,
                name: "ALA".into(),
                atom: "CA".into(),
                pos: [i as f64 * 3.8 - 10.0, 0.0, 0.0],
                amplitude: 38.0,
                kind: AnchorKind::Protein,
            })
            .collect()
    }

    #[test]
    fn clash_counts_skip_chain_neighbours() {
        let refs = chain(4);
        // 0-1, 1-2, 2-3 bonded at 3.8 Å; bend so that 0 and 2 are 3 Å apart.
        let c = [[0.0, 0.0, 0.0], [3.8, 0.0, 0.0], [0.5, 2.96, 0.0], [20.0, 0.0, 0.0]];
        assert_eq!(count_clashes(&c, &refs, 4.0), 1);
        assert_eq!(count_clashes(&c, &refs, 2.0), 0);
    }

    #[test]
    fn analyze_writes_the_contract_and_truth() {
        let dir = tempfile::tempdir().unwrap();
        let r = 6;
        let refs = chain(r);
        // 200 particles, zdim 2: z1 = frame/10 (+ small noise), the decoder bends residue 5 along y.
        let n = 200;
        let frames: Vec<usize> = (0..n).map(|i| i % 10).collect();
        let lat: Vec<f32> =
            (0..n).flat_map(|i| [frames[i] as f32 / 10.0, ((i * 37) % 11) as f32 * 0.001]).collect();
        let refs2 = refs.clone();
        let decode = move |z: &[f32]| -> std::result::Result<Vec<[f32; 3]>, String> {
            Ok(z.chunks(2)
                .flat_map(|zz| {
                    refs2.iter().enumerate().map(move |(i, a)| {
                        let dy = if i == 5 { zz[0] * 10.0 } else { 0.0 };
                        [a.pos[0] as f32, a.pos[1] as f32 + dy, a.pos[2] as f32]
                    })
                })
                .collect())
        };
        // Truth: the same bend per frame.
        let mut csv = String::from("index,model\n");
        for (i, f) in frames.iter().enumerate() {
            csv.push_str(&format!("{i},{f}\n"));
        }
        std::fs::write(dir.path().join("truth.csv"), csv).unwrap();
        let tframes: Vec<Vec<[f64; 3]>> = (0..10)
            .map(|f| {
                refs.iter()
                    .enumerate()
                    .map(|(i, a)| [a.pos[0], a.pos[1] + if i == 5 { f as f64 } else { 0.0 }, a.pos[2]])
                    .collect()
            })
            .collect();
        write_ca_models(dir.path().join("model.pdb"), &refs, &tframes, None).unwrap();
        let zf = dir.path().join("z.txt");
        std::fs::write(&zf, "0 0\n0.5 0\n").unwrap();
        let mut o = AnalyzeOptions::new("cryostar", dir.path().join("analysis"), 16, 3.0);
        o.particles_dir = Some(dir.path().to_path_buf());
        o.coords_out = Some(dir.path().join("coords.npy"));
        o.z_file = Some(zf);
        let s = analyze_run(&lat, 2, &decode, &refs, None, &o).unwrap();
        let a = dir.path().join("analysis");
        for f in [
            "latents.npy",
            "latents.csv",
            "pca.npy",
            "pca_explained.csv",
            "umap.npy",
            "kmeans/labels.txt",
            "kmeans/centers.txt",
            "kmeans/centers_ind.txt",
            "kmeans/centers.pdb",
            "kmeans/inertia.txt",
            "kmeans/vol_000.mrc",
            "pc1/traversal.pdb",
            "pc1/z_values.txt",
            "pc1/vol_009.mrc",
            "pc2/traversal.pdb",
            "zfile/structures.pdb",
            "clash.csv",
            "truth.json",
            "summary.json",
        ] {
            assert!(a.join(f).is_file(), "missing {f}");
        }
        let (c, shape) = read_npy(&dir.path().join("coords.npy")).unwrap();
        assert_eq!(shape, vec![n, r, 3]);
        assert_eq!(c.len(), n * r * 3);
        let t = s.truth.unwrap();
        assert!(t["pc1_frame_spearman"].as_f64().unwrap().abs() > 0.99, "{t}");
        assert!(t["pc1_frame_median_spearman"].as_f64().unwrap().abs() > 0.99, "{t}");
        assert!(t["rmsd_mean_A"].as_f64().unwrap() < 0.05, "{t}");
        assert!(t["rmsd_ref_mean_A"].as_f64().unwrap() > 0.5, "{t}");
        assert_eq!(t["per_frame_rmsd"].as_array().unwrap().len(), 10);
        assert_eq!(s.json["kmeans"]["k"], 10);
        let tr = read_structure(a.join("pc1/traversal.pdb")).unwrap();
        assert_eq!(tr.models.len(), 10);
    }
}
