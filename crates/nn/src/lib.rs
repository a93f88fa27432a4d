//! cryoforge-nn: the differentiable structure-to-image renderer and the training
//! foundation of cryoforge's deep-learning methods (cryoSTAR, cryoSPHERE), on candle
//! (CPU; `--features cuda` forwards to candle's CUDA backend, where the renderer and the
//! losses fall back to composed candle ops).
//!
//! - [`render`]: band-limited Fourier-space Cα Gaussian renderer reproducing
//!   `cryoforge_sim::gaussian_image::GaussianImager` (fused CPU custom ops, matmul DFTs,
//!   no FFT in the autodiff graph), a real-space validation path, data low-pass and
//!   band spectra.
//! - [`loss`]: masked correlation (METHODS.md §0), its unmasked Fourier-space (Parseval)
//!   form, MSE, Gaussian KL (log-variance and std forms) with free bits, β schedules, pair-list structural losses
//!   (continuity, clash, elastic network with adaptive relaxation).
//! - [`structure`]: pair lists from a reference structure by cell lists (never R×R).
//! - [`ops`]: differentiable LayerNorm, softmax and log-softmax.
//! - [`norm`]: fused differentiable LayerNorm and BatchNorm (CPU kernels with explicit backward).
//! - [`conv`]: 2-D convolution with a fused CPU forward and backward (im2col + gemm).
//! - [`optim`]: fused in-place Adam/AdamW with parameter groups, clipping, NaN skipping.
//! - [`checkpoint`]: safetensors weights + optimiser state + step + RNG state.
//! - [`data`]: shuffled, prefetched (optionally cached) batches over a `ParticleStack`.
//!
//! One training step of a cryoSTAR-style model, in outline:
//!
//! ```no_run
//! use candle_core::{Device, Tensor, Var};
//! use cryoforge_nn::loss::CorrelationLoss;
//! use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup};
//! use cryoforge_nn::{Band, Renderer};
//! # fn main() -> cryoforge_nn::Result<()> {
//! let dev = Device::Cpu;
//! let (b, r, d) = (4, 214, 128);
//! let ren = Renderer::new(d, 1.0, Band::Resolution { resolution_a: 10.0 }, &dev)?;
//! let loss_fn = CorrelationLoss::cryostar(d, &dev)?;
//! let coords = Var::zeros((b, r, 3), candle_core::DType::F32, &dev)?; // e.g. reference + decoder output
//! let amps = Tensor::ones(r, candle_core::DType::F32, &dev)?;
//! let sigma = Tensor::new(&[2f32], &dev)?;
//! let rots = Tensor::eye(3, candle_core::DType::F32, &dev)?.unsqueeze(0)?.repeat((b, 1, 1))?;
//! let shifts = Tensor::zeros((b, 2), candle_core::DType::F32, &dev)?;
//! let ctfs = vec![cryoforge_core::CtfParams::default(); b];
//! let raw = vec![0f32; b * d * d]; // a data batch (see data::DataLoader)
//! let data = Tensor::from_vec(ren.lowpass_images(&raw)?, (b, d, d), &dev)?;
//! let pred = ren.render(coords.as_tensor(), &amps, &sigma, &rots, &shifts, &ren.ctf_transfer(&ctfs)?)?;
//! let loss = loss_fn.loss(&pred, &data)?;
//! let mut opt = Adam::new(vec![ParamGroup::new("model", vec![("coords".into(), coords.clone())], 1e-4)], AdamConfig::adamw())?;
//! opt.backward_step(&loss)?;
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
pub mod conv;
pub mod data;
pub mod loss;
pub mod norm;
pub mod ops;
pub mod optim;
pub mod parallel;
pub mod render;
pub mod structure;

pub use render::{Band, BandData, Renderer};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] cryoforge_io::IoError),
    #[error("{0}")]
    Msg(String),
}

impl NnError {
    pub fn msg(m: impl Into<String>) -> NnError {
        NnError::Msg(m.into())
    }
}

pub type Result<T> = std::result::Result<T, NnError>;

/// The compute device named by a `--device` option: `cpu`, `cuda` (GPU 0) or `cuda:N`.
/// CUDA needs a build with the `cuda` cargo feature (`cargo build --release --features
/// cuda`, nvcc at build time); without it the error says so.
pub fn parse_device(spec: &str) -> Result<candle_core::Device> {
    let s = spec.trim().to_ascii_lowercase();
    let ordinal = match s.as_str() {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" | "gpu" => 0,
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(NnError::msg(format!("--device {spec:?}: expected cpu, cuda or cuda:N"))),
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(NnError::msg(format!(
            "--device {spec}: this cryoforge was built without CUDA; rebuild with `cargo build --release --features cuda` (needs nvcc)"
        )));
    }
    candle_core::Device::new_cuda(ordinal).map_err(|e| {
        // The driver's message, without the backtrace candle attaches to it.
        let e = match e {
            candle_core::Error::WithBacktrace { inner, .. } => *inner,
            e => e,
        };
        NnError::msg(format!("--device {spec}: cannot open CUDA device {ordinal}: {e}"))
    })
}
