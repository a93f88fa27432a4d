//! Batches of particles from a [`ParticleStack`]: per epoch a seeded shuffle (ChaCha8,
//! seed = the loader's seed, stream = the epoch, so epoch e's order does not depend on
//! which epochs ran before), images read (memory-mapped, `read_image`) on a background
//! thread that keeps up to `prefetch` batches ready, or copied from an in-memory cache
//! when the whole stack fits under `cache_limit_bytes`.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use cryoforge_core::CtfParams;
use cryoforge_io::stack::{ParticleStack, Pose};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{NnError, Result};

/// Loader settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Drop a last incomplete batch.
    pub drop_last: bool,
    /// Batches prepared ahead by the background thread (≥ 1).
    pub prefetch: usize,
    /// Cache all images in memory when they take at most this many bytes.
    pub cache_limit_bytes: Option<usize>,
    /// `(rank, ranks)`: yield only this rank's contiguous block of every global batch (data
    /// parallel training, [`crate::parallel`]); `(0, 1)` yields whole batches.
    pub shard: (usize, usize),
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            seed: 0,
            shuffle: true,
            drop_last: false,
            prefetch: 2,
            cache_limit_bytes: None,
            shard: (0, 1),
        }
    }
}

/// One batch: particle indices (into the stack), images [B·D·D] row-major, and their
/// poses and CTFs when the stack has them.
#[derive(Debug, Clone)]
pub struct Batch {
    pub indices: Vec<usize>,
    pub d: usize,
    pub images: Vec<f32>,
    pub poses: Option<Vec<Pose>>,
    pub ctf: Option<Vec<CtfParams>>,
    /// Particles in the global batch this shard belongs to (= `len()` unsharded).
    pub global_len: usize,
    /// Offset of this shard in the global batch.
    pub shard_start: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// This shard's share of the global batch, `len / global_len` (1 unsharded): the factor
    /// that turns a mean over the shard into its part of the global batch mean.
    pub fn share(&self) -> f64 {
        self.len() as f64 / self.global_len.max(1) as f64
    }

    /// Images as a [B, D, D] f32 tensor.
    pub fn images_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.images, (self.len(), self.d, self.d), device)?)
    }

    /// Rotation matrices A [B, 3, 3] and shifts [B, 2] (px), if the stack has poses.
    pub fn pose_tensors(&self, device: &Device) -> Result<Option<(Tensor, Tensor)>> {
        let Some(p) = &self.poses else { return Ok(None) };
        let rots: Vec<f32> = p.iter().flat_map(|q| q.rot.to_f32()).collect();
        let sh: Vec<f32> = p.iter().flat_map(|q| [q.shift_px[0] as f32, q.shift_px[1] as f32]).collect();
        Ok(Some((
            Tensor::from_vec(rots, (p.len(), 3, 3), device)?,
            Tensor::from_vec(sh, (p.len(), 2), device)?,
        )))
    }
}

/// See the module docs.
pub struct DataLoader {
    stack: Arc<ParticleStack>,
    cfg: LoaderConfig,
    d: usize,
    cache: Option<Arc<Vec<f32>>>,
}

impl DataLoader {
    pub fn new(stack: Arc<ParticleStack>, cfg: LoaderConfig) -> Result<DataLoader> {
        if cfg.batch_size == 0 {
            return Err(NnError::msg("batch size must be positive"));
        }
        let (rank, ranks) = cfg.shard;
        if ranks == 0 || rank >= ranks {
            return Err(NnError::msg(format!("shard {rank} of {ranks} does not exist")));
        }
        if ranks > 1 && cfg.batch_size.min(stack.len()) < ranks {
            return Err(NnError::msg(format!(
                "batch of {} particles cannot be split over {ranks} ranks (each needs at least one)",
                cfg.batch_size.min(stack.len())
            )));
        }
        let d = stack.box_px()?;
        let bytes = stack.len() * d * d * 4;
        let cache = match cfg.cache_limit_bytes {
            Some(lim) if bytes <= lim => {
                let mut all = vec![0f32; stack.len() * d * d];
                for (i, chunk) in all.chunks_exact_mut(d * d).enumerate() {
                    stack.read_image(i, chunk)?;
                }
                Some(Arc::new(all))
            }
            _ => None,
        };
        Ok(DataLoader { stack, cfg, d, cache })
    }

    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    pub fn box_size(&self) -> usize {
        self.d
    }

    /// Number of batches per epoch.
    pub fn n_batches(&self) -> usize {
        let (n, b) = (self.stack.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The particle order of epoch `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.stack.len()).collect();
        if self.cfg.shuffle {
            let mut r = ChaCha8Rng::seed_from_u64(self.cfg.seed);
            r.set_stream(epoch);
            idx.shuffle(&mut r);
        }
        idx
    }

    /// Iterate over the batches of epoch `epoch`, prepared on a background thread.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        let order = self.epoch_order(epoch);
        let b = self.cfg.batch_size;
        let mut batches: Vec<Vec<usize>> = order.chunks(b).map(|c| c.to_vec()).collect();
        if self.cfg.drop_last && batches.last().is_some_and(|l| l.len() < b) {
            batches.pop();
        }
        let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
        let stack = self.stack.clone();
        let cache = self.cache.clone();
        let d = self.d;
        let (rank, ranks) = self.cfg.shard;
        let handle =
            std::thread::spawn(move || {
                for global in batches {
                    let part = cryoforge_core::dist::block(global.len(), rank, ranks);
                    let (global_len, shard_start) = (global.len(), part.start);
                    let idx = global[part].to_vec();
                    let r = make_batch(&stack, cache.as_deref().map(|v| v.as_slice()), d, idx)
                        .map(|b| Batch { global_len, shard_start, ..b });
                    let stop = r.is_err();
                    if tx.send(r).is_err() || stop {
                        return;
                    }
                }
            });
        EpochIter { rx: Some(rx), handle: Some(handle) }
    }
}

fn make_batch(stack: &ParticleStack, cache: Option<&[f32]>, d: usize, idx: Vec<usize>) -> Result<Batch> {
    let n = d * d;
    let mut images = vec![0f32; idx.len() * n];
    for (k, &i) in idx.iter().enumerate() {
        let dst = &mut images[k * n..(k + 1) * n];
        match cache {
            Some(c) => dst.copy_from_slice(&c[i * n..(i + 1) * n]),
            None => stack.read_image(i, dst)?,
        }
    }
    let poses = stack.poses.as_ref().map(|p| idx.iter().map(|&i| p[i]).collect());
    let ctf = stack.ctf.as_ref().map(|c| idx.iter().map(|&i| c[i]).collect());
    let len = idx.len();
    Ok(Batch { indices: idx, d, images, poses, ctf, global_len: len, shard_start: 0 })
}

/// Batches of one epoch; dropping it stops the background thread.
pub struct EpochIter {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next `send` fail, so it returns.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
