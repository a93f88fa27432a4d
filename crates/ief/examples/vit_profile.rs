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
}
