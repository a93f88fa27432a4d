//! Renderer: parity with the simulator's `GaussianImager`, agreement of the Fourier and
//! real-space paths, and gradients against finite differences.

use candle_core::{DType, Device, Tensor, Var};
use cryoforge_core::ctf::ctf_grid_centered;
use cryoforge_core::rotation::uniform_rotation;
use cryoforge_core::{CtfParams, Rot3};
use cryoforge_nn::loss::CorrelationLoss;
use cryoforge_nn::{Band, Renderer};
use cryoforge_sim::density::GaussianModel;
use cryoforge_sim::gaussian_image::{gaussian_image_direct, GaussianImager};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_model(r: usize, extent: f64, seed: u64) -> (Vec<[f64; 3]>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = (0..r).map(|_| [0, 1, 2].map(|_| rng.gen_range(-extent..extent))).collect();
    let a = (0..r).map(|_| rng.gen_range(20.0..80.0)).collect();
    (c, a)
}

fn random_rot(rng: &mut ChaCha8Rng) -> Rot3 {
    uniform_rotation(rng.gen(), rng.gen(), rng.gen())
}

struct Inputs {
    coords: Tensor,
    amps: Tensor,
    sigma: Tensor,
    rots: Tensor,
    shifts: Tensor,
}

fn inputs(c: &[[f64; 3]], a: &[f64], sigma: f64, rots: &[Rot3], shifts: &[[f64; 2]], dtype: DType) -> Inputs {
    let dev = Device::Cpu;
    let b = rots.len();
    let r = c.len();
    let cf: Vec<f64> = (0..b).flat_map(|_| c.iter().flat_map(|x| x.iter().copied())).collect();
    let rf: Vec<f64> = rots.iter().flat_map(|q| q.0.iter().flat_map(|row| row.iter().copied())).collect();
    let sf: Vec<f64> = shifts.iter().flat_map(|s| s.iter().copied()).collect();
    let t = |v: Vec<f64>, s: &[usize]| Tensor::from_vec(v, s, &dev).unwrap().to_dtype(dtype).unwrap();
    Inputs {
        coords: t(cf, &[b, r, 3]),
        amps: t(a.to_vec(), &[r]),
        sigma: t(vec![sigma], &[1]),
        rots: t(rf, &[b, 3, 3]),
        shifts: t(sf, &[b, 2]),
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

#[test]
fn fourier_renderer_matches_gaussian_imager_with_ctf_and_shift() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (d, apix) in [(64usize, 1.0f64), (48, 1.5)] {
        let (c, a) = random_model(40, 18.0, 11);
        let gm = GaussianModel::new(c.clone(), a.clone(), 2.0).unwrap();
        let imager = GaussianImager::new(d, apix).unwrap();
        let mut work = imager.work();
        let rots: Vec<Rot3> = (0..3).map(|_| random_rot(&mut rng)).collect();
        let shifts = vec![[2.3, -1.7], [0.0, 0.0], [-4.25, 3.5]];
        let ctfs = vec![
            CtfParams {
                defocus_u_a: 15301.1,
                defocus_v_a: 14916.4,
                defocus_angle_deg: 5.28,
                amp_contrast: 0.07,
                ..Default::default()
            },
            CtfParams {
                defocus_u_a: 9000.0,
                defocus_v_a: 11000.0,
                defocus_angle_deg: -40.0,
                ..Default::default()
            },
            CtfParams { defocus_u_a: 25000.0, defocus_v_a: 25000.0, bfactor_a2: 50.0, ..Default::default() },
        ];
        let ren = Renderer::new(d, apix, Band::Envelope { sigma_a: 2.0 }, &Device::Cpu).unwrap();
        let inp = inputs(&c, &a, 2.0, &rots, &shifts, DType::F32);
        let transfer = ren.ctf_transfer(&ctfs).unwrap();
        let img = ren.render(&inp.coords, &inp.amps, &inp.sigma, &inp.rots, &inp.shifts, &transfer).unwrap();
        let got: Vec<f32> = img.flatten_all().unwrap().to_vec1().unwrap();
        let mut worst = 0f32;
        for b in 0..3 {
            let mut grid = vec![0f32; d * d];
            ctf_grid_centered(&ctfs[b], d, apix, &mut grid);
            grid.iter_mut().for_each(|v| *v = -*v);
            let mut want = vec![0f32; d * d];
            imager.image(&gm, &rots[b], shifts[b], Some(&grid), &mut work, &mut want).unwrap();
            let peak = max_abs(&want);
            let err = got[b * d * d..(b + 1) * d * d]
                .iter()
                .zip(&want)
                .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            worst = worst.max(err / peak);
        }
        eprintln!("renderer vs GaussianImager (D={d}, apix={apix}): max |Δ|/peak = {worst:.2e}");
        assert!(worst < 2e-5, "renderer deviates from GaussianImager by {worst:e} of the peak");
    }
}

#[test]
fn fourier_and_real_space_paths_agree() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (d, apix) = (64usize, 1.0);
    let (c, a) = random_model(30, 16.0, 5);
    let rots: Vec<Rot3> = (0..2).map(|_| random_rot(&mut rng)).collect();
    let shifts = vec![[1.5, -2.0], [-3.0, 0.5]];
    let ren = Renderer::new(d, apix, Band::Envelope { sigma_a: 2.0 }, &Device::Cpu).unwrap();
    let inp = inputs(&c, &a, 2.0, &rots, &shifts, DType::F32);
    let f = ren
        .render(
            &inp.coords,
            &inp.amps,
            &inp.sigma,
            &inp.rots,
            &inp.shifts,
            &ren.identity_transfer(2).unwrap(),
        )
        .unwrap();
    let r = ren.render_real_space(&inp.coords, &inp.amps, &inp.sigma, &inp.rots, &inp.shifts).unwrap();
    let fv: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
    let rv: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
    let peak = max_abs(&rv);
    let err = fv.iter().zip(&rv).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / peak;
    eprintln!("Fourier vs real-space path: max |Δ|/peak = {err:.2e}");
    assert!(err < 1e-5, "{err}");
    // The real-space path is the simulator's direct sum.
    let gm = GaussianModel::new(c.clone(), a.clone(), 2.0).unwrap();
    for b in 0..2 {
        let mut want = vec![0f32; d * d];
        gaussian_image_direct(&gm, &rots[b], shifts[b], d, apix, &mut want).unwrap();
        let e = rv[b * d * d..(b + 1) * d * d].iter().zip(&want).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(e / peak < 1e-5, "real-space path vs gaussian_image_direct: {e}");
    }
}

/// Scalar test loss: correlation with a fixed random "data" image plus a weighted sum
/// (so that the gradient is not invariant to the image's scale).
fn scalar_loss(img: &Tensor, w: &Tensor, cl: &CorrelationLoss) -> Tensor {
    let gt = w.clone();
    let corr = cl.loss(img, &gt).unwrap();
    let lin = (img * w).unwrap().sum_all().unwrap();
    (corr + (lin * 1e-3).unwrap()).unwrap()
}

struct Problem {
    c: Vec<[f64; 3]>,
    a: Vec<f64>,
    sigma: f64,
    rots: Vec<Rot3>,
    shifts: Vec<[f64; 2]>,
    ctfs: Vec<CtfParams>,
    d: usize,
    apix: f64,
}

impl Problem {
    fn new() -> Problem {
        let mut rng = ChaCha8Rng::seed_from_u64(19);
        let (c, a) = random_model(5, 8.0, 23);
        Problem {
            c,
            a,
            sigma: 2.3,
            rots: (0..2).map(|_| random_rot(&mut rng)).collect(),
            shifts: vec![[0.7, -1.2], [-0.4, 2.1]],
            ctfs: vec![
                CtfParams {
                    defocus_u_a: 12000.0,
                    defocus_v_a: 13000.0,
                    defocus_angle_deg: 20.0,
                    ..Default::default()
                },
                CtfParams { defocus_u_a: 20000.0, defocus_v_a: 18000.0, ..Default::default() },
            ],
            d: 32,
            apix: 1.6,
        }
    }

    /// Loss and gradients w.r.t. coords [B,R,3], amps [R], σ, shifts [B,2] in `dtype`.
    fn eval(&self, dtype: DType, with_grad: bool) -> (f64, Vec<Vec<f64>>) {
        let dev = Device::Cpu;
        let ren = Renderer::with_dtype(self.d, self.apix, Band::Radius(12), &dev, dtype).unwrap();
        let inp = inputs(&self.c, &self.a, self.sigma, &self.rots, &self.shifts, dtype);
        let (vc, va, vs, vt) = (
            Var::from_tensor(&inp.coords).unwrap(),
            Var::from_tensor(&inp.amps).unwrap(),
            Var::from_tensor(&inp.sigma).unwrap(),
            Var::from_tensor(&inp.shifts).unwrap(),
        );
        let vr = Var::from_tensor(&inp.rots).unwrap();
        let tr = ren.ctf_transfer(&self.ctfs).unwrap();
        let img = ren
            .render(vc.as_tensor(), va.as_tensor(), vs.as_tensor(), vr.as_tensor(), vt.as_tensor(), &tr)
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let w: Vec<f64> = (0..img.elem_count()).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w = Tensor::from_vec(w, img.dims(), &dev).unwrap().to_dtype(dtype).unwrap();
        let cl = CorrelationLoss::cryostar(self.d, &dev).unwrap();
        let loss = scalar_loss(&img, &w, &cl);
        let lv = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        if !with_grad {
            return (lv, Vec::new());
        }
        let g = loss.backward().unwrap();
        let get = |v: &Var| -> Vec<f64> {
            g.get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        (lv, vec![get(&vc), get(&va), get(&vs), get(&vt), get(&vr)])
    }

    fn fd(&self, h: f64) -> Vec<Vec<f64>> {
        let mut out = Vec::new();
        let b = self.rots.len();
        // coords (each batch element sees the same model: the gradient w.r.t. the batch
        // copy b of residue r, component k is the derivative of batch b's image only).
        let mut gc = Vec::new();
        for bb in 0..b {
            for r in 0..self.c.len() {
                for k in 0..3 {
                    let f = |s: f64| {
                        let mut p = self.clone_with_coords_of(bb, r, k, s);
                        p.d = self.d;
                        p.eval_single_perturbed(bb)
                    };
                    gc.push((f(h) - f(-h)) / (2.0 * h));
                }
            }
        }
        out.push(gc);
        let mut ga = Vec::new();
        for r in 0..self.a.len() {
            let f = |s: f64| {
                let mut p = self.clone();
                p.a[r] += s;
                p.eval(DType::F64, false).0
            };
            ga.push((f(h) - f(-h)) / (2.0 * h));
        }
        out.push(ga);
        let f = |s: f64| {
            let mut p = self.clone();
            p.sigma += s;
            p.eval(DType::F64, false).0
        };
        out.push(vec![(f(h) - f(-h)) / (2.0 * h)]);
        let mut gt = Vec::new();
        for bb in 0..b {
            for k in 0..2 {
                let f = |s: f64| {
                    let mut p = self.clone();
                    p.shifts[bb][k] += s;
                    p.eval(DType::F64, false).0
                };
                gt.push((f(h) - f(-h)) / (2.0 * h));
            }
        }
        out.push(gt);
        let mut gr = Vec::new();
        for bb in 0..b {
            for i in 0..3 {
                for j in 0..3 {
                    let f = |s: f64| {
                        let mut p = self.clone();
                        p.rots[bb].0[i][j] += s;
                        p.eval(DType::F64, false).0
                    };
                    gr.push((f(h) - f(-h)) / (2.0 * h));
                }
            }
        }
        out.push(gr);
        out
    }
}

impl Clone for Problem {
    fn clone(&self) -> Problem {
        Problem {
            c: self.c.clone(),
            a: self.a.clone(),
            sigma: self.sigma,
            rots: self.rots.clone(),
            shifts: self.shifts.clone(),
            ctfs: self.ctfs.clone(),
            d: self.d,
            apix: self.apix,
        }
    }
}

/// A problem whose batch element `b` has residue r moved by s along k (per-batch coords).
struct Perturbed {
    base: Problem,
    b: usize,
    r: usize,
    k: usize,
    s: f64,
    d: usize,
}

impl Problem {
    fn clone_with_coords_of(&self, b: usize, r: usize, k: usize, s: f64) -> Perturbed {
        Perturbed { base: self.clone(), b, r, k, s, d: self.d }
    }
}

impl Perturbed {
    fn eval_single_perturbed(&self, _bb: usize) -> f64 {
        // Full loss with per-batch coordinates: build the [B,R,3] tensor by hand.
        let p = &self.base;
        let dev = Device::Cpu;
        let ren = Renderer::with_dtype(self.d, p.apix, Band::Radius(12), &dev, DType::F64).unwrap();
        let mut inp = inputs(&p.c, &p.a, p.sigma, &p.rots, &p.shifts, DType::F64);
        let mut cv: Vec<f64> = inp.coords.flatten_all().unwrap().to_vec1().unwrap();
        let r = p.c.len();
        cv[(self.b * r + self.r) * 3 + self.k] += self.s;
        inp.coords = Tensor::from_vec(cv, inp.coords.dims(), &dev).unwrap();
        let tr = ren.ctf_transfer(&p.ctfs).unwrap();
        let img = ren.render(&inp.coords, &inp.amps, &inp.sigma, &inp.rots, &inp.shifts, &tr).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let w: Vec<f64> = (0..img.elem_count()).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w = Tensor::from_vec(w, img.dims(), &dev).unwrap();
        let cl = CorrelationLoss::cryostar(self.d, &dev).unwrap();
        scalar_loss(&img, &w, &cl).to_scalar::<f64>().unwrap()
    }
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn renderer_gradients_match_finite_differences() {
    let p = Problem::new();
    let (_, g64) = p.eval(DType::F64, true);
    let fd = p.fd(1e-5);
    let names = ["coordinates", "amplitudes", "sigma", "shifts", "rotation matrices"];
    for (i, n) in names.iter().enumerate() {
        let e = rel_err(&g64[i], &fd[i]);
        eprintln!("gradient check (f64, candle cos/sin path) {n}: max rel err {e:.2e}");
        assert!(e < 1e-6, "{n}: {e}");
    }
    // The f32 CPU path (fused phasor-block and correlation ops with analytic backward passes) against the f64 gradients.
    let (_, g32) = p.eval(DType::F32, true);
    for (i, n) in names.iter().enumerate() {
        let e = rel_err(&g32[i], &g64[i]);
        eprintln!("gradient check (f32, fused CPU ops) {n}: max rel err vs f64 {e:.2e}");
        assert!(e < 2e-3, "{n}: {e}");
    }
}

/// Throughput of forward + backward for 214 residues at box 128 (CRYOFORGE_SCALE_BENCH=1,
/// RAYON_NUM_THREADS=1 for one core).
#[test]
fn bench_render_forward_backward() {
    if std::env::var("CRYOFORGE_SCALE_BENCH").ok().as_deref() != Some("1") {
        eprintln!("SKIP bench_render_forward_backward: set CRYOFORGE_SCALE_BENCH=1 to run this timing");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (d, apix, b) = (128usize, 1.0, 16usize);
    let (c, a) = random_model(214, 25.0, 2);
    let rots: Vec<Rot3> = (0..b).map(|_| random_rot(&mut rng)).collect();
    let shifts: Vec<[f64; 2]> =
        (0..b).map(|_| [rng.gen_range(-3.0..3.0), rng.gen_range(-3.0..3.0)]).collect();
    let ctfs: Vec<CtfParams> = (0..b).map(|_| CtfParams::default()).collect();
    for band in [
        Band::Envelope { sigma_a: 2.0 },
        Band::Resolution { resolution_a: 4.0 },
        Band::Resolution { resolution_a: 10.0 },
    ] {
        let ren = Renderer::new(d, apix, band, &Device::Cpu).unwrap();
        let inp = inputs(&c, &a, 2.0, &rots, &shifts, DType::F32);
        let vc = Var::from_tensor(&inp.coords).unwrap();
        let tr = ren.ctf_transfer(&ctfs).unwrap();
        let cl = CorrelationLoss::cryostar(d, &Device::Cpu).unwrap();
        let gt = Tensor::randn(0f32, 1.0, (b, d, d), &Device::Cpu).unwrap();
        let run = || {
            let img = ren.render(vc.as_tensor(), &inp.amps, &inp.sigma, &inp.rots, &inp.shifts, &tr).unwrap();
            let l = cl.loss(&img, &gt).unwrap();
            l.backward().unwrap();
        };
        run();
        let n = 4;
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            run();
        }
        let s = t0.elapsed().as_secs_f64();
        eprintln!(
            "{band:?}: K = {}, {:.1} images/s forward+backward (batch {b})",
            ren.band_len(),
            (n * b) as f64 / s
        );
        let gt_host: Vec<f32> = gt.flatten_all().unwrap().to_vec1().unwrap();
        let bd = ren.band_data(&gt_host).unwrap();
        let fl = cryoforge_nn::loss::FourierCorrelationLoss::new(d, 1e-8);
        let run_f = || {
            let sp = ren.spectrum(vc.as_tensor(), &inp.amps, &inp.sigma, &inp.rots, &inp.shifts).unwrap();
            fl.loss(&ren.apply_transfer(&sp, &tr).unwrap(), &bd).unwrap().backward().unwrap();
        };
        run_f();
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            run_f();
        }
        eprintln!(
            "  Fourier-space (unmasked) loss: {:.1} images/s",
            (n * b) as f64 / t0.elapsed().as_secs_f64()
        );
    }
}

/// Where the time goes (CRYOFORGE_SCALE_BENCH=1, --nocapture).
#[test]
fn profile_render_stages() {
    if std::env::var("CRYOFORGE_SCALE_BENCH").ok().as_deref() != Some("1") {
        eprintln!("SKIP profile_render_stages: set CRYOFORGE_SCALE_BENCH=1 to run this timing");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (d, apix, b) = (128usize, 1.0, 16usize);
    let (c, a) = random_model(214, 25.0, 2);
    let rots: Vec<Rot3> = (0..b).map(|_| random_rot(&mut rng)).collect();
    let shifts: Vec<[f64; 2]> = (0..b).map(|_| [0.5, -0.5]).collect();
    let ctfs: Vec<CtfParams> = (0..b).map(|_| CtfParams::default()).collect();
    let ren = Renderer::new(d, apix, Band::Resolution { resolution_a: 10.0 }, &Device::Cpu).unwrap();
    let inp = inputs(&c, &a, 2.0, &rots, &shifts, DType::F32);
    let vc = Var::from_tensor(&inp.coords).unwrap();
    let tr = ren.ctf_transfer(&ctfs).unwrap();
    let cl = CorrelationLoss::cryostar(d, &Device::Cpu).unwrap();
    let gt = Tensor::randn(0f32, 1.0, (b, d, d), &Device::Cpu).unwrap();
    let time = |name: &str, f: &dyn Fn()| {
        f();
        let t0 = std::time::Instant::now();
        for _ in 0..5 {
            f();
        }
        eprintln!("{name}: {:.2} ms per image", t0.elapsed().as_secs_f64() * 1e3 / (5 * b) as f64);
    };
    time("spectrum fwd", &|| {
        ren.spectrum(vc.as_tensor(), &inp.amps, &inp.sigma, &inp.rots, &inp.shifts).unwrap();
    });
    time("spectrum fwd+bwd", &|| {
        let s = ren.spectrum(vc.as_tensor(), &inp.amps, &inp.sigma, &inp.rots, &inp.shifts).unwrap();
        s.sum_all().unwrap().backward().unwrap();
    });
    time("render fwd", &|| {
        ren.render(vc.as_tensor(), &inp.amps, &inp.sigma, &inp.rots, &inp.shifts, &tr).unwrap();
    });
    time("render+loss fwd", &|| {
        let i = ren.render(vc.as_tensor(), &inp.amps, &inp.sigma, &inp.rots, &inp.shifts, &tr).unwrap();
        cl.loss(&i, &gt).unwrap();
    });
    time("render+loss fwd+bwd", &|| {
        let i = ren.render(vc.as_tensor(), &inp.amps, &inp.sigma, &inp.rots, &inp.shifts, &tr).unwrap();
        cl.loss(&i, &gt).unwrap().backward().unwrap();
    });
    let img = Var::from_tensor(&gt).unwrap();
    time("loss alone fwd+bwd", &|| {
        cl.loss(img.as_tensor(), &gt).unwrap().backward().unwrap();
    });
}

#[test]
fn profile_matmul_shapes() {
    if std::env::var("CRYOFORGE_SCALE_BENCH").ok().as_deref() != Some("1") {
        eprintln!("SKIP profile_matmul_shapes: set CRYOFORGE_SCALE_BENCH=1 to run this timing");
        return;
    }
    let dev = Device::Cpu;
    let time = |name: &str, f: &dyn Fn()| {
        f();
        let t0 = std::time::Instant::now();
        for _ in 0..5 {
            f();
        }
        eprintln!("{name}: {:.3} ms per image", t0.elapsed().as_secs_f64() * 1e3 / (5 * 16) as f64);
    };
    let a = Tensor::randn(0f32, 1.0, (16, 25, 428), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (16, 428, 50), &dev).unwrap();
    time("matmul 25x428x50", &|| {
        a.matmul(&b).unwrap();
    });
    let x = Tensor::randn(0f32, 1.0, (16, 214, 50), &dev).unwrap();
    let e = Tensor::randn(0f32, 1.0, 50, &dev).unwrap();
    time("broadcast_mul [B,R,2K]x[2K]", &|| {
        x.broadcast_mul(&e).unwrap();
    });
    time("cat+transpose+contiguous", &|| {
        Tensor::cat(&[&x, &x], 1).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    });
    let u = Tensor::randn(0f32, 1.0, (16, 214), &dev).unwrap();
    let ren = Renderer::new(128, 1.0, Band::Resolution { resolution_a: 10.0 }, &dev).unwrap();
    let z = Tensor::zeros((16, 214, 3), DType::F32, &dev).unwrap();
    let r = Tensor::zeros((16, 3, 3), DType::F32, &dev).unwrap();
    let s = Tensor::zeros((16, 2), DType::F32, &dev).unwrap();
    let am = Tensor::ones(214, DType::F32, &dev).unwrap();
    let sg = Tensor::new(&[2f32], &dev).unwrap();
    time("spectrum", &|| {
        ren.spectrum(&z, &am, &sg, &r, &s).unwrap();
    });
    let _ = u;
}

#[test]
fn fused_and_composed_spectra_agree_in_value_and_gradient() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (c, a) = random_model(12, 10.0, 9);
    let rots: Vec<Rot3> = (0..3).map(|_| random_rot(&mut rng)).collect();
    let shifts = vec![[0.3, 0.2], [-1.0, 2.0], [0.0, -0.7]];
    let ren = Renderer::new(32, 1.3, Band::Radius(10), &Device::Cpu).unwrap();
    let inp = inputs(&c, &a, 1.8, &rots, &shifts, DType::F32);
    let w = Tensor::randn(0f32, 1.0, (3, ren.band_rows(), 2 * ren.band_len()), &Device::Cpu).unwrap();
    let run = |fused: bool| {
        let (vc, va, vs) = (
            Var::from_tensor(&inp.coords).unwrap(),
            Var::from_tensor(&inp.amps).unwrap(),
            Var::from_tensor(&inp.sigma).unwrap(),
        );
        let s = if fused {
            ren.spectrum_fused(vc.as_tensor(), va.as_tensor(), vs.as_tensor(), &inp.rots, &inp.shifts)
        } else {
            ren.spectrum_composed(vc.as_tensor(), va.as_tensor(), vs.as_tensor(), &inp.rots, &inp.shifts)
        }
        .unwrap();
        let g = (&s * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let f = |t: &Tensor| -> Vec<f64> {
            t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
        };
        vec![
            f(&s),
            f(g.get(vc.as_tensor()).unwrap()),
            f(g.get(va.as_tensor()).unwrap()),
            f(g.get(vs.as_tensor()).unwrap()),
        ]
    };
    let (x, y) = (run(true), run(false));
    for (i, n) in ["spectrum", "d/coords", "d/amps", "d/sigma"].iter().enumerate() {
        let e = rel_err(&x[i], &y[i]);
        eprintln!("fused vs composed {n}: {e:.2e}");
        assert!(e < 1e-5, "{n}: {e}");
    }
}

#[test]
fn lowpass_of_full_band_image_equals_low_band_render() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let (d, apix) = (48usize, 1.2);
    let (c, a) = random_model(25, 14.0, 32);
    let rots: Vec<Rot3> = (0..2).map(|_| random_rot(&mut rng)).collect();
    let shifts = vec![[1.0, -0.5], [0.25, 2.0]];
    let ctfs = vec![
        CtfParams::default(),
        CtfParams { defocus_u_a: 9000.0, defocus_v_a: 8000.0, ..Default::default() },
    ];
    let inp = inputs(&c, &a, 2.0, &rots, &shifts, DType::F32);
    let full = Renderer::new(d, apix, Band::Envelope { sigma_a: 2.0 }, &Device::Cpu).unwrap();
    let low = Renderer::new(d, apix, Band::Resolution { resolution_a: 6.0 }, &Device::Cpu).unwrap();
    assert_eq!(low.kmax(), 9);
    let render = |r: &Renderer| -> Vec<f32> {
        r.render(&inp.coords, &inp.amps, &inp.sigma, &inp.rots, &inp.shifts, &r.ctf_transfer(&ctfs).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (f, l) = (render(&full), render(&low));
    let lp = low.lowpass_images(&f).unwrap();
    let peak = max_abs(&l);
    let e = lp.iter().zip(&l).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / peak;
    eprintln!("low-passed full-band render vs low-band render: {e:.2e}");
    assert!(e < 1e-5, "{e}");
}

#[test]
fn fourier_space_correlation_equals_real_space_correlation_without_mask() {
    use cryoforge_nn::loss::FourierCorrelationLoss;
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let (d, apix) = (32usize, 1.5);
    let (c, a) = random_model(15, 10.0, 42);
    let rots: Vec<Rot3> = (0..3).map(|_| random_rot(&mut rng)).collect();
    let shifts = vec![[0.5, -1.0], [0.0, 0.0], [2.0, 1.0]];
    let ctfs: Vec<CtfParams> = (0..3)
        .map(|i| CtfParams {
            defocus_u_a: 10000.0 + 3000.0 * i as f64,
            defocus_v_a: 11000.0,
            ..Default::default()
        })
        .collect();
    let ren = Renderer::new(d, apix, Band::Resolution { resolution_a: 5.0 }, &Device::Cpu).unwrap();
    assert!(ren.kmax() < d / 2);
    let inp = inputs(&c, &a, 2.0, &rots, &shifts, DType::F32);
    let gt: Vec<f32> = (0..3 * d * d).map(|_| rng.gen_range(-1.0..1.5)).collect();
    let gt_t = Tensor::from_vec(gt.clone(), (3, d, d), &Device::Cpu).unwrap();
    let band = ren.band_data(&gt).unwrap();
    let tr = ren.ctf_transfer(&ctfs).unwrap();
    let eval = |fourier: bool| -> (f64, Vec<f64>) {
        let v = Var::from_tensor(&inp.coords).unwrap();
        let spec = ren
            .apply_transfer(
                &ren.spectrum(v.as_tensor(), &inp.amps, &inp.sigma, &inp.rots, &inp.shifts).unwrap(),
                &tr,
            )
            .unwrap();
        let l = if fourier {
            FourierCorrelationLoss::new(d, 1e-8).loss(&spec, &band).unwrap()
        } else {
            // A mask covering the whole box: the same quantity in real space.
            let cl = CorrelationLoss::new(d, 3.0, 1e-8, &Device::Cpu).unwrap();
            cl.loss(&ren.synthesize(&spec).unwrap(), &gt_t).unwrap()
        };
        let g = l.backward().unwrap();
        let gv = g
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap();
        (l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), gv)
    };
    let (lf, gf) = eval(true);
    let (lr, gr) = eval(false);
    let e = rel_err(&gf, &gr);
    eprintln!("Fourier-space vs real-space correlation: loss {lf:.6e} vs {lr:.6e}, gradient rel err {e:.2e}");
    assert!((lf - lr).abs() < 1e-5 * lr.abs(), "{lf} vs {lr}");
    assert!(e < 1e-4, "{e}");
}
