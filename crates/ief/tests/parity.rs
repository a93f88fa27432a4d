//! Parity with the PyTorch ViT of bench/ief_torch.py: a tiny model with the published tensor
//! names (committed fixture: weights, raw images, their preprocessing and PyTorch's outputs),
//! and ViT-B/14 with both heads when CRYOFORGE_PEER_TESTS=1 (the script is run in a venv).

use candle_core::{Device, Tensor};
use cryoforge_ief::preprocess::{Preprocess, Resample};
use cryoforge_ief::vit::{l2_normalize, Mode};
use cryoforge_ief::weights::{expected_tensors, load_model};
use cryoforge_ief::RankerHeadKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_vit")
}

fn io(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap()
}

fn v(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check_model(dir: &Path, heads: Option<usize>, tol: f32) {
    let io = io(dir);
    let m = load_model(&dir.join("weights.safetensors"), heads, &Device::Cpu).unwrap();
    assert_eq!(m.head.as_ref().unwrap().kind, RankerHeadKind::V15);
    assert!(m.unused.is_empty(), "{:?}", m.unused);
    let x = &io["x"];
    let cls = m.vit.forward_cls(x, Mode::Eval).unwrap();
    let d = max_diff(&v(&cls), &v(&io["cls"]));
    assert!(d < tol, "CLS differs from PyTorch by {d}");
    let f = l2_normalize(&cls).unwrap();
    let d = max_diff(&v(&f), &v(&io["features"]));
    assert!(d < 1e-4, "features differ by {d}");
    let s = m.head.as_ref().unwrap().score(&cls).unwrap();
    let d = max_diff(&v(&s), &v(&io["score_v15"]));
    assert!(d < 1e-4, "v1.5 scores differ by {d}");
    // The same backbone under base_encoder. with a v1 head and a momentum-encoder tensor.
    let m1 = load_model(&dir.join("weights_v1.safetensors"), heads, &Device::Cpu).unwrap();
    assert_eq!(m1.prefix, "base_encoder.");
    assert_eq!(m1.head.as_ref().unwrap().kind, RankerHeadKind::V1);
    assert_eq!(m1.unused, vec!["momentum_encoder.cls_token".to_string()]);
    let cls1 = m1.vit.forward_cls(x, Mode::Eval).unwrap();
    let s1 = m1.head.as_ref().unwrap().score(&cls1).unwrap();
    let d = max_diff(&v(&s1), &v(&io["score_v1"]));
    assert!(d < 1e-4, "v1 scores differ by {d}");
}

fn check_preprocess(dir: &Path, size: usize) {
    let io = io(dir);
    for (raw, pre) in [("raw_up", "pre_up"), ("raw_down", "pre_down")] {
        let r = &io[raw];
        let (n, d, _) = r.dims3().unwrap();
        let rv = v(r);
        let want = v(&io[pre]);
        let mut p = Preprocess::new(d, size, Resample::Spline);
        let mut out = vec![0f32; size * size];
        // One 8-bit level is 1/255/0.118 ≈ 0.033 after normalisation: allow the floor to
        // land on the other side of a level for a few pixels of f32 vs f64 resampling.
        let level = (1.0 / 255.0 / cryoforge_ief::preprocess::STD) as f32;
        for i in 0..n {
            p.apply(&rv[i * d * d..(i + 1) * d * d], &mut out).unwrap();
            let w = &want[i * size * size..(i + 1) * size * size];
            let off: Vec<f32> = out.iter().zip(w).map(|(a, b)| (a - b).abs()).filter(|&e| e > 1e-4).collect();
            assert!(off.iter().all(|&e| e < level * 1.01), "{raw} image {i}: differs by more than one level");
            assert!(
                off.len() * 100 <= size * size,
                "{raw} image {i}: {} of {} pixels off by a level",
                off.len(),
                size * size
            );
        }
    }
}

#[test]
fn tiny_vit_matches_pytorch() {
    // 4 heads: the number of heads is not in the shapes.
    check_model(&fixture(), Some(4), 1e-4);
}

#[test]
fn preprocessing_matches_numpy_and_scipy() {
    check_preprocess(&fixture(), 28);
}

#[test]
fn tensor_list_of_vit_b_has_the_published_count() {
    // 188 tensors in CryoRanker v1.5: the backbone (with num_batches_tracked, 12 per... see
    // METHODS.md §4) + 4 head tensors; our list omits the 12 num_batches_tracked.
    let n = expected_tensors(&cryoforge_ief::VitConfig::base()).len();
    assert_eq!(n + 12 + 4, 188);
    // Parameter count of ViT-B/14 (1-channel input, no final norm): 85.5 M + cls.
    let p = cryoforge_ief::VitConfig::base().n_params();
    assert_eq!(
        p,
        768 + (768 * 196 + 768)
            + 12 * (4 * 768
                + 3 * 768 * 768
                + 3 * 768
                + 768 * 768
                + 768
                + 768 * 3072
                + 3072
                + 3072 * 768
                + 768)
    );
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = candle_core::safetensors::load(fixture().join("weights.safetensors"), &Device::Cpu).unwrap();
    t.remove("blocks.1.attn.proj.bias");
    let p = dir.path().join("w.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    let e = load_model(&p, None, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("w.safetensors") && e.contains("blocks.1.attn.proj.bias") && e.contains("missing"),
        "{e}"
    );
    let mut t = candle_core::safetensors::load(fixture().join("weights.safetensors"), &Device::Cpu).unwrap();
    t.insert(
        "blocks.0.mlp.fc2.weight".into(),
        Tensor::zeros((32, 60), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &p).unwrap();
    let e = load_model(&p, None, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("blocks.0.mlp.fc2.weight") && e.contains("shape"), "{e}");
    let mut t = HashMap::new();
    t.insert("weight".to_string(), Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&t, &p).unwrap();
    let e = load_model(&p, None, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("pos_embed") && e.contains("not a ViT"), "{e}");
    std::fs::write(&p, b"not safetensors").unwrap();
    let e = load_model(&p, None, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("cannot read safetensors"), "{e}");
}

/// ViT-B/14 at 224 px against PyTorch (CRYOFORGE_PEER_TESTS=1; needs python3 with torch,
/// safetensors and scipy, or CRYOFORGE_TORCH_PYTHON pointing at one).
#[test]
fn vit_b_matches_pytorch_peer() {
    if std::env::var("CRYOFORGE_PEER_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set CRYOFORGE_PEER_TESTS=1 to compare ViT-B/14 with PyTorch");
        return;
    }
    let py = std::env::var("CRYOFORGE_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/ief_torch.py");
    let st = std::process::Command::new(py).arg(&script).arg("base").arg(dir.path()).status().unwrap();
    assert!(st.success(), "bench/ief_torch.py base failed");
    check_model(dir.path(), None, 1e-3);
    check_preprocess(dir.path(), 224);
}
