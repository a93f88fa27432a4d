//! Atomic (Peng 1996) and Cα Gaussian densities: normalisation in real and Fourier
//! space, the real-space formula, determinism across thread counts, input errors.

mod common;

use common::rng;
use cryoforge_core::fft::Fft3;
use cryoforge_sim::density::CA_SIGMA_A;
use cryoforge_sim::{atomic_density, AtomSpec, Element, GaussianModel, SimError};
use rand::Rng;
use std::f64::consts::PI;

/// Relative mass tolerance of the brief (1 %); the measured error is ~1e-4 (truncation
/// at 4σ per term).
const MASS_TOL: f64 = 1e-2;

/// Σ voxels·h³ of one rendered atom equals o·f(0) = o·Σ aᵢ, for narrow and wide atoms
/// at fine and coarse sampling, on and off the grid, with and without B-factor.
#[test]
fn atomic_density_integrates_to_f0() {
    let n = 32;
    let mut worst = 0f64;
    let mut r = rng(20);
    for sym in ["H", "C", "N", "O", "P", "S", "Fe", "Zn", "Se", "K", "Ca"] {
        let element = Element::from_symbol(sym).unwrap();
        for apix in [0.5, 1.0, 1.5, 2.5] {
            for b in [0.0, 30.0] {
                let pos = [
                    r.gen_range(-0.5..0.5) * apix,
                    r.gen_range(-0.5..0.5) * apix,
                    r.gen_range(-0.5..0.5) * apix,
                ];
                let atom = AtomSpec { pos_a: pos, element, b_factor_a2: b, occupancy: 0.7 };
                let vol = atomic_density(&[atom], n, apix).unwrap();
                let mass = vol.iter().map(|v| *v as f64).sum::<f64>() * apix.powi(3);
                let want = 0.7 * element.peng().f0();
                let rel = (mass / want - 1.0).abs();
                worst = worst.max(rel);
                assert!(rel < MASS_TOL, "{sym} apix {apix} B {b}: mass {mass} vs {want}");
            }
        }
    }
    eprintln!("atomic density mass: worst relative error {worst:.2e}");
}

/// The 3D DFT of a rendered atom, times h³ and divided by the voxel-averaging factor
/// Π sinc(π qₐ h), equals the form factor o·Σ aᵢ exp(−(bᵢ + B) q²/4) times the phase of
/// the atom's position — pinning the (4π/(bᵢ + B))^{3/2} normalisation.
#[test]
fn atomic_density_fourier_transform_matches_peng_formula() {
    let (n, h) = (48usize, 0.5);
    let c = [0.3, -0.2, 0.1];
    let atom = AtomSpec { pos_a: c, element: Element::C, b_factor_a2: 20.0, occupancy: 1.0 };
    let vol = atomic_density(&[atom], n, h).unwrap();
    let spec = Fft3::new(n).forward_real(&vol);
    let f0 = atom.form_factor(0.0);
    let half = (n / 2) as isize;
    let sinc = |x: f64| if x == 0.0 { 1.0 } else { x.sin() / x };
    let mut worst = 0f64;
    for (i, v) in spec.iter().enumerate() {
        let m = [(i % n) as isize - half, ((i / n) % n) as isize - half, (i / (n * n)) as isize - half];
        let q: Vec<f64> = m.iter().map(|&k| k as f64 / (n as f64 * h)).collect();
        let qn = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
        if qn > 0.5 {
            continue;
        }
        let box_factor: f64 = q.iter().map(|qa| sinc(PI * qa * h)).product();
        let ph = 2.0 * PI * (q[0] * c[0] + q[1] * c[1] + q[2] * c[2]);
        // Undo the position phase exp(−2πi q·c): multiply by exp(+2πi q·c).
        let (re, im) = (v.re as f64, v.im as f64);
        let unshifted = (re * ph.cos() - im * ph.sin(), re * ph.sin() + im * ph.cos());
        let got = (unshifted.0 * h.powi(3) / box_factor, unshifted.1 * h.powi(3) / box_factor);
        let want = atom.form_factor(qn);
        let err = ((got.0 - want).powi(2) + got.1.powi(2)).sqrt() / f0;
        worst = worst.max(err);
    }
    eprintln!("atomic density FT vs Peng formula (|q| ≤ 0.5/Å): max |Δ|/f(0) = {worst:.2e}");
    assert!(worst < 1e-3, "max |Δ|/f(0) = {worst:.3e}");
}

/// For atoms much wider than a voxel the voxel means equal the point density
/// o·Σ aᵢ (4π/(bᵢ + B))^{3/2} exp(−4π²r²/(bᵢ + B)) to second order in h/σ.
#[test]
fn atomic_density_matches_real_space_formula_when_finely_sampled() {
    let (n, h) = (48, 0.25);
    let atom = AtomSpec { pos_a: [0.0; 3], element: Element::O, b_factor_a2: 100.0, occupancy: 1.0 };
    let vol = atomic_density(&[atom], n, h).unwrap();
    let c = n / 2;
    for (dx, dy, dz) in [(0usize, 0usize, 0usize), (3, 0, 0), (2, 2, 1), (5, 3, 2)] {
        let r = h * ((dx * dx + dy * dy + dz * dz) as f64).sqrt();
        let got = vol[((c + dz) * n + c + dy) * n + c + dx] as f64;
        let want = atom.density_at(r);
        // Voxel averaging of a Gaussian of width σ ≥ 1.1 Å: relative change ≲ h²/(8σ²) ≈ 0.6 %.
        assert!((got / want - 1.0).abs() < 1e-2, "r = {r}: {got} vs {want}");
    }
}

/// Rendering is bit-identical with 1, 2 and 3 rayon threads.
#[test]
fn atomic_rendering_is_thread_count_independent() {
    let mut r = rng(21);
    let syms = ["C", "N", "O", "S", "H", "Fe"];
    let atoms: Vec<AtomSpec> = (0..400)
        .map(|_| AtomSpec {
            pos_a: [r.gen_range(-20.0..20.0), r.gen_range(-20.0..20.0), r.gen_range(-20.0..20.0)],
            element: Element::from_symbol(syms[r.gen_range(0..syms.len())]).unwrap(),
            b_factor_a2: r.gen_range(0.0..60.0),
            occupancy: r.gen_range(0.5..1.0),
        })
        .collect();
    let render = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| atomic_density(&atoms, 40, 1.2).unwrap())
    };
    let one = render(1);
    assert!(one.iter().any(|v| *v != 0.0));
    for t in [2, 3] {
        let other = render(t);
        assert!(one.iter().zip(&other).all(|(a, b)| a.to_bits() == b.to_bits()), "{t} threads differ");
    }
}

#[test]
fn bad_atomic_input_is_reported() {
    let ok = AtomSpec::new([0.0; 3], Element::C);
    let mut atoms = vec![ok; 5];
    atoms[3].pos_a[1] = f64::NAN;
    match atomic_density(&atoms, 16, 1.0) {
        Err(SimError::NonFiniteAtom { index: 3, field: "y coordinate", .. }) => {}
        other => panic!("expected NonFiniteAtom for atom 3, got {other:?}"),
    }
    let msg = atomic_density(&atoms, 16, 1.0).unwrap_err().to_string();
    assert!(msg.contains("atom 3") && msg.contains("y coordinate"), "{msg}");
    assert_eq!(atomic_density(&[ok], 0, 1.0), Err(SimError::ZeroBox));
    assert!(matches!(atomic_density(&[ok], 16, -1.0), Err(SimError::InvalidPixelSize { .. })));
    let neg_b = AtomSpec { b_factor_a2: -1.0, ..ok };
    assert!(matches!(atomic_density(&[ok, neg_b], 16, 1.0), Err(SimError::InvalidBFactor { index: 1, .. })));
    let nan_occ = AtomSpec { occupancy: f64::NAN, ..ok };
    assert!(matches!(
        atomic_density(&[nan_occ], 16, 1.0),
        Err(SimError::NonFiniteAtom { field: "occupancy", .. })
    ));
    let err = Element::from_symbol("Qq").unwrap_err();
    assert!(err.to_string().contains("Qq"));
    // An empty model renders an empty box; an atom far outside contributes nothing.
    assert!(atomic_density(&[], 8, 1.0).unwrap().iter().all(|v| *v == 0.0));
    let far = AtomSpec::new([500.0, 0.0, 0.0], Element::C);
    assert!(atomic_density(&[far], 8, 1.0).unwrap().iter().all(|v| *v == 0.0));
}

/// A Cα Gaussian has peak A at its centre and integral A·(2πσ²)^{3/2}.
#[test]
fn ca_volume_peak_and_mass() {
    for apix in [1.0, 1.5] {
        let n = 48;
        let model = GaussianModel::with_default_sigma(vec![[0.0; 3]], vec![7.0]).unwrap();
        let vol = model.render_volume(n, apix).unwrap();
        let c = n / 2;
        assert!((vol[(c * n + c) * n + c] - 7.0).abs() < 1e-5);
        let mass = vol.iter().map(|v| *v as f64).sum::<f64>() * apix.powi(3);
        let want = 7.0 * (2.0 * PI * CA_SIGMA_A * CA_SIGMA_A).powf(1.5);
        assert!((mass / want - 1.0).abs() < 1e-4, "apix {apix}: {mass} vs {want}");
    }
}

#[test]
fn bad_ca_model_is_reported() {
    assert!(matches!(
        GaussianModel::new(vec![[0.0; 3]; 2], vec![1.0], 2.0),
        Err(SimError::SizeMismatch { .. })
    ));
    assert!(matches!(GaussianModel::new(vec![[0.0; 3]], vec![1.0], 0.0), Err(SimError::InvalidSigma { .. })));
    let mut c = vec![[0.0; 3]; 4];
    c[2][2] = f64::INFINITY;
    assert!(matches!(
        GaussianModel::new(c, vec![1.0; 4], 2.0),
        Err(SimError::NonFiniteResidue { index: 2, field: "z coordinate", .. })
    ));
    let m = GaussianModel::with_default_sigma(vec![[0.0; 3]], vec![1.0]).unwrap();
    assert_eq!(m.render_volume(0, 1.0), Err(SimError::ZeroBox));
}

/// Timing of the atomic density of adenylate kinase (3341 atoms, 1AKE) on a 128³ grid
/// at 1 Å/px (run with `CRYOFORGE_SCALE_BENCH=1 … -- --nocapture`; skipped without the shared test data).
#[test]
fn bench_atomic_density_adk() {
    if std::env::var("CRYOFORGE_SCALE_BENCH").ok().as_deref() != Some("1") {
        eprintln!("SKIP bench_atomic_density_adk: set CRYOFORGE_SCALE_BENCH=1 to run this timing");
        return;
    }
    let Some(path) =
        cryoforge_core::testdata::test_data_file("bench_atomic_density_adk", "structures/adk_closed.pdb")
    else {
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    // Minimal fixed-column ATOM parser, enough for a timing run. This CHARMM-style file
    // has no element column: the element is the first letter of the atom name.
    let mut atoms: Vec<AtomSpec> = text
        .lines()
        .filter(|l| l.starts_with("ATOM") && l.len() >= 66)
        .map(|l| {
            let f = |a: usize, b: usize| l[a..b].trim().parse::<f64>().unwrap();
            let first = l[12..16].trim().chars().find(|c| c.is_ascii_alphabetic()).unwrap();
            let el = Element::from_symbol(&first.to_string()).unwrap();
            AtomSpec {
                pos_a: [f(30, 38), f(38, 46), f(46, 54)],
                element: el,
                b_factor_a2: f(60, 66),
                occupancy: 1.0,
            }
        })
        .collect();
    let n_atoms = atoms.len() as f64;
    let c: Vec<f64> = (0..3).map(|a| atoms.iter().map(|x| x.pos_a[a]).sum::<f64>() / n_atoms).collect();
    atoms.iter_mut().for_each(|x| (0..3).for_each(|a| x.pos_a[a] -= c[a]));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let t = std::time::Instant::now();
        let vol = pool.install(|| atomic_density(&atoms, 128, 1.0).unwrap());
        eprintln!(
            "atomic density, {} atoms, 128³ at 1 Å/px, {threads} thread(s): {:.1} ms (sum {:.1})",
            atoms.len(),
            t.elapsed().as_secs_f64() * 1e3,
            vol.iter().map(|v| *v as f64).sum::<f64>()
        );
    }
}
