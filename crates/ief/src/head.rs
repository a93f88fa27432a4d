//! CryoRanker heads on the encoder's CLS token (METHODS.md §4).
//!
//! ```text
//! v1.5:  score = sigmoid(Linear(C→1)(LayerNorm(C)(cls)))   head.norm.*, head.mlp_classifier.0.*
//! v1:    score = softmax(Linear(C→2)(cls))[1]                head.mlp_classifier.0.* (2 rows) or head.*
//! ```

use crate::Result;
use candle_core::{Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};

/// Which published head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RankerHeadKind {
    /// LayerNorm → Linear(C→1), sigmoid (CryoRanker v1.5).
    V15,
    /// Linear(C→2), softmax, p₁ (CryoRanker v1 and the paper's description).
    V1,
}

/// LayerNorm ε of the head (PyTorch's `nn.LayerNorm` default).
pub const HEAD_LN_EPS: f64 = 1e-5;

#[derive(Debug)]
pub struct RankerHead {
    pub kind: RankerHeadKind,
    norm: Option<(Tensor, Tensor)>,
    linear: Linear,
}

impl RankerHead {
    /// v1.5 under `vb` = `head`: `norm.{weight,bias}`, `mlp_classifier.0.{weight,bias}`.
    pub fn v15(c: usize, vb: VarBuilder) -> Result<RankerHead> {
        let n = vb.pp("norm");
        let norm = (
            n.get_with_hints(c, "weight", candle_nn::Init::Const(1.0))?,
            n.get_with_hints(c, "bias", candle_nn::Init::Const(0.0))?,
        );
        Ok(RankerHead {
            kind: RankerHeadKind::V15,
            norm: Some(norm),
            linear: candle_nn::linear(c, 1, vb.pp("mlp_classifier").pp("0"))?,
        })
    }

    /// v1: a 2-way linear layer at `vb` (its `weight` (2, C) and `bias`).
    pub fn v1(c: usize, vb: VarBuilder) -> Result<RankerHead> {
        Ok(RankerHead { kind: RankerHeadKind::V1, norm: None, linear: candle_nn::linear(c, 2, vb)? })
    }

    /// Logits before the last non-linearity: [B, 1] (v1.5) or [B, 2] (v1).
    pub fn logits(&self, cls: &Tensor, train: bool) -> Result<Tensor> {
        let h = match &self.norm {
            Some((w, b)) if train => cryoforge_nn::norm::layer_norm_train(cls, w, b, HEAD_LN_EPS)?,
            Some((w, b)) => candle_nn::ops::layer_norm(cls, w, b, HEAD_LN_EPS as f32)?,
            None => cls.clone(),
        };
        Ok(self.linear.forward(&h)?)
    }

    /// Quality scores in [0, 1], [B].
    pub fn score(&self, cls: &Tensor) -> Result<Tensor> {
        let l = self.logits(cls, false)?;
        Ok(match self.kind {
            RankerHeadKind::V15 => candle_nn::ops::sigmoid(&l.squeeze(D::Minus1)?)?,
            RankerHeadKind::V1 => candle_nn::ops::softmax_last_dim(&l)?.narrow(1, 1, 1)?.squeeze(1)?,
        })
    }
}
