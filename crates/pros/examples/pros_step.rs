//! Times one cryoPROS training step (forward, backward, Adam) on random data:
//! `PRESET=cpu|paper D=64 BATCH=8 STEPS=5 cargo run --release -p cryoforge-pros --example pros_step`.
use candle_core::{Device, Tensor};
use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup};
use cryoforge_pros::model::{mse, normal, Hvae};
use cryoforge_pros::ProsConfig;
use rand::SeedableRng;
use std::time::Instant;

fn env(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() -> cryoforge_pros::Result<()> {
    cryoforge_core::alloc::retain_freed_memory();
    let preset = std::env::var("PRESET").unwrap_or_else(|_| "cpu".into());
    let cfg = ProsConfig::preset(&preset)?;
    let (d, b, steps) = (env("D", 64), env("BATCH", 8), env("STEPS", 5));
    let dev = Device::Cpu;
    let m = Hvae::new(&cfg.arch, d, 0, &dev)?;
    println!("preset {preset}: {} parameters, {} layers, box {d}, batch {b}", m.n_params(), m.layers().len());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let x = normal(&mut rng, &[b, 1, d, d], &dev)?.affine(0.1, 0.0)?;
    let v = normal(&mut rng, &[b, 1, d, d], &dev)?.affine(0.1, 0.0)?;
    let pose = normal(&mut rng, &[b, 6], &dev)?;
    let mut opt = Adam::new(vec![ParamGroup::new("m", m.vars().to_vec(), 1e-4)], AdamConfig::adam())?;
    let mut times = Vec::new();
    for s in 0..steps + 1 {
        let t = Instant::now();
        let c = m.condition(&v, &pose)?;
        let mut noise = |_l: usize, sh: &[usize]| normal(&mut rng, sh, &dev);
        let f = m.forward_train(&x, &c, &mut noise)?;
        let kl =
            f.kl.ok_or_else(|| cryoforge_pros::ProsError::msg("no KL from a training pass"))?
                .sum_all()?
                .affine(1e-4 / (b * d * d) as f64, 0.0)?;
        let loss: Tensor = (mse(&f.output, &x)? + kl)?;
        let tf = t.elapsed().as_secs_f64();
        opt.backward_step(&loss)?;
        let tt = t.elapsed().as_secs_f64();
        if s > 0 {
            times.push(tt);
        }
        println!("step {s}: forward {tf:.3} s, total {tt:.3} s");
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!("mean step {mean:.3} s = {:.1} images/s", b as f64 / mean);
    Ok(())
}
