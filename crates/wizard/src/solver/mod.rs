//! CryoSolver (paper 001): heterogeneous reconstruction with the frozen Cryo-IEF encoder's
//! features as each particle's latent, in the DRGN-AI framework: a volume decoder
//! ([`decoder`]) trained by stochastic gradient descent on the particles at poses from a
//! hierarchical pose search.
//!
//! **Schedule** ([`train`]). Poses start from a global coarse-to-fine search of every
//! particle against the initial model (`Initial::Reference`) or from cryoforge's ab initio
//! (one class, `Initial::Abinit`, whose final assignment is that search). Each epoch then
//! runs Adam over shuffled mini-batches: a particle's slice of the decoder at its pose, at
//! every frequency of the training band, times −CTF, against the re-centred particle
//! spectrum (mean squared error; spectra scaled by one global factor). In the pose-search
//! phase (epochs `every, 2·every, …` below `until · epochs`) the poses are searched again
//! against the decoder's own volumes — DRGN-AI's hierarchical pose search with the
//! latent known. Evaluating the decoder at every pose of the grid for every particle is
//! what a GPU affords; here each particle is searched against the volume of its latent
//! *anchor*: the particle nearest one of `search_volumes` k-means centres of the latents
//! (with as many anchors as particles, the search is DRGN-AI's). After the last search,
//! SGD alone trains the decoder on the fixed poses.
//!
//! **Run folder**: config.json (settings, decoder shape, feature source, data scale),
//! decoder/ (weights.safetensors, optimizer.safetensors, state.json), z.npy (the
//! standardised latents, float32 [N, zdim]), particles.star (the particles at the last
//! poses), train.jsonl (one line per epoch), summary.json.

pub mod analyze;
pub mod decoder;

use crate::solver::decoder::{fold, Decoder, DecoderConfig};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use cryoforge_analysis::kmeans::{kmeans, standardize, KMeansOptions};
use cryoforge_analysis::{cluster_centres_snapped, Matrix};
use cryoforge_core::fft::{recentre_phasor_2d, Rfft2, C32};
use cryoforge_io::stack::{ParticleStack, Pose};
use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup};
use cryoforge_refine::abinit::{abinit, AbinitConfig, MapSearchConfig, Quiet};
use cryoforge_refine::band::Band;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Settings of [`train`] (the CLI's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolverConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub hidden: usize,
    pub layers: usize,
    /// Pose searches at epochs every, 2·every, … below `pose_search_until · epochs`.
    pub pose_search_every: usize,
    pub pose_search_until: f64,
    /// Latent anchors (volumes) of a pose search.
    pub search_volumes: usize,
    /// Resolution of the pose search's last level (Å); default max(3 px, 8 Å).
    pub search_res_a: Option<f64>,
    pub healpix_order: u32,
    pub offset_range_a: f64,
    /// Training band as a fraction of Nyquist.
    pub max_freq: f64,
    pub invert: bool,
    pub seed: u64,
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig {
            epochs: 20,
            batch: 32,
            lr: 1e-3,
            hidden: 256,
            layers: 3,
            pose_search_every: 4,
            pose_search_until: 0.5,
            search_volumes: 8,
            search_res_a: None,
            healpix_order: 2,
            offset_range_a: 10.0,
            max_freq: 1.0,
            invert: false,
            seed: 0,
        }
    }
}

impl SolverConfig {
    /// The training band (cycles per box) for box `d`.
    pub fn k_max(&self, d: usize) -> f64 {
        self.max_freq * (d / 2) as f64
    }

    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch == 0 {
            bail!("--epochs {} / --batch {}: both ≥ 1", self.epochs, self.batch);
        }
        if !(self.lr > 0.0 && self.lr < 1.0) {
            bail!("--lr {}: between 0 and 1", self.lr);
        }
        if self.hidden == 0 {
            bail!("--hidden 0: at least one unit");
        }
        if self.pose_search_every == 0 || !(0.0..=1.0).contains(&self.pose_search_until) {
            bail!(
                "--pose-search-every {} / --pose-search-until {}: every ≥ 1, until in [0, 1]",
                self.pose_search_every,
                self.pose_search_until
            );
        }
        if self.search_volumes == 0 {
            bail!("--search-volumes 0: at least one");
        }
        if !(self.max_freq > 0.0 && self.max_freq <= 1.0) {
            bail!("--max-freq {}: in (0, 1] (fraction of Nyquist)", self.max_freq);
        }
        if self.search_res_a.is_some_and(|r| !r.is_finite() || r <= 0.0) {
            bail!("--search-res-a: positive");
        }
        Ok(())
    }

    /// Epochs that start with a pose search against the decoder.
    pub fn search_epochs(&self) -> Vec<usize> {
        let lim = self.pose_search_until * self.epochs as f64;
        (1..self.epochs).filter(|e| e % self.pose_search_every == 0 && (*e as f64) < lim).collect()
    }
}

/// Where the first poses come from.
pub enum Initial {
    /// A global search against this map (D³ at the particles' pixel size).
    Reference(Vec<f32>),
    /// cryoforge's ab initio, one class.
    Abinit,
    /// The particles' own poses (a consensus refinement's), as cryoDRGN's `train_vae`.
    Input,
}

/// Where the latents came from (recorded in config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureInfo {
    /// "cryo-ief" (computed with the encoder), "file" or "random" (the paper's control).
    pub source: String,
    pub path: Option<String>,
    pub dim: usize,
}

/// What config.json holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub format: u32,
    pub particles: String,
    pub n_particles: usize,
    pub box_px: usize,
    pub apix_a: f64,
    pub solver: SolverConfig,
    pub decoder: DecoderConfig,
    pub features: FeatureInfo,
    /// The particle spectra were divided by this before training: volumes are decoded
    /// times it.
    pub data_scale: f64,
    /// Per-column mean and standard deviation that standardised the features.
    pub feature_mean: Vec<f64>,
    pub feature_std: Vec<f64>,
    pub initial: String,
}

/// One line of train.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub pose_search: bool,
    /// Median angle (degrees) between the poses before and after this epoch's search.
    pub pose_change_deg: Option<f64>,
    pub seconds: f64,
    pub particles_per_s: f64,
}

/// Progress hooks.
pub trait Progress: Sync {
    fn say(&self, _msg: &str) {}
}
pub struct Silent;
impl Progress for Silent {}

/// Standardises `features` (N × F, row-major), drops constant columns' scale (σ → 1).
pub fn standardise(features: &[f32], n: usize) -> Result<(Vec<f32>, Vec<f64>, Vec<f64>)> {
    if n == 0 || !features.len().is_multiple_of(n) {
        bail!("features: {} values for {n} particles", features.len());
    }
    let f = features.len() / n;
    let m = Matrix::new(features.iter().map(|&v| v as f64).collect(), n, f)
        .map_err(|e| anyhow!("features: {e}"))?;
    let (z, s) = standardize(m.view()).map_err(|e| anyhow!("standardising the features: {e}"))?;
    let z: Vec<f32> = z.as_slice().iter().map(|&v| v as f32).collect();
    Ok((z, s.mean, s.scale))
}

/// Reproducible N(0, 1) features of width `dim`: the paper's random-feature control.
pub fn random_features(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7a11d0);
    (0..n * dim).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// Per-thread scratch of batch assembly.
struct Scratch {
    fft: cryoforge_core::fft::Rfft2Work,
    img: Vec<f32>,
    spec: Vec<C32>,
}

/// Everything a mini-batch is built from.
struct Data<'a> {
    stack: &'a ParticleStack,
    ctf: &'a [cryoforge_core::CtfParams],
    band: Band,
    fft: Rfft2,
    d: usize,
    apix: f64,
    sign: f32,
    scale: f32,
}

impl Data<'_> {
    /// Re-centred, sign-corrected, scaled spectrum of particle `i` at shift `t`, and its
    /// CTF, at every band entry.
    fn particle(&self, i: usize, t: [f64; 2], w: &mut Scratch, x: &mut [C32], c: &mut [f32]) -> Result<()> {
        self.stack.read_image(i, &mut w.img)?;
        self.fft.forward_low(&mut w.fft, &w.img, self.band.kx_max(), &mut w.spec);
        let nc = self.band.kx_max() + 1;
        let inv = 1.0 / (self.d as f64 * self.apix);
        let e = self.ctf[i].evaluator();
        let s = self.sign / self.scale;
        for (j, en) in self.band.entries().iter().enumerate() {
            let k = [en.k[0] as f64, en.k[1] as f64];
            let v = w.spec[en.row as usize * nc + en.col as usize] * s;
            x[j] = v * recentre_phasor_2d(k, t, self.d);
            c[j] = e.eval(k[0] * inv, k[1] * inv) as f32;
        }
        Ok(())
    }

    fn scratch(&self) -> Scratch {
        Scratch {
            fft: self.fft.work(),
            img: vec![0f32; self.d * self.d],
            spec: vec![C32::default(); self.d * (self.band.kx_max() + 1)],
        }
    }
}

/// Tensors of one mini-batch.
struct BatchTensors {
    pe: Tensor,
    z: Tensor,
    sgn: Tensor,
    ctf: Tensor,
    yr: Tensor,
    yi: Tensor,
}

fn build_batch(
    data: &Data<'_>,
    dec: &Decoder,
    ids: &[usize],
    poses: &[Pose],
    z: &[f32],
    dev: &Device,
) -> Result<BatchTensors> {
    let p = data.band.len();
    let q2 = 2 * dec.cfg.pe_freqs;
    let zdim = dec.cfg.zdim;
    let b = ids.len();
    let mut pe = vec![0f32; b * p * q2];
    let mut sgn = vec![0f32; b * p];
    let mut ctf = vec![0f32; b * p];
    let mut yr = vec![0f32; b * p];
    let mut yi = vec![0f32; b * p];
    pe.par_chunks_mut(p * q2)
        .zip(sgn.par_chunks_mut(p))
        .zip(ctf.par_chunks_mut(p))
        .zip(yr.par_chunks_mut(p).zip(yi.par_chunks_mut(p)))
        .enumerate()
        .try_for_each_init(
            || (data.scratch(), vec![C32::default(); p]),
            |(w, x), (j, (((pe, sg), c), (yr, yi)))| -> Result<()> {
                let i = ids[j];
                let pose = &poses[i];
                data.particle(i, pose.shift_px, w, x, c)?;
                for (e, en) in data.band.entries().iter().enumerate() {
                    // CONVENTIONS rule 3: the slice samples Aᵀ(kₓ, k_y, 0).
                    let k3 = pose.rot.apply_transpose([en.k[0] as f64, en.k[1] as f64, 0.0]);
                    let (f, s) = fold(k3.map(|v| v as f32));
                    dec.encode(f, &mut pe[e * q2..(e + 1) * q2]);
                    sg[e] = s;
                    // The model of X is −c·V̂ (refine's convention): fold the minus in.
                    c[e] = -c[e];
                    yr[e] = x[e].re;
                    yi[e] = x[e].im;
                }
                Ok(())
            },
        )?;
    let mut zb = Vec::with_capacity(b * zdim);
    for &i in ids {
        zb.extend_from_slice(&z[i * zdim..(i + 1) * zdim]);
    }
    let t = |v: Vec<f32>| Tensor::from_vec(v, b * p, dev);
    Ok(BatchTensors {
        pe: Tensor::from_vec(pe, (b * p, q2), dev)?,
        z: Tensor::from_vec(zb, (b, zdim), dev)?,
        sgn: t(sgn)?,
        ctf: t(ctf)?,
        yr: t(yr)?,
        yi: t(yi)?,
    })
}

/// Mean squared error of a batch (per band entry, real and imaginary parts summed).
fn batch_loss(dec: &Decoder, bt: &BatchTensors, per: usize) -> candle_core::Result<Tensor> {
    let y = dec.forward(&bt.pe, &bt.z, per)?;
    let a = y.narrow(1, 0, 1)?.squeeze(1)?;
    let b = (y.narrow(1, 1, 1)?.squeeze(1)? * &bt.sgn)?;
    let dr = ((a * &bt.ctf)? - &bt.yr)?;
    let di = ((b * &bt.ctf)? - &bt.yi)?;
    (dr.sqr()? + di.sqr()?)?.mean_all()
}

/// Global scale of the data: RMS of the band's spectrum values over up to 500 particles.
fn data_scale(data: &Data<'_>) -> Result<f64> {
    let n = data.stack.len().min(500);
    let p = data.band.len();
    let step = (data.stack.len() / n.max(1)).max(1);
    let sums: Vec<f64> = (0..n)
        .into_par_iter()
        .map_init(
            || (data.scratch(), vec![C32::default(); p], vec![0f32; p]),
            |(w, x, c), j| -> Result<f64> {
                data.particle(j * step, [0.0, 0.0], w, x, c)?;
                Ok(x.iter().map(|v| v.norm_sqr() as f64).sum::<f64>() / p as f64)
            },
        )
        .collect::<Result<Vec<_>>>()?;
    let ms = sums.iter().sum::<f64>() / n.max(1) as f64;
    if !(ms > 0.0 && ms.is_finite()) {
        bail!("{}: the particles' spectra are zero or not finite", data.stack.path.display());
    }
    Ok(ms.sqrt())
}

/// Volumes of the decoder at latents `anchors` (indices of particles), in data units,
/// within the training band `k_max` (cycles per box).
pub fn anchor_volumes(
    dec: &Decoder,
    z: &[f32],
    anchors: &[usize],
    scale: f64,
    k_max: f64,
) -> Result<Vec<Vec<f32>>> {
    let zd = dec.cfg.zdim;
    anchors
        .iter()
        .map(|&i| {
            let mut v =
                dec.volume(&z[i * zd..(i + 1) * zd], k_max).map_err(|e| anyhow!("decoding a volume: {e}"))?;
            v.iter_mut().for_each(|x| *x *= scale as f32);
            Ok(v)
        })
        .collect()
}

fn median_change_deg(a: &[Pose], b: &[Pose]) -> f64 {
    let mut v: Vec<f64> =
        a.iter().zip(b).map(|(p, q)| cryoforge_refine::so3::angle_deg(&p.rot, &q.rot)).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Train CryoSolver on `stack` with latents `features` (N × F, row-major, before
/// standardisation) into run folder `out`.
#[allow(clippy::too_many_arguments)]
pub fn train(
    stack: &ParticleStack,
    features: &[f32],
    info: FeatureInfo,
    initial: Initial,
    cfg: &SolverConfig,
    out: &Path,
    progress: &dyn Progress,
) -> Result<RunConfig> {
    cfg.validate()?;
    let n = stack.len();
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    if n < 2 {
        bail!("{}: {n} particles; CryoSolver needs at least 2", stack.path.display());
    }
    if features.len() != n * info.dim {
        bail!("features: {} values, {} particles × width {} expected", features.len(), n, info.dim);
    }
    if stack.ctf_premultiplied {
        bail!("{}: CTF-premultiplied particles are not supported", stack.path.display());
    }
    let ctf = stack.require_ctf()?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let t0 = Instant::now();
    let (z, mean, sd) = standardise(features, n)?;
    let zdim = info.dim;
    let dev = Device::Cpu;
    let mut dcfg = DecoderConfig::new(d, zdim);
    dcfg.hidden = cfg.hidden;
    dcfg.layers = cfg.layers;
    dcfg.seed = cfg.seed;
    let dec = Decoder::new(dcfg.clone(), &dev).map_err(|e| anyhow!(e))?;
    let data = Data {
        stack,
        ctf,
        band: Band::new(d, cfg.k_max(d)),
        fft: Rfft2::new(d),
        d,
        apix,
        sign: if cfg.invert { -1.0 } else { 1.0 },
        scale: 1.0,
    };
    let scale = data_scale(&data)?;
    let data = Data { scale: scale as f32, ..data };
    let search = MapSearchConfig {
        res_a: cfg.search_res_a.unwrap_or((3.0 * apix).max(8.0)),
        healpix_order: cfg.healpix_order,
        offset_range_a: cfg.offset_range_a,
        invert: cfg.invert,
        seed: cfg.seed,
        ..Default::default()
    };
    // First poses.
    let (mut poses, initial_name) = match initial {
        Initial::Reference(m) => {
            progress
                .say(&format!("pose search of {n} particles against the reference at {:.1} Å", search.res_a));
            let r = cryoforge_refine::abinit::search_maps(stack, &[m], &vec![0; n], &search)?;
            (r.into_iter().map(|r| r.best).collect::<Vec<_>>(), "reference".to_string())
        }
        Initial::Abinit => {
            progress.say(&format!("ab initio (one class) of {n} particles for the first poses"));
            let acfg = AbinitConfig {
                seed: cfg.seed,
                invert: cfg.invert,
                offset_range_a: cfg.offset_range_a,
                batch: 300.min(n),
                ..Default::default()
            };
            let o = abinit(stack, &acfg, &Quiet)?;
            (o.poses, "abinit".to_string())
        }
        Initial::Input => {
            let p = stack.poses.clone().ok_or_else(|| {
                anyhow!(
                    "{}: no poses in the particle file; give --reference or leave out --input-poses",
                    stack.path.display()
                )
            })?;
            (p, "input poses".to_string())
        }
    };
    let rc = RunConfig {
        format: 1,
        particles: stack.path.display().to_string(),
        n_particles: n,
        box_px: d,
        apix_a: apix,
        solver: cfg.clone(),
        decoder: dcfg,
        features: info,
        data_scale: scale,
        feature_mean: mean,
        feature_std: sd,
        initial: initial_name,
    };
    write_json(&out.join("config.json"), &rc)?;
    cryoforge_io::npy::write_npy_f32(out.join("z.npy"), &[n, zdim], &z)?;
    // The optimiser: every parameter (the frequencies are not a Var).
    let vars = dec.vars();
    let mut opt = Adam::new(vec![ParamGroup::new("decoder", vars.clone(), cfg.lr)], AdamConfig::adam())?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x501e);
    let search_at = cfg.search_epochs();
    // The latents are frozen: their anchors (k-means, seeded) are the same at every search.
    let anchors = if search_at.is_empty() {
        None
    } else {
        let zm = Matrix::new(z.iter().map(|&v| v as f64).collect(), n, zdim).map_err(|e| anyhow!("{e}"))?;
        let opts =
            KMeansOptions { n_init: 3, seed: cfg.seed, ..KMeansOptions::new(cfg.search_volumes.min(n)) };
        let km = kmeans(zm.view(), &opts).map_err(|e| anyhow!("k-means of the latents: {e}"))?;
        let at = cluster_centres_snapped(zm.view(), &km).map_err(|e| anyhow!("{e}"))?;
        Some((at, km.labels))
    };
    let mut log = String::new();
    let p = data.band.len();
    for epoch in 0..cfg.epochs {
        let te = Instant::now();
        let mut change = None;
        if let (true, Some((anchors, labels))) = (search_at.contains(&epoch), &anchors) {
            progress.say(&format!(
                "epoch {}: pose search of {n} particles against {} decoder volumes at {:.1} Å",
                epoch + 1,
                anchors.len(),
                search.res_a
            ));
            let vols = anchor_volumes(&dec, &z, anchors, scale, data.band.k_max())?;
            let r = cryoforge_refine::abinit::search_maps(stack, &vols, labels, &search)?;
            let new: Vec<Pose> = r.into_iter().map(|r| r.best).collect();
            change = Some(median_change_deg(&poses, &new));
            poses = new;
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let (mut sum, mut cnt) = (0f64, 0usize);
        for ids in order.chunks(cfg.batch) {
            let bt = build_batch(&data, &dec, ids, &poses, &z, &dev)?;
            let loss = batch_loss(&dec, &bt, p)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                bail!("epoch {}: the loss is not finite ({lv}); lower --lr", epoch + 1);
            }
            opt.backward_step(&loss)?;
            sum += lv * ids.len() as f64;
            cnt += ids.len();
        }
        let secs = te.elapsed().as_secs_f64();
        let el = EpochLog {
            epoch: epoch + 1,
            loss: sum / cnt.max(1) as f64,
            pose_search: change.is_some(),
            pose_change_deg: change,
            seconds: secs,
            particles_per_s: n as f64 / secs.max(1e-9),
        };
        progress.say(&format!(
            "epoch {}/{}: loss {:.5}{} ({:.0} particles/s)",
            epoch + 1,
            cfg.epochs,
            el.loss,
            change.map_or(String::new(), |c| format!(", median pose change {c:.1}°")),
            el.particles_per_s
        ));
        log.push_str(&serde_json::to_string(&el)?);
        log.push('\n');
        cryoforge_io::atomic::write_bytes_atomic(&out.join("train.jsonl"), log.as_bytes())?;
    }
    let mut all = vars.clone();
    let fq = Var::from_vec(dec.freqs().to_vec(), (3, dec.cfg.pe_freqs), &dev)?;
    all.push(("pe.freqs".to_string(), fq));
    cryoforge_nn::checkpoint::save(&out.join("decoder"), &all, Some(&opt), opt.steps(), &rng)?;
    let mut s = stack.clone();
    s.poses = Some(poses);
    s.poses_origin = Some(cryoforge_io::stack::Origin::Computed);
    cryoforge_io::export::write_star(&s, &out.join("particles.star"))?;
    let summary = serde_json::json!({
        "method": "cryosolver",
        "n_particles": n,
        "zdim": zdim,
        "features": rc.features.source,
        "epochs": cfg.epochs,
        "pose_search_epochs": search_at.iter().map(|e| e + 1).collect::<Vec<_>>(),
        "final_loss": log.lines().last().and_then(|l| serde_json::from_str::<EpochLog>(l).ok()).map(|e| e.loss),
        "seconds": t0.elapsed().as_secs_f64(),
    });
    write_json(&out.join("summary.json"), &summary)?;
    Ok(rc)
}

/// Load a trained run: its config, decoder and standardised latents.
pub fn load_run(run: &Path) -> Result<(RunConfig, Decoder, Vec<f32>)> {
    let cp = run.join("config.json");
    let rc: RunConfig = serde_json::from_str(
        &std::fs::read_to_string(&cp).with_context(|| format!("{}: not a solver run", cp.display()))?,
    )
    .with_context(|| format!("{}: not a solver config", cp.display()))?;
    let dev = Device::Cpu;
    let mut dec = Decoder::new(rc.decoder.clone(), &dev).map_err(|e| anyhow!("{}: {e}", cp.display()))?;
    let mut all = dec.vars();
    let fq = Var::from_vec(vec![0f32; 3 * rc.decoder.pe_freqs], (3, rc.decoder.pe_freqs), &dev)?;
    all.push(("pe.freqs".to_string(), fq.clone()));
    let dd = run.join("decoder");
    cryoforge_nn::checkpoint::load(&dd, &all, None)
        .with_context(|| format!("{}: decoder weights", dd.display()))?;
    dec.set_freqs(fq.as_tensor().flatten_all()?.to_vec1()?).map_err(|e| anyhow!("{}: {e}", dd.display()))?;
    let zp = run.join("z.npy");
    let zf = cryoforge_io::npy::read_npy(&zp)?;
    if zf.rows() != rc.n_particles || zf.row_len() != rc.decoder.zdim {
        bail!(
            "{}: {} × {} latents, config.json says {} × {}",
            zp.display(),
            zf.rows(),
            zf.row_len(),
            rc.n_particles,
            rc.decoder.zdim
        );
    }
    Ok((rc, dec, zf.data))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v)?;
    cryoforge_io::atomic::write_bytes_atomic(path, s.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_epochs_follow_every_and_until() {
        let c =
            SolverConfig { epochs: 20, pose_search_every: 4, pose_search_until: 0.5, ..Default::default() };
        assert_eq!(c.search_epochs(), vec![4, 8]);
        let c =
            SolverConfig { epochs: 3, pose_search_every: 1, pose_search_until: 1.0, ..Default::default() };
        assert_eq!(c.search_epochs(), vec![1, 2]);
        let c = SolverConfig { pose_search_until: 0.0, ..Default::default() };
        assert!(c.search_epochs().is_empty());
    }

    #[test]
    fn bad_settings_are_named() {
        let c = SolverConfig { lr: 0.0, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("--lr"));
        let c = SolverConfig { max_freq: 1.5, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("--max-freq"));
    }

    #[test]
    fn standardised_features_have_unit_columns() {
        let f: Vec<f32> = (0..40).map(|i| (i % 4) as f32 * 0.1 + (i / 4) as f32 * 0.01).collect();
        let (z, m, s) = standardise(&f, 10).unwrap();
        assert_eq!((m.len(), s.len()), (4, 4));
        for c in 0..4 {
            let col: Vec<f32> = (0..10).map(|r| z[r * 4 + c]).collect();
            let mu = col.iter().sum::<f32>() / 10.0;
            assert!(mu.abs() < 1e-5);
        }
    }
}
