//! Adam/AdamW: closed-form first steps, groups, clipping, NaN skipping, convergence.

use candle_core::{DType, Device, Tensor, Var};
use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup, StepOutcome};

fn var(v: &[f32]) -> Var {
    Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
}

fn vals(v: &Var) -> Vec<f32> {
    v.as_tensor().to_vec1().unwrap()
}

#[test]
fn first_step_moves_by_lr_and_groups_have_own_rates() {
    let (a, b) = (var(&[1.0, -2.0]), var(&[5.0]));
    let mut opt = Adam::new(
        vec![
            ParamGroup::new("enc", vec![("a".into(), a.clone())], 0.1),
            ParamGroup::new("seg", vec![("b".into(), b.clone())], 0.01),
        ],
        AdamConfig::adam(),
    )
    .unwrap();
    // loss = 2·a0 − 3·a1 + 7·b: step 1 of Adam moves each coordinate by lr·sign(g).
    let coef = Tensor::new(&[2f32, -3.0], &Device::Cpu).unwrap();
    let loss = ((a.as_tensor() * &coef).unwrap().sum_all().unwrap()
        + (b.as_tensor() * 7.0).unwrap().sum_all().unwrap())
    .unwrap();
    let out = opt.backward_step(&loss).unwrap();
    assert!(
        matches!(out, StepOutcome::Applied { grad_norm } if (grad_norm - (4.0f64 + 9.0 + 49.0).sqrt()).abs() < 1e-5)
    );
    let av = vals(&a);
    assert!((av[0] - 0.9).abs() < 1e-6 && (av[1] + 1.9).abs() < 1e-6, "{av:?}");
    assert!((vals(&b)[0] - 4.99).abs() < 1e-6);
    assert_eq!(opt.steps(), 1);
}

#[test]
fn adamw_decays_decoupled_and_adam_adds_l2() {
    let p = var(&[2.0]);
    let mut opt = Adam::new(
        vec![ParamGroup::new("g", vec![("p".into(), p.clone())], 0.1).with_weight_decay(0.5)],
        AdamConfig::adamw(),
    )
    .unwrap();
    let loss = (p.as_tensor() * 3.0).unwrap().sum_all().unwrap();
    opt.backward_step(&loss).unwrap();
    // p ← 2·(1 − 0.05) − 0.1 = 1.8
    assert!((vals(&p)[0] - 1.8).abs() < 1e-6);
    // Adam with L2: g = 3 + 0.5·2 = 4 → still one lr step: 2 − 0.1 = 1.9 (sign unchanged).
    let q = var(&[2.0]);
    let mut opt = Adam::new(
        vec![ParamGroup::new("g", vec![("q".into(), q.clone())], 0.1).with_weight_decay(0.5)],
        AdamConfig::adam(),
    )
    .unwrap();
    let loss = (q.as_tensor() * 3.0).unwrap().sum_all().unwrap();
    opt.backward_step(&loss).unwrap();
    assert!((vals(&q)[0] - 1.9).abs() < 1e-6);
    let m = opt.state_tensors().unwrap()["g/q/m"].to_vec1::<f32>().unwrap();
    assert!((m[0] - 0.4).abs() < 1e-6, "m = (1 − β₁)·(3 + 1) = 0.4, got {m:?}");
}

#[test]
fn clipping_scales_the_gradient_into_the_moments() {
    let p = var(&[0.0, 0.0]);
    let cfg = AdamConfig { max_grad_norm: Some(1.0), ..AdamConfig::adam() };
    let mut opt = Adam::new(vec![ParamGroup::new("g", vec![("p".into(), p.clone())], 0.1)], cfg).unwrap();
    let coef = Tensor::new(&[6f32, 8.0], &Device::Cpu).unwrap();
    let loss = (p.as_tensor() * &coef).unwrap().sum_all().unwrap();
    let out = opt.backward_step(&loss).unwrap();
    assert!(matches!(out, StepOutcome::Applied { grad_norm } if (grad_norm - 10.0).abs() < 1e-5));
    let m = opt.state_tensors().unwrap()["g/p/m"].to_vec1::<f32>().unwrap();
    assert!((m[0] - 0.1 * 0.6).abs() < 1e-6 && (m[1] - 0.1 * 0.8).abs() < 1e-6, "{m:?}");
}

#[test]
fn non_finite_loss_or_gradient_skips_the_step() {
    let p = var(&[1.0]);
    let mut opt =
        Adam::new(vec![ParamGroup::new("g", vec![("p".into(), p.clone())], 0.1)], AdamConfig::adam())
            .unwrap();
    let nan_loss = (p.as_tensor() * f64::NAN).unwrap().sum_all().unwrap();
    assert!(matches!(opt.backward_step(&nan_loss).unwrap(), StepOutcome::Skipped { .. }));
    // Finite loss, infinite gradient: sqrt at 0 of (p − 1).
    let inf_grad = (p.as_tensor() - 1.0).unwrap().sqrt().unwrap().sum_all().unwrap();
    assert!(matches!(opt.backward_step(&inf_grad).unwrap(), StepOutcome::Skipped { .. }));
    assert_eq!(vals(&p), vec![1.0]);
    assert_eq!((opt.steps(), opt.skipped()), (0, 2));
    let m = opt.state_tensors().unwrap()["g/p/m"].to_vec1::<f32>().unwrap();
    assert_eq!(m, vec![0.0]);
}

#[test]
fn minimises_a_quadratic() {
    let p = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let target = Tensor::new(&[3f32, -1.0, 0.5], &Device::Cpu).unwrap();
    let mut opt =
        Adam::new(vec![ParamGroup::new("g", vec![("p".into(), p.clone())], 0.05)], AdamConfig::adam())
            .unwrap();
    for _ in 0..2000 {
        let loss = (p.as_tensor() - &target).unwrap().sqr().unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let v = vals(&p);
    assert!((v[0] - 3.0).abs() < 1e-3 && (v[1] + 1.0).abs() < 1e-3 && (v[2] - 0.5).abs() < 1e-3, "{v:?}");
}
