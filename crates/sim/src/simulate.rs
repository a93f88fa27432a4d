//! The particle simulator behind `cryoforge simulate`.
//!
//! Image formation (CONVENTIONS.md): `image = F⁻¹[−CTF · e^(+2πi k·t) · P̂]`, the
//! projection P of the density at pose A, moved by −t (RELION origin t) and filtered by
//! the cryoDRGN-sign CTF with the sign flipped, so particles are protein-bright as RELION
//! extracts them (`invert` makes them dark). White Gaussian noise of variance
//! `σ² = var(signal)/SNR` is added, the signal variance pooled over the noise-free
//! images of the first [`PILOT`] particles (all of them for small sets) that are not junk.
//! `SimSettings::junk` mixes in junk picks ([`crate::junk`]): their kind is in
//! [`Truth::junk`] and in truth.csv.
//!
//! Every particle draws its pose, CTF, shift, model and noise from its own random streams
//! (`sampling::particle_rng`), so the output is identical for any thread count.

use crate::density::{atomic_density, AtomSpec, GaussianModel};
use crate::elements::Element;
use crate::error::SimError;
use crate::gaussian_image::{GaussianImageWork, GaussianImager};
use crate::junk::{add_carbon_edge, add_ice, aggregate_copies, offcentre_shift_px, JunkKind, JunkSettings};
use crate::project::{Projector, ProjectorWork, DEFAULT_PAD};
use crate::sampling::{particle_rng, sample_shift_a, sample_weighted, CtfDistribution, PoseDistribution};
use cryoforge_core::ctf::CtfGrid;
use cryoforge_core::{CtfParams, Rot3};
use cryoforge_io::mrc::MrcStackWriter;
use cryoforge_io::pdb::{anchor_atoms, Model};
use cryoforge_io::stack::Pose;
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Particles whose noise-free images set the signal variance for `--snr`.
pub const PILOT: usize = 2000;
/// Largest total size of padded spectra kept for atomic trajectories (bytes).
pub const PROJECTOR_BUDGET_BYTES: usize = 12 << 30;

/// Random-stream purposes (one stream per particle each).
const RNG_POSE: u64 = 1;
const RNG_CTF: u64 = 2;
const RNG_SHIFT: u64 = 3;
const RNG_MODEL: u64 = 4;
const RNG_NOISE: u64 = 5;

/// Which density a model is rendered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DensityKind {
    /// Every atom as five Peng (1996) Gaussians, blurred by its B-factor.
    Atomic,
    /// One σ = 2 Å Gaussian per residue at its Cα (C1′/P), amplitude Σ Z (cryoSTAR).
    Ca,
}

/// What to image.
pub enum Sample {
    /// Atomic models (one per trajectory frame), in Å with the origin at the box centre.
    Models(Vec<Model>),
    /// A density map (n³, the simulation box).
    Map(Vec<f32>),
}

/// Where poses and CTFs come from.
pub enum PoseSource {
    Random {
        poses: PoseDistribution,
        ctf: CtfDistribution,
        shift_max_a: f64,
    },
    /// Given per particle (e.g. from a STAR/.cs via `--poses-from`).
    Given {
        poses: Vec<Pose>,
        ctf: Vec<CtfParams>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimSettings {
    pub n: usize,
    pub box_px: usize,
    pub apix_a: f64,
    pub density: DensityKind,
    pub seed: u64,
    /// Signal-to-noise ratio; infinite for noise-free images.
    pub snr: f64,
    pub invert: bool,
    /// Relative frequency of each model (uniform when empty).
    pub model_weights: Vec<f64>,
    pub batch: usize,
    /// Junk picks mixed in (`simulate --junk`; none by default).
    #[serde(default)]
    pub junk: JunkSettings,
}

/// The ground truth of one particle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Truth {
    pub model: usize,
    pub pose: Pose,
    pub ctf: CtfParams,
    /// What kind of junk the particle is (`None`: a good particle).
    pub junk: Option<JunkKind>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct SimOutput {
    pub truth: Vec<Truth>,
    /// Pooled variance of the noise-free images (pilot set).
    pub signal_variance: f64,
    pub noise_sigma: f64,
}

enum Renderer {
    Volumes(Vec<Projector>),
    Gaussians(Vec<GaussianModel>, GaussianImager),
}

struct Work {
    proj: Option<ProjectorWork>,
    gauss: Option<GaussianImageWork>,
    ctf: Vec<f32>,
    /// Scratch image (aggregate copies).
    tmp: Vec<f32>,
}

impl Renderer {
    fn build(sample: &Sample, s: &SimSettings) -> Result<Renderer, SimError> {
        let (d, apix) = (s.box_px, s.apix_a);
        match (sample, s.density) {
            (Sample::Map(v), _) => Ok(Renderer::Volumes(vec![Projector::new(v, d, apix, DEFAULT_PAD)?])),
            (Sample::Models(models), DensityKind::Ca) => {
                let g = models.iter().map(gaussian_model).collect::<Result<Vec<_>, _>>()?;
                Ok(Renderer::Gaussians(g, GaussianImager::new(d, apix)?))
            }
            (Sample::Models(models), DensityKind::Atomic) => {
                let np = (d * 2) as f64;
                let bytes = models.len() as f64 * np * np * (np / 2.0 + 1.0) * 8.0;
                if bytes > PROJECTOR_BUDGET_BYTES as f64 {
                    return Err(SimError::Input(format!(
                        "{} atomic models at box {d} need {:.1} GiB of projector memory (limit {} GiB): \
                         use --density ca, fewer frames or a smaller box",
                        models.len(),
                        bytes / (1u64 << 30) as f64,
                        PROJECTOR_BUDGET_BYTES >> 30
                    )));
                }
                let p = models
                    .iter()
                    .map(|m| {
                        let atoms = atom_specs(m)?;
                        let vol = atomic_density(&atoms, d, apix)?;
                        Projector::new(&vol, d, apix, DEFAULT_PAD)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Renderer::Volumes(p))
            }
        }
    }

    fn n_models(&self) -> usize {
        match self {
            Renderer::Volumes(p) => p.len(),
            Renderer::Gaussians(g, _) => g.len(),
        }
    }

    fn work(&self, d: usize) -> Work {
        match self {
            Renderer::Volumes(p) => {
                Work { proj: Some(p[0].work()), gauss: None, ctf: vec![0.0; d * d], tmp: vec![0.0; d * d] }
            }
            Renderer::Gaussians(_, im) => {
                Work { proj: None, gauss: Some(im.work()), ctf: vec![0.0; d * d], tmp: vec![0.0; d * d] }
            }
        }
    }

    /// Noise-free image; `w.ctf` must hold the (already negated) CTF grid.
    fn render(&self, model: usize, pose: &Pose, w: &mut Work, out: &mut [f32]) -> Result<(), SimError> {
        match self {
            Renderer::Volumes(p) => {
                let pw = w.proj.as_mut().ok_or(SimError::Input("internal: no projector work".into()))?;
                p[model].project_image(&pose.rot, pose.shift_px, Some(&w.ctf), pw, out)
            }
            Renderer::Gaussians(g, im) => {
                let gw = w.gauss.as_mut().ok_or(SimError::Input("internal: no Gaussian work".into()))?;
                im.image(&g[model], &pose.rot, pose.shift_px, Some(&w.ctf), gw, out)
            }
        }
    }

    /// The noise-free image of particle `i` with its junk kind applied (ice is added with
    /// the noise, once the signal level is known).
    fn render_particle(
        &self,
        i: usize,
        t: &Truth,
        s: &SimSettings,
        w: &mut Work,
        out: &mut [f32],
    ) -> Result<(), SimError> {
        match t.junk {
            Some(JunkKind::Noise) | Some(JunkKind::Ice) => {
                out.iter_mut().for_each(|v| *v = 0.0);
                Ok(())
            }
            Some(JunkKind::Aggregate) => {
                let spacing = s.junk.spacing_a.unwrap_or(0.3 * s.box_px as f64 * s.apix_a) / s.apix_a;
                let (copies, first) = aggregate_copies(s.seed, i, spacing);
                // A shift t moves the particle by −t (CONVENTIONS rule 5).
                let p0 = Pose {
                    rot: t.pose.rot,
                    shift_px: [t.pose.shift_px[0] - first[0], t.pose.shift_px[1] - first[1]],
                };
                self.render(t.model, &p0, w, out)?;
                let mut tmp = std::mem::take(&mut w.tmp);
                for (rot, c) in copies {
                    let pose = Pose { rot, shift_px: [t.pose.shift_px[0] - c[0], t.pose.shift_px[1] - c[1]] };
                    let r = self.render(t.model, &pose, w, &mut tmp);
                    if r.is_err() {
                        w.tmp = tmp;
                        return r;
                    }
                    out.iter_mut().zip(&tmp).for_each(|(o, v)| *o += v);
                }
                w.tmp = tmp;
                Ok(())
            }
            Some(JunkKind::Offcentre) | Some(JunkKind::Carbon) | Some(JunkKind::WrongDefocus) | None => {
                self.render(t.model, &t.pose, w, out)
            }
        }
    }
}

/// Atoms of a model for the atomic density (element symbols checked).
pub fn atom_specs(m: &Model) -> Result<Vec<AtomSpec>, SimError> {
    m.chains
        .iter()
        .flat_map(|c| &c.residues)
        .flat_map(|r| &r.atoms)
        .map(|a| {
            Ok(AtomSpec {
                pos_a: a.pos,
                element: Element::from_symbol(&a.element)?,
                b_factor_a2: a.b_factor.max(0.0),
                occupancy: a.occupancy,
            })
        })
        .collect()
}

/// The Cα Gaussian model of an atomic model (σ = 2 Å, amplitude Σ Z of the residue).
pub fn gaussian_model(m: &Model) -> Result<GaussianModel, SimError> {
    let anchors = anchor_atoms(m).map_err(|e| SimError::Input(e.to_string()))?;
    if anchors.is_empty() {
        return Err(SimError::Input("the model has no Cα, C1′ or P atoms".into()));
    }
    GaussianModel::with_default_sigma(
        anchors.iter().map(|a| a.pos).collect(),
        anchors.iter().map(|a| a.amplitude).collect(),
    )
}

/// Mean Cα (anchor) position of a model, in Å.
pub fn anchor_centroid(m: &Model) -> Result<[f64; 3], SimError> {
    let a = anchor_atoms(m).map_err(|e| SimError::Input(e.to_string()))?;
    let pts: Vec<[f64; 3]> = if a.is_empty() {
        m.chains.iter().flat_map(|c| &c.residues).flat_map(|r| &r.atoms).map(|x| x.pos).collect()
    } else {
        a.iter().map(|x| x.pos).collect()
    };
    if pts.is_empty() {
        return Err(SimError::Input("the model has no atoms".into()));
    }
    let mut c = [0.0; 3];
    for p in &pts {
        for k in 0..3 {
            c[k] += p[k] / pts.len() as f64;
        }
    }
    Ok(c)
}

/// Move every atom of every model by `delta` Å.
pub fn translate_models(models: &mut [Model], delta: [f64; 3]) {
    for m in models {
        for a in m.chains.iter_mut().flat_map(|c| c.residues.iter_mut()).flat_map(|r| r.atoms.iter_mut()) {
            for k in 0..3 {
                a.pos[k] += delta[k];
            }
        }
    }
}

fn draw_truth(i: usize, src: &PoseSource, s: &SimSettings, cum: &[f64]) -> Truth {
    let mut t = draw_particle(i, src, s, cum);
    t.junk = s.junk.draw(s.seed, i);
    if t.junk == Some(JunkKind::Offcentre) {
        let o = offcentre_shift_px(s.seed, i, s.box_px);
        t.pose.shift_px = [t.pose.shift_px[0] + o[0], t.pose.shift_px[1] + o[1]];
    }
    t
}

fn draw_particle(i: usize, src: &PoseSource, s: &SimSettings, cum: &[f64]) -> Truth {
    let seed = s.seed;
    let model =
        if cum.len() > 1 { sample_weighted(&mut particle_rng(seed, i as u64, RNG_MODEL), cum) } else { 0 };
    match src {
        PoseSource::Given { poses, ctf } => Truth { model, pose: poses[i], ctf: ctf[i], junk: None },
        PoseSource::Random { poses, ctf, shift_max_a } => {
            let rot: Rot3 = poses.sample(&mut particle_rng(seed, i as u64, RNG_POSE));
            let c = ctf.sample(&mut particle_rng(seed, i as u64, RNG_CTF));
            let t = sample_shift_a(&mut particle_rng(seed, i as u64, RNG_SHIFT), *shift_max_a);
            Truth {
                model,
                pose: Pose { rot, shift_px: [t[0] / s.apix_a, t[1] / s.apix_a] },
                ctf: c,
                junk: None,
            }
        }
    }
}

/// Simulate `s.n` particles into `writer` (streaming, batch by batch); returns the truth.
/// `progress(done)` is called after each batch.
pub fn simulate(
    sample: &Sample,
    src: &PoseSource,
    s: &SimSettings,
    writer: &mut MrcStackWriter,
    progress: &mut dyn FnMut(usize),
) -> Result<SimOutput, SimError> {
    let d = s.box_px;
    let n = s.n;
    if n == 0 {
        return Err(SimError::Input("nothing to simulate: --n is 0".into()));
    }
    if let PoseSource::Given { poses, ctf } = src {
        if poses.len() != n || ctf.len() != n {
            return Err(SimError::Input(format!(
                "{} poses and {} CTFs given for {n} particles",
                poses.len(),
                ctf.len()
            )));
        }
    }
    s.junk.check().map_err(SimError::Input)?;
    let renderer = Renderer::build(sample, s)?;
    let nm = renderer.n_models();
    let weights = if s.model_weights.is_empty() { vec![1.0; nm] } else { s.model_weights.clone() };
    if weights.len() != nm
        || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
        || weights.iter().sum::<f64>() <= 0.0
    {
        return Err(SimError::Input(format!(
            "{} model weights for {nm} models: give one non-negative weight per model (not all zero)",
            weights.len()
        )));
    }
    let cum: Vec<f64> = weights
        .iter()
        .scan(0.0, |a, w| {
            *a += w;
            Some(*a)
        })
        .collect();
    let truth: Vec<Truth> = (0..n).into_par_iter().map(|i| draw_truth(i, src, s, &cum)).collect();
    let grid = CtfGrid::new(d, s.apix_a);
    let sign = if s.invert { -1.0f32 } else { 1.0 };

    let render_batch = |start: usize, out: &mut [f32]| -> Result<(), SimError> {
        out.par_chunks_mut(d * d).enumerate().try_for_each_init(
            || renderer.work(d),
            |w, (j, img)| {
                let t = &truth[start + j];
                if t.junk == Some(JunkKind::WrongDefocus) {
                    // Imaged at another defocus than the metadata (truth) states.
                    let f = JunkKind::defocus_factor(s.seed, start + j);
                    let mut c = t.ctf;
                    c.defocus_u_a *= f;
                    c.defocus_v_a *= f;
                    grid.fill(&c, &mut w.ctf);
                } else {
                    grid.fill(&t.ctf, &mut w.ctf);
                }
                w.ctf.iter_mut().for_each(|c| *c = -*c);
                renderer.render_particle(start + j, t, s, w, img)?;
                if sign != 1.0 {
                    img.iter_mut().for_each(|v| *v *= sign);
                }
                Ok(())
            },
        )
    };

    // Pilot: the noise-free images of the first particles set the noise level.
    let pilot = n.min(PILOT);
    let mut pilot_imgs = vec![0f32; pilot * d * d];
    render_batch(0, &mut pilot_imgs)?;
    // Per-image sums in parallel, added in image order (deterministic).
    // Junk picks do not count (unless every pilot particle is junk).
    let sums: Vec<(f64, f64, bool)> = pilot_imgs
        .par_chunks(d * d)
        .enumerate()
        .map(|(j, im)| {
            let (a, b) = im.iter().fold((0.0, 0.0), |(a, b), &v| (a + v as f64, b + (v as f64) * (v as f64)));
            (a, b, truth[j].junk.is_none())
        })
        .collect();
    let good = sums.iter().any(|x| x.2);
    let (s1, s2, cnt) = sums
        .iter()
        .filter(|x| x.2 || !good)
        .fold((0.0, 0.0, 0.0), |(a, b, c), (x, y, _)| (a + x, b + y, c + (d * d) as f64));
    let m = s1 / cnt;
    let var = (s2 / cnt - m * m).max(0.0);
    let sigma = if s.snr.is_finite() && s.snr > 0.0 { (var / s.snr).sqrt() } else { 0.0 };
    let ice_amp = (3.0 * var.sqrt()) as f32;
    let add_noise = |start: usize, out: &mut [f32]| {
        if s.junk.fraction > 0.0 {
            out.par_chunks_mut(d * d).enumerate().for_each(|(j, img)| match truth[start + j].junk {
                Some(JunkKind::Ice) => add_ice(s.seed, start + j, d, ice_amp, img),
                Some(JunkKind::Carbon) => add_carbon_edge(s.seed, start + j, d, ice_amp, img),
                _ => {}
            });
        }
        if sigma > 0.0 {
            out.par_chunks_mut(d * d).enumerate().for_each(|(j, img)| {
                let mut r = particle_rng(s.seed, (start + j) as u64, RNG_NOISE);
                let sg = sigma as f32;
                img.iter_mut().for_each(|v| *v += sg * r.sample::<f32, _>(StandardNormal));
            });
        }
    };
    let bs = s.batch.max(1);
    let mut done = 0;
    // The pilot images are reused rather than rendered twice.
    for chunk_start in (0..pilot).step_by(bs) {
        let k = bs.min(pilot - chunk_start);
        let slice = &mut pilot_imgs[chunk_start * d * d..(chunk_start + k) * d * d];
        add_noise(chunk_start, slice);
        writer.push_batch(slice).map_err(|e| SimError::Input(e.to_string()))?;
        done += k;
        progress(done);
    }
    drop(pilot_imgs);
    // Double-buffered: batch i is written while batch i + 1 renders.
    let dd = d * d;
    let batches: Vec<(usize, usize)> = (pilot..n).step_by(bs).map(|st| (st, bs.min(n - st))).collect();
    let (mut cur, mut nxt) = (vec![0f32; bs * dd], vec![0f32; bs * dd]);
    let render_noisy = |start: usize, out: &mut [f32]| -> Result<(), SimError> {
        render_batch(start, out)?;
        add_noise(start, out);
        Ok(())
    };
    if let Some(&(st, k)) = batches.first() {
        render_noisy(st, &mut cur[..k * dd])?;
    }
    for (i, &(_, k)) in batches.iter().enumerate() {
        let next = batches.get(i + 1).copied();
        let (written, rendered) = rayon::join(
            || writer.push_batch(&cur[..k * dd]).map_err(|e| SimError::Input(e.to_string())),
            || match next {
                Some((st, k2)) => render_noisy(st, &mut nxt[..k2 * dd]),
                None => Ok(()),
            },
        );
        written?;
        rendered?;
        done += k;
        progress(done);
        std::mem::swap(&mut cur, &mut nxt);
    }
    Ok(SimOutput { truth, signal_variance: var, noise_sigma: sigma })
}
