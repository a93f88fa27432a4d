//! Data loader over a ParticleStack written to disk.

use std::sync::Arc;

use cryoforge_io::stack::{ImageRef, ParticleStack};
use cryoforge_nn::data::{DataLoader, LoaderConfig};

/// A stack of `n` 8×8 images, image i filled with the value i.
fn stack(n: usize) -> (tempfile::TempDir, Arc<ParticleStack>) {
    let dir = tempfile::tempdir().unwrap();
    let d = 8;
    let data: Vec<f32> = (0..n).flat_map(|i| std::iter::repeat_n(i as f32, d * d)).collect();
    let path = dir.path().join("p.mrcs");
    cryoforge_io::mrc::write_stack(&path, &data, d, d, n, 1.5).unwrap();
    let imgs = (0..n).map(|i| ImageRef { file: 0, index: i as u64 }).collect();
    let s = ParticleStack::from_parts(&path, vec![path.to_string_lossy().into_owned()], imgs, d, 1.5);
    (dir, Arc::new(s))
}

fn epoch_contents(l: &DataLoader, e: u64) -> Vec<Vec<usize>> {
    l.epoch(e)
        .map(|b| {
            let b = b.unwrap();
            for (k, &i) in b.indices.iter().enumerate() {
                assert!(
                    b.images[k * 64..(k + 1) * 64].iter().all(|&v| v == i as f32),
                    "image of particle {i}"
                );
            }
            b.indices
        })
        .collect()
}

#[test]
fn epochs_cover_every_particle_once_in_a_seeded_order() {
    let (_dir, s) = stack(10);
    let cfg = LoaderConfig { batch_size: 3, seed: 17, ..Default::default() };
    let l = DataLoader::new(s.clone(), cfg).unwrap();
    assert!(!l.is_cached());
    assert_eq!(l.n_batches(), 4);
    let e0 = epoch_contents(&l, 0);
    assert_eq!(e0.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
    let mut all: Vec<usize> = e0.concat();
    assert_ne!(all, (0..10).collect::<Vec<_>>(), "shuffled");
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    // Same seed and epoch: same order; another epoch: another order.
    assert_eq!(epoch_contents(&l, 0), e0);
    assert_ne!(epoch_contents(&l, 1).concat(), e0.concat());
    // The cache gives the same batches.
    let lc = DataLoader::new(s.clone(), LoaderConfig { cache_limit_bytes: Some(1 << 20), ..cfg }).unwrap();
    assert!(lc.is_cached());
    assert_eq!(epoch_contents(&lc, 0), e0);
    // drop_last, no shuffle.
    let ld = DataLoader::new(s, LoaderConfig { drop_last: true, shuffle: false, ..cfg }).unwrap();
    assert_eq!(epoch_contents(&ld, 0), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]]);
}

#[test]
fn dropping_an_epoch_early_does_not_hang() {
    let (_dir, s) = stack(20);
    let l = DataLoader::new(s, LoaderConfig { batch_size: 2, prefetch: 1, ..Default::default() }).unwrap();
    let mut it = l.epoch(0);
    let first = it.next().unwrap().unwrap();
    assert_eq!(first.len(), 2);
    drop(it);
}
