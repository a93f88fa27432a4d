//! End to end: Adam + correlation loss through the renderer recovers perturbed coordinates.

use candle_core::{DType, Device, Tensor, Var};
use cryoforge_core::rotation::uniform_rotation;
use cryoforge_core::CtfParams;
use cryoforge_nn::loss::CorrelationLoss;
use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup};
use cryoforge_nn::{Band, Renderer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn gradient_descent_recovers_perturbed_coordinates() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (r, b, d, apix) = (8usize, 12usize, 32usize, 1.5);
    let truth: Vec<f32> = (0..r * 3).map(|_| rng.gen_range(-10.0..10.0)).collect();
    let start: Vec<f32> = truth.iter().map(|x| x + rng.gen_range(-1.2..1.2)).collect();
    let rots: Vec<f32> =
        (0..b).flat_map(|_| uniform_rotation(rng.gen(), rng.gen(), rng.gen()).to_f32()).collect();
    let rots = Tensor::from_vec(rots, (b, 3, 3), &dev).unwrap();
    let shifts = Tensor::zeros((b, 2), DType::F32, &dev).unwrap();
    let amps = Tensor::ones(r, DType::F32, &dev).unwrap();
    let sigma = Tensor::new(&[2f32], &dev).unwrap();
    let ren = Renderer::new(d, apix, Band::Resolution { resolution_a: 4.0 }, &dev).unwrap();
    let ctfs: Vec<CtfParams> = (0..b)
        .map(|i| CtfParams {
            defocus_u_a: 8000.0 + 800.0 * i as f64,
            defocus_v_a: 8000.0 + 800.0 * i as f64,
            ..Default::default()
        })
        .collect();
    let tr = ren.ctf_transfer(&ctfs).unwrap();
    let batch = |x: &Tensor| x.unsqueeze(0).unwrap().broadcast_as((b, r, 3)).unwrap();
    let t = Tensor::from_vec(truth.clone(), (r, 3), &dev).unwrap();
    let data = ren.render(&batch(&t), &amps, &sigma, &rots, &shifts, &tr).unwrap().detach();
    let x = Var::from_tensor(&Tensor::from_vec(start.clone(), (r, 3), &dev).unwrap()).unwrap();
    let cl = CorrelationLoss::cryostar(d, &dev).unwrap();
    let mut opt =
        Adam::new(vec![ParamGroup::new("coords", vec![("x".into(), x.clone())], 0.05)], AdamConfig::adam())
            .unwrap();
    let rmsd = |v: &[f32]| {
        (v.iter().zip(&truth).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / r as f64).sqrt()
    };
    let r0 = rmsd(&start);
    let mut last = 0.0;
    for _ in 0..300 {
        let img = ren.render(&batch(x.as_tensor()), &amps, &sigma, &rots, &shifts, &tr).unwrap();
        let loss = cl.loss(&img, &data).unwrap();
        last = loss.to_scalar::<f32>().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let v: Vec<f32> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let r1 = rmsd(&v);
    eprintln!("RMSD {r0:.3} Å → {r1:.3} Å, final loss {last:.5}");
    assert!(r1 < 0.1 * r0, "RMSD {r0} → {r1}");
}
