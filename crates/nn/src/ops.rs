//! Differentiable normalisation ops built from elementary candle ops (candle_nn's fused
//! `LayerNorm`/`softmax_last_dim` kernels pass no gradient).
//!
//! ```text
//! layer_norm(x) = (x − μ)/sqrt(σ² + ε)·γ + β,  μ, σ² over the last dimension (population)
//! softmax(x)_i  = exp(x_i − m)/Σ_j exp(x_j − m),  m = max_j x_j (detached: the result
//!                 does not depend on m)
//! log_softmax(x)_i = x_i − m − log Σ_j exp(x_j − m)
//! ```

use candle_core::{Tensor, D};

use crate::Result;

/// LayerNorm over the last dimension with optional affine parameters γ, β (\[C\]).
pub fn layer_norm(x: &Tensor, gamma: Option<&Tensor>, beta: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let mut y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    if let Some(g) = gamma {
        y = y.broadcast_mul(g)?;
    }
    if let Some(b) = beta {
        y = y.broadcast_add(b)?;
    }
    Ok(y)
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let xs = x.broadcast_sub(&m)?;
    let lse = xs.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(xs.broadcast_sub(&lse)?)
}

/// A LayerNorm module with learnable γ (init 1) and β (init 0), differentiable.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// γ, β from a `VarBuilder` under the names `weight` and `bias` (PyTorch's names).
    pub fn new(size: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<LayerNorm> {
        let gamma = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        let beta = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?;
        Ok(LayerNorm { gamma, beta, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, Some(&self.gamma), Some(&self.beta), self.eps)
    }
}
