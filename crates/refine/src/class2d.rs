//! Reference-free 2D classification (`cryoforge class2d`), as RELION's Class2D: expectation–
//! maximisation over K class averages, in-plane rotations and shifts, with the CTF.
//!
//! **Model.** A particle is X(k) = −c(k)·A_κ(R(ψ)k)·e^(+2πi k·t/D) + noise (CONVENTIONS
//! rules 5 and 6, the 2D analogue of the 3D refinement's model), with Gaussian noise of a
//! per-shell variance σ²_κ(k) **of its class κ**. RELION gives all classes one noise
//! spectrum; then the likelihood never pays for density a class average leaves unexplained
//! (|X|² is the same for every class), so an aggregate or an off-centre pick scores best
//! with whichever good class matches part of it, and junk spreads over the good classes. With
//! a noise spectrum per class, a class of images that its average explains poorly (empty
//! picks, ice, off-centre picks, aggregates) gets a large σ²_κ and a good class a small one,
//! and the full Gaussian log-likelihood (in the score module's units, per band entry
//! `[2 Re(X̄M) − |M|² − |X|²]/σ²_κ − ln σ²_κ`) sends each image to the class whose average
//! *and* residual level fit it. σ²_κ is the class members' posterior-weighted residual power
//! per shell against the averages they were scored with (the M-step), shrunk toward the
//! pooled residual of all classes with the weight of `noise_prior` particles (20; `inf`
//! gives RELION's shared spectrum); all classes start from the particles' power spectrum.
//! On two structures + 30 % junk at SNR 0.05 (48 px, 20 classes) this puts 96 % of the junk
//! in junk-majority classes against 70 % with the shared spectrum (docs/ARCHITECTURE.md).
//!
//! **E-step.** For every class, the in-plane rotations of its average at the band are a
//! [`Bank`] (the same matrix-product scorer as the 3D global search: one GEMM per block of
//! rotations scores every shift of a batch of particles); each particle keeps the best
//! samples of every class, and their likelihoods × the class priors give the posterior.
//!
//! **M-step.** Each sample adds −c·X·e^(−2πik·t/D) (numerator) and c² (denominator), weighted
//! by its posterior, at R(ψ)k on the class's 2×-oversampled Fourier grid (bilinear, with the
//! Friedel mate); the average is num/(den + ε), ε = `tikhonov` × the mean denominator, back
//! in real space masked with a soft disc of the particle diameter and re-centred on its
//! centre of mass. Class priors are the mean posteriors. Starts: random classes and angles
//! for every particle (seeded), as RELION. During the first two thirds of the iterations a
//! class left with fewer than N/(4K) particles takes a random half of the largest class.

use crate::band::{k_of_resolution, Band};
use crate::config::RefineError;
use crate::maps::power_spectrum;
use crate::score::{bilinear, Bank, Prepared, Scoring};
use crate::search::{global_level0, shift_grid, BankWork};
use cryoforge_core::fft::{Fft2, Rfft2, C32};
use cryoforge_core::Rot3;
use cryoforge_io::stack::ParticleStack;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Class2dConfig {
    pub classes: usize,
    pub iterations: usize,
    /// In-plane angular step (degrees).
    pub psi_step_deg: f64,
    /// Shift search range (Å) around the previous shift, and step (px).
    pub offset_range_a: f64,
    pub offset_step_px: f64,
    /// Highest resolution used (Å; default 15 Å, never finer than Nyquist:
    /// [`Class2dConfig::band_resolution`]).
    pub highres_a: Option<f64>,
    /// Particle diameter (Å) of the mask; default 0.75 × the box.
    pub particle_diameter_a: Option<f64>,
    /// Regulariser of the averages: num/(Σ w·c² + ε), ε = this × the mean of Σ w·c².
    pub tikhonov: f64,
    /// Best samples kept per particle and class.
    pub keep: usize,
    /// Weight (in particles) of the pooled noise spectrum in each class's own noise
    /// spectrum; `inf` gives every class the pooled spectrum.
    #[serde(default = "default_noise_prior")]
    pub noise_prior: f64,
    pub seed: u64,
    pub invert: bool,
    /// Particles per batch of the E-step.
    pub batch: usize,
}

impl Default for Class2dConfig {
    fn default() -> Self {
        Class2dConfig {
            classes: 20,
            iterations: 25,
            psi_step_deg: 10.0,
            offset_range_a: 10.0,
            offset_step_px: 1.0,
            highres_a: None,
            particle_diameter_a: None,
            tikhonov: 0.02,
            keep: 6,
            noise_prior: default_noise_prior(),
            seed: 0,
            invert: false,
            batch: 32,
        }
    }
}

fn default_noise_prior() -> f64 {
    20.0
}

impl Class2dConfig {
    pub fn validate(&self) -> Result<(), RefineError> {
        let bad = |m: String| Err(RefineError::Config(m));
        if self.classes == 0 || self.classes > 500 {
            return bad(format!("--classes {}: between 1 and 500", self.classes));
        }
        if self.iterations == 0 {
            return bad("--iterations 0: at least one".into());
        }
        if !(self.psi_step_deg > 0.0 && self.psi_step_deg <= 90.0) {
            return bad(format!("--psi-step-deg {}: in (0, 90]", self.psi_step_deg));
        }
        if !(self.offset_range_a >= 0.0 && self.offset_step_px > 0.0) {
            return bad(format!(
                "--offset-range-a {} / step {}: ≥ 0 and > 0",
                self.offset_range_a, self.offset_step_px
            ));
        }
        if self.noise_prior.is_nan() || self.noise_prior < 0.0 {
            return bad(format!(
                "--noise-prior {}: ≥ 0 (inf: one spectrum for all classes)",
                self.noise_prior
            ));
        }
        if let Some(h) = self.highres_a {
            if h.is_nan() || h <= 0.0 {
                return bad(format!("--highres-a {h}: must be > 0"));
            }
        }
        Ok(())
    }

    /// The band's resolution (Å): `highres_a`, or 15 Å, never finer than Nyquist.
    pub fn band_resolution(&self, apix: f64) -> f64 {
        self.highres_a.unwrap_or(15.0).max(2.0 * apix)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Class2dIteration {
    pub iter: usize,
    pub class_sizes: Vec<usize>,
    /// Fraction of particles whose class changed.
    pub changed: f64,
    pub mean_max_prob: f64,
    pub mean_score: f64,
    pub seconds: f64,
}

pub struct Class2dOutcome {
    /// D×D class averages (`[y][x]`).
    pub averages: Vec<Vec<f32>>,
    pub class_of: Vec<usize>,
    pub max_prob: Vec<f64>,
    pub psi_deg: Vec<f64>,
    pub shift_px: Vec<[f64; 2]>,
    pub iterations: Vec<Class2dIteration>,
    pub class_sizes: Vec<usize>,
    pub diameter_a: f64,
}

pub trait Class2dObserver: Sync {
    fn iteration(&self, _it: &Class2dIteration) {}
}

pub struct Quiet2d;
impl Class2dObserver for Quiet2d {}

/// One weighted sample of a particle's posterior.
#[derive(Debug, Clone, Copy)]
struct Hit {
    class: u32,
    psi: f32,
    shift: [f32; 2],
    w: f32,
}

/// A particle's E-step result: its samples, the posterior of its best class, its
/// class-marginal log-likelihood, its best shift and its best class.
type Assigned = (Vec<Hit>, f64, f64, [f64; 2], usize);
/// One scored sample: class, ψ, shift, log-likelihood.
type Sample = (usize, f32, [f64; 2], f32);

/// Numerator and denominator grids of every class (side × side, half-frequency steps).
struct Acc {
    num: Vec<C32>,
    den: Vec<f32>,
    /// Per shell: Σ w·|X − M|² and Σ w over entries, M from the E-step's averages.
    res: Vec<f64>,
    cnt: Vec<f64>,
}

impl Acc {
    fn new(side: usize, shells: usize) -> Acc {
        Acc {
            num: vec![C32::default(); side * side],
            den: vec![0f32; side * side],
            res: vec![0.0; shells],
            cnt: vec![0.0; shells],
        }
    }
}

/// Class averages and, when the E-step's averages were given, each class's residual power
/// per shell: (Σ w·|X − M|², Σ w).
type MStep = (Vec<Vec<f32>>, Vec<(Vec<f64>, Vec<f64>)>);

pub fn class2d(
    stack: &ParticleStack,
    cfg: &Class2dConfig,
    obs: &dyn Class2dObserver,
) -> Result<Class2dOutcome, RefineError> {
    cfg.validate()?;
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    if d % 2 == 1 || d < 16 {
        return Err(RefineError::Input(format!(
            "{}: box of {d} px: 2D classification needs an even box ≥ 16",
            stack.path.display()
        )));
    }
    if stack.ctf_premultiplied {
        return Err(RefineError::Input(format!(
            "{}: rlnCtfDataAreCtfPremultiplied = 1: 2D classification needs particles that are not CTF-premultiplied",
            stack.path.display()
        )));
    }
    if stack.len() < cfg.classes {
        return Err(RefineError::Input(format!(
            "{}: {} particles for {} classes",
            stack.path.display(),
            stack.len(),
            cfg.classes
        )));
    }
    let ctf = stack.require_ctf()?;
    let n = stack.len();
    let kc = cfg.classes;
    let box_a = d as f64 * apix;
    let diameter_a = cfg.particle_diameter_a.unwrap_or(0.75 * box_a).clamp(0.2 * box_a, box_a);
    let k_band = k_of_resolution(d, apix, cfg.band_resolution(apix)).clamp(2.0, (d / 2 - 1) as f64);
    let band = Band::new(d, k_band);
    let nb = band.len();
    let sigma2 = power_spectrum(stack, &(0..n).collect::<Vec<_>>(), 2000)?;
    let n_psi = (360.0 / cfg.psi_step_deg).round().max(1.0) as usize;
    let psis: Vec<f64> = (0..n_psi).map(|j| j as f64 * std::f64::consts::TAU / n_psi as f64).collect();
    let rots: Vec<Rot3> = psis.iter().map(|&p| in_plane(p)).collect();
    let offsets = shift_grid(cfg.offset_range_a / apix, cfg.offset_step_px);
    let sign = if cfg.invert { -1.0 } else { 1.0 };
    let mask = disc_mask(d, diameter_a / (2.0 * apix), 3.0);
    let side = 2 * d;

    // Random start: every particle in a random class at a random angle, no shift.
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut hits: Vec<Vec<Hit>> = (0..n)
        .map(|_| {
            vec![Hit {
                class: rng.gen_range(0..kc) as u32,
                psi: psis[rng.gen_range(0..n_psi)] as f32,
                shift: [0.0, 0.0],
                w: 1.0,
            }]
        })
        .collect();
    let mut prior = vec![1.0 / kc as f64; kc];
    let mut class_of: Vec<usize> = hits.iter().map(|h| h[0].class as usize).collect();
    let mut iterations = Vec::new();
    let (mut averages, _) = m_step(stack, ctf, &band, &hits, kc, d, side, cfg, sign, &mask, None)?;
    // Every class's noise spectrum starts as the particles' power spectrum.
    let mut sig2: Vec<Vec<f64>> = vec![sigma2.clone(); kc];
    let shell_entries: Vec<f64> = {
        let mut c = vec![0.0; d / 2 + 1];
        for e in band.entries() {
            c[e.shell as usize] += 1.0;
        }
        c
    };
    let fft = Rfft2::new(d);
    let mut best_info: Vec<(f64, f64, [f64; 2])> = vec![(0.0, 0.0, [0.0, 0.0]); n];
    for it in 0..cfg.iterations {
        let t0 = std::time::Instant::now();
        // Banks of every class's rotated averages at the band.
        let padded: Vec<Vec<C32>> = averages.iter().map(|a| padded_spectrum(a, d)).collect();
        let pts = band.point_cache().to_vec();
        let banks: Vec<Bank> = padded
            .par_iter()
            .map(|sp| {
                let mut p = vec![0f32; n_psi * 2 * nb];
                let mut p2 = vec![0f32; n_psi * nb];
                for (j, &psi) in psis.iter().enumerate() {
                    let (s, c) = (psi.sin() as f32, psi.cos() as f32);
                    for (e, k) in pts.iter().enumerate() {
                        let x = 2.0 * (c * k[0] - s * k[1]) + d as f32;
                        let y = 2.0 * (s * k[0] + c * k[1]) + d as f32;
                        let v = bilinear(sp, side, x, y);
                        p[j * 2 * nb + 2 * e] = v.re;
                        p[j * 2 * nb + 2 * e + 1] = v.im;
                        p2[j * nb + e] = v.norm_sqr();
                    }
                }
                Bank { rots: rots.clone(), n: nb, p, p2 }
            })
            .collect();
        let centres: Vec<[f64; 2]> =
            (0..n).map(|i| if it == 0 { [0.0, 0.0] } else { best_info[i].2 }).collect();
        let max_off = cfg.offset_range_a / apix;
        let chunks: Vec<(usize, usize)> =
            (0..n).step_by(cfg.batch).map(|s| (s, (s + cfg.batch).min(n))).collect();
        let parts: Vec<Result<Vec<Assigned>, RefineError>> = chunks
            .par_iter()
            .map_init(
                || (fft.work(), BankWork::default()),
                |(fw, bw), &(a, b)| {
                    let mut img = vec![0f32; d * d];
                    let nc = band.kx_max() + 1;
                    let mut spec = vec![C32::default(); d * nc];
                    // preps[k][j]: particle a + j whitened by class k's noise spectrum;
                    // consts[k][j]: its class-dependent log-likelihood terms (module docs).
                    let mut preps: Vec<Vec<Prepared>> = (0..kc).map(|_| Vec::with_capacity(b - a)).collect();
                    let mut consts: Vec<Vec<f32>> = vec![Vec::with_capacity(b - a); kc];
                    for i in a..b {
                        stack.read_image(i, &mut img)?;
                        fft.forward_low(fw, &img, band.kx_max(), &mut spec);
                        for k in 0..kc {
                            let mut p = Prepared::default();
                            p.fill(&band, &spec, Some(&ctf[i]), apix, &sig2[k], sign);
                            let c: f64 =
                                p.x.iter()
                                    .zip(&p.inv_sigma2)
                                    .map(|(x, &is2)| -(x.norm_sqr() * is2) as f64 + (is2 as f64).ln())
                                    .sum();
                            consts[k].push(c as f32);
                            preps[k].push(p);
                        }
                    }
                    // Shifts stay within the range of the box centre.
                    let cs: Vec<[f64; 2]> = (a..b)
                        .map(|i| {
                            let c = centres[i];
                            let r = c[0].hypot(c[1]);
                            if r > max_off && r > 0.0 {
                                [c[0] * max_off / r, c[1] * max_off / r]
                            } else {
                                c
                            }
                        })
                        .collect();
                    let mut cands: Vec<Vec<Sample>> = vec![Vec::new(); b - a];
                    for (k, bank) in banks.iter().enumerate() {
                        let refs: Vec<&Prepared> = preps[k].iter().collect();
                        let tops = global_level0(
                            &band,
                            bank,
                            &refs,
                            &cs,
                            &offsets,
                            Scoring::Likelihood,
                            cfg.keep,
                            bw,
                        );
                        for (j, t) in tops.into_iter().enumerate() {
                            for c in t {
                                let pj = rots.iter().position(|r| r.0 == c.rot.0).unwrap_or(0);
                                cands[j].push((k, psis[pj] as f32, c.shift, c.score + consts[k][j]));
                            }
                        }
                    }
                    let mut out = Vec::with_capacity(b - a);
                    for c in cands {
                        let lp: Vec<f64> = c.iter().map(|x| x.3 as f64 + prior[x.0].ln()).collect();
                        let mx = lp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let ws: Vec<f64> = lp.iter().map(|v| (v - mx).exp()).collect();
                        let z: f64 = ws.iter().sum();
                        let mut hs: Vec<Hit> = c
                            .iter()
                            .zip(&ws)
                            .filter(|(_, &w)| w / z > 1e-4)
                            .map(|(x, &w)| Hit {
                                class: x.0 as u32,
                                psi: x.1,
                                shift: [x.2[0] as f32, x.2[1] as f32],
                                w: (w / z) as f32,
                            })
                            .collect();
                        hs.sort_by(|p, q| q.w.total_cmp(&p.w));
                        if hs.is_empty() {
                            return Err(RefineError::Input(
                                "2D classification: a particle has no finite score (NaN or infinite pixels?)"
                                    .into(),
                            ));
                        }
                        let best = hs[0];
                        // Class posterior of the best class.
                        let pc: f64 = hs.iter().filter(|h| h.class == best.class).map(|h| h.w as f64).sum();
                        out.push((
                            hs,
                            pc,
                            mx + z.ln(),
                            [best.shift[0] as f64, best.shift[1] as f64],
                            best.class as usize,
                        ));
                    }
                    Ok(out)
                },
            )
            .collect();
        let mut changed = 0usize;
        let (mut sum_p, mut sum_s) = (0f64, 0f64);
        let mut i = 0;
        for part in parts {
            for (hs, pc, score, shift, cls) in part? {
                if cls != class_of[i] {
                    changed += 1;
                }
                class_of[i] = cls;
                best_info[i] = (pc, hs[0].psi as f64, shift);
                sum_p += pc;
                sum_s += score;
                hits[i] = hs;
                i += 1;
            }
        }
        // Priors: mean posteriors.
        let mut pr = vec![0f64; kc];
        for h in &hits {
            for x in h {
                pr[x.class as usize] += x.w as f64;
            }
        }
        for p in pr.iter_mut() {
            *p = (*p / n as f64).max(1e-6);
        }
        prior = pr;
        // Classes that ran (nearly) empty take a random half of the largest class, while
        // the classification is still young: EM alone lets one class absorb the others
        // (RELION and cryoSPARC re-seed such classes too).
        if it + 1 < (2 * cfg.iterations) / 3 {
            let min_size = (n / (4 * kc)).max(5);
            for small in 0..kc {
                let size = class_of.iter().filter(|&&c| c == small).count();
                if size >= min_size {
                    continue;
                }
                let sizes: Vec<usize> =
                    (0..kc).map(|k| class_of.iter().filter(|&&c| c == k).count()).collect();
                let big = (0..kc).max_by_key(|&k| sizes[k]).unwrap_or(0);
                if big == small || sizes[big] < 2 * min_size {
                    continue;
                }
                let mut members: Vec<usize> = (0..n).filter(|&i| class_of[i] == big).collect();
                members.shuffle(&mut rng);
                for &i in &members[..members.len() / 2] {
                    class_of[i] = small;
                    for h in hits[i].iter_mut().filter(|h| h.class as usize == big) {
                        h.class = small as u32;
                    }
                }
                let half = prior[big] / 2.0;
                prior[big] = half;
                prior[small] = half;
            }
        }
        let (new, residuals) =
            m_step(stack, ctf, &band, &hits, kc, d, side, cfg, sign, &mask, Some(&padded))?;
        averages = new;
        sig2 = class_noise(&residuals, &shell_entries, &sigma2, cfg.noise_prior);
        let sizes: Vec<usize> = (0..kc).map(|k| class_of.iter().filter(|&&c| c == k).count()).collect();
        let st = Class2dIteration {
            iter: it + 1,
            class_sizes: sizes,
            changed: changed as f64 / n as f64,
            mean_max_prob: sum_p / n as f64,
            mean_score: sum_s / n as f64,
            seconds: t0.elapsed().as_secs_f64(),
        };
        obs.iteration(&st);
        iterations.push(st);
    }
    let class_sizes: Vec<usize> = (0..kc).map(|k| class_of.iter().filter(|&&c| c == k).count()).collect();
    Ok(Class2dOutcome {
        averages,
        max_prob: best_info.iter().map(|b| b.0).collect(),
        psi_deg: best_info.iter().map(|b| b.1.to_degrees()).collect(),
        shift_px: best_info.iter().map(|b| b.2).collect(),
        class_of,
        iterations,
        class_sizes,
        diameter_a,
    })
}

/// Each class's noise spectrum from its members' residual power per shell, shrunk toward
/// the pooled residual spectrum of all classes with the weight of `prior` particles
/// (shells without residuals keep `fallback`).
fn class_noise(
    residuals: &[(Vec<f64>, Vec<f64>)],
    shell_entries: &[f64],
    fallback: &[f64],
    prior: f64,
) -> Vec<Vec<f64>> {
    let ns = fallback.len();
    let pooled: Vec<f64> = (0..ns)
        .map(|s| {
            let (r, c) = residuals.iter().fold((0.0, 0.0), |(r, c), x| (r + x.0[s], c + x.1[s]));
            if c > 0.0 && r > 0.0 {
                r / c
            } else {
                fallback[s]
            }
        })
        .collect();
    if prior.is_infinite() {
        return vec![pooled; residuals.len()];
    }
    residuals
        .iter()
        .map(|(r, c)| {
            (0..ns)
                .map(|s| {
                    let w = prior * shell_entries[s];
                    if c[s] + w > 0.0 && r[s] + w * pooled[s] > 0.0 {
                        (r[s] + w * pooled[s]) / (c[s] + w)
                    } else {
                        pooled[s]
                    }
                })
                .collect()
        })
        .collect()
}

/// The in-plane rotation ψ as a pose matrix (RELION's angles (0, 0, ψ)).
fn in_plane(psi: f64) -> Rot3 {
    cryoforge_core::EulerRelion::new(0.0, 0.0, psi.to_degrees()).to_rot()
}

/// Soft disc of radius `r` px with a raised-cosine edge of `edge` px outside it.
fn disc_mask(d: usize, r: f64, edge: f64) -> Vec<f32> {
    let h = (d / 2) as f64;
    let r = r.min(h - edge - 1.0).max(1.0);
    (0..d * d)
        .map(|i| {
            let (x, y) = ((i % d) as f64 - h, (i / d) as f64 - h);
            let q = x.hypot(y);
            if q <= r {
                1.0
            } else if q >= r + edge {
                0.0
            } else {
                (0.5 + 0.5 * (std::f64::consts::PI * (q - r) / edge).cos()) as f32
            }
        })
        .collect()
}

/// Centred spectrum of the D×D image zero-padded to 2D×2D (frequency step ½).
fn padded_spectrum(img: &[f32], d: usize) -> Vec<C32> {
    let m = 2 * d;
    let off = d / 2;
    let mut buf = vec![C32::default(); m * m];
    for y in 0..d {
        for x in 0..d {
            buf[(y + off) * m + x + off] = C32::new(img[y * d + x], 0.0);
        }
    }
    let f = Fft2::new(m);
    let mut w = f.work();
    let mut out = vec![C32::default(); m * m];
    f.forward_complex(&mut w, &buf, &mut out);
    out
}

/// New class averages from the weighted samples.
#[allow(clippy::too_many_arguments)]
fn m_step(
    stack: &ParticleStack,
    ctf: &[cryoforge_core::CtfParams],
    band: &Band,
    hits: &[Vec<Hit>],
    kc: usize,
    d: usize,
    side: usize,
    cfg: &Class2dConfig,
    sign: f32,
    mask: &[f32],
    scored: Option<&[Vec<C32>]>,
) -> Result<MStep, RefineError> {
    let apix = stack.apix_a()?;
    let fft = Rfft2::new(d);
    let nc = band.kx_max() + 1;
    let inv = 1.0 / (d as f64 * apix);
    let n = stack.len();
    let chunks: Vec<(usize, usize)> =
        (0..n).step_by(cfg.batch.max(1) * 4).map(|s| (s, (s + cfg.batch.max(1) * 4).min(n))).collect();
    let parts: Vec<Result<Vec<Acc>, RefineError>> = chunks
        .par_iter()
        .map_init(
            || fft.work(),
            |fw, &(a, b)| {
                let mut acc: Vec<Acc> = (0..kc).map(|_| Acc::new(side, d / 2 + 1)).collect();
                let mut img = vec![0f32; d * d];
                let mut spec = vec![C32::default(); d * nc];
                for i in a..b {
                    stack.read_image(i, &mut img)?;
                    fft.forward_low(fw, &img, band.kx_max(), &mut spec);
                    let e = ctf[i].evaluator();
                    for h in &hits[i] {
                        let (s, c) = (h.psi.sin(), h.psi.cos());
                        let t = [h.shift[0] as f64, h.shift[1] as f64];
                        let ac = &mut acc[h.class as usize];
                        for en in band.entries() {
                            let x = spec[en.row as usize * nc + en.col as usize] * sign;
                            let cv = e.eval(en.k[0] as f64 * inv, en.k[1] as f64 * inv) as f32;
                            let ph = cryoforge_core::fft::recentre_phasor_2d(
                                [en.k[0] as f64, en.k[1] as f64],
                                t,
                                d,
                            );
                            let v = x * ph * (-cv * h.w);
                            let wd = cv * cv * h.w;
                            let qx = 2.0 * (c * en.k[0] - s * en.k[1]);
                            let qy = 2.0 * (s * en.k[0] + c * en.k[1]);
                            if let Some(sp) = scored {
                                // X·e^(−2πik·t/D) − M·e^(−2πik·t/D) = X·ph + c·A(Rk).
                                let a = bilinear(&sp[h.class as usize], side, qx + d as f32, qy + d as f32);
                                let r = x * ph + a * cv;
                                ac.res[en.shell as usize] += (h.w * r.norm_sqr()) as f64;
                                ac.cnt[en.shell as usize] += h.w as f64;
                            }
                            spread(ac, side, qx + d as f32, qy + d as f32, v, wd);
                            spread(ac, side, -qx + d as f32, -qy + d as f32, v.conj(), wd);
                        }
                    }
                }
                Ok(acc)
            },
        )
        .collect();
    let mut total: Vec<Acc> = (0..kc).map(|_| Acc::new(side, d / 2 + 1)).collect();
    for p in parts {
        for (t, a) in total.iter_mut().zip(p?) {
            for (x, y) in t.num.iter_mut().zip(&a.num) {
                *x += y;
            }
            for (x, y) in t.den.iter_mut().zip(&a.den) {
                *x += y;
            }
            for (x, y) in t.res.iter_mut().zip(&a.res) {
                *x += y;
            }
            for (x, y) in t.cnt.iter_mut().zip(&a.cnt) {
                *x += y;
            }
        }
    }
    let residuals = total.iter().map(|a| (a.res.clone(), a.cnt.clone())).collect();
    let f = Fft2::new(side);
    let off = d / 2;
    let out = total
        .par_iter()
        .map(|a| {
            let (s, c) =
                a.den.iter().filter(|&&v| v > 0.0).fold((0f64, 0usize), |(s, c), &v| (s + v as f64, c + 1));
            let eps = if c > 0 { (cfg.tikhonov * s / c as f64) as f32 } else { 1.0 };
            let spec: Vec<C32> = a
                .num
                .iter()
                .zip(&a.den)
                .map(|(n, &w)| if w > 0.0 { n / (w + eps) } else { C32::default() })
                .collect();
            let mut w = f.work();
            let mut back = vec![C32::default(); side * side];
            f.inverse_complex(&mut w, &spec, &mut back);
            let mut img: Vec<f32> =
                (0..d * d).map(|i| back[(i / d + off) * side + i % d + off].re * mask[i]).collect();
            centre_image(&mut img, d);
            img
        })
        .collect();
    Ok((out, residuals))
}

#[inline]
fn spread(a: &mut Acc, side: usize, x: f32, y: f32, v: C32, w: f32) {
    if x < 0.0 || y < 0.0 || x >= (side - 1) as f32 || y >= (side - 1) as f32 {
        return;
    }
    let (x0, y0) = (x as usize, y as usize);
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    for (dx, dy, b) in
        [(0, 0, (1.0 - fx) * (1.0 - fy)), (1, 0, fx * (1.0 - fy)), (0, 1, (1.0 - fx) * fy), (1, 1, fx * fy)]
    {
        let i = (y0 + dy) * side + x0 + dx;
        a.num[i] += v * b;
        a.den[i] += w * b;
    }
}

/// Move the image's centre of (positive) mass to the box centre (whole pixels, periodic).
fn centre_image(img: &mut [f32], d: usize) {
    let h = (d / 2) as f64;
    let (mut cx, mut cy, mut t) = (0f64, 0f64, 0f64);
    for (i, &v) in img.iter().enumerate() {
        if v > 0.0 {
            cx += v as f64 * ((i % d) as f64 - h);
            cy += v as f64 * ((i / d) as f64 - h);
            t += v as f64;
        }
    }
    if t <= 0.0 {
        return;
    }
    let (sx, sy) = ((cx / t).round() as isize, (cy / t).round() as isize);
    if sx == 0 && sy == 0 {
        return;
    }
    let src = img.to_vec();
    for y in 0..d {
        for x in 0..d {
            let xs = (x as isize + sx).rem_euclid(d as isize) as usize;
            let ys = (y as isize + sy).rem_euclid(d as isize) as usize;
            img[y * d + x] = src[ys * d + xs];
        }
    }
}
