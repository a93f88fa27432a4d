//! Training batches of augmented views over a particle stack (pre-training and ranker
//! fine-tuning share it): particles read from the memory-mapped stack in parallel, sign
//! flipped when asked, resampled to the model's input as the released preprocessing does,
//! then each view augmented ([`crate::augment`]) and normalised. Memory is O(batch).

use crate::augment::{view_rng, AugmentConfig, Augmenter};
use crate::preprocess::{Preprocess, Resample};
use crate::{IefError, Result};
use cryoforge_io::stack::ParticleStack;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::Arc;

/// Reads and augments batches of one stack for an S×S model.
pub struct ViewBatcher {
    stack: Arc<ParticleStack>,
    d: usize,
    s: usize,
    resample: Resample,
    invert: bool,
}

impl ViewBatcher {
    pub fn new(
        stack: Arc<ParticleStack>,
        size: usize,
        resample: Resample,
        invert: bool,
    ) -> Result<ViewBatcher> {
        let d = stack.box_px()?;
        if stack.is_empty() {
            return Err(IefError::msg("the particle stack is empty"));
        }
        Ok(ViewBatcher { stack, d, s: size, resample, invert })
    }

    pub fn size(&self) -> usize {
        self.s
    }

    /// `n_views` views of particles `idx`: `n_views` buffers of [len, S, S]. View `v` of
    /// particle `i` at `step` is drawn from [`view_rng`]`(seed, step, i, v)`.
    pub fn views(
        &self,
        idx: &[usize],
        n_views: usize,
        aug: &AugmentConfig,
        seed: u64,
        step: u64,
    ) -> Result<Vec<Vec<f32>>> {
        let ss = self.s * self.s;
        let mut all = vec![0f32; idx.len() * n_views * ss];
        all.par_chunks_mut(n_views * ss).zip(idx.par_iter()).try_for_each_init(
            || {
                (
                    Preprocess::new(self.d, self.s, self.resample),
                    vec![0f32; self.d * self.d],
                    vec![0f32; ss],
                    Augmenter::new(),
                )
            },
            |(pre, img, res, augm), (out, &i)| -> Result<()> {
                self.stack.read_image(i, img)?;
                if self.invert {
                    img.iter_mut().for_each(|v| *v = -*v);
                }
                pre.resample_into(img, res);
                for (v, o) in out.chunks_mut(ss).enumerate() {
                    augm.view(res, self.s, aug, &mut view_rng(seed, step, i as u64, v as u64), o);
                }
                Ok(())
            },
        )?;
        let mut views = vec![Vec::with_capacity(idx.len() * ss); n_views];
        for chunk in all.chunks(n_views * ss) {
            for (v, o) in chunk.chunks(ss).enumerate() {
                views[v].extend_from_slice(o);
            }
        }
        Ok(views)
    }
}

/// The order of the particles `pool` in epoch `epoch` (a seeded shuffle).
pub fn epoch_order(pool: &[usize], seed: u64, epoch: u64) -> Vec<usize> {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x000e_90c4_0000);
    r.set_stream(epoch);
    let mut v = pool.to_vec();
    v.shuffle(&mut r);
    v
}

/// The particles of batch `step` (batches of `batch` consecutive particles of each epoch's
/// order, the incomplete last batch dropped) and the epoch it belongs to.
pub fn batch_at(pool: &[usize], batch: usize, seed: u64, step: u64) -> (Vec<usize>, u64) {
    let per_epoch = (pool.len() / batch).max(1) as u64;
    let epoch = step / per_epoch;
    let j = (step % per_epoch) as usize;
    let order = epoch_order(pool, seed, epoch);
    let b = batch.min(order.len());
    (order[j * b..(j + 1) * b].to_vec(), epoch)
}

/// A seeded split of 0..n into (train, validation) with `fraction` of the particles (at
/// least one of each when n ≥ 2 and fraction > 0) held out.
pub fn split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let all: Vec<usize> = (0..n).collect();
    let order = epoch_order(&all, seed ^ 0x5b11_7000, u64::MAX);
    let mut k = (fraction * n as f64).round() as usize;
    if fraction > 0.0 && n >= 2 {
        k = k.clamp(1, n - 1);
    }
    let mut val = order[..k].to_vec();
    let mut train = order[k..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_each_epoch_once() {
        let pool: Vec<usize> = (0..10).collect();
        let mut seen = [0; 10];
        for step in 0..3 {
            let (b, e) = batch_at(&pool, 3, 4, step);
            assert_eq!((b.len(), e), (3, 0));
            b.iter().for_each(|&i| seen[i] += 1);
        }
        assert_eq!(seen.iter().filter(|&&c| c == 1).count(), 9);
        assert_eq!(batch_at(&pool, 3, 4, 3).1, 1);
        assert_ne!(batch_at(&pool, 3, 4, 3).0, batch_at(&pool, 3, 4, 0).0);
        let (t, v) = split(10, 0.2, 1);
        assert_eq!((t.len(), v.len()), (8, 2));
        assert!(v.iter().all(|i| !t.contains(i)));
        assert_eq!(split(10, 0.0, 1).1.len(), 0);
    }
}
