//! Model tests: segmentation memberships, the deformation (exactness and gradients), and
//! the structural losses on deformed structures.

use candle_core::{DType, Device, Tensor, Var};
use cryoforge_sphere::config::{RotationCentre, RotationParam, SphereConfig};
use cryoforge_sphere::model::{deform, motions_from_v, segment_centres, SegPrior, Segmentation};
use cryoforge_sphere::parts::Layout;

fn chain_layout(r: usize, k: usize) -> Layout {
    let chains = vec!["A".to_string(); r];
    Layout::per_chain(&chains, k).unwrap()
}

/// A helix-like chain of R residues (3.8 Å steps).
fn chain_coords(r: usize) -> Vec<[f64; 3]> {
    (0..r)
        .map(|i| {
            let t = i as f64 * 100f64.to_radians();
            [2.3 * t.cos(), 2.3 * t.sin(), 1.5 * i as f64 - 0.75 * r as f64]
        })
        .collect()
}

#[test]
fn membership_sums_to_one_and_hardens_with_temperature() {
    let (r, k) = (60, 4);
    let dev = Device::Cpu;
    let cfg = SphereConfig { n_segm: k, ..SphereConfig::default() };
    let mut hardness = Vec::new();
    for tau in [20.0, 1.0, 0.05, 0.005] {
        let layout = chain_layout(r, k);
        let prior = SegPrior::reference(&layout, &cfg);
        let seg = Segmentation::new(layout, prior, tau, &dev, DType::F64).unwrap();
        let w = seg.posterior_mean().unwrap();
        assert_eq!(w.dims(), [1, r, k]);
        let sums: Vec<f64> = w.sum(2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for (i, s) in sums.iter().enumerate() {
            assert!((s - 1.0).abs() < 1e-12, "τ={tau}: row {i} sums to {s}");
        }
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
        let ws = seg.sample(3, &mut rng).unwrap();
        let sums: Vec<f64> = ws.sum(2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-12));
        // Mean over residues of the largest membership.
        let mx: Vec<f64> = w.max(2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        hardness.push(mx.iter().sum::<f64>() / r as f64);
    }
    for p in hardness.windows(2) {
        assert!(p[1] > p[0], "memberships must harden as τ falls: {hardness:?}");
    }
    assert!(
        *hardness.last().unwrap() > 0.95,
        "τ=0.005 must be nearly hard (only residues tied between two means stay split): {hardness:?}"
    );
    assert!(hardness[0] < 0.6, "τ=20 must be soft: {hardness:?}");
}

#[test]
fn residues_outside_parts_do_not_move_and_parts_are_separate() {
    let chains = vec!["A".to_string(); 10];
    let seqs: Vec<i32> = (1..=10).collect();
    let specs =
        cryoforge_sphere::parts::parse_parts("A 1-4 2\nA 5-8 3\n", std::path::Path::new("p")).unwrap();
    let layout = Layout::from_specs(&chains, &seqs, &specs, 20).unwrap();
    let cfg = SphereConfig::default();
    let prior = SegPrior::reference(&layout, &cfg);
    let seg = Segmentation::new(layout, prior, 0.05, &Device::Cpu, DType::F64).unwrap();
    let w: Vec<Vec<f64>> = seg.posterior_mean().unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    for (i, row) in w.iter().enumerate() {
        let (a, b): (f64, f64) = (row[..2].iter().sum(), row[2..].iter().sum());
        match i {
            0..=3 => assert!((a - 1.0).abs() < 1e-9 && b < 1e-9, "{i}: {row:?}"),
            4..=7 => assert!((b - 1.0).abs() < 1e-9 && a < 1e-9, "{i}: {row:?}"),
            _ => assert!(a + b == 0.0, "{i}: {row:?}"),
        }
    }
}

fn rodrigues(p: [f64; 3], c: [f64; 3], a: [f64; 3], phi: f64) -> [f64; 3] {
    let x = [p[0] - c[0], p[1] - c[1], p[2] - c[2]];
    let (s, co) = phi.sin_cos();
    let cr = [a[1] * x[2] - a[2] * x[1], a[2] * x[0] - a[0] * x[2], a[0] * x[1] - a[1] * x[0]];
    let d = a[0] * x[0] + a[1] * x[1] + a[2] * x[2];
    std::array::from_fn(|i| c[i] + x[i] * co + cr[i] * s + a[i] * d * (1.0 - co))
}

/// Hard memberships: residues 0..split in segment 0, the rest in segment 1.
fn hard_w(r: usize, split: usize) -> Tensor {
    let mut w = vec![0f64; r * 2];
    for i in 0..r {
        w[i * 2 + usize::from(i >= split)] = 1.0;
    }
    Tensor::from_vec(w, (1, r, 2), &Device::Cpu).unwrap()
}

#[test]
fn pure_rotation_of_one_segment_is_reproduced_exactly() {
    let (r, split) = (40, 25);
    let dev = Device::Cpu;
    let x0v = chain_coords(r);
    let x0 = Tensor::from_vec(x0v.iter().flatten().copied().collect::<Vec<f64>>(), (r, 3), &dev).unwrap();
    let w = hard_w(r, split);
    let axis = {
        let a = [0.3f64, -0.5, 0.8];
        let n = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
        a.map(|v| v / n)
    };
    for (param, centre) in [
        (RotationParam::Quaternion, RotationCentre::Origin),
        (RotationParam::Quaternion, RotationCentre::Centroid),
        (RotationParam::AxisAngle, RotationCentre::Centroid),
    ] {
        let theta = 0.9f64;
        // v giving angle θ about `axis`: quaternion |v| = tan(θ/2), axis-angle |v| = θ.
        let len = match param {
            RotationParam::Quaternion => (theta / 2.0).tan(),
            RotationParam::AxisAngle => theta,
        };
        let v = Tensor::from_vec(
            vec![0.0, 0.0, 0.0, axis[0] * len, axis[1] * len, axis[2] * len],
            (1, 2, 3),
            &dev,
        )
        .unwrap();
        let t = Tensor::zeros((1, 2, 3), DType::F64, &dev).unwrap();
        let m = motions_from_v(&v, &t, param).unwrap();
        let c = segment_centres(&w, &x0, centre).unwrap();
        let out: Vec<Vec<f64>> =
            deform(&x0, &w, &m, c.as_ref()).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let centre_pt = match centre {
            RotationCentre::Origin => [0.0; 3],
            RotationCentre::Centroid => {
                let mv = &x0v[split..];
                std::array::from_fn(|i| mv.iter().map(|p| p[i]).sum::<f64>() / mv.len() as f64)
            }
        };
        for i in 0..r {
            let want = if i < split { x0v[i] } else { rodrigues(x0v[i], centre_pt, axis, theta) };
            for j in 0..3 {
                assert!(
                    (out[i][j] - want[j]).abs() < 1e-9,
                    "{param:?}/{centre:?} residue {i}: {:?} vs {want:?}",
                    out[i]
                );
            }
        }
        // The moving segment is rigid: all its internal distances are kept.
        let d = |a: &[f64], b: &[f64; 3]| {
            ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
        };
        let d0 = |a: &[f64; 3], b: &[f64; 3]| d(a, b);
        assert!(
            (d(&out[split], &[out[r - 1][0], out[r - 1][1], out[r - 1][2]]) - d0(&x0v[split], &x0v[r - 1]))
                .abs()
                < 1e-9
        );
    }
}

#[test]
fn translation_is_added_by_membership() {
    let r = 10;
    let dev = Device::Cpu;
    let x0v = chain_coords(r);
    let x0 = Tensor::from_vec(x0v.iter().flatten().copied().collect::<Vec<f64>>(), (r, 3), &dev).unwrap();
    let w = hard_w(r, 4);
    let v = Tensor::zeros((1, 2, 3), DType::F64, &dev).unwrap();
    let t = Tensor::from_vec(vec![1.0, 2.0, 3.0, -4.0, 0.5, 0.0], (1, 2, 3), &dev).unwrap();
    let m = motions_from_v(&v, &t, RotationParam::Quaternion).unwrap();
    let out: Vec<Vec<f64>> = deform(&x0, &w, &m, None).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    for i in 0..r {
        let tt = if i < 4 { [1.0, 2.0, 3.0] } else { [-4.0, 0.5, 0.0] };
        for j in 0..3 {
            assert!((out[i][j] - x0v[i][j] - tt[j]).abs() < 1e-9);
        }
    }
}

#[test]
fn clash_loss_is_finite_and_zero_without_clashes() {
    let r = 30;
    let dev = Device::Cpu;
    let x0v = chain_coords(r);
    let x0 = Tensor::from_vec(x0v.iter().flatten().map(|&v| v as f32).collect::<Vec<f32>>(), (r, 3), &dev)
        .unwrap();
    let chain = vec![0u32; r];
    let all: Vec<(u32, u32)> = (0..r as u32).flat_map(|i| (i + 2..r as u32).map(move |j| (i, j))).collect();
    let light = cryoforge_nn::structure::clash_pairs(&x0v, &chain, 4.0, 10.0);
    let x = x0.unsqueeze(0).unwrap().repeat((2, 1, 1)).unwrap();
    // Spread the chain out so that no non-consecutive pair is closer than 4 Å.
    let xs = (&x * 2.0).unwrap();
    for pairs in [all, light] {
        let pl = cryoforge_nn::loss::PairList::new(&pairs, &dev).unwrap();
        let v = cryoforge_nn::loss::clash_loss(&xs, &pl, 4.0).unwrap().to_scalar::<f32>().unwrap();
        assert!(v.is_finite() && v == 0.0, "clash {v}");
        // A gradient through a clash-free batch is finite (zero), not NaN.
        let var = Var::from_tensor(&xs).unwrap();
        let l = cryoforge_nn::loss::clash_loss(var.as_tensor(), &pl, 4.0).unwrap();
        let g = l.backward().unwrap();
        if let Some(gt) = g.get(var.as_tensor()) {
            let s: f32 = gt.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(s.is_finite());
        }
    }
}

/// Deformation as a function of (v, t, segmentation means) for finite differences.
fn deformed_sum(
    x0: &Tensor,
    seg: &Segmentation,
    v: &Tensor,
    t: &Tensor,
    proj: &Tensor,
    centre: RotationCentre,
) -> Tensor {
    let w = seg.posterior_mean().unwrap();
    let m = motions_from_v(v, t, RotationParam::Quaternion).unwrap();
    let c = segment_centres(&w, x0, centre).unwrap();
    let x = deform(x0, &w, &m, c.as_ref()).unwrap();
    (x * proj).unwrap().sum_all().unwrap()
}

#[test]
fn deformation_gradients_match_finite_differences() {
    let (r, k) = (24, 3);
    let dev = Device::Cpu;
    let x0v = chain_coords(r);
    let x0 = Tensor::from_vec(x0v.iter().flatten().copied().collect::<Vec<f64>>(), (r, 3), &dev).unwrap();
    let layout = chain_layout(r, k);
    let cfg = SphereConfig { n_segm: k, ..SphereConfig::default() };
    let prior = SegPrior::reference(&layout, &cfg);
    // A soft segmentation (τ = 0.5) so that the means carry gradient.
    let seg = Segmentation::new(layout, prior, 0.5, &dev, DType::F64).unwrap();
    let vv: Vec<f64> = (0..2 * k * 3).map(|i| 0.37 * ((i as f64) * 1.3).sin()).collect();
    let v = Var::from_vec(vv[..k * 3].to_vec(), (2 / 2, k, 3), &dev).unwrap();
    let t =
        Var::from_vec(vv[k * 3..].iter().map(|x| 3.0 * x).collect::<Vec<f64>>(), (1, k, 3), &dev).unwrap();
    let pv: Vec<f64> = (0..r * 3).map(|i| ((i as f64) * 0.71).cos()).collect();
    let proj = Tensor::from_vec(pv, (1, r, 3), &dev).unwrap();
    for centre in [RotationCentre::Origin, RotationCentre::Centroid] {
        let l = deformed_sum(&x0, &seg, v.as_tensor(), t.as_tensor(), &proj, centre);
        let g = l.backward().unwrap();
        let mean_var = seg.vars.mean_mu.clone();
        let width_var = seg.vars.std_mu.clone();
        let checks: Vec<(&str, &Var)> =
            vec![("v", &v), ("t", &t), ("mean", &mean_var), ("width", &width_var)];
        for (name, var) in checks {
            let an: Vec<f64> = g.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let h = 1e-6;
            for i in 0..base.len() {
                let mut p = base.clone();
                p[i] += h;
                var.set(&Tensor::from_vec(p.clone(), var.shape(), &dev).unwrap()).unwrap();
                let lp: f64 =
                    deformed_sum(&x0, &seg, v.as_tensor(), t.as_tensor(), &proj, centre).to_scalar().unwrap();
                p[i] -= 2.0 * h;
                var.set(&Tensor::from_vec(p, var.shape(), &dev).unwrap()).unwrap();
                let lm: f64 =
                    deformed_sum(&x0, &seg, v.as_tensor(), t.as_tensor(), &proj, centre).to_scalar().unwrap();
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev).unwrap()).unwrap();
                let fd = (lp - lm) / (2.0 * h);
                let tol = 1e-5 * (1.0 + fd.abs());
                assert!((fd - an[i]).abs() < tol, "{centre:?} ∂/∂{name}[{i}]: analytic {} vs FD {fd}", an[i]);
            }
        }
    }
}

#[test]
fn config_roundtrips_through_toml_and_rejects_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let c = SphereConfig { n_segm: 4, rotation_centre: RotationCentre::Centroid, ..SphereConfig::default() };
    let text = toml::to_string(&c).unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, &text).unwrap();
    assert_eq!(SphereConfig::from_toml_file(&p).unwrap(), c);
    std::fs::write(&p, "n_segm = 4\nbogus = 1\n").unwrap();
    let e = SphereConfig::from_toml_file(&p).unwrap_err().to_string();
    assert!(e.contains("bogus") && e.contains("c.toml"), "{e}");
}

#[test]
fn sampled_memberships_are_finite_for_many_segments_in_f32() {
    let (r, k) = (214, 20);
    let dev = Device::Cpu;
    let cfg = SphereConfig { n_segm: k, ..SphereConfig::default() };
    let layout = chain_layout(r, k);
    let prior = SegPrior::reference(&layout, &cfg);
    let seg = Segmentation::new(layout, prior, cfg.tau, &dev, DType::F32).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
    for _ in 0..20 {
        let w = seg.sample(128, &mut rng).unwrap();
        let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let bad = v.iter().filter(|x| !x.is_finite()).count();
        assert_eq!(bad, 0, "{bad} non-finite memberships of {}", v.len());
    }
}

#[test]
fn block_wise_deformation_equals_the_full_membership_deformation() {
    // Two chains; parts listed out of residue order (chain B first) and residues 9–10 of
    // chain A in no part, so the block path must permute and keep unmoved residues.
    let chains: Vec<String> = (0..24).map(|i| if i < 12 { "A" } else { "B" }.to_string()).collect();
    let seqs: Vec<i32> = (0..24).map(|i| (i % 12) + 1).collect();
    let specs =
        cryoforge_sphere::parts::parse_parts("B 1-12 3\nA 1-8 2\n", std::path::Path::new("p")).unwrap();
    let layout = Layout::from_specs(&chains, &seqs, &specs, 20).unwrap();
    let x0 = chain_coords(24);
    let amps = vec![1.0; 24];
    for centre in [RotationCentre::Origin, RotationCentre::Centroid] {
        let cfg = SphereConfig { rotation_centre: centre, zdim: 2, ..SphereConfig::default() };
        let model =
            cryoforge_sphere::model::SphereModel::new(&cfg, 16, &x0, &amps, layout.clone(), &Device::Cpu)
                .unwrap();
        let z = Tensor::new(&[[0.7f32, -1.3], [2.0, 0.4], [-0.5, 1.1]], &Device::Cpu).unwrap();
        let m = model.decode(&z).unwrap();
        let seed = |s| <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(s);
        let full = model.deform(&model.seg.sample(3, &mut seed(5)).unwrap(), &m).unwrap();
        let blocks = model.deform_blocks(&model.seg.sample_blocks(3, &mut seed(5)).unwrap(), &m).unwrap();
        assert_eq!(full.dims(), [3, 24, 3]);
        assert_eq!(blocks.dims(), [3, 24, 3]);
        let diff =
            (full.clone() - &blocks).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = full.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-5 * scale, "{centre:?}: max |Δ| {diff} (scale {scale})");
        // The posterior mean is one [1, R, K] segmentation broadcast over the batch (candle's
        // batched matmul mishandles stride-0 operands: `deform` materialises them).
        let pm = model.deform(&model.seg.posterior_mean().unwrap(), &m).unwrap();
        let pb = model.deform_blocks(&model.seg.posterior_mean_blocks().unwrap(), &m).unwrap();
        let d2 = (pm - pb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d2 <= 1e-5 * scale, "{centre:?}: posterior mean max |Δ| {d2}");
        // Residues 9–12 of chain A are in no part: unmoved.
        let v: Vec<Vec<Vec<f32>>> = blocks.to_vec3().unwrap();
        for i in 8..12 {
            for d in 0..3 {
                assert!((v[1][i][d] as f64 - x0[i][d]).abs() < 1e-5, "residue {i} moved");
            }
        }
    }
}
