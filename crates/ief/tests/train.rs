//! Training: MoCo v3 pre-training and CryoRanker fine-tuning on tiny models and synthetic
//! particles — the pretext task is learnt, resuming is bit-identical, the saved files load
//! through the released-weights loader, and a ranker separates good from junk images.

use candle_core::{Device, Tensor};
use cryoforge_ief::augment::AugmentConfig;
use cryoforge_ief::moco::{pretrain, PretrainConfig};
use cryoforge_ief::rank::{train_ranker, RankerTrainConfig};
use cryoforge_ief::vit::{l2_normalize, Mode};
use cryoforge_ief::weights::{load_model, read_backbone};
use cryoforge_ief::{RankerHeadKind, VitConfig};
use cryoforge_io::stack::{LoadOptions, ParticleStack};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;

fn tiny_vit() -> VitConfig {
    VitConfig {
        img_size: 16,
        patch: 4,
        embed_dim: 32,
        depth: 2,
        heads: 2,
        mlp_hidden: 64,
        ..VitConfig::base()
    }
}

/// `n` 16-px images: even indices a bright off-centre blob (position and width vary) on
/// noise, odd indices noise only. Returns the stack and the labels (1 = blob).
fn stack(dir: &Path, n: usize, seed: u64) -> (Arc<ParticleStack>, Vec<f32>) {
    let d = 16;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut data = vec![0f32; n * d * d];
    let mut labels = Vec::new();
    for i in 0..n {
        let good = i % 2 == 0;
        labels.push(if good { 1.0 } else { 0.0 });
        let (cx, cy, s) = (r.gen_range(5.0..11.0), r.gen_range(5.0..11.0), r.gen_range(1.5..3.0));
        for y in 0..d {
            for x in 0..d {
                let n: f64 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut r);
                let blob = if good {
                    3.0 * (-((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)) / (2.0 * s * s)).exp()
                } else {
                    0.0
                };
                data[i * d * d + y * d + x] = (blob + 0.5 * n) as f32;
            }
        }
    }
    let p = dir.join("p.mrcs");
    cryoforge_io::mrc::write_stack(&p, &data, d, d, n, 1.0).unwrap();
    (Arc::new(ParticleStack::load(&p, &LoadOptions::default()).unwrap()), labels)
}

fn moco_cfg(steps: u64) -> PretrainConfig {
    PretrainConfig {
        vit: tiny_vit(),
        proj_hidden: 64,
        proj_out: 16,
        pred_hidden: 64,
        batch_size: 16,
        steps: Some(steps),
        lr: 1e-3,
        warmup_epochs: 0.0,
        log_every: 1,
        checkpoint_every: 3,
        seed: 3,
        ..PretrainConfig::cpu()
    }
}

#[test]
fn moco_learns_resumes_bit_identically_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _) = stack(dir.path(), 64, 1);
    let dev = Device::Cpu;
    // Without augmentation both views are the same image: the pretext task is learnable
    // to near-perfect top-1 quickly, and the loss must fall from chance.
    let mut cfg = moco_cfg(80);
    cfg.augment = AugmentConfig::none();
    let mut log = Vec::new();
    let out = pretrain(st.clone(), "p", &cfg, &dir.path().join("learn"), false, &dev, &mut |p| {
        log.push((p.loss, p.top1))
    })
    .unwrap();
    let chance = 2.0 * 2.0 * cfg.temperature * (16f64).ln();
    assert!((log[0].0 - chance).abs() < 0.3, "first loss {} vs chance {chance}", log[0].0);
    let late: f64 = log[70..].iter().map(|l| l.0).sum::<f64>() / 10.0;
    let acc: f64 = log[70..].iter().map(|l| l.1).sum::<f64>() / 10.0;
    assert!(late < 0.7 * chance && acc > 0.5, "loss {late} (chance {chance}), top-1 {acc}");
    assert_eq!(out.steps, 80);

    // Resume: a run of 6 steps (checkpoints at 3 and 6) interrupted after step 3 — its
    // copy without the step-6 checkpoint — resumed to 6 equals the uninterrupted run.
    let cfg = moco_cfg(6);
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    pretrain(st.clone(), "p", &cfg, &a, false, &dev, &mut |_| {}).unwrap();
    std::fs::create_dir_all(b.join("checkpoints")).unwrap();
    std::fs::copy(a.join("config.json"), b.join("config.json")).unwrap();
    let ck = a.join("checkpoints").join("step_00000003");
    let to = b.join("checkpoints").join("step_00000003");
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&ck).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    pretrain(st.clone(), "p", &cfg, &b, true, &dev, &mut |_| {}).unwrap();
    let wa = candle_core::safetensors::load(a.join("weights.safetensors"), &dev).unwrap();
    let wb = candle_core::safetensors::load(b.join("weights.safetensors"), &dev).unwrap();
    assert_eq!(wa.len(), wb.len());
    for (k, t) in &wa {
        let u: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = wb[k].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(u, v, "tensor {k} differs after resume");
    }
    // A changed setting is refused on resume.
    let mut other = cfg.clone();
    other.lr = 5e-3;
    assert!(pretrain(st.clone(), "p", &other, &b, true, &dev, &mut |_| {}).is_err());

    // The file loads as a Cryo-IEF encoder (prefix base_encoder., momentum encoder and
    // predictor unused) and gives the same CLS as the training model in evaluation mode.
    let m = load_model(&a.join("weights.safetensors"), Some(2), &dev).unwrap();
    assert_eq!(m.prefix, "base_encoder.");
    assert!(m.head.is_none());
    assert!(m.unused.iter().any(|u| u.starts_with("momentum_encoder.")));
    assert!(m.unused.iter().any(|u| u.starts_with("predictor.")));
    let x = Tensor::randn(0f32, 1.0, (3, 16, 16), &dev).unwrap();
    let f = l2_normalize(&m.vit.forward_cls(&x, Mode::Eval).unwrap()).unwrap();
    assert_eq!(f.dims(), &[3, 32]);
    let (_, vc, _) = read_backbone(&a.join("weights.safetensors"), Some(2)).unwrap();
    assert_eq!(vc, tiny_vit());
}

#[test]
fn ranker_separates_good_from_junk_and_scores_through_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let (st, labels) = stack(dir.path(), 160, 2);
    let dev = Device::Cpu;
    let mut cfg = RankerTrainConfig::new(tiny_vit(), false);
    cfg.batch_size = 16;
    cfg.epochs = 6.0;
    cfg.lr = 1e-3;
    cfg.val_fraction = 0.25;
    cfg.checkpoint_every = 1000;
    let run = dir.path().join("r");
    let out = train_ranker(st.clone(), "p", &labels, None, &cfg, &run, false, &dev, &mut |_| {}).unwrap();
    let auc = out.val_auc.last().unwrap().1;
    assert!(auc > 0.95, "validation AUC {auc}");
    assert_eq!(out.n_val, 40);
    // The saved ranker has the released v1.5 names.
    let m = load_model(&run.join("weights.safetensors"), Some(2), &dev).unwrap();
    assert_eq!(m.head.as_ref().unwrap().kind, RankerHeadKind::V15);
    assert!(m.unused.is_empty(), "{:?}", m.unused);
    // Wrong label counts and out-of-range labels are refused.
    assert!(train_ranker(st.clone(), "p", &labels[1..], None, &cfg, &run, false, &dev, &mut |_| {}).is_err());
    let mut bad = labels.clone();
    bad[3] = 1.5;
    let e = train_ranker(st.clone(), "p", &bad, None, &cfg, &run, false, &dev, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("particle 3"), "{e}");
    // v1 head too.
    cfg.head = RankerHeadKind::V1;
    cfg.epochs = 1.0;
    let run1 = dir.path().join("r1");
    train_ranker(st, "p", &labels, None, &cfg, &run1, false, &dev, &mut |_| {}).unwrap();
    let m1 = load_model(&run1.join("weights.safetensors"), Some(2), &dev).unwrap();
    assert_eq!(m1.head.as_ref().unwrap().kind, RankerHeadKind::V1);
}
