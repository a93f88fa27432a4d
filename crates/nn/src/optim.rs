//! Fused in-place Adam / AdamW over candle `Var`s.
//!
//! Per applied step t (counted over applied steps only) and parameter p with gradient g:
//!
//! ```text
//! s   = min(1, max_norm/(‖g‖₂ + 1e-6))        global-norm clipping (optional), g ← s·g
//! Adam:  g ← g + wd·p                          (L2 penalty)
//! AdamW: p ← p·(1 − lr·wd)                     (decoupled weight decay)
//! m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²
//! p ← p − lr·(m/(1 − β₁ᵗ)) / (sqrt(v/(1 − β₂ᵗ)) + ε)
//! ```
//!
//! (PyTorch's semantics). One pass per parameter in Rust updates p, m and v together; on
//! the CPU the parameter's storage is updated in place through a candle `InplaceOp1`. The
//! global gradient norm is accumulated in f64; a step whose loss or gradient norm is
//! NaN/Inf (or above `skip_grad_norm_above`) is skipped entirely and counted.
//! Parameters without a gradient are left unchanged (their moments too).

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor, Var};

use crate::{NnError, Result};

/// A set of parameters sharing a learning rate and weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub name: String,
    pub params: Vec<(String, Var)>,
    pub lr: f64,
    pub weight_decay: f64,
}

/// The variables of a `VarMap` with their names, sorted by name (a deterministic order for
/// optimisers and checkpoints). A lock poisoned by a panic elsewhere still holds a valid map
/// (it is only read here), so its contents are used rather than panicking again.
pub fn sorted_vars(vm: &candle_nn::VarMap) -> Vec<(String, Var)> {
    let data = vm.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl ParamGroup {
    pub fn new(name: impl Into<String>, params: Vec<(String, Var)>, lr: f64) -> ParamGroup {
        ParamGroup { name: name.into(), params, lr, weight_decay: 0.0 }
    }

    /// All variables of a `VarMap`, sorted by name (a deterministic order).
    pub fn from_varmap(name: impl Into<String>, vm: &candle_nn::VarMap, lr: f64) -> ParamGroup {
        ParamGroup::new(name, sorted_vars(vm), lr)
    }

    pub fn with_weight_decay(mut self, wd: f64) -> ParamGroup {
        self.weight_decay = wd;
        self
    }
}

/// Hyper-parameters shared by all groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// AdamW (decoupled) when true, Adam with an L2 penalty when false.
    pub decoupled_weight_decay: bool,
    /// Clip the global gradient norm to this value.
    pub max_grad_norm: Option<f64>,
    /// Skip steps whose (unclipped) gradient norm is at least this (cryoPROS: 180).
    pub skip_grad_norm_above: Option<f64>,
}

impl AdamConfig {
    pub fn adam() -> AdamConfig {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decoupled_weight_decay: false,
            max_grad_norm: None,
            skip_grad_norm_above: None,
        }
    }

    pub fn adamw() -> AdamConfig {
        AdamConfig { decoupled_weight_decay: true, ..AdamConfig::adam() }
    }
}

/// What [`Adam::step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepOutcome {
    Applied { grad_norm: f64 },
    Skipped { loss: f64, grad_norm: f64 },
}

#[derive(Debug, Clone)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// Adam/AdamW with parameter groups; see the module docs.
pub struct Adam {
    groups: Vec<ParamGroup>,
    cfg: AdamConfig,
    state: Vec<Vec<Moments>>,
    step: u64,
    skipped: u64,
}

struct Update<'a> {
    g: &'a [f32],
    mom: RefCell<&'a mut Moments>,
    k: Coeffs,
}

#[derive(Clone, Copy)]
struct Coeffs {
    lr: f32,
    wd: f32,
    decoupled: bool,
    scale: f32,
    b1: f32,
    b2: f32,
    bc1: f32,
    bc2: f32,
    eps: f32,
}

fn adam_kernel(p: &mut [f32], g: &[f32], mom: &mut Moments, k: Coeffs) {
    let Moments { m, v } = mom;
    for i in 0..p.len() {
        let mut gi = g[i] * k.scale;
        if k.decoupled {
            p[i] *= 1.0 - k.lr * k.wd;
        } else {
            gi += k.wd * p[i];
        }
        m[i] = k.b1 * m[i] + (1.0 - k.b1) * gi;
        v[i] = k.b2 * v[i] + (1.0 - k.b2) * gi * gi;
        let mh = m[i] / k.bc1;
        let vh = v[i] / k.bc2;
        p[i] -= k.lr * mh / (vh.sqrt() + k.eps);
    }
}

impl InplaceOp1 for Update<'_> {
    fn name(&self) -> &'static str {
        "cryoforge-adam"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let p = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("adam: f32 parameters expected"),
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("adam: contiguous parameter expected".into()))?;
        let mut mom = self.mom.borrow_mut();
        adam_kernel(&mut p[start..end], self.g, &mut mom, self.k);
        Ok(())
    }
}

fn to_host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

impl Adam {
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamConfig) -> Result<Adam> {
        let mut state = Vec::new();
        for g in &groups {
            let mut s = Vec::new();
            for (name, v) in &g.params {
                if v.dtype() != DType::F32 {
                    return Err(NnError::msg(format!("parameter {name}: only f32 parameters are supported")));
                }
                let n = v.elem_count();
                s.push(Moments { m: vec![0.0; n], v: vec![0.0; n] });
            }
            state.push(s);
        }
        Ok(Adam { groups, cfg, state, step: 0, skipped: 0 })
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    pub fn set_lr(&mut self, group: usize, lr: f64) {
        self.groups[group].lr = lr;
    }

    /// Number of applied steps.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Number of skipped (non-finite) steps.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Backpropagate `loss` (a scalar) and take a step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<StepOutcome> {
        let lv = loss.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if lv.len() != 1 {
            return Err(NnError::msg(format!("loss must be a scalar, got shape {:?}", loss.dims())));
        }
        if !lv[0].is_finite() {
            self.skipped += 1;
            return Ok(StepOutcome::Skipped { loss: lv[0], grad_norm: f64::NAN });
        }
        let grads = loss.backward()?;
        self.step(lv[0], &grads)
    }

    /// Take a step from gradients already computed for a loss of value `loss`.
    pub fn step(&mut self, loss: f64, grads: &GradStore) -> Result<StepOutcome> {
        let mut host: Vec<Vec<Option<Vec<f32>>>> = Vec::with_capacity(self.groups.len());
        let mut sq = 0f64;
        for g in &self.groups {
            let mut gh = Vec::with_capacity(g.params.len());
            for (_, v) in &g.params {
                match grads.get(v.as_tensor()) {
                    Some(t) => {
                        let h = to_host(t)?;
                        sq += h.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
                        gh.push(Some(h));
                    }
                    None => gh.push(None),
                }
            }
            host.push(gh);
        }
        let norm = sq.sqrt();
        let too_big = self.cfg.skip_grad_norm_above.is_some_and(|t| norm >= t);
        if !loss.is_finite() || !norm.is_finite() || too_big {
            self.skipped += 1;
            return Ok(StepOutcome::Skipped { loss, grad_norm: norm });
        }
        self.step += 1;
        let scale = match self.cfg.max_grad_norm {
            Some(mx) if norm > mx => mx / (norm + 1e-6),
            _ => 1.0,
        };
        let t = self.step as i32;
        for (gi, g) in self.groups.iter().enumerate() {
            let k = Coeffs {
                lr: g.lr as f32,
                wd: g.weight_decay as f32,
                decoupled: self.cfg.decoupled_weight_decay,
                scale: scale as f32,
                b1: self.cfg.beta1 as f32,
                b2: self.cfg.beta2 as f32,
                bc1: (1.0 - self.cfg.beta1.powi(t)) as f32,
                bc2: (1.0 - self.cfg.beta2.powi(t)) as f32,
                eps: self.cfg.eps as f32,
            };
            for (pi, (_, var)) in g.params.iter().enumerate() {
                let Some(gr) = &host[gi][pi] else { continue };
                let mom = &mut self.state[gi][pi];
                if var.device().is_cpu() && var.as_tensor().is_contiguous() {
                    let op = Update { g: gr, mom: RefCell::new(mom), k };
                    var.as_tensor().inplace_op1(&op)?;
                } else {
                    let mut p = to_host(var.as_tensor())?;
                    adam_kernel(&mut p, gr, mom, k);
                    let nt = Tensor::from_vec(p, var.shape(), var.device())?;
                    var.set(&nt)?;
                }
            }
        }
        Ok(StepOutcome::Applied { grad_norm: norm })
    }

    /// Optimiser moments as named tensors (`{group}/{param}/m`, `…/v`), for checkpoints.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (g, s) in self.groups.iter().zip(&self.state) {
            for ((name, var), mo) in g.params.iter().zip(s) {
                let dev = candle_core::Device::Cpu;
                out.insert(
                    format!("{}/{}/m", g.name, name),
                    Tensor::from_vec(mo.m.clone(), var.shape(), &dev)?,
                );
                out.insert(
                    format!("{}/{}/v", g.name, name),
                    Tensor::from_vec(mo.v.clone(), var.shape(), &dev)?,
                );
            }
        }
        Ok(out)
    }

    /// Restore moments saved by [`Self::state_tensors`] and the step counters.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64, skipped: u64) -> Result<()> {
        for (g, s) in self.groups.iter().zip(self.state.iter_mut()) {
            for ((name, var), mo) in g.params.iter().zip(s.iter_mut()) {
                for (suffix, dst) in [("m", &mut mo.m), ("v", &mut mo.v)] {
                    let key = format!("{}/{}/{}", g.name, name, suffix);
                    let t = tensors
                        .get(&key)
                        .ok_or_else(|| NnError::msg(format!("checkpoint lacks optimiser state {key}")))?;
                    let h = to_host(t)?;
                    if h.len() != var.elem_count() {
                        return Err(NnError::msg(format!(
                            "optimiser state {key} has {} values, expected {}",
                            h.len(),
                            var.elem_count()
                        )));
                    }
                    *dst = h;
                }
            }
        }
        self.step = step;
        self.skipped = skipped;
        Ok(())
    }
}
