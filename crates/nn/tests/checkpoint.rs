//! Training 2N steps equals N steps + save + load + N steps, bit for bit (CPU).

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use cryoforge_nn::checkpoint::{self, TrainRng};
use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup};
use rand::{Rng, SeedableRng};

struct Mlp {
    l1: Linear,
    l2: Linear,
    vm: VarMap,
}

fn mlp() -> Mlp {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let l1 = linear(4, 16, vb.pp("l1")).unwrap();
    let l2 = linear(16, 1, vb.pp("l2")).unwrap();
    // Deterministic initial weights (candle's initialiser is not seeded).
    let mut r = TrainRng::seed_from_u64(42);
    let mut named = named_vars(&vm);
    named.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in &named {
        let n = v.elem_count();
        let vals: Vec<f32> = (0..n).map(|_| r.gen_range(-0.5..0.5)).collect();
        v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    Mlp { l1, l2, vm }
}

fn named_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> =
        vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn optimiser(m: &Mlp) -> Adam {
    let all = named_vars(&m.vm);
    let (g1, g2): (Vec<_>, Vec<_>) = all.into_iter().partition(|(n, _)| n.starts_with("l1"));
    let cfg = AdamConfig { max_grad_norm: Some(1.0), ..AdamConfig::adamw() };
    Adam::new(
        vec![ParamGroup::new("first", g1, 1e-2).with_weight_decay(0.01), ParamGroup::new("second", g2, 3e-3)],
        cfg,
    )
    .unwrap()
}

/// One step on a random batch drawn from `rng`; returns the loss.
fn train_step(m: &Mlp, opt: &mut Adam, rng: &mut TrainRng) -> f32 {
    let x: Vec<f32> = (0..8 * 4).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let x = Tensor::from_vec(x, (8, 4), &Device::Cpu).unwrap();
    let y = x.sum_keepdim(1).unwrap().sin().unwrap();
    let h = m.l1.forward(&x).unwrap().relu().unwrap();
    let p = m.l2.forward(&h).unwrap();
    let loss = (p - y).unwrap().sqr().unwrap().mean_all().unwrap();
    opt.backward_step(&loss).unwrap();
    loss.to_scalar::<f32>().unwrap()
}

fn bits(vm: &VarMap) -> Vec<(String, Vec<u32>)> {
    named_vars(vm)
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn resume_is_bit_identical() {
    let n = 7;
    // Straight run of 2N steps.
    let m = mlp();
    let mut opt = optimiser(&m);
    let mut rng = TrainRng::seed_from_u64(5);
    let losses: Vec<u32> = (0..2 * n).map(|_| train_step(&m, &mut opt, &mut rng).to_bits()).collect();
    let straight = bits(&m.vm);

    // N steps, save, load into a fresh model and optimiser, N steps.
    let dir = tempfile::tempdir().unwrap();
    let m1 = mlp();
    let mut opt1 = optimiser(&m1);
    let mut rng1 = TrainRng::seed_from_u64(5);
    let mut l1: Vec<u32> = (0..n).map(|_| train_step(&m1, &mut opt1, &mut rng1).to_bits()).collect();
    checkpoint::save(dir.path(), &named_vars(&m1.vm), Some(&opt1), n as u64, &rng1).unwrap();
    drop((m1, opt1, rng1));

    let m2 = mlp();
    // Perturb the fresh model so that the test fails if loading does not overwrite it.
    for (_, v) in named_vars(&m2.vm) {
        v.set(&(v.as_tensor() + 1.0).unwrap()).unwrap();
    }
    let mut opt2 = optimiser(&m2);
    let res = checkpoint::load(dir.path(), &named_vars(&m2.vm), Some(&mut opt2)).unwrap();
    assert_eq!(res.step, n as u64);
    assert_eq!(opt2.steps(), n as u64);
    let mut rng2 = res.rng;
    l1.extend((0..n).map(|_| train_step(&m2, &mut opt2, &mut rng2).to_bits()));
    assert_eq!(losses, l1, "loss sequences differ");
    assert_eq!(straight, bits(&m2.vm), "weights differ");
}

#[test]
fn loading_a_folder_without_state_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let m = mlp();
    let e = checkpoint::load(dir.path(), &named_vars(&m.vm), None).unwrap_err();
    assert!(e.to_string().contains("not a checkpoint"), "{e}");
}
