//! Times the pieces of a ViT-B block on the CPU (batch 8): `cargo run --release -p cryoforge-ief --example vit_profile`.
use candle_core::{DType, Device, Tensor};
use std::time::Instant;
fn t<F: FnMut() -> Tensor>(name: &str, mut f: F) {
    let _ = f();
    let s = Instant::now();
    for _ in 0..3 {
        let _ = f();
    }
    println!("{name:32} {:8.1} ms", s.elapsed().as_secs_f64() * 1000.0 / 3.0);
}
fn main() {
    cryoforge_core::alloc::retain_freed_memory(); // as the cryoforge binary does
    let dev = Device::Cpu;
    let (b, n, c, h) = (8usize, 257usize, 768usize, 12usize);
    let x = Tensor::randn(0f32, 1.0, (b * n, c), &dev).unwrap();
    let w = Tensor::randn(0f32, 0.03, (3 * c, c), &dev).unwrap();
    let w1 = Tensor::randn(0f32, 0.03, (4 * c, c), &dev).unwrap();
    let g = Tensor::ones(c, DType::F32, &dev).unwrap();
    t("qkv matmul (2D)", || x.matmul(&w.t().unwrap()).unwrap());
    t("fc1 matmul (2D)", || x.matmul(&w1.t().unwrap()).unwrap());
    let qkv = x
        .matmul(&w.t().unwrap())
        .unwrap()
        .reshape((b, n, 3, h, c / h))
        .unwrap()
        .permute((2, 0, 3, 1, 4))
        .unwrap();
    t("q contiguous", || qkv.get(0).unwrap().contiguous().unwrap());
    let q = qkv.get(0).unwrap().contiguous().unwrap();
    let k = qkv.get(1).unwrap().contiguous().unwrap();
    t("k.t()", || k.t().unwrap().contiguous().unwrap());
    t("q k^T (batched)", || q.matmul(&k.t().unwrap()).unwrap());
    let att = q.matmul(&k.t().unwrap()).unwrap();
    t("softmax_last_dim", || candle_nn::ops::softmax_last_dim(&att).unwrap());
    t("att v (batched)", || att.matmul(&q).unwrap());
    t("transpose+reshape", || att.matmul(&q).unwrap().transpose(1, 2).unwrap().reshape((b * n, c)).unwrap());
    t("layer_norm fused", || candle_nn::ops::layer_norm(&x, &g, &g, 1e-6).unwrap());
    t("broadcast_mul+add (BN)", || x.broadcast_mul(&g).unwrap().broadcast_add(&g).unwrap());
    t("residual add", || (&x + &x).unwrap());
    let big = Tensor::randn(0f32, 1.0, (b * n, 4 * c), &dev).unwrap();
    t("gelu fused", || cryoforge_nn::ops::gelu_erf(&big).unwrap());
    t("scale q", || (&q * 0.125).unwrap());
    t("softmax_scaled_eval", || cryoforge_nn::ops::softmax_scaled_eval(&att, 0.125).unwrap());
    // The whole encoder (random weights), as `ranker score` runs it.
    let vm = candle_nn::VarMap::new();
    let bm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let bb = candle_nn::VarBuilder::from_varmap(&bm, DType::F32, &dev);
    let vit = cryoforge_ief::vit::Vit::new(&cryoforge_ief::vit::VitConfig::base(), vb, bb).unwrap();
    if let Ok(path) = std::env::var("VIT_SAVE") {
        // Random ViT-B weights under the published names, for timing `ranker score`.
        let mut all: std::collections::HashMap<String, Tensor> = std::collections::HashMap::new();
        for (k, v) in vm.data().lock().unwrap().iter().chain(bm.data().lock().unwrap().iter()) {
            all.insert(k.clone(), v.as_tensor().clone());
        }
        all.extend(vit.buffers().unwrap());
        candle_core::safetensors::save(&all, &path).unwrap();
        println!("wrote {path}");
    }
    let img = Tensor::randn(0f32, 1.0, (b, 224, 224), &dev).unwrap();
    let _ = vit.forward_cls(&img, cryoforge_ief::vit::Mode::Eval).unwrap(); // warm-up
    let s = Instant::now();
    for _ in 0..3 {
        let _ = vit.forward_cls(&img, cryoforge_ief::vit::Mode::Eval).unwrap();
    }
    let dt = s.elapsed().as_secs_f64() / 3.0;
    println!("{:32} {:8.1} ms ({:.2} images/s)", "ViT-B/14 forward, batch 8", dt * 1000.0, b as f64 / dt);
}
