//! Timing of the pose-search kernels on one thread (release):
//! `cargo run --release -p cryoforge-refine --example kernels [BOX] [BAND]`.
//! Prints ns per projected sample, per scored pose (dense children) and GEMM throughput.

use cryoforge_core::fft::C32;
use cryoforge_core::rotation::uniform_rotation;
use cryoforge_refine::band::Band;
use cryoforge_refine::score::{matmul_abt, score_dense, DenseWork, Prepared, Scoring};
use cryoforge_sim::project::Projector;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let d: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(64);
    let k: f64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(24.0);
    let h = (d / 2) as f64;
    let mut vol = vec![0f32; d * d * d];
    for (i, v) in vol.iter_mut().enumerate() {
        let (x, y, z) = ((i % d) as f64 - h, ((i / d) % d) as f64 - h, (i / (d * d)) as f64 - h);
        let r2 = x * x + y * y + z * z;
        *v = ((-r2 / (0.1 * h * h)).exp() * (1.0 + 0.3 * (x * 0.7).sin() * (y * 0.4).cos())) as f32;
    }
    let proj = Projector::new(&vol, d, 1.0, 2.0).expect("projector");
    let band = Band::new(d, k);
    let n = band.len();
    let mut s = 1u64;
    let mut rnd = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let rots: Vec<_> = (0..4000).map(|_| uniform_rotation(rnd(), rnd(), rnd())).collect();
    let mut out = vec![C32::default(); n];
    let t = Instant::now();
    for r in &rots {
        proj.project_points(r, band.point_cache(), &mut out).expect("project");
    }
    let ns = t.elapsed().as_secs_f64() * 1e9 / (rots.len() * n) as f64;
    println!("box {d}, band {k} ({n} entries): project_points {ns:.2} ns/sample");
    let mut prep = Prepared::default();
    let spec = vec![C32::new(1.0, 0.5); d * (band.kx_max() + 1)];
    prep.fill(&band, &spec, None, 1.0, &vec![1.0; d / 2 + 1], 1.0);
    let shifts = [[0.1, 0.2], [0.3, -0.2], [-0.1, 0.4], [0.0, 0.0]];
    let mut w = DenseWork::default();
    let mut sc = vec![0f32; 8 * 4];
    // Children of a search cell: eight rotations 0.5° from a centre.
    let kids: Vec<_> = rots
        .iter()
        .take(500)
        .flat_map(|r| {
            cryoforge_refine::so3::child_offsets(2f64.to_radians())
                .map(|o| cryoforge_refine::so3::perturb(r, o))
        })
        .collect();
    let rots = kids;
    let t = Instant::now();
    for c in rots.chunks(8) {
        score_dense(&proj, &band, n, &prep, c, &shifts, Scoring::Likelihood, &mut w, &mut sc).expect("score");
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / (rots.len() / 8) as f64;
    println!("score_dense 8 child rotations x 4 shifts: {us:.1} µs per candidate ({:.1} ns per projected sample incl. scoring)", us * 1e3 / (8 * n) as f64);
    let (m, nn, kk) = (16 * 21, 256, 2 * Band::new(d, 10.0).len());
    let a = vec![0.5f32; m * kk];
    let b = vec![0.25f32; nn * kk];
    let mut c = vec![0f32; m * nn];
    let t = Instant::now();
    let reps = 200;
    for _ in 0..reps {
        matmul_abt(m, nn, kk, &a, &b, &mut c);
    }
    let gf = 2.0 * (m * nn * kk * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!("gemm {m}x{nn}x{kk}: {gf:.1} GFLOP/s");
}
