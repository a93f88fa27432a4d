//! Losses with values known in closed form on hand-made inputs.

use candle_core::{DType, Device, Tensor, Var};
use cryoforge_nn::loss::{
    circular_mask, clash_loss, continuity_loss, edge_keep_mask, elastic_loss, gaussian_kl, gaussian_kl_std,
    kl_free_bits, kl_loss, mse_loss, CorrelationLoss, PairList, Schedule,
};
use cryoforge_nn::structure::{clash_pairs, consecutive_pairs, elastic_pairs, pairs_within};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn mask_has_cryostar_radius() {
    let d = 32;
    let m = circular_mask(d, 0.9375);
    // r = 15: centre pixel in, (16 + 15, 16) on the boundary is out, (16 + 14, 16) in.
    assert_eq!(m[16 * d + 16], 1.0);
    assert_eq!(m[16 * d + 30], 1.0);
    assert_eq!(m[16 * d + 31], 0.0);
    assert_eq!(m[0], 0.0);
}

#[test]
fn correlation_of_zero_mean_image_with_itself_is_minus_one_and_scale_invariant() {
    let d = 16;
    let dev = Device::Cpu;
    let cl = CorrelationLoss::new(d, 0.9375, 1e-12, &dev).unwrap();
    let m = circular_mask(d, 0.9375);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut x: Vec<f64> = (0..d * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let n_in: f64 = m.iter().map(|&v| v as f64).sum();
    let mean = x.iter().zip(&m).map(|(a, b)| a * *b as f64).sum::<f64>() / n_in;
    x.iter_mut().for_each(|v| *v -= mean);
    let t = Tensor::from_vec(x.clone(), (1, d, d), &dev).unwrap();
    let l = scalar(&cl.loss(&t, &t).unwrap());
    assert!((l + 1.0).abs() < 1e-9, "{l}");
    let l2 = scalar(&cl.loss(&(&t * 3.5).unwrap(), &t).unwrap());
    assert!((l2 + 1.0).abs() < 1e-9, "{l2}");
    // A direct evaluation of the formula on two different images (no mean subtraction in
    // the numerator, population std over the mask pixels).
    let y: Vec<f64> = (0..d * d).map(|_| rng.gen_range(-0.5..2.0)).collect();
    let ty = Tensor::from_vec(y.clone(), (1, d, d), &dev).unwrap();
    let stats = |v: &[f64]| {
        let mu = v.iter().zip(&m).map(|(a, b)| a * *b as f64).sum::<f64>() / n_in;
        let e2 = v.iter().zip(&m).map(|(a, b)| a * a * *b as f64).sum::<f64>() / n_in;
        (e2 - mu * mu).sqrt()
    };
    let num: f64 = x.iter().zip(&y).zip(&m).map(|((a, b), c)| a * b * *c as f64).sum();
    let want = -num / ((stats(&y) + 1e-12) * (stats(&x) + 1e-12)) / n_in;
    let got = scalar(&cl.loss(&t, &ty).unwrap());
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn correlation_of_zero_prediction_is_finite_with_zero_gradient() {
    let d = 8;
    let dev = Device::Cpu;
    let cl = CorrelationLoss::cryostar(d, &dev).unwrap();
    let p = Var::zeros((2, d, d), DType::F32, &dev).unwrap();
    let gt = Tensor::zeros((2, d, d), DType::F32, &dev).unwrap();
    let l = cl.loss(p.as_tensor(), &gt).unwrap();
    assert_eq!(scalar(&l), 0.0);
    let g = l.backward().unwrap();
    let gv: Vec<f32> = g.get(p.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(gv.iter().all(|v| v.is_finite()));
}

#[test]
fn mse_closed_form() {
    let dev = Device::Cpu;
    let a = Tensor::new(&[[[1f32, 2.0], [3.0, 4.0]]], &dev).unwrap();
    let b = Tensor::new(&[[[1f32, 0.0], [0.0, 4.0]]], &dev).unwrap();
    assert!((scalar(&mse_loss(&a, &b, None).unwrap()) - (4.0 + 9.0) / 4.0).abs() < 1e-6);
    let m = Tensor::new(&[[1f32, 1.0], [0.0, 0.0]], &dev).unwrap();
    assert!((scalar(&mse_loss(&a, &b, Some(&m)).unwrap()) - 4.0 / 2.0).abs() < 1e-6);
}

#[test]
fn kl_closed_form_and_free_bits() {
    let dev = Device::Cpu;
    let mu = Var::from_tensor(&Tensor::new(&[[1f64, 0.0], [1.0, 2.0]], &dev).unwrap()).unwrap();
    let lv = Tensor::new(&[[0f64, 0.0], [0.0, 0.5f64.ln()]], &dev).unwrap();
    // KL = ½(μ² + e^lv − 1 − lv)
    let k: Vec<Vec<f64>> = gaussian_kl(mu.as_tensor(), &lv).unwrap().to_vec2().unwrap();
    assert!((k[0][0] - 0.5).abs() < 1e-12 && k[0][1].abs() < 1e-12);
    let want11 = 0.5 * (4.0 + 0.5 - 1.0 - 0.5f64.ln());
    assert!((k[1][1] - want11).abs() < 1e-12);
    let kl = scalar(&kl_loss(mu.as_tensor(), &lv).unwrap());
    assert!((kl - (0.5 + 0.5 + want11) / 2.0).abs() < 1e-12);
    // Free bits: dim 0 has batch-mean KL 0.5 (< λ = 1 → λ), dim 1 has want11/2 (> 1).
    let fb = kl_free_bits(mu.as_tensor(), &lv, 1.0).unwrap();
    assert!((scalar(&fb) - (1.0 + want11 / 2.0)).abs() < 1e-12);
    let g = fb.backward().unwrap();
    let gm: Vec<Vec<f64>> = g.get(mu.as_tensor()).unwrap().to_vec2().unwrap();
    assert_eq!(gm[0][0], 0.0, "a dimension under its free bits gets no gradient");
    assert!((gm[1][1] - 2.0 / 2.0).abs() < 1e-12, "∂/∂μ of mean_b ½μ² = μ/B");
}

#[test]
fn schedules() {
    assert_eq!(Schedule::Constant(0.3).value(1234), 0.3);
    let l = Schedule::Linear { start: 0.0, end: 0.5, steps: 10_000 };
    assert_eq!(l.value(0), 0.0);
    assert!((l.value(5_000) - 0.25).abs() < 1e-12);
    assert_eq!(l.value(20_000), 0.5);
    let c = Schedule::Cyclical { max: 1.0, total: 1000, cycles: 5, ratio: 0.5 };
    assert_eq!(c.value(0), 0.0);
    assert!((c.value(50) - 0.5).abs() < 1e-12);
    assert_eq!(c.value(100), 1.0);
    assert_eq!(c.value(199), 1.0);
    assert_eq!(c.value(200), 0.0);
    let k = Schedule::Cosine { start: 1e-3, end: 1e-5, steps: 100 };
    assert_eq!(k.value(0), 1e-3);
    assert!((k.value(50) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-15, "half way: the mean");
    assert!(k.value(25) > k.value(50) && k.value(50) > k.value(75));
    assert_eq!(k.value(100), 1e-5);
    assert_eq!(k.value(1000), 1e-5);
}

/// Four Cα on the x axis, 3.8 Å apart; residues 0–2 chain A, residue 3 chain B.
fn line() -> (Vec<[f64; 3]>, Vec<u32>) {
    ((0..4).map(|i| [3.8 * i as f64, 0.0, 0.0]).collect(), vec![0, 0, 0, 1])
}

fn coords_tensor(c: &[[f64; 3]]) -> Var {
    let v: Vec<f64> = c.iter().flat_map(|x| x.iter().copied()).collect();
    Var::from_tensor(&Tensor::from_vec(v, (1, c.len(), 3), &Device::Cpu).unwrap()).unwrap()
}

#[test]
fn pair_lists_of_hand_made_structure() {
    let (c, ch) = line();
    let (cp, d0) = consecutive_pairs(&c, &ch);
    assert_eq!(cp, vec![(0, 1), (1, 2)]);
    assert!(d0.iter().all(|d| (d - 3.8).abs() < 1e-6));
    assert_eq!(clash_pairs(&c, &ch, 4.0, 10.0), vec![(0, 2), (1, 3)]);
    let (ep, ed) = elastic_pairs(&c, &ch, 12.0);
    assert_eq!(ep, vec![(0, 2)]);
    assert!((ed[0] - 7.6).abs() < 1e-5);
}

#[test]
fn cell_list_equals_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let c: Vec<[f64; 3]> = (0..400).map(|_| [0, 1, 2].map(|_| rng.gen_range(-30.0..30.0))).collect();
    let got = pairs_within(&c, 4.0, 10.0);
    let mut want = Vec::new();
    for i in 0..c.len() {
        for j in i + 1..c.len() {
            let d = cryoforge_nn::structure::dist(c[i], c[j]);
            if (4.0..=10.0).contains(&d) {
                want.push((i as u32, j as u32));
            }
        }
    }
    assert_eq!(got, want);
}

#[test]
fn structural_losses_closed_form() {
    let dev = Device::Cpu;
    let (c, ch) = line();
    let (cp, d0) = consecutive_pairs(&c, &ch);
    let cons = PairList::new(&cp, &dev).unwrap();
    let d0 = Tensor::new(d0.as_slice(), &dev).unwrap().to_dtype(DType::F64).unwrap();
    // Stretch the chain ×2: each consecutive distance 7.6 vs 3.8 → (3.8)² = 14.44.
    let x = coords_tensor(&c.iter().map(|p| [2.0 * p[0], 0.0, 0.0]).collect::<Vec<_>>());
    let l = continuity_loss(x.as_tensor(), &cons, &d0).unwrap();
    assert!((scalar(&l) - 14.44).abs() < 1e-5, "reference distances are f32");
    let x0 = coords_tensor(&c);
    assert!(scalar(&continuity_loss(x0.as_tensor(), &cons, &d0).unwrap()).abs() < 1e-10);

    // Clash over pairs (0, 2) and (1, 3): move residue 2 to x = 3 → d(0,2) = 3 → (4 − 3)² = 1;
    // d(1, 3) = 11.4 − 3.8 = 7.6 does not violate: mean over violating pairs = 1.
    let cl = PairList::new(&[(0, 2), (1, 3)], &dev).unwrap();
    let mut moved = c.clone();
    moved[2] = [3.0, 0.0, 0.0];
    let xm = coords_tensor(&moved);
    let l = clash_loss(xm.as_tensor(), &cl, 4.0).unwrap();
    assert!((scalar(&l) - 1.0).abs() < 1e-9);
    let g = l.backward().unwrap();
    let gx: Vec<f64> = g.get(xm.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    // ∂(4 − (x2 − x0))²/∂x2 = −2(4 − 3) = −2.
    assert!((gx[2 * 3] + 2.0).abs() < 1e-9);
    // Nothing violates: exactly 0, gradient 0 (not NaN).
    let l0 = clash_loss(x0.as_tensor(), &cl, 4.0).unwrap();
    assert_eq!(scalar(&l0), 0.0);
    let g0 = l0.backward().unwrap();
    let gv: Vec<f64> = g0.get(x0.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(gv.iter().all(|v| *v == 0.0));

    // Elastic over (0, 2) and (0, 3) with d0 = 7.6, 11.4, residue 2 moved to x = 3:
    // (3 − 7.6)² = 21.16 and 0 → mean 10.58; keeping only edge 0 → 21.16; none → 0.
    let el = PairList::new(&[(0, 2), (0, 3)], &dev).unwrap();
    let ed0 = Tensor::new(&[7.6f64, 11.4], &dev).unwrap();
    assert!((scalar(&elastic_loss(xm.as_tensor(), &el, &ed0, None).unwrap()) - 10.58).abs() < 1e-9);
    let keep = Tensor::new(&[1f64, 0.0], &dev).unwrap();
    assert!((scalar(&elastic_loss(xm.as_tensor(), &el, &ed0, Some(&keep)).unwrap()) - 21.16).abs() < 1e-9);
    let none = Tensor::new(&[0f64, 0.0], &dev).unwrap();
    assert_eq!(scalar(&elastic_loss(xm.as_tensor(), &el, &ed0, Some(&none)).unwrap()), 0.0);
}

#[test]
fn adaptive_relaxation_keeps_low_variance_edges() {
    let dev = Device::Cpu;
    // Edge variances over the batch: 0, 1, 4, 0.25.
    let d = Tensor::new(&[[5f32, 4.0, 2.0, 1.0], [5.0, 6.0, 6.0, 2.0]], &dev).unwrap();
    let k: Vec<f32> = edge_keep_mask(&d, 0.5).unwrap().to_vec1().unwrap();
    assert_eq!(k, vec![1.0, 0.0, 0.0, 1.0]);
    let k: Vec<f32> = edge_keep_mask(&d, 0.75).unwrap().to_vec1().unwrap();
    assert_eq!(k, vec![1.0, 1.0, 0.0, 1.0]);
}

#[test]
fn fused_correlation_matches_composed_value_and_gradient() {
    let dev = Device::Cpu;
    let d = 16;
    let cl = CorrelationLoss::cryostar(d, &dev).unwrap();
    // Deterministic inputs (a fixed LCG), so the comparison cannot depend on the draw.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut draw = |n: usize, mean: f32, sd: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let mut u = 0f32;
                for _ in 0..12 {
                    state =
                        state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    u += (state >> 40) as f32 / (1u64 << 24) as f32;
                }
                mean + sd * (u - 6.0)
            })
            .collect()
    };
    let p = Tensor::from_vec(draw(3 * d * d, 0.3, 1.0), (3, d, d), &dev).unwrap();
    let g = Tensor::from_vec(draw(3 * d * d, 0.1, 2.0), (3, d, d), &dev).unwrap();
    let vf = Var::from_tensor(&p).unwrap();
    let lf = cl.loss(vf.as_tensor(), &g).unwrap();
    let gf: Vec<f64> = lf
        .backward()
        .unwrap()
        .get(vf.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let vc = Var::from_tensor(&p.to_dtype(DType::F64).unwrap()).unwrap();
    let lc = cl
        .per_image_composed(vc.as_tensor(), &g.to_dtype(DType::F64).unwrap())
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap();
    let gc: Vec<f64> =
        lc.backward().unwrap().get(vc.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    // A correlation lies in [−1, 1]: compare absolutely, at f32 accumulation accuracy.
    let dl = (scalar(&lf) - scalar(&lc)).abs();
    assert!(dl < 2e-6, "fused {} vs composed {} ({dl:.2e})", scalar(&lf), scalar(&lc));
    let scale = gc.iter().fold(0f64, |m, v| m.max(v.abs()));
    let e = gf.iter().zip(&gc).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
    eprintln!("fused correlation gradient vs composed f64: {e:.2e}");
    assert!(e < 1e-5, "{e}");
}

#[test]
fn general_gaussian_kl_closed_form() {
    let dev = Device::Cpu;
    let t = |v: &[f64]| Tensor::new(v, &dev).unwrap();
    // KL(N(1, 2²) ‖ N(0, 1)) = −log 2 + (4 + 1)/2 − ½ = 2 − log 2; equal distributions → 0;
    // and with σ_p = 1, μ_p = 0 it equals the logvar form.
    let k: Vec<f64> = gaussian_kl_std(&t(&[1.0, 0.3]), &t(&[2.0, 0.7]), &t(&[0.0, 0.3]), &t(&[1.0, 0.7]))
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!((k[0] - (2.0 - 2f64.ln())).abs() < 1e-12, "{k:?}");
    assert!(k[1].abs() < 1e-12);
    let a = gaussian_kl(&t(&[0.4]), &t(&[(1.7f64).powi(2).ln()])).unwrap().to_vec1::<f64>().unwrap();
    let b =
        gaussian_kl_std(&t(&[0.4]), &t(&[1.7]), &t(&[0.0]), &t(&[1.0])).unwrap().to_vec1::<f64>().unwrap();
    assert!((a[0] - b[0]).abs() < 1e-12);
}
