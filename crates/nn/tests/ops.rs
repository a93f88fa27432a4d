//! Differentiable LayerNorm / softmax: values and finite-difference gradients.

use candle_core::{DType, Device, Tensor, Var};
use cryoforge_nn::ops::{gelu_erf, layer_norm, log_softmax, softmax};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_t(shape: &[usize], seed: u64) -> Tensor {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| r.gen_range(-2.0..2.0)).collect::<Vec<f64>>(), shape, &Device::Cpu)
        .unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Max relative error of the autodiff gradient of Σ w·f(x) vs central differences.
fn grad_check(f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, seed: u64) -> f64 {
    let w = rand_t(x.dims(), seed);
    let v = Var::from_tensor(x).unwrap();
    let l = (f(v.as_tensor()) * &w).unwrap().sum_all().unwrap();
    let g = flat(l.backward().unwrap().get(v.as_tensor()).unwrap());
    let xs = flat(x);
    let h = 1e-6;
    let mut worst = 0f64;
    let scale = g.iter().fold(0f64, |m, v| m.max(v.abs()));
    for i in 0..xs.len() {
        let ev = |s: f64| {
            let mut y = xs.clone();
            y[i] += s;
            let t = Tensor::from_vec(y, x.dims(), &Device::Cpu).unwrap();
            (f(&t) * &w).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let fd = (ev(h) - ev(-h)) / (2.0 * h);
        worst = worst.max((fd - g[i]).abs() / scale);
    }
    worst
}

#[test]
fn layer_norm_values_and_gradients() {
    let x = rand_t(&[3, 5], 1);
    let gamma = rand_t(&[5], 2);
    let beta = rand_t(&[5], 3);
    let y = flat(&layer_norm(&x, Some(&gamma), Some(&beta), 1e-5).unwrap());
    let xs = flat(&x);
    let (gs, bs) = (flat(&gamma), flat(&beta));
    for r in 0..3 {
        let row = &xs[r * 5..r * 5 + 5];
        let mu = row.iter().sum::<f64>() / 5.0;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / 5.0;
        for c in 0..5 {
            let want = (row[c] - mu) / (var + 1e-5).sqrt() * gs[c] + bs[c];
            assert!((y[r * 5 + c] - want).abs() < 1e-12);
        }
    }
    let e = grad_check(&|t| layer_norm(t, Some(&gamma), Some(&beta), 1e-5).unwrap(), &x, 9);
    eprintln!("layer_norm gradient: max rel err {e:.2e}");
    assert!(e < 1e-7, "{e}");
    // Gradients w.r.t. γ and β too.
    let eg = grad_check(
        &|g| layer_norm(&x, Some(&g.broadcast_as(5).unwrap()), Some(&beta), 1e-5).unwrap().sum(0).unwrap(),
        &gamma,
        10,
    );
    assert!(eg < 1e-7, "{eg}");
}

#[test]
fn softmax_values_and_gradients() {
    let x = rand_t(&[4, 6], 5);
    let s = flat(&softmax(&x).unwrap());
    let ls = flat(&log_softmax(&x).unwrap());
    let xs = flat(&x);
    for r in 0..4 {
        let row = &xs[r * 6..r * 6 + 6];
        let z: f64 = row.iter().map(|v| v.exp()).sum();
        for c in 0..6 {
            assert!((s[r * 6 + c] - row[c].exp() / z).abs() < 1e-12);
            assert!((ls[r * 6 + c] - (row[c] - z.ln())).abs() < 1e-12);
        }
    }
    let e = grad_check(&|t| softmax(t).unwrap(), &x, 11);
    let el = grad_check(&|t| log_softmax(t).unwrap(), &x, 12);
    eprintln!("softmax gradient: max rel err {e:.2e}; log_softmax {el:.2e}");
    assert!(e < 1e-7 && el < 1e-7, "{e} {el}");
}

#[test]
fn device_option_parses_and_explains_missing_cuda() {
    use cryoforge_nn::parse_device;
    assert!(matches!(parse_device("cpu").unwrap(), candle_core::Device::Cpu));
    assert!(matches!(parse_device(" CPU ").unwrap(), candle_core::Device::Cpu));
    let e = parse_device("tpu").unwrap_err().to_string();
    assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
    let e = parse_device("cuda:x").unwrap_err().to_string();
    assert!(e.contains("cuda:N"), "{e}");
    if !cfg!(feature = "cuda") {
        let e = parse_device("cuda:1").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}

#[test]
fn fused_gelu_matches_candle_gelu_in_value_and_gradient() {
    // More elements than one parallel chunk, values from −8 to 8 (both tails of erf).
    let n = 40_000;
    let xs: Vec<f32> = (0..n).map(|i| -8.0 + 16.0 * i as f32 / (n - 1) as f32).collect();
    let x = Tensor::from_vec(xs, (200, 200), &Device::Cpu).unwrap();
    let w = rand_t(&[200, 200], 7).to_dtype(DType::F32).unwrap();
    let run = |fused: bool| {
        let v = Var::from_tensor(&x).unwrap();
        let y = if fused { gelu_erf(v.as_tensor()).unwrap() } else { v.as_tensor().gelu_erf().unwrap() };
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (flat(&y), flat(g.get(v.as_tensor()).unwrap()))
    };
    let ((y1, g1), (y0, g0)) = (run(true), run(false));
    let max_diff = |a: &[f64], b: &[f64]| a.iter().zip(b).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
    assert!(max_diff(&y1, &y0) < 1e-5, "values differ by {}", max_diff(&y1, &y0));
    assert!(max_diff(&g1, &g0) < 1e-5, "gradients differ by {}", max_diff(&g1, &g0));
    // gelu(−8) ≈ 0, gelu(8) ≈ 8, gelu(0) = 0; gelu′ → 0 and 1 in the tails.
    assert!(y1[0].abs() < 1e-6 && (y1[n - 1] - 8.0).abs() < 1e-5);
    let wv = flat(&w);
    assert!((g1[n - 1] - wv[n - 1]).abs() < 1e-5 && g1[0].abs() < 1e-6);
    // A non-contiguous input (a transpose) gives the transposed result.
    let yt = flat(&gelu_erf(&x.t().unwrap()).unwrap().t().unwrap());
    assert!(max_diff(&yt, &y1) < 1e-7);
}

#[test]
fn fast_exp_and_erf_match_libm() {
    use cryoforge_nn::ops::{erf_fast, exp_fast};
    let (mut e_exp, mut e_erf) = (0f64, 0f64);
    for i in 0..=400_000 {
        let x = -87.0 + 175.0 * i as f64 / 400_000.0;
        let want = (x as f32 as f64).exp();
        e_exp = e_exp.max(((exp_fast(x as f32) as f64) - want).abs() / want);
        let x = -6.0 + 12.0 * i as f64 / 400_000.0;
        let want = libm::erf(x as f32 as f64);
        e_erf = e_erf.max(((erf_fast(x as f32) as f64) - want).abs());
    }
    assert!(e_exp < 3e-7, "exp: relative error {e_exp}");
    assert!(e_erf < 1e-6, "erf: absolute error {e_erf}");
    assert_eq!(exp_fast(-200.0), exp_fast(-87.0));
    assert!(exp_fast(200.0).is_finite());
    assert_eq!(erf_fast(0.0), 0.0);
    assert_eq!(erf_fast(-3.0), -erf_fast(3.0));
}

#[test]
fn eval_softmax_matches_softmax() {
    use cryoforge_nn::ops::softmax_scaled_eval;
    let x = Tensor::randn(0f32, 3.0, (3, 5, 37), &Device::Cpu).unwrap();
    for scale in [0.125, 1.0, -0.5] {
        let want = softmax(&x.affine(scale, 0.0).unwrap()).unwrap();
        let got = softmax_scaled_eval(&x, scale).unwrap();
        let d: f32 = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(d < 1e-6, "scale {scale}: max |Δ| {d}");
    }
}
