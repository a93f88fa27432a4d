//! Checkpoints: a folder with `weights.safetensors` (named parameters),
//! `optimizer.safetensors` (Adam moments, see [`crate::optim::Adam::state_tensors`]) and
//! `state.json` (training step, optimiser step/skip counters, learning rates and the
//! exact ChaCha8 RNG state: seed, stream, word position). Everything is stored exactly
//! (f32 tensors, integers), so on the CPU training 2N steps equals N steps, save, load,
//! N steps bit for bit (`tests/checkpoint.rs`). `state.json` is written last, through
//! a temporary file and a rename: a folder without it is not a checkpoint.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::optim::Adam;
use crate::{NnError, Result};

/// The RNG every training loop of cryoforge uses (exactly restorable).
pub type TrainRng = ChaCha8Rng;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct RngState {
    seed_hex: String,
    stream: u64,
    word_pos: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct State {
    format: u32,
    step: u64,
    opt_steps: u64,
    opt_skipped: u64,
    lrs: Vec<f64>,
    rng: RngState,
}

fn rng_state(r: &ChaCha8Rng) -> RngState {
    RngState {
        seed_hex: r.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
        stream: r.get_stream(),
        word_pos: r.get_word_pos().to_string(),
    }
}

fn rng_restore(s: &RngState) -> Result<ChaCha8Rng> {
    use rand::SeedableRng;
    let bad = || NnError::msg(format!("checkpoint RNG seed {:?} is not 64 hex digits", s.seed_hex));
    if s.seed_hex.len() != 64 {
        return Err(bad());
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s.seed_hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    let mut r = ChaCha8Rng::from_seed(seed);
    r.set_stream(s.stream);
    let wp: u128 =
        s.word_pos.parse().map_err(|_| NnError::msg(format!("bad RNG word position {:?}", s.word_pos)))?;
    r.set_word_pos(wp);
    Ok(r)
}

/// What a checkpoint restores besides the parameters and optimiser moments.
#[derive(Debug, Clone)]
pub struct Resume {
    pub step: u64,
    pub rng: TrainRng,
}

/// Save parameters `vars`, the optimiser (if any), the step and the RNG into folder `dir`.
pub fn save(dir: &Path, vars: &[(String, Var)], opt: Option<&Adam>, step: u64, rng: &TrainRng) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| NnError::msg(format!("cannot create {}: {e}", dir.display())))?;
    let weights: HashMap<String, Tensor> =
        vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&weights, dir.join("weights.safetensors"))?;
    let (opt_steps, opt_skipped, lrs) = match opt {
        Some(o) => {
            candle_core::safetensors::save(&o.state_tensors()?, dir.join("optimizer.safetensors"))?;
            (o.steps(), o.skipped(), o.groups().iter().map(|g| g.lr).collect())
        }
        None => (0, 0, Vec::new()),
    };
    let st = State { format: 1, step, opt_steps, opt_skipped, lrs, rng: rng_state(rng) };
    let json = serde_json::to_string_pretty(&st).map_err(|e| NnError::msg(e.to_string()))?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, json).map_err(|e| NnError::msg(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join("state.json"))
        .map_err(|e| NnError::msg(format!("cannot finish checkpoint: {e}")))?;
    Ok(())
}

/// Load a checkpoint saved by [`save`] into `vars` (matched by name) and `opt`.
pub fn load(dir: &Path, vars: &[(String, Var)], opt: Option<&mut Adam>) -> Result<Resume> {
    let sp = dir.join("state.json");
    let s = std::fs::read_to_string(&sp)
        .map_err(|e| NnError::msg(format!("not a checkpoint: {}: {e}", sp.display())))?;
    let st: State = serde_json::from_str(&s).map_err(|e| NnError::msg(format!("{}: {e}", sp.display())))?;
    let w = candle_core::safetensors::load(dir.join("weights.safetensors"), &Device::Cpu)?;
    for (name, var) in vars {
        let t = w.get(name).ok_or_else(|| NnError::msg(format!("checkpoint lacks parameter {name}")))?;
        if t.dims() != var.dims() {
            return Err(NnError::msg(format!(
                "parameter {name}: checkpoint shape {:?}, model {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    if let Some(o) = opt {
        let os = candle_core::safetensors::load(dir.join("optimizer.safetensors"), &Device::Cpu)?;
        o.load_state(&os, st.opt_steps, st.opt_skipped)?;
        for (i, lr) in st.lrs.iter().enumerate().take(o.groups().len()) {
            o.set_lr(i, *lr);
        }
    }
    Ok(Resume { step: st.step, rng: rng_restore(&st.rng)? })
}

/// The newest complete checkpoint `RUN/checkpoints/step_*` of a training run (one with its
/// state.json written last), if any.
pub fn newest(run: &Path) -> Option<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state.json").is_file())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step_")))
        .collect();
    v.sort();
    v.pop()
}

/// [`save`] into `RUN/checkpoints/step_XXXXXXXX`, then remove all but the newest `keep`.
pub fn save_rotating(
    run: &Path,
    keep: usize,
    vars: &[(String, Var)],
    opt: Option<&Adam>,
    step: u64,
    rng: &TrainRng,
) -> Result<()> {
    let dir = run.join("checkpoints");
    save(&dir.join(format!("step_{step:08}")), vars, opt, step, rng)?;
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| NnError::msg(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step_")))
        .collect();
    v.sort();
    while v.len() > keep.max(1) {
        let _ = std::fs::remove_dir_all(v.remove(0));
    }
    Ok(())
}
