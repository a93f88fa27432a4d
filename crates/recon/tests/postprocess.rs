//! Post-processing against ground truth made by the simulator: the phase-randomisation
//! corrected masked FSC predicts the masked FSC to the truth; the correction does nothing
//! with a loose mask and removes the inflation of a tight one; the automatic B-factor
//! undoes a known blur; the sharpening steps are the identity when switched off.

use cryoforge_core::filter::{bfactor_volume, spherical_mask};
use cryoforge_core::fsc::{fsc_truth_from_half, fsc_volumes, FscCurve};
use cryoforge_io::mrc::MrcStackWriter;
use cryoforge_io::pdb::{read_structure, Model};
use cryoforge_io::stack::{ImageRef, ParticleStack};
use cryoforge_recon::mask::{create_mask_detailed, MaskOptions, Threshold};
use cryoforge_recon::postprocess::{fit_guinier, postprocess, BFactor, PostprocessOptions, Postprocessed};
use cryoforge_recon::{reconstruct, ReconConfig};
use cryoforge_sim::sampling::{CtfDistribution, PoseDistribution};
use cryoforge_sim::simulate::{
    anchor_centroid, simulate, translate_models, DensityKind, PoseSource, Sample, SimSettings,
};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::OnceLock;

/// 1.5 Å/px: AdK (≈ 50 Å across) spans ≈ 33 px, so the shells hold enough independent
/// voxels inside a mask for a per-shell tolerance of 0.03 (see `corrected_…_truth`).
const D: usize = 64;
const APIX: f64 = 1.5;
const PARTICLES: usize = 8000;

fn adk_model() -> Model {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/adk_closed.pdb");
    let mut s = read_structure(&p).unwrap();
    let c = anchor_centroid(&s.models[0]).unwrap();
    translate_models(&mut s.models, [-c[0], -c[1], -c[2]]);
    s.models.remove(0)
}

/// `PARTICLES` AdK particles (seeded: the same poses, CTFs and shifts for every SNR).
fn simulate_stack(dir: &Path, snr: f64, m: &Model) -> ParticleStack {
    let path = dir.join(format!("p{snr}.mrcs"));
    let s = SimSettings {
        n: PARTICLES,
        box_px: D,
        apix_a: APIX,
        density: DensityKind::Atomic,
        seed: 5,
        snr,
        invert: false,
        model_weights: vec![],
        batch: 256,
        junk: Default::default(),
    };
    let mut w = MrcStackWriter::create(&path, D, D, APIX as f32).unwrap();
    let src = PoseSource::Random {
        poses: PoseDistribution::default(),
        ctf: CtfDistribution::default(),
        shift_max_a: 4.0,
    };
    let out = simulate(&Sample::Models(vec![m.clone()]), &src, &s, &mut w, &mut |_| {}).unwrap();
    w.finish().unwrap();
    let images = (0..s.n).map(|i| ImageRef { file: 0, index: i as u64 }).collect();
    let mut stack = ParticleStack::from_parts(
        &dir.join("p.star"),
        vec![path.to_string_lossy().into_owned()],
        images,
        D,
        APIX,
    );
    stack.poses = Some(out.truth.iter().map(|t| t.pose).collect());
    stack.ctf = Some(out.truth.iter().map(|t| t.ctf).collect());
    stack
}

struct Halves {
    a: Vec<f32>,
    b: Vec<f32>,
}

/// True-pose reconstructions of the same particles at two noise levels, and without noise.
struct Data {
    /// SNR 0.1: the masked FSC stays ≥ 0.2 to Nyquist.
    high: Halves,
    /// SNR 0.005: the resolution is ≈ 3.8 Å, between the randomisation shell and Nyquist.
    low: Halves,
    /// The noiseless reconstruction (the truth; see `corrected_…_truth`).
    clean: Vec<f32>,
}

fn data() -> &'static Data {
    static R: OnceLock<Data> = OnceLock::new();
    R.get_or_init(|| {
        let m = adk_model();
        let dir = tempfile::tempdir().unwrap();
        let rec = |snr: f64| {
            reconstruct(&simulate_stack(dir.path(), snr, &m), &ReconConfig::default(), &|_| {}).unwrap()
        };
        let (h, l, c) = (rec(0.1), rec(0.005), rec(f64::INFINITY));
        Data {
            high: Halves { a: h.half_a, b: h.half_b },
            low: Halves { a: l.half_a, b: l.half_b },
            clean: c.map,
        }
    })
}

/// A mask of the noiseless map low-passed to 8 Å: binarised at `frac` of its maximum,
/// extended by `extend_px`, soft edge `soft_px`.
fn mask(frac: f64, extend_px: f64, soft_px: f64) -> Vec<f32> {
    let c = &data().clean;
    let max = c.iter().fold(0f32, |a, &b| a.max(b)) as f64;
    let o = MaskOptions {
        threshold: Threshold::Value(frac * max),
        lowpass_a: Some(8.0),
        extend_px,
        soft_edge_px: soft_px,
    };
    create_mask_detailed(c, D, APIX, &o).unwrap().mask
}

/// A loose mask: the particle's envelope + 3 px + a 6 px soft edge (≈ 14 % of the box).
fn loose_mask() -> Vec<f32> {
    mask(0.05, 3.0, 6.0)
}

fn run(h: &Halves, m: &[f32]) -> Postprocessed {
    let o = PostprocessOptions { bfactor: BFactor::Fixed(0.0), ..Default::default() };
    postprocess(&h.a, &h.b, m, D, APIX, &o).unwrap()
}

fn times(v: &[f32], m: &[f32]) -> Vec<f32> {
    v.iter().zip(m).map(|(a, b)| a * b).collect()
}

/// FSC(mask · (half_a + half_b)/2, mask · truth): the masked FSC of the map to the truth.
fn masked_truth_fsc(h: &Halves, m: &[f32]) -> FscCurve {
    let map: Vec<f32> = h.a.iter().zip(&h.b).map(|(a, b)| 0.5 * (a + b)).collect();
    fsc_volumes(&times(&map, m), &times(&data().clean, m), D, APIX)
}

/// The half-map FSC F of the halves predicts the FSC of their average to the truth as
/// sqrt(2F/(1 + F)) (Rosenthal & Henderson 2003), so the comparison is
/// `sqrt(2·F_corrected/(1 + F_corrected))` against `FSC(M·map, M·truth)`, map = the
/// average of the halves, both sides masked by the same (loose, soft) mask M, at every
/// shell 1..=n/2, within 0.03.
///
/// The truth is the reconstruction of the same particles without noise, not the atomic
/// model's map: the half-map FSC measures disagreement caused by noise only, and the
/// reconstruction also differs from the model's map systematically where the FSC cannot
/// see it — at the Nyquist shell of an even box, where the unpaired −n/2 planes alias
/// (masked FSC(noiseless map, model map) = 0.96 at shell 24 of a 48 px box, ≥ 0.998
/// below; measured).
///
/// The data are at SNR 0.1, where the masked FSC stays ≥ 0.2 to Nyquist: where it is
/// near 0, the half-map FSC's own sampling error (≈ 0.7/√m for m independent voxels of
/// the shell inside the mask, m ≈ 500 at shell 30 here) exceeds 0.03 whatever it is
/// compared with, and sqrt(2F/(1+F)) amplifies it (measured: 0.055 at SNR 0.02).
#[test]
fn corrected_masked_fsc_predicts_the_masked_fsc_to_truth() {
    let (h, m) = (&data().high, loose_mask());
    let p = run(h, &m);
    let r = p.randomize_shell.expect("the unmasked FSC drops below 0.8");
    assert!(r > 5 && r + 5 < D / 2, "randomised from shell {r}");
    let t = masked_truth_fsc(h, &m);
    for k in 1..=D / 2 {
        let pred = fsc_truth_from_half(p.fsc_corrected.fsc[k]);
        assert!(
            (pred - t.fsc[k]).abs() <= 0.03,
            "shell {k}: predicted {pred:.3} from the corrected FSC {:.3}, FSC to truth {:.3}",
            p.fsc_corrected.fsc[k],
            t.fsc[k]
        );
    }
    assert!(p.fsc_corrected.fsc[D / 2] > 0.15, "the test regime needs signal at Nyquist");
}

/// The resolution (FSC 0.143) that the masked FSC to truth implies for a half-map FSC:
/// t ↦ t²/(2 − t²), the inverse of sqrt(2F/(1+F)).
fn truth_resolution(t: &FscCurve) -> f64 {
    FscCurve { fsc: t.fsc.iter().map(|&t| t.signum() * t * t / (2.0 - t * t)).collect(), ..t.clone() }
        .resolution_at(0.143)
}

/// Low SNR (resolution ≈ 3.8 Å, randomisation from ≈ 9 Å). A loose mask: the correction
/// changes no shell by more than 0.05 and the resolution by < 2 %. (The halves are the lightly
/// regularised ones, as RELION's `_unfil`, so their high-shell noise is not shrunk and a
/// mask around reconstructed halves inflates the FSC only mildly; the inflation the
/// correction exists for is pinned by `phase_randomisation_removes_mask_induced_correlation`.)
#[test]
fn phase_randomisation_is_neutral_for_a_loose_mask() {
    let h = &data().low;
    let loose = loose_mask();
    let pl = run(h, &loose);
    let t = masked_truth_fsc(h, &loose);
    let truth_res = truth_resolution(&t);
    assert!(truth_res > 3.3 && truth_res < 6.0, "truth resolution {truth_res:.2} Å: wrong test regime");
    for k in 0..=D / 2 {
        let d = (pl.fsc_corrected.fsc[k] - pl.fsc_masked.fsc[k]).abs();
        assert!(d <= 0.05, "loose mask, shell {k}: the correction moved the FSC by {d:.3}");
    }
    let lr = pl.fsc_masked.resolution_at(0.143);
    assert!((pl.resolution_a - lr).abs() < 0.02 * lr, "loose: {:.2} vs masked {lr:.2} Å", pl.resolution_a);
}

/// The classic case of mask-induced correlation: halves sharing a strong low-resolution
/// signal (nothing beyond ≈ 12 Å) plus independent white noise, under a sharp binary mask
/// around the signal. The mask's edge convolves the shared signal into every shell, so the
/// masked FSC stays high where there is no shared signal at all; the phase-randomised
/// correction brings those shells back to ≈ 0 and leaves the low shells alone.
#[test]
fn phase_randomisation_removes_mask_induced_correlation() {
    let n = D;
    let h = (n / 2) as f64;
    let mut signal = vec![0f32; n * n * n];
    for (i, v) in signal.iter_mut().enumerate() {
        let (x, y, z) = ((i % n) as f64 - h, ((i / n) % n) as f64 - h, (i / (n * n)) as f64 - h);
        let b = |cx: f64, cy: f64, cz: f64, s: f64| {
            (-((x - cx).powi(2) + (y - cy).powi(2) + (z - cz).powi(2)) / (2.0 * s * s)).exp()
        };
        *v = (40.0 * (b(4.0, 0.0, 0.0, 4.0) + 0.7 * b(-6.0, 5.0, 2.0, 3.5) + 0.5 * b(0.0, -7.0, -4.0, 3.0)))
            as f32;
    }
    let (na, nb) = (white_noise(n, 1.0, 11), white_noise(n, 1.0, 12));
    let a: Vec<f32> = signal.iter().zip(&na).map(|(s, e)| s + e).collect();
    let b: Vec<f32> = signal.iter().zip(&nb).map(|(s, e)| s + e).collect();
    let max = signal.iter().fold(0f32, |m, &v| m.max(v));
    let m: Vec<f32> = signal.iter().map(|&v| if v > 0.1 * max { 1.0 } else { 0.0 }).collect();
    let o = PostprocessOptions { bfactor: BFactor::Fixed(0.0), ..Default::default() };
    let p = postprocess(&a, &b, &m, n, APIX, &o).unwrap();
    // Shells beyond 6 Å carry no shared signal (a σ ≥ 3 px Gaussian has none there).
    let k6 = (n as f64 * APIX / 6.0).ceil() as usize;
    let inflated = (k6..=n / 2).map(|k| p.fsc_masked.fsc[k]).fold(f64::INFINITY, f64::min);
    assert!(inflated > 0.2, "the binary mask did not inflate the FSC (min {inflated:.3} beyond 6 Å)");
    for k in k6..=n / 2 {
        // 0.12: the FSC's own sampling error for a small mask (≈ 0.7/√m, m = shell voxels × mask fraction, a few tens).
        assert!(p.fsc_corrected.fsc[k].abs() < 0.12, "shell {k}: corrected {:.3}", p.fsc_corrected.fsc[k]);
    }
    assert!(p.fsc_corrected.fsc[2] > 0.9, "low shells must keep their correlation");
}

/// The Otsu threshold of the low-passed noiseless map encloses the particle: the extended
/// soft mask holds ≥ 97 % of the map's positive density (measured 98.2 %; the loose mask
/// of 5 % of the maximum holds 98.5 %, the rest being ripples outside the particle) and
/// ≤ 30 % of the box (measured 12 %).
#[test]
fn auto_threshold_mask_encloses_the_particle() {
    let c = &data().clean;
    let o =
        MaskOptions { threshold: Threshold::Auto, lowpass_a: Some(8.0), extend_px: 3.0, soft_edge_px: 6.0 };
    let m = create_mask_detailed(c, D, APIX, &o).unwrap();
    let pos: f64 = c.iter().map(|&v| v.max(0.0) as f64).sum();
    let inside: f64 = c.iter().zip(&m.mask).map(|(&v, &w)| (v.max(0.0) * w) as f64).sum();
    let frac = m.mask.iter().map(|&v| v as f64).sum::<f64>() / (D * D * D) as f64;
    assert!(inside >= 0.97 * pos, "the mask holds {:.1} % of the density", 100.0 * inside / pos);
    assert!(frac <= 0.3, "the mask is {:.0} % of the box", 100.0 * frac);
}

fn white_noise(n: usize, sigma: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n * n * n)
        .map(|_| {
            let (u1, u2): (f32, f32) = (rng.gen::<f32>().max(1e-12), rng.gen());
            sigma * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// White noise blurred by B = +200 Å² has ln|F| = c − 50·s²: the fit gives B = −200 Å²
/// (± 3 %), and the sharpened map's Guinier plot is flat over the fitted shells. The
/// unmasked FSC ≈ 1 never drops below 0.8, so nothing is randomised (with a warning).
#[test]
fn auto_bfactor_undoes_a_known_blur() {
    let n = 48;
    let mut signal = white_noise(n, 1.0, 1);
    bfactor_volume(&mut signal, n, APIX, 200.0);
    let (na, nb) = (white_noise(n, 1e-4, 2), white_noise(n, 1e-4, 3));
    let a: Vec<f32> = signal.iter().zip(&na).map(|(s, e)| s + e).collect();
    let b: Vec<f32> = signal.iter().zip(&nb).map(|(s, e)| s + e).collect();
    let m = spherical_mask(n, 0.4 * n as f64, 4.0);
    let p = postprocess(&a, &b, &m, n, APIX, &PostprocessOptions::default()).unwrap();
    assert_eq!(p.randomize_shell, None);
    assert!(!p.warnings.is_empty());
    assert!((p.resolution_a - 2.0 * APIX).abs() < 1e-9, "resolution {:.2}", p.resolution_a);
    let fit = p.fit.unwrap();
    assert!((p.bfactor_a2 + 200.0).abs() < 6.0, "fitted B {:.1} Å²", p.bfactor_a2);
    assert!(fit.correlation < -0.99 && fit.points >= 10, "{fit:?}");
    // The sharpened map's Guinier plot over the fitted shells, clear of the low-pass edge.
    let mut flat = p.guinier.clone();
    for g in flat.iter_mut() {
        g.in_fit = g.in_fit && g.shell + 2 < n / 2;
        g.ln_amp_weighted = g.ln_amp_sharpened;
    }
    let after = fit_guinier(&flat, 10.0, 3.0).unwrap();
    assert!(after.bfactor_a2().abs() < 10.0, "after sharpening: B {:.1} Å²", after.bfactor_a2());
}

/// No FSC weighting, B = 0 and a low-pass beyond every frequency of the box: the map is
/// the average of the halves; the masked map is the map × mask; a fixed B-factor is used
/// as given.
#[test]
fn sharpening_switched_off_is_the_identity() {
    let n = 32;
    let a = white_noise(n, 1.0, 4);
    let b: Vec<f32> = a.iter().zip(white_noise(n, 0.3, 5)).map(|(x, e)| x + e).collect();
    let m = spherical_mask(n, 10.0, 3.0);
    let o = PostprocessOptions {
        bfactor: BFactor::Fixed(0.0),
        fsc_weighting: false,
        lowpass_a: Some(0.9 * APIX),
        ..Default::default()
    };
    let p = postprocess(&a, &b, &m, n, APIX, &o).unwrap();
    for i in 0..n * n * n {
        let avg = 0.5 * (a[i] + b[i]);
        assert!((p.map[i] - avg).abs() < 1e-4, "voxel {i}: {} vs {avg}", p.map[i]);
        assert_eq!(p.map_masked[i], p.map[i] * m[i]);
    }
    let fixed = PostprocessOptions { bfactor: BFactor::Fixed(-55.0), ..o };
    assert_eq!(postprocess(&a, &b, &m, n, APIX, &fixed).unwrap().bfactor_a2, -55.0);
}

#[test]
fn bad_inputs_are_refused_with_a_reason() {
    let n = 16;
    let v = white_noise(n, 1.0, 6);
    let m = spherical_mask(n, 5.0, 2.0);
    let o = PostprocessOptions::default();
    let err = |r: Result<Postprocessed, cryoforge_recon::ReconError>| r.err().unwrap().to_string();
    let unrelated = white_noise(n, 1.0, 7);
    assert!(err(postprocess(&v, &unrelated, &m, n, APIX, &o)).contains("do not agree"));
    assert!(err(postprocess(&v, &v, &m[1..], n, APIX, &o)).contains("the mask has 4095 values"));
    let big: Vec<f32> = m.iter().map(|x| 2.0 * x).collect();
    assert!(err(postprocess(&v, &v, &big, n, APIX, &o)).contains("[0, 1]"));
    let mut nan = v.clone();
    nan[7] = f32::NAN;
    assert!(err(postprocess(&nan, &v, &m, n, APIX, &o)).contains("voxel 7"));
    assert!(err(postprocess(&v, &v, &vec![0.0; n * n * n], n, APIX, &o)).contains("empty"));
    let bad = PostprocessOptions { randomize_at_fsc: 1.5, ..Default::default() };
    assert!(err(postprocess(&v, &v, &m, n, APIX, &bad)).contains("randomize_at_fsc"));
}
