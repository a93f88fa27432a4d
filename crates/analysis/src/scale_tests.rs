//! Timings at realistic sizes, for BENCHMARKS.md: they print, never assert on time, and
//! run only with `CRYOFORGE_SCALE_BENCH=1` (release-like build recommended):
//! `CRYOFORGE_SCALE_BENCH=1 cargo test --release -p cryoforge-analysis --lib scale -- --nocapture`.

use std::time::Instant;

fn enabled() -> bool {
    let on = std::env::var("CRYOFORGE_SCALE_BENCH").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("SKIP scale benchmark: set CRYOFORGE_SCALE_BENCH=1 to run it");
    }
    on
}

use crate::knn::{nn_descent, NnDescentOptions};
use crate::matrix::{sq_dist, MatrixView};
use crate::testutil::blobs;
use crate::{kmeans, trustworthiness, umap, KMeansOptions, Pca, SgdMode, UmapOptions};

#[test]
fn scale_pca_kmeans_million_rows() {
    if !enabled() {
        return;
    }
    let (data, _) = blobs(16, 62_500, 32, 6.0, 1.0, 1);
    let data: Vec<f32> = data.into_iter().map(|v| v as f32).collect();
    let x = MatrixView::new(&data, 1_000_000, 32).unwrap();
    let t = Instant::now();
    let pca = Pca::fit(x, None).unwrap();
    let fit = t.elapsed();
    let t = Instant::now();
    let coords = pca.transform(x).unwrap();
    eprintln!("PCA 1e6×32 f32: fit {fit:?}, transform {:?}", t.elapsed());
    let t = Instant::now();
    let mut o = KMeansOptions::new(16);
    o.n_init = 1;
    let km = kmeans(x, &o).unwrap();
    eprintln!("k-means 1e6×32, k=16, n_init=1: {:?} ({} iterations)", t.elapsed(), km.n_iter);
    assert_eq!(coords.n_rows(), 1_000_000);
}

#[test]
fn scale_nn_descent_and_umap() {
    if !enabled() {
        return;
    }
    let n = 100_000;
    let (data, _) = blobs(20, n / 20, 8, 4.0, 1.0, 2);
    let x = MatrixView::new(&data, n, 8).unwrap();
    let t = Instant::now();
    let knn = nn_descent(x, 15, &NnDescentOptions::default()).unwrap();
    let el = t.elapsed();
    // Recall on 500 rows against brute force.
    let mut hits = 0;
    for q in (0..n).step_by(n / 500) {
        let mut d: Vec<(f64, usize)> =
            (0..n).filter(|&j| j != q).map(|j| (sq_dist(x.row(q), x.row(j)), j)).collect();
        d.select_nth_unstable_by(14, |a, b| a.partial_cmp(b).unwrap());
        hits += d[..15].iter().filter(|p| knn.indices(q).contains(&p.1)).count();
    }
    eprintln!("NN-descent 1e5×8, k=15: {el:?}, recall@15 on 500 rows = {:.4}", hits as f64 / (500.0 * 15.0));
    let sub = 20_000;
    let xs = MatrixView::new(&data[..sub * 8], sub, 8).unwrap();
    let t = Instant::now();
    crate::knn::exact_knn(xs, 15).unwrap();
    eprintln!("exact k-NN 2e4×8, k=15: {:?}", t.elapsed());
    for mode in [SgdMode::Sequential, SgdMode::Parallel] {
        let t = Instant::now();
        let u = umap(xs, &UmapOptions { sgd: mode, ..Default::default() }).unwrap();
        eprintln!("UMAP 2e4×8 ({mode:?}, exact k-NN, 200 epochs): {:?}", t.elapsed());
        let tt = Instant::now();
        let tw = trustworthiness(xs, u.embedding.view(), 10).unwrap();
        eprintln!("  trustworthiness(10) = {tw:.4} ({:?})", tt.elapsed());
    }
    let t = Instant::now();
    let u = umap(x, &UmapOptions::default()).unwrap();
    eprintln!("UMAP 1e5×8 (auto: {:?} k-NN, {:?} SGD): {:?}", u.knn_method, u.sgd, t.elapsed());
}

#[test]
fn scale_sgd_modes() {
    if !enabled() {
        return;
    }
    let n = 20_000;
    let (data, _) = blobs(20, n / 20, 8, 4.0, 1.0, 2);
    let x = MatrixView::new(&data, n, 8).unwrap();
    let knn_only = UmapOptions { n_epochs: Some(1), ..Default::default() };
    let t = Instant::now();
    umap(x, &knn_only).unwrap();
    let base = t.elapsed();
    for mode in [SgdMode::Sequential, SgdMode::Parallel] {
        let t = Instant::now();
        umap(x, &UmapOptions { sgd: mode, ..Default::default() }).unwrap();
        eprintln!(
            "UMAP 2e4×8 {mode:?}: total {:?}, SGD ≈ {:?} ({} threads)",
            t.elapsed(),
            t.elapsed().saturating_sub(base),
            rayon::current_num_threads()
        );
    }
}
