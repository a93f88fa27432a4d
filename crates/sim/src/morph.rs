//! Conformational trajectories between two end states that keep chain geometry.
//!
//! [`morph`] makes an N-frame trajectory from a START model to an END model:
//!
//! 1. END is superposed onto START by the Kabsch fit (Horn's quaternion form) of the
//!    anchor atoms (Cα, C1′ or P) matched by chain ID, residue number and insertion code.
//! 2. Frame k (t = k / (N − 1)) starts from the straight linear interpolation
//!    `(1 − t)·START + t·END′` of the anchors.
//! 3. It is then relaxed with position-based (SHAKE-like) pair projections: every
//!    anchor pair closer than `network_cutoff_a` in either end state is an elastic-network
//!    restraint whose target length is the linear interpolation of its two end-state
//!    lengths; chain bonds (consecutive anchors of one chain segment, ≤ `bond_max_a` in both
//!    states) are hard constraints with the same kind of interpolated target. Each
//!    iteration projects every network pair with stiffness `network_stiffness` and every
//!    bond fully (Gauss–Seidel), plus a weak pull (`tether`) to the linear interpolation that
//!    fixes the rigid-body motion. A last bond-only SHAKE pass brings every bond within
//!    `bond_tolerance_a` of its target.
//! 4. The relaxed frame is superposed back onto its linear interpolation (Kabsch) so
//!    that the trajectory has no spurious overall rotation.
//!
//! The end frames are START and the superposed END exactly. Linear interpolation alone
//! shortens consecutive Cα distances of rotating domains to ≈ 3 Å in mid frames; the
//! relaxation keeps them at the interpolated end-state bond lengths (within 0.01 Å by
//! default), so that every consecutive distance is within 0.1 Å of the end states'.
//!
//! All other atoms of a residue follow their anchor: an atom present in both states is
//! linearly interpolated and then moved by its anchor's relaxation correction; an atom
//! only in START moves with its anchor's displacement.

use cryoforge_io::pdb::{anchor_atoms, AnchorResidue, Model};
use std::collections::HashMap;
use std::fmt;

/// Settings of [`morph`]; `Default` gives the documented values.
#[derive(Debug, Clone, PartialEq)]
pub struct MorphSettings {
    /// Number of frames, including both end states (≥ 2).
    pub frames: usize,
    /// Elastic-network cutoff (Å): pairs closer than this in either end state.
    pub network_cutoff_a: f64,
    /// Fraction of each network pair's length error corrected per iteration.
    pub network_stiffness: f64,
    /// Weight of the pull towards the linear interpolation (per iteration).
    pub tether: f64,
    /// Relaxation iterations per frame.
    pub iterations: usize,
    /// Consecutive anchors farther apart than this in either end state are a chain break.
    pub bond_max_a: f64,
    /// Final bond-length tolerance (Å) of the SHAKE pass.
    pub bond_tolerance_a: f64,
}

impl Default for MorphSettings {
    fn default() -> Self {
        MorphSettings {
            frames: 50,
            network_cutoff_a: 10.0,
            network_stiffness: 0.3,
            tether: 0.02,
            iterations: 300,
            bond_max_a: 4.5,
            bond_tolerance_a: 0.01,
        }
    }
}

/// Why a morph could not be made.
#[derive(Debug, Clone, PartialEq)]
pub enum MorphError {
    /// A model has no anchor atoms or an unknown element.
    Model { which: &'static str, msg: String },
    /// A START anchor residue is absent from END.
    Unmatched { chain: String, seq: i32, icode: Option<char>, name: String },
    /// Bad settings.
    Settings(String),
}

impl fmt::Display for MorphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MorphError::Model { which, msg } => write!(f, "{which} model: {msg}"),
            MorphError::Unmatched { chain, seq, icode, name } => write!(
                f,
                "residue {name} {seq}{} of chain '{chain}' of the START model has no anchor atom in END \
                 (residues are matched by chain ID, number and insertion code)",
                icode.map(String::from).unwrap_or_default()
            ),
            MorphError::Settings(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for MorphError {}

/// A computed trajectory.
#[derive(Debug, Clone)]
pub struct Morph {
    /// START's anchor residues (the order of every frame).
    pub residues: Vec<AnchorResidue>,
    /// `frames[k][i]`: anchor i in frame k, Å, in START's frame.
    pub frames: Vec<Vec<[f64; 3]>>,
    /// Full-atom models, one per frame (START's atoms moved as described in the module doc).
    pub models: Vec<Model>,
    /// Chain bonds (i, i+1) used.
    pub bonds: Vec<(usize, usize)>,
    /// Cα RMSD (Å) between START and END after superposition.
    pub end_rmsd_a: f64,
    /// Largest |bond length − interpolated end-state bond length| over all frames (Å).
    pub max_bond_error_a: f64,
}

type ResKey = (String, i32, Option<char>);

fn key(chain: &str, seq: i32, icode: Option<char>) -> ResKey {
    (chain.to_string(), seq, icode)
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Rigid transform `x ↦ R·(x − c_from) + c_to`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Superposition {
    pub rot: [[f64; 3]; 3],
    pub c_from: [f64; 3],
    pub c_to: [f64; 3],
}

impl Superposition {
    pub fn apply(&self, x: [f64; 3]) -> [f64; 3] {
        let d = [x[0] - self.c_from[0], x[1] - self.c_from[1], x[2] - self.c_from[2]];
        let r = &self.rot;
        [
            r[0][0] * d[0] + r[0][1] * d[1] + r[0][2] * d[2] + self.c_to[0],
            r[1][0] * d[0] + r[1][1] * d[1] + r[1][2] * d[2] + self.c_to[1],
            r[2][0] * d[0] + r[2][1] * d[1] + r[2][2] * d[2] + self.c_to[2],
        ]
    }
}

/// Eigen-decomposition of a symmetric 4×4 matrix by cyclic Jacobi rotations; returns the
/// eigenvector of the largest eigenvalue.
fn top_eigenvector4(mut a: [[f64; 4]; 4]) -> [f64; 4] {
    let mut v = [[0.0; 4]; 4];
    for (i, row) in v.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for _sweep in 0..64 {
        let off: f64 = (0..4)
            .flat_map(|i| (0..4).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..4 {
            for q in p + 1..4 {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..4 {
                    let akp = a[k][p];
                    let akq = a[k][q];
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for k in 0..4 {
                    let apk = a[p][k];
                    let aqk = a[q][k];
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for k in 0..4 {
                    let vkp = v[k][p];
                    let vkq = v[k][q];
                    v[k][p] = c * vkp - s * vkq;
                    v[k][q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut best = 0;
    for i in 1..4 {
        if a[i][i] > a[best][best] {
            best = i;
        }
    }
    [v[0][best], v[1][best], v[2][best], v[3][best]]
}

/// Least-squares superposition of `mobile` onto `target` (equal lengths ≥ 1): the rotation
/// and translation minimising Σ‖T(mobile_i) − target_i‖² (Horn 1987, unit quaternions).
pub fn kabsch(mobile: &[[f64; 3]], target: &[[f64; 3]]) -> Superposition {
    let n = mobile.len().min(target.len()).max(1) as f64;
    let mut cm = [0.0; 3];
    let mut ct = [0.0; 3];
    for (m, t) in mobile.iter().zip(target) {
        for d in 0..3 {
            cm[d] += m[d] / n;
            ct[d] += t[d] / n;
        }
    }
    let mut s = [[0.0; 3]; 3];
    for (m, t) in mobile.iter().zip(target) {
        for i in 0..3 {
            for j in 0..3 {
                s[i][j] += (m[i] - cm[i]) * (t[j] - ct[j]);
            }
        }
    }
    let (sxx, sxy, sxz) = (s[0][0], s[0][1], s[0][2]);
    let (syx, syy, syz) = (s[1][0], s[1][1], s[1][2]);
    let (szx, szy, szz) = (s[2][0], s[2][1], s[2][2]);
    let k = [
        [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
        [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
        [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
        [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
    ];
    let q = top_eigenvector4(k);
    let nq = (q.iter().map(|x| x * x).sum::<f64>()).sqrt().max(1e-300);
    let (w, x, y, z) = (q[0] / nq, q[1] / nq, q[2] / nq, q[3] / nq);
    let rot = [
        [w * w + x * x - y * y - z * z, 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
        [2.0 * (x * y + w * z), w * w - x * x + y * y - z * z, 2.0 * (y * z - w * x)],
        [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), w * w - x * x - y * y + z * z],
    ];
    Superposition { rot, c_from: cm, c_to: ct }
}

/// Root-mean-square distance between two equally long point lists (Å).
pub fn rmsd(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    let s: f64 = a.iter().zip(b).map(|(p, q)| dist(*p, *q).powi(2)).sum();
    (s / a.len() as f64).sqrt()
}

/// Makes the trajectory START → END (see the module documentation).
pub fn morph(start: &Model, end: &Model, set: &MorphSettings) -> Result<Morph, MorphError> {
    if set.frames < 2 {
        return Err(MorphError::Settings(format!("--frames {}: need at least 2", set.frames)));
    }
    if !(set.network_stiffness > 0.0 && set.network_stiffness <= 1.0) {
        return Err(MorphError::Settings(format!(
            "network stiffness {} must be in (0, 1]",
            set.network_stiffness
        )));
    }
    let ra = anchor_atoms(start).map_err(|e| MorphError::Model { which: "START", msg: e.to_string() })?;
    let rb = anchor_atoms(end).map_err(|e| MorphError::Model { which: "END", msg: e.to_string() })?;
    if ra.len() < 3 {
        return Err(MorphError::Model {
            which: "START",
            msg: format!("{} anchor atoms (Cα/C1′/P); need at least 3", ra.len()),
        });
    }
    let map_b: HashMap<_, usize> =
        rb.iter().enumerate().map(|(i, r)| (key(&r.chain, r.seq, r.icode), i)).collect();
    let mut idx_b = Vec::with_capacity(ra.len());
    for r in &ra {
        match map_b.get(&key(&r.chain, r.seq, r.icode)) {
            Some(&j) => idx_b.push(j),
            None => {
                return Err(MorphError::Unmatched {
                    chain: r.chain.clone(),
                    seq: r.seq,
                    icode: r.icode,
                    name: r.name.clone(),
                })
            }
        }
    }
    let xa: Vec<[f64; 3]> = ra.iter().map(|r| r.pos).collect();
    let xb_raw: Vec<[f64; 3]> = idx_b.iter().map(|&j| rb[j].pos).collect();
    let sup = kabsch(&xb_raw, &xa);
    let xb: Vec<[f64; 3]> = xb_raw.iter().map(|&p| sup.apply(p)).collect();
    let end_rmsd_a = rmsd(&xa, &xb);
    let n = ra.len();

    // Chain bonds and the elastic network.
    let mut bonds = Vec::new();
    for i in 0..n.saturating_sub(1) {
        let same = ra[i].segment == ra[i + 1].segment && ra[i].chain == ra[i + 1].chain;
        if same && dist(xa[i], xa[i + 1]) <= set.bond_max_a && dist(xb[i], xb[i + 1]) <= set.bond_max_a {
            bonds.push((i, i + 1));
        }
    }
    let mut network = Vec::new();
    for i in 0..n {
        for j in i + 2..n {
            let (da, db) = (dist(xa[i], xa[j]), dist(xb[i], xb[j]));
            if da < set.network_cutoff_a || db < set.network_cutoff_a {
                network.push((i, j, da, db));
            }
        }
    }
    let bond_len: Vec<(f64, f64)> =
        bonds.iter().map(|&(i, j)| (dist(xa[i], xa[j]), dist(xb[i], xb[j]))).collect();

    let nf = set.frames;
    let mut frames = Vec::with_capacity(nf);
    let mut max_bond_error_a: f64 = 0.0;
    for k in 0..nf {
        let t = k as f64 / (nf - 1) as f64;
        let lin: Vec<[f64; 3]> = xa
            .iter()
            .zip(&xb)
            .map(|(a, b)| [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), a[2] + t * (b[2] - a[2])])
            .collect();
        let frame = if k == 0 {
            xa.clone()
        } else if k == nf - 1 {
            xb.clone()
        } else {
            relax(&lin, &bonds, &bond_len, &network, t, set)
        };
        for (&(i, j), &(da, db)) in bonds.iter().zip(&bond_len) {
            let target = da + t * (db - da);
            max_bond_error_a = max_bond_error_a.max((dist(frame[i], frame[j]) - target).abs());
        }
        frames.push(frame);
    }

    // Full-atom models.
    let end_atoms: HashMap<ResKey, HashMap<String, [f64; 3]>> = end
        .chains
        .iter()
        .flat_map(|c| c.residues.iter().map(move |r| (c, r)))
        .map(|(c, r)| {
            (key(&c.id, r.seq, r.icode), r.atoms.iter().map(|a| (a.name.clone(), sup.apply(a.pos))).collect())
        })
        .collect();
    let anchor_of: HashMap<_, usize> =
        ra.iter().enumerate().map(|(i, r)| (key(&r.chain, r.seq, r.icode), i)).collect();
    let mut models = Vec::with_capacity(nf);
    for (k, frame) in frames.iter().enumerate() {
        let t = k as f64 / (nf - 1) as f64;
        let mut m = start.clone();
        for c in &mut m.chains {
            for r in &mut c.residues {
                let rk = key(&c.id, r.seq, r.icode);
                let Some(&ai) = anchor_of.get(&rk) else { continue };
                let lin_anchor = [
                    xa[ai][0] + t * (xb[ai][0] - xa[ai][0]),
                    xa[ai][1] + t * (xb[ai][1] - xa[ai][1]),
                    xa[ai][2] + t * (xb[ai][2] - xa[ai][2]),
                ];
                let corr = [
                    frame[ai][0] - lin_anchor[0],
                    frame[ai][1] - lin_anchor[1],
                    frame[ai][2] - lin_anchor[2],
                ];
                let disp = [frame[ai][0] - xa[ai][0], frame[ai][1] - xa[ai][1], frame[ai][2] - xa[ai][2]];
                let other = end_atoms.get(&rk);
                for a in &mut r.atoms {
                    match other.and_then(|o| o.get(&a.name)) {
                        Some(b) => {
                            for d in 0..3 {
                                a.pos[d] = a.pos[d] + t * (b[d] - a.pos[d]) + corr[d];
                            }
                        }
                        None => {
                            for d in 0..3 {
                                a.pos[d] += disp[d];
                            }
                        }
                    }
                }
            }
        }
        models.push(m);
    }
    Ok(Morph { residues: ra, frames, models, bonds, end_rmsd_a, max_bond_error_a })
}

/// Moves p and q along their axis so that |p − q| becomes `target` (fraction `w` of the error).
fn project_pair(x: &mut [[f64; 3]], i: usize, j: usize, target: f64, w: f64) {
    let d = [x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]];
    let l = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    if l < 1e-9 {
        return;
    }
    let f = 0.5 * w * (l - target) / l;
    for k in 0..3 {
        x[i][k] += f * d[k];
        x[j][k] -= f * d[k];
    }
}

fn relax(
    lin: &[[f64; 3]],
    bonds: &[(usize, usize)],
    bond_len: &[(f64, f64)],
    network: &[(usize, usize, f64, f64)],
    t: f64,
    set: &MorphSettings,
) -> Vec<[f64; 3]> {
    let mut x = lin.to_vec();
    let bond_target: Vec<f64> = bond_len.iter().map(|&(a, b)| a + t * (b - a)).collect();
    for _ in 0..set.iterations {
        for &(i, j, da, db) in network {
            project_pair(&mut x, i, j, da + t * (db - da), set.network_stiffness);
        }
        for (&(i, j), &tg) in bonds.iter().zip(&bond_target) {
            project_pair(&mut x, i, j, tg, 1.0);
        }
        for (p, l) in x.iter_mut().zip(lin) {
            for k in 0..3 {
                p[k] += set.tether * (l[k] - p[k]);
            }
        }
    }
    // SHAKE: bonds only, until every bond is within tolerance.
    for _ in 0..10_000 {
        let mut worst: f64 = 0.0;
        for (&(i, j), &tg) in bonds.iter().zip(&bond_target) {
            worst = worst.max((dist(x[i], x[j]) - tg).abs());
            project_pair(&mut x, i, j, tg, 1.0);
        }
        if worst < set.bond_tolerance_a * 0.5 {
            break;
        }
    }
    // Remove the overall rotation/translation relative to the linear interpolation.
    let sup = kabsch(&x, lin);
    x.iter().map(|&p| sup.apply(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotz(a: f64, p: [f64; 3]) -> [f64; 3] {
        [a.cos() * p[0] - a.sin() * p[1], a.sin() * p[0] + a.cos() * p[1], p[2]]
    }

    #[test]
    fn kabsch_recovers_a_rigid_motion() {
        let pts: Vec<[f64; 3]> =
            (0..20).map(|i| [i as f64, ((i * 7) % 5) as f64 * 1.3, ((i * 3) % 4) as f64 - 2.0]).collect();
        let moved: Vec<[f64; 3]> = pts
            .iter()
            .map(|&p| {
                let r = rotz(0.7, p);
                [r[0] + 3.0, r[1] - 1.0, r[2] + 5.0]
            })
            .collect();
        let sup = kabsch(&moved, &pts);
        let back: Vec<[f64; 3]> = moved.iter().map(|&p| sup.apply(p)).collect();
        assert!(rmsd(&back, &pts) < 1e-9, "{}", rmsd(&back, &pts));
    }
}
