//! Batched passes over a particle stack: preprocessing in parallel (rayon, one
//! [`Preprocess`] per thread), the encoder in evaluation mode, L2-normalised CLS features
//! and ranker scores handed to the caller batch by batch, so memory stays O(batch).

use crate::preprocess::{Preprocess, Resample};
use crate::vit::{l2_normalize, Mode};
use crate::weights::LoadedModel;
use crate::{IefError, Result};
use candle_core::Tensor;
use cryoforge_io::stack::ParticleStack;
use rayon::prelude::*;

/// Options of a pass.
#[derive(Debug, Clone)]
pub struct InferOptions {
    pub batch_size: usize,
    pub resample: Resample,
    /// Flip the sign of the images (protein-dark particles are the released models'
    /// convention, so this is off by default).
    pub invert: bool,
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions { batch_size: 32, resample: Resample::Spline, invert: false }
    }
}

/// One batch's results.
pub struct BatchOut<'a> {
    /// Index of the first particle of the batch.
    pub start: usize,
    pub len: usize,
    /// L2-normalised CLS features, row-major [len, C].
    pub features: &'a [f32],
    /// Scores in [0, 1] when the model has a head.
    pub scores: Option<&'a [f32]>,
}

/// Preprocessed model inputs of particles `idx` of `stack`, [len, S, S].
pub fn preprocess_batch(
    stack: &ParticleStack,
    idx: std::ops::Range<usize>,
    size: usize,
    opts: &InferOptions,
) -> Result<Vec<f32>> {
    let d = stack.box_px()?;
    let n = idx.len();
    let mut out = vec![0f32; n * size * size];
    out.par_chunks_mut(size * size).enumerate().try_for_each_init(
        || (Preprocess::new(d, size, opts.resample), vec![0f32; d * d]),
        |(pre, img), (j, o)| -> Result<()> {
            stack.read_image(idx.start + j, img)?;
            if opts.invert {
                img.iter_mut().for_each(|v| *v = -*v);
            }
            pre.apply(img, o)
        },
    )?;
    Ok(out)
}

/// Runs the model over every particle of `stack`, calling `each` per batch in order.
///
/// Collective across MPI ranks ([`cryoforge_core::dist::world`]): each round of
/// `batch_size × ranks` particles is split into contiguous blocks, one per rank, and the
/// blocks' features and scores are gathered on rank 0, which alone calls `each` (once per
/// round, in particle order).
pub fn run(
    model: &LoadedModel,
    stack: &ParticleStack,
    opts: &InferOptions,
    mut each: impl FnMut(&BatchOut) -> Result<()>,
) -> Result<()> {
    if opts.batch_size == 0 {
        return Err(IefError::msg("batch size must be ≥ 1"));
    }
    let comm = cryoforge_core::dist::world();
    let s = model.vit.cfg.img_size;
    let dev = model.vit.device().clone();
    let n = stack.len();
    let round = opts.batch_size * comm.size();
    let mut start = 0;
    while start < n {
        let end = (start + round).min(n);
        let mine = cryoforge_core::dist::block(end - start, comm.rank(), comm.size());
        let (lo, hi) = (start + mine.start, start + mine.end);
        let (mut feats, mut scores) = (Vec::new(), Vec::new());
        if hi > lo {
            let x = preprocess_batch(stack, lo..hi, s, opts)?;
            let x = Tensor::from_vec(x, (hi - lo, s, s), &dev)?;
            let cls = model.vit.forward_cls(&x, Mode::Eval)?;
            feats = l2_normalize(&cls)?.flatten_all()?.to_vec1()?;
            if let Some(h) = &model.head {
                scores = h.score(&cls)?.to_vec1()?;
            }
        }
        if comm.is_distributed() {
            let f = comm.gather_f32(&feats);
            let sc = comm.gather_f32(&scores);
            match (f, sc) {
                (Some(f), Some(sc)) => (feats, scores) = (f, sc),
                _ => {
                    start = end;
                    continue;
                }
            }
        }
        let scores = model.head.as_ref().map(|_| scores.as_slice());
        each(&BatchOut { start, len: end - start, features: &feats, scores })?;
        start = end;
    }
    Ok(())
}
