//! Data-parallel training over MPI ranks ([`cryoforge_core::dist`]).
//!
//! Every rank holds the same model and optimiser state. A global batch (the same particles
//! as one process would take: the loaders share the shuffle seed) is split into contiguous
//! shards ([`crate::data::LoaderConfig::shard`]); each rank computes its shard's loss,
//! written as the global batch mean restricted to its shard (each per-sample mean scaled by
//! `n_rank / n_global`), backpropagates, and [`DataParallel::all_reduce_grads`] sums the
//! gradients over ranks. The sum is the gradient of the global batch, so every rank takes
//! the same optimiser step and the parameters stay identical. Batch-coupled statistics
//! (free-bits KL per latent dimension, the elastic network's per-edge variance) are
//! all-reduced before they are used ([`DataParallel::all_reduce_f64`]).
//!
//! With one rank every call returns at once and nothing is scaled.

use crate::optim::{Adam, StepOutcome};
use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use cryoforge_core::dist::{self, Comm};

/// The communicator of a training run.
#[derive(Clone, Copy)]
pub struct DataParallel {
    comm: &'static dyn Comm,
}

impl Default for DataParallel {
    fn default() -> Self {
        DataParallel::world()
    }
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataParallel(rank {} of {})", self.comm.rank(), self.comm.size())
    }
}

impl DataParallel {
    /// Over the process's communicator ([`dist::world`]).
    pub fn world() -> DataParallel {
        DataParallel { comm: dist::world() }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }

    pub fn is_distributed(&self) -> bool {
        self.comm.is_distributed()
    }

    /// Rank 0 writes checkpoints, metrics and weights.
    pub fn is_root(&self) -> bool {
        self.comm.is_root()
    }

    /// Sum `buf` over ranks, in place.
    pub fn all_reduce_f64(&self, buf: &mut [f64]) {
        self.comm.all_reduce_sum_f64(buf);
    }

    /// Sum the gradients of `vars` over ranks, in place in `grads` (each rank's loss must
    /// already be its share of the global batch mean). A parameter without a gradient on
    /// every rank stays without one.
    pub fn all_reduce_grads(&self, grads: &mut GradStore, vars: &[(String, Var)]) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        let mut present = vec![0f64; vars.len()];
        let mut flat: Vec<f32> = Vec::new();
        for (k, (_, v)) in vars.iter().enumerate() {
            match grads.get(v.as_tensor()) {
                Some(g) => {
                    present[k] = 1.0;
                    flat.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
                }
                None => flat.extend(std::iter::repeat_n(0f32, v.elem_count())),
            }
        }
        self.comm.all_reduce_sum_f64(&mut present);
        dist::all_reduce_sum_f32_chunked(self.comm, &mut flat);
        let mut off = 0;
        for (k, (_, v)) in vars.iter().enumerate() {
            let n = v.elem_count();
            if present[k] > 0.0 {
                let t =
                    Tensor::from_slice(&flat[off..off + n], v.shape(), v.device())?.to_dtype(v.dtype())?;
                grads.insert(v.as_tensor(), t);
            }
            off += n;
        }
        Ok(())
    }
}

impl DataParallel {
    /// Backpropagate this rank's contribution `loss` to the global batch loss, sum the
    /// gradients of `vars` over ranks and take the optimiser step every rank takes. Returns
    /// the global loss with the outcome. One rank: [`Adam::backward_step`].
    pub fn backward_step(
        &self,
        opt: &mut Adam,
        loss: &Tensor,
        vars: &[(String, Var)],
    ) -> Result<(f64, StepOutcome)> {
        let mut v = [loss
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?
            .first()
            .copied()
            .unwrap_or(f64::NAN)];
        if !self.is_distributed() {
            return Ok((v[0], opt.backward_step(loss)?));
        }
        self.all_reduce_f64(&mut v);
        // Every rank backpropagates and joins the reduction, whatever its loss, so that the
        // collectives stay matched; a non-finite global loss then skips the step everywhere.
        let mut grads = loss.backward()?;
        self.all_reduce_grads(&mut grads, vars)?;
        Ok((v[0], opt.step(v[0], &grads)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_rank_leaves_gradients_alone() {
        let v = Var::from_slice(&[1f32, 2.0, 3.0], 3, &Device::Cpu).unwrap();
        let loss = v.as_tensor().sqr().unwrap().sum_all().unwrap();
        let mut g = loss.backward().unwrap();
        let dp = DataParallel::world();
        assert!(!dp.is_distributed());
        dp.all_reduce_grads(&mut g, &[("v".into(), v.clone())]).unwrap();
        let gv: Vec<f32> = g.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(gv, [2.0, 4.0, 6.0]);
    }
}
