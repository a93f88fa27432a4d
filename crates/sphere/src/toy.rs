//! The rigid-domain toy of cryoSPHERE's Appendix B.1, built from adenylate kinase.
//!
//! The paper rotates one 157-residue domain of a phytochrome dimer about (0, 1, 0) by
//! angles from 0.5·N(−π/3, 0.04) + 0.5·N(−2π/3, 0.04) (0.04 is the variance, σ = 0.2 rad).
//! Here the moving body is AdK's LID domain (residues 122–159 by default) and the axis is
//! the hinge line through the Cα atoms of the LID's first and last residues, so both
//! peptide links to the CORE stay intact whatever the angle. The axis sign is chosen so
//! that negative angles open the LID (its centroid moves away from the rest of the
//! protein). Rotations of 60–120° would drive the LID through the CORE, so by default the
//! whole angle distribution is multiplied by `scale` = 0.5: 0.5·N(−π/6, 0.01) +
//! 0.5·N(−π/3, 0.01) (means −30° and −60°, σ = 0.1 rad = 5.7°), an opening of the size
//! of AdK's closed→open transition; `scale` = 1 gives the paper's numbers.
//!
//! The continuous distribution is discretised on a grid of `step_deg` over mean ± 4σ of
//! both components; each grid angle becomes one model of a multi-model PDB, and the
//! mixture density at the grid angle its weight (`model_weights.txt`), so that
//! `cryoforge simulate --models models.pdb --model-weights model_weights.txt` draws
//! particles from the (discretised) mixture and truth.csv's `model` column gives each
//! particle's true angle through `angles.csv`. All models are translated so that the
//! unrotated structure's Cα centroid is at (0, 0, 0) (simulate with `--no-center`), and
//! `reference.pdb` is that unrotated structure: the training reference.

use std::path::Path;

use cryoforge_io::pdb::{Model, Structure};
use serde::Serialize;

use crate::{Result, SphereError};

#[derive(Debug, Clone, Copy)]
pub struct ToySpec {
    pub chain: Option<char>,
    pub first: i32,
    pub last: i32,
    pub scale: f64,
    pub step_deg: f64,
}

impl Default for ToySpec {
    fn default() -> Self {
        ToySpec { chain: None, first: 122, last: 159, scale: 0.5, step_deg: 1.0 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ToyInfo {
    /// Unit rotation axis (model frame).
    pub axis: [f64; 3],
    /// A point on the axis (Å, centred frame).
    pub point: [f64; 3],
    pub first: i32,
    pub last: i32,
    pub scale: f64,
    /// Mixture components (rad): means and std.
    pub means_rad: [f64; 2],
    pub sigma_rad: f64,
    pub n_models: usize,
    pub angles_rad: Vec<f64>,
    pub weights: Vec<f64>,
    /// Residues in the moving body / total.
    pub n_moving: usize,
    pub n_residues: usize,
}

fn rotate_about(p: [f64; 3], c: [f64; 3], a: [f64; 3], phi: f64) -> [f64; 3] {
    let x = [p[0] - c[0], p[1] - c[1], p[2] - c[2]];
    let (s, co) = phi.sin_cos();
    let cr = [a[1] * x[2] - a[2] * x[1], a[2] * x[0] - a[0] * x[2], a[0] * x[1] - a[1] * x[0]];
    let d = a[0] * x[0] + a[1] * x[1] + a[2] * x[2];
    let mut o = [0.0; 3];
    for i in 0..3 {
        o[i] = c[i] + x[i] * co + cr[i] * s + a[i] * d * (1.0 - co);
    }
    o
}

fn centroid(v: &[[f64; 3]]) -> [f64; 3] {
    let mut c = [0.0; 3];
    for p in v {
        for i in 0..3 {
            c[i] += p[i] / v.len() as f64;
        }
    }
    c
}

fn is_moving(chain: &str, seq: i32, spec: &ToySpec) -> bool {
    spec.chain.is_none_or(|c| chain.starts_with(c)) && seq >= spec.first && seq <= spec.last
}

/// Rotate the body of `model` by `phi` about the hinge axis.
fn rotated(model: &Model, spec: &ToySpec, c: [f64; 3], a: [f64; 3], phi: f64) -> Model {
    let mut m = model.clone();
    for ch in &mut m.chains {
        let id = ch.id.clone();
        for r in &mut ch.residues {
            if is_moving(&id, r.seq, spec) {
                for at in &mut r.atoms {
                    at.pos = rotate_about(at.pos, c, a, phi);
                }
            }
        }
    }
    m
}

/// Build the toy from `pdb` into folder `out` (models.pdb, model_weights.txt, angles.csv,
/// reference.pdb, toy.json). See the module docs.
pub fn build(pdb: &Path, out: &Path, spec: &ToySpec) -> Result<ToyInfo> {
    if !(spec.scale > 0.0 && spec.step_deg > 0.0) {
        return Err(SphereError::msg("toy: scale and step must be positive"));
    }
    let s = cryoforge_io::pdb::read_structure(pdb)?;
    let mut model = s.models.into_iter().next().ok_or_else(|| SphereError::file(pdb, "no model"))?;
    let res = cryoforge_io::pdb::anchor_atoms(&model).map_err(|e| SphereError::file(pdb, e.to_string()))?;
    let all: Vec<[f64; 3]> = res.iter().map(|r| r.pos).collect();
    let c0 = centroid(&all);
    for ch in &mut model.chains {
        for r in &mut ch.residues {
            for at in &mut r.atoms {
                for i in 0..3 {
                    at.pos[i] -= c0[i];
                }
            }
        }
    }
    let res = cryoforge_io::pdb::anchor_atoms(&model).map_err(|e| SphereError::file(pdb, e.to_string()))?;
    let find = |seq: i32| {
        res.iter()
            .find(|r| spec.chain.is_none_or(|c| r.chain.starts_with(c)) && r.seq == seq)
            .map(|r| r.pos)
            .ok_or_else(|| SphereError::file(pdb, format!("no Cα for residue {seq}")))
    };
    let (p1, p2) = (find(spec.first)?, find(spec.last)?);
    let mut a = [p2[0] - p1[0], p2[1] - p1[1], p2[2] - p1[2]];
    let na = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
    if na < 1e-6 {
        return Err(SphereError::file(pdb, "hinge residues coincide"));
    }
    a = a.map(|v| v / na);
    let moving: Vec<[f64; 3]> =
        res.iter().filter(|r| is_moving(&r.chain, r.seq, spec)).map(|r| r.pos).collect();
    let fixed: Vec<[f64; 3]> =
        res.iter().filter(|r| !is_moving(&r.chain, r.seq, spec)).map(|r| r.pos).collect();
    if moving.is_empty() || fixed.is_empty() {
        return Err(SphereError::file(pdb, "the moving body must be a proper subset of the residues"));
    }
    let (cm, cf) = (centroid(&moving), centroid(&fixed));
    let dist =
        |p: [f64; 3]| ((p[0] - cf[0]).powi(2) + (p[1] - cf[1]).powi(2) + (p[2] - cf[2]).powi(2)).sqrt();
    // Negative angles must open the body.
    if dist(rotate_about(cm, p1, a, -0.3)) < dist(cm) {
        a = a.map(|v| -v);
    }
    let pi = std::f64::consts::PI;
    let means = [spec.scale * -pi / 3.0, spec.scale * -2.0 * pi / 3.0];
    let sigma = spec.scale * 0.2;
    let lo = means[1] - 4.0 * sigma;
    let hi = means[0] + 4.0 * sigma;
    let step = spec.step_deg.to_radians();
    let n = ((hi - lo) / step).floor() as usize + 1;
    let angles: Vec<f64> = (0..n).map(|i| lo + i as f64 * step).collect();
    let pdf = |x: f64, m: f64| (-(x - m).powi(2) / (2.0 * sigma * sigma)).exp();
    let weights: Vec<f64> = angles.iter().map(|&x| 0.5 * pdf(x, means[0]) + 0.5 * pdf(x, means[1])).collect();
    std::fs::create_dir_all(out).map_err(|e| SphereError::file(out, format!("cannot create: {e}")))?;
    let models: Vec<Model> = angles.iter().map(|&phi| rotated(&model, spec, p1, a, phi)).collect();
    cryoforge_io::pdb::write_pdb(out.join("models.pdb"), &Structure { models })?;
    cryoforge_io::pdb::write_pdb(out.join("reference.pdb"), &Structure { models: vec![model] })?;
    let wtxt: String = weights.iter().map(|w| format!("{w:.8e}\n")).collect();
    cryoforge_io::atomic::write_bytes_atomic(&out.join("model_weights.txt"), wtxt.as_bytes())?;
    let mut csv = String::from("model,angle_rad,angle_deg\n");
    for (i, x) in angles.iter().enumerate() {
        csv.push_str(&format!("{i},{x:.8},{:.6}\n", x.to_degrees()));
    }
    cryoforge_io::atomic::write_bytes_atomic(&out.join("angles.csv"), csv.as_bytes())?;
    let info = ToyInfo {
        axis: a,
        point: p1,
        first: spec.first,
        last: spec.last,
        scale: spec.scale,
        means_rad: means,
        sigma_rad: sigma,
        n_models: n,
        angles_rad: angles,
        weights,
        n_moving: moving.len(),
        n_residues: res.len(),
    };
    let js = serde_json::to_string_pretty(&info).map_err(|e| SphereError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&out.join("toy.json"), js.as_bytes())?;
    Ok(info)
}
