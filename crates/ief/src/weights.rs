//! Importing Cryo-IEF / CryoRanker safetensors by the published tensor names.
//!
//! The backbone's names are timm's (see [`crate::vit`]); the pre-trained Cryo-IEF files
//! prefix them with `base_encoder.` (MoCo's momentum encoder and predictor are ignored), a
//! DataParallel `module.` prefix is dropped too. The architecture is read from the shapes:
//! width and tokens from `pos_embed`, patch size from `patch_embed.proj.weight`, depth from
//! the number of blocks, MLP width from `fc1`, the MoCo BatchNorm from `norm2.running_mean`;
//! only the number of heads is not in the shapes (12 for widths 768 and 384 as ViT-B and
//! MoCo's ViT-S, width/64 otherwise, or given). Every expected tensor is checked by name and
//! shape before anything is built, and errors name the file and the tensor.

use crate::head::RankerHead;
use crate::vit::{Vit, VitConfig};
use crate::{IefError, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;

/// An encoder (and a ranker head when the file has one) loaded from safetensors.
#[derive(Debug)]
pub struct LoadedModel {
    pub vit: Vit,
    pub head: Option<RankerHead>,
    /// The prefix stripped from the backbone's names ("" when none).
    pub prefix: String,
    /// Tensors in the file that the model does not use (e.g. MoCo's projector).
    pub unused: Vec<String>,
}

/// The backbone tensors a configuration needs, with their shapes, in the published order.
pub fn expected_tensors(cfg: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let (c, p, m) = (cfg.embed_dim, cfg.patch, cfg.mlp_hidden);
    let mut v = vec![
        ("cls_token".to_string(), vec![1, 1, c]),
        ("pos_embed".to_string(), vec![1, cfg.tokens(), c]),
        ("patch_embed.proj.weight".to_string(), vec![c, 1, p, p]),
        ("patch_embed.proj.bias".to_string(), vec![c]),
    ];
    for i in 0..cfg.depth {
        let b = |s: &str| format!("blocks.{i}.{s}");
        v.push((b("norm1.weight"), vec![c]));
        v.push((b("norm1.bias"), vec![c]));
        v.push((b("attn.qkv.weight"), vec![3 * c, c]));
        if cfg.qkv_bias {
            v.push((b("attn.qkv.bias"), vec![3 * c]));
        }
        v.push((b("attn.proj.weight"), vec![c, c]));
        v.push((b("attn.proj.bias"), vec![c]));
        v.push((b("norm2.weight"), vec![c]));
        v.push((b("norm2.bias"), vec![c]));
        if cfg.bn_in_block {
            v.push((b("norm2.running_mean"), vec![c]));
            v.push((b("norm2.running_var"), vec![c]));
        }
        v.push((b("mlp.fc1.weight"), vec![m, c]));
        v.push((b("mlp.fc1.bias"), vec![m]));
        v.push((b("mlp.fc2.weight"), vec![c, m]));
        v.push((b("mlp.fc2.bias"), vec![c]));
    }
    if cfg.final_norm {
        v.push(("norm.weight".to_string(), vec![c]));
        v.push(("norm.bias".to_string(), vec![c]));
    }
    v
}

fn default_heads(c: usize) -> usize {
    match c {
        768 | 384 => 12,
        192 => 3,
        _ => (c / 64).max(1),
    }
}

/// Reads the architecture from the shapes of `t` (names without prefix).
pub fn infer_config(t: &HashMap<String, Tensor>, heads: Option<usize>, path: &Path) -> Result<VitConfig> {
    let f = |m: String| IefError::msg(format!("{}: {m}", path.display()));
    let get =
        |n: &str| t.get(n).ok_or_else(|| f(format!("tensor {n} missing: not a ViT of the Cryo-IEF family")));
    let pos = get("pos_embed")?.dims().to_vec();
    if pos.len() != 3 || pos[0] != 1 {
        return Err(f(format!("tensor pos_embed has shape {pos:?}, expected (1, tokens, width)")));
    }
    let (ntok, c) = (pos[1], pos[2]);
    let pw = get("patch_embed.proj.weight")?.dims().to_vec();
    if pw.len() != 4 || pw[0] != c || pw[2] != pw[3] {
        return Err(f(format!("tensor patch_embed.proj.weight has shape {pw:?}, expected ({c}, 1, P, P)")));
    }
    if pw[1] != 1 {
        return Err(f(format!(
            "tensor patch_embed.proj.weight takes {} input channels; particle images have 1",
            pw[1]
        )));
    }
    let p = pw[2];
    let g = ((ntok.saturating_sub(1)) as f64).sqrt().round() as usize;
    if g * g + 1 != ntok {
        return Err(f(format!("tensor pos_embed has {ntok} tokens, not 1 + a square number of patches")));
    }
    let mut depth = 0;
    while t.contains_key(&format!("blocks.{depth}.norm1.weight")) {
        depth += 1;
    }
    if depth == 0 {
        return Err(f("tensor blocks.0.norm1.weight missing: the file has no transformer blocks".into()));
    }
    let fc1 = get("blocks.0.mlp.fc1.weight")?.dims().to_vec();
    let heads = heads.unwrap_or_else(|| default_heads(c));
    Ok(VitConfig {
        img_size: g * p,
        patch: p,
        embed_dim: c,
        depth,
        heads,
        mlp_hidden: fc1[0],
        qkv_bias: t.contains_key("blocks.0.attn.qkv.bias"),
        ln_eps: 1e-6,
        bn_eps: 1e-5,
        bn_in_block: t.contains_key("blocks.0.norm2.running_mean"),
        final_norm: t.contains_key("norm.weight"),
    })
}

/// Strips `base_encoder.` / `module.` prefixes (a root-level `head.*` stays as it is);
/// returns (backbone tensors, prefix, tensors
/// of other modules).
fn strip(raw: HashMap<String, Tensor>) -> (HashMap<String, Tensor>, String, Vec<String>) {
    let mut prefix = String::new();
    for p in ["module.base_encoder.", "base_encoder.", "module.", "encoder."] {
        if raw.keys().any(|k| k.starts_with(p) && k.ends_with("pos_embed")) {
            prefix = p.to_string();
            break;
        }
    }
    let mut out = HashMap::new();
    let mut other = Vec::new();
    for (k, v) in raw {
        match k.strip_prefix(&prefix) {
            Some(s) => {
                out.insert(s.to_string(), v);
            }
            // A ranker head beside a prefixed backbone keeps its own name.
            None if k.starts_with("head.") && !out.contains_key(&k) => {
                out.insert(k, v);
            }
            None => other.push(k),
        }
    }
    (out, prefix, other)
}

/// The backbone tensors of a file (names without prefix), its architecture and the prefix
/// stripped: what training starts from.
pub fn read_backbone(
    path: &Path,
    heads: Option<usize>,
) -> Result<(HashMap<String, Tensor>, VitConfig, String)> {
    let raw = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| IefError::msg(format!("{}: cannot read safetensors: {e}", path.display())))?;
    let (t, prefix, _) = strip(raw);
    let cfg = infer_config(&t, heads, path)?;
    cfg.check().map_err(|e| IefError::msg(format!("{}: {e}", path.display())))?;
    for (name, shape) in expected_tensors(&cfg) {
        match t.get(&name) {
            None => {
                return Err(IefError::msg(format!(
                    "{}: tensor {prefix}{name} missing (expected shape {shape:?})",
                    path.display()
                )))
            }
            Some(x) if x.dims() != shape.as_slice() => {
                return Err(IefError::msg(format!(
                    "{}: tensor {prefix}{name} has shape {:?}, expected {shape:?}",
                    path.display(),
                    x.dims()
                )))
            }
            _ => {}
        }
    }
    Ok((t, cfg, prefix))
}

/// Loads `path` onto `dev`. `heads` overrides the number of attention heads (not stored
/// in the file).
pub fn load_model(path: &Path, heads: Option<usize>, dev: &Device) -> Result<LoadedModel> {
    let raw = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| IefError::msg(format!("{}: cannot read safetensors: {e}", path.display())))?;
    let (t, prefix, mut unused) = strip(raw);
    let cfg = infer_config(&t, heads, path)?;
    cfg.check().map_err(|e| IefError::msg(format!("{}: {e}", path.display())))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    // Each expected tensor by name and shape, onto the device as f32.
    let mut take = |name: &str, shape: &[usize]| -> Result<()> {
        let x = t.get(name).ok_or_else(|| {
            IefError::msg(format!(
                "{}: tensor {prefix}{name} missing (expected shape {shape:?})",
                path.display()
            ))
        })?;
        if x.dims() != shape {
            return Err(IefError::msg(format!(
                "{}: tensor {prefix}{name} has shape {:?}, expected {shape:?}",
                path.display(),
                x.dims()
            )));
        }
        map.insert(name.to_string(), x.to_dtype(DType::F32)?.to_device(dev)?);
        Ok(())
    };
    for (name, shape) in expected_tensors(&cfg) {
        take(&name, &shape)?;
    }
    // The head: v1.5 (LayerNorm + 1 output) or v1 (2 outputs).
    let c = cfg.embed_dim;
    let shape_of = |n: &str| t.get(n).map(|x| x.dims().to_vec());
    let mut head_names: Vec<(String, Vec<usize>)> = Vec::new();
    let kind = match (shape_of("head.mlp_classifier.0.weight"), shape_of("head.weight")) {
        (Some(w), _) if w == [1, c] => {
            head_names.push(("head.norm.weight".into(), vec![c]));
            head_names.push(("head.norm.bias".into(), vec![c]));
            head_names.push(("head.mlp_classifier.0.weight".into(), vec![1, c]));
            head_names.push(("head.mlp_classifier.0.bias".into(), vec![1]));
            Some(("head", crate::RankerHeadKind::V15))
        }
        (Some(w), _) if w == [2, c] => {
            head_names.push(("head.mlp_classifier.0.weight".into(), vec![2, c]));
            head_names.push(("head.mlp_classifier.0.bias".into(), vec![2]));
            Some(("head.mlp_classifier.0", crate::RankerHeadKind::V1))
        }
        (Some(w), _) => {
            return Err(IefError::msg(format!(
                "{}: tensor {prefix}head.mlp_classifier.0.weight has shape {w:?}, expected [1, {c}] (v1.5) or [2, {c}] (v1)",
                path.display()
            )))
        }
        (None, Some(w)) if w == [2, c] => {
            head_names.push(("head.weight".into(), vec![2, c]));
            head_names.push(("head.bias".into(), vec![2]));
            Some(("head", crate::RankerHeadKind::V1))
        }
        _ => None,
    };
    for (name, shape) in &head_names {
        take(name, shape)?;
    }
    for k in t.keys() {
        if !map.contains_key(k) && !k.ends_with("num_batches_tracked") {
            unused.push(format!("{prefix}{k}"));
        }
    }
    unused.sort();
    let vb = VarBuilder::from_tensors(map, DType::F32, dev);
    let vit = Vit::new(&cfg, vb.clone(), vb.clone())?;
    let head = match kind {
        Some((at, crate::RankerHeadKind::V15)) => Some(RankerHead::v15(c, vb.pp(at))?),
        Some((at, crate::RankerHeadKind::V1)) => Some(RankerHead::v1(c, vb.pp(at))?),
        None => None,
    };
    Ok(LoadedModel { vit, head, prefix, unused })
}
