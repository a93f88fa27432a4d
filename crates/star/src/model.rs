//! The cryoSTAR VAE: MLP encoder (D² → hidden → μ, log σ²) and MLP decoder (z → hidden →
//! 3R displacements in Å), ReLU activations, candle `Linear` layers in one `VarMap`.

use crate::config::StarConfig;
use crate::Result;
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{linear, Linear, VarBuilder, VarMap};

pub struct StarModel {
    pub vm: VarMap,
    enc: Vec<Linear>,
    mu: Linear,
    logvar: Linear,
    dec: Vec<Linear>,
    out: Linear,
    pub zdim: usize,
    pub n_res: usize,
    pub d: usize,
    /// Reference coordinates [1, R, 3].
    reference: Tensor,
}

impl StarModel {
    /// A freshly initialised model for D×D images and R residues; parameters are drawn
    /// from candle's default initialisers with a seeded generator state.
    pub fn new(cfg: &StarConfig, d: usize, reference_flat: &[f32], device: &Device) -> Result<StarModel> {
        let n_res = reference_flat.len() / 3;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
        let mut enc = Vec::new();
        let mut w = d * d;
        for (i, &h) in cfg.enc_hidden.iter().enumerate() {
            enc.push(linear(w, h, vb.pp(format!("enc{i}")))?);
            w = h;
        }
        let mu = linear(w, cfg.zdim, vb.pp("enc_mu"))?;
        let logvar = linear(w, cfg.zdim, vb.pp("enc_logvar"))?;
        let mut dec = Vec::new();
        let mut w = cfg.zdim;
        for (i, &h) in cfg.dec_hidden.iter().enumerate() {
            dec.push(linear(w, h, vb.pp(format!("dec{i}")))?);
            w = h;
        }
        let out = linear(w, 3 * n_res, vb.pp("dec_out"))?;
        let reference = Tensor::from_slice(reference_flat, (1, n_res, 3), device)?;
        Ok(StarModel { vm, enc, mu, logvar, dec, out, zdim: cfg.zdim, n_res, d, reference })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        self.reference.device()
    }

    /// Re-draws every parameter deterministically from `seed` (candle's own initialisers
    /// use a global RNG): uniform ±1/√fan_in for weights and biases (PyTorch's Linear).
    pub fn reseed(&self, seed: u64) -> Result<()> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for (name, v) in self.vars() {
            let dims = v.dims().to_vec();
            let fan_in = if name.ends_with("weight") { dims[1] } else { self.fan_in_of_bias(&name, &dims) };
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            let n: usize = dims.iter().product();
            let vals: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
            v.set(&Tensor::from_vec(vals, dims, v.device())?)?;
        }
        Ok(())
    }

    fn fan_in_of_bias(&self, name: &str, _dims: &[usize]) -> usize {
        let wname = name.trim_end_matches("bias").to_string() + "weight";
        self.vars().iter().find(|(n, _)| *n == wname).map_or(1, |(_, v)| v.dims()[1])
    }

    /// All parameters, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        cryoforge_nn::optim::sorted_vars(&self.vm)
    }

    /// Decoder parameters only (for the reference-init warm-up).
    pub fn decoder_vars(&self) -> Vec<(String, Var)> {
        self.vars().into_iter().filter(|(n, _)| n.starts_with("dec")).collect()
    }

    /// Encoder: images [B, D²] (low-passed, masked, scaled) → (μ, log σ²), each [B, zdim].
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = x.clone();
        for l in &self.enc {
            h = l.forward(&h)?.relu()?;
        }
        Ok((self.mu.forward(&h)?, self.logvar.forward(&h)?))
    }

    /// Decoder: z [B, zdim] → displacements [B, R, 3] (Å).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = z.clone();
        for l in &self.dec {
            h = l.forward(&h)?.relu()?;
        }
        let b = z.dims()[0];
        Ok(self.out.forward(&h)?.reshape((b, self.n_res, 3))?)
    }

    /// Deformed structures: reference + decode(z), [B, R, 3].
    pub fn structures(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.decode(z)?.broadcast_add(&self.reference)?)
    }

    /// The unmoved reference for a batch of `b`, [B, R, 3].
    pub fn reference_batch(&self, b: usize) -> Result<Tensor> {
        Ok(self.reference.broadcast_as((b, self.n_res, 3))?.contiguous()?)
    }

    /// Host version of [`Self::structures`]: flat latents (n·zdim) → n·R positions.
    pub fn decode_coords(&self, z: &[f32]) -> Result<Vec<[f32; 3]>> {
        let n = z.len() / self.zdim;
        let zt = Tensor::from_slice(z, (n, self.zdim), self.reference.device())?;
        let s: Vec<f32> = self.structures(&zt)?.flatten_all()?.to_vec1()?;
        Ok(s.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect())
    }
}
