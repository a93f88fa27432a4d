//! Rotations and the conventions that relate them.
//!
//! There is one rotation type, [`Rot3`]: the 3×3 matrix **A** of RELION's
//! `Euler_angles2matrix`, which **left-multiplies column vectors (x, y, z)** in
//! Å with the origin at the box centre and maps a model point to the frame in
//! which the projection is the line integral along z: a model point `x` lands at
//! image position `(A·x)ₓᵧ`. In Fourier space a 2D frequency `(kx, ky)` samples the
//! 3D transform at `Aᵀ·(kx, ky, 0)ᵀ`. cryoDRGN's pose pickles store this same A.
//!
//! Other conventions enter and leave only through named conversions:
//! - [`EulerRelion`] (rot φ, tilt θ, psi ψ in degrees, ZYZ): `A = (Rz(φ)·Ry(θ)·Rz(ψ))ᵀ`.
//! - [`CsRotVec`] (cryoSPARC `alignments3D/pose`): a rotation vector v; cryoDRGN
//!   takes `A = exp([v]ₓ)ᵀ`.
//! - [`Quat`]: unit quaternion (w, x, y, z) of the same A.
//!
//! Pinned by `tests::euler_matches_cryodrgn_golden`, `tests::euler_round_trip`,
//! `tests::csparc_rotvec_round_trip` and the parity tests of the io crate.

use nalgebra::{Matrix3, Vector3};
use serde::{Deserialize, Serialize};

/// A rotation matrix in RELION's `Euler_angles2matrix` convention (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rot3(pub [[f64; 3]; 3]);

/// RELION Euler angles in degrees: `rlnAngleRot`, `rlnAngleTilt`, `rlnAnglePsi`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EulerRelion {
    pub rot_deg: f64,
    pub tilt_deg: f64,
    pub psi_deg: f64,
}

/// cryoSPARC rotation vector (axis × angle in radians), as stored in `alignments3D/pose`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CsRotVec(pub [f64; 3]);

/// Unit quaternion (w, x, y, z) with w ≥ 0, representing the matrix A of [`Rot3`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quat(pub [f64; 4]);

/// Tolerance for [`Rot3::check`]: orthonormality and determinant to this accuracy.
/// float32 files store matrices to ~1e-7; 1e-4 accepts them and rejects garbage.
pub const ROTATION_CHECK_TOL: f64 = 1e-4;

impl Rot3 {
    pub const IDENTITY: Rot3 = Rot3([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);

    pub fn from_matrix(m: &Matrix3<f64>) -> Rot3 {
        let mut a = [[0.0; 3]; 3];
        for (i, row) in a.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = m[(i, j)];
            }
        }
        Rot3(a)
    }

    pub fn matrix(&self) -> Matrix3<f64> {
        let a = &self.0;
        Matrix3::new(a[0][0], a[0][1], a[0][2], a[1][0], a[1][1], a[1][2], a[2][0], a[2][1], a[2][2])
    }

    /// Row-major as f32 (the layout of cryoDRGN's `rot[N,3,3]`).
    pub fn to_f32(&self) -> [f32; 9] {
        let a = &self.0;
        [
            a[0][0] as f32,
            a[0][1] as f32,
            a[0][2] as f32,
            a[1][0] as f32,
            a[1][1] as f32,
            a[1][2] as f32,
            a[2][0] as f32,
            a[2][1] as f32,
            a[2][2] as f32,
        ]
    }

    pub fn transpose(&self) -> Rot3 {
        let a = &self.0;
        Rot3([[a[0][0], a[1][0], a[2][0]], [a[0][1], a[1][1], a[2][1]], [a[0][2], a[1][2], a[2][2]]])
    }

    /// `A·B` (apply B first, then A).
    pub fn compose(&self, b: &Rot3) -> Rot3 {
        Rot3::from_matrix(&(self.matrix() * b.matrix()))
    }

    /// `A·v` for a column vector v.
    #[inline]
    pub fn apply(&self, v: [f64; 3]) -> [f64; 3] {
        let a = &self.0;
        [
            a[0][0] * v[0] + a[0][1] * v[1] + a[0][2] * v[2],
            a[1][0] * v[0] + a[1][1] * v[1] + a[1][2] * v[2],
            a[2][0] * v[0] + a[2][1] * v[1] + a[2][2] * v[2],
        ]
    }

    /// `Aᵀ·v`: the 3D frequency sampled by the 2D frequency `(v[0], v[1])` when v[2] = 0.
    #[inline]
    pub fn apply_transpose(&self, v: [f64; 3]) -> [f64; 3] {
        let a = &self.0;
        [
            a[0][0] * v[0] + a[1][0] * v[1] + a[2][0] * v[2],
            a[0][1] * v[0] + a[1][1] * v[1] + a[2][1] * v[2],
            a[0][2] * v[0] + a[1][2] * v[1] + a[2][2] * v[2],
        ]
    }

    /// Rotation about a unit axis by `angle_rad` (right-handed, active), as an A matrix.
    pub fn from_axis_angle(axis: [f64; 3], angle_rad: f64) -> Rot3 {
        let v = Vector3::from(axis);
        let n = v.norm();
        if n == 0.0 || angle_rad == 0.0 {
            return Rot3::IDENTITY;
        }
        let r = nalgebra::Rotation3::from_axis_angle(&nalgebra::Unit::new_unchecked(v / n), angle_rad);
        Rot3::from_matrix(r.matrix())
    }

    /// Error if any entry is not finite or the matrix is not orthonormal with det +1
    /// (within [`ROTATION_CHECK_TOL`]). A pose is invalid only for these reasons.
    pub fn check(&self) -> Result<(), String> {
        if self.0.iter().flatten().any(|v| !v.is_finite()) {
            return Err("rotation matrix has a non-finite entry".into());
        }
        let m = self.matrix();
        let e = (m.transpose() * m - Matrix3::identity()).abs().max();
        if e > ROTATION_CHECK_TOL {
            return Err(format!("matrix is not orthonormal (|AᵀA − I| = {e:.2e})"));
        }
        let d = m.determinant();
        if (d - 1.0).abs() > ROTATION_CHECK_TOL * 3.0 {
            return Err(format!("matrix determinant is {d:.6}, not +1"));
        }
        Ok(())
    }

    /// Geodesic angle between two rotations, in degrees.
    pub fn angle_to_deg(&self, other: &Rot3) -> f64 {
        // ‖A − B‖_F = 2√2·sin(θ/2): accurate for small angles, unlike acos of the trace.
        let f = (self.matrix() - other.matrix()).norm();
        (2.0 * (f / (2.0 * std::f64::consts::SQRT_2)).clamp(0.0, 1.0).asin()).to_degrees()
    }

    /// Nearest rotation matrix (polar decomposition via SVD), for matrices stored
    /// in float32 that are slightly off orthonormal.
    pub fn orthonormalize(&self) -> Rot3 {
        let svd = self.matrix().svd(true, true);
        match (svd.u, svd.v_t) {
            (Some(u), Some(vt)) => {
                let mut r = u * vt;
                if r.determinant() < 0.0 {
                    let mut u2 = u;
                    u2.set_column(2, &(-u.column(2)));
                    r = u2 * vt;
                }
                Rot3::from_matrix(&r)
            }
            _ => *self,
        }
    }
}

impl EulerRelion {
    pub fn new(rot_deg: f64, tilt_deg: f64, psi_deg: f64) -> Self {
        EulerRelion { rot_deg, tilt_deg, psi_deg }
    }

    /// RELION's `Euler_angles2matrix`.
    pub fn to_rot(&self) -> Rot3 {
        let (sa, ca) = self.rot_deg.to_radians().sin_cos();
        let (sb, cb) = self.tilt_deg.to_radians().sin_cos();
        let (sg, cg) = self.psi_deg.to_radians().sin_cos();
        let cc = cb * ca;
        let cs = cb * sa;
        let sc = sb * ca;
        let ss = sb * sa;
        Rot3([
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ])
    }

    /// RELION's `Euler_matrix2angles` (tilt in [0, 180]).
    pub fn from_rot(r: &Rot3) -> EulerRelion {
        let a = &r.0;
        let abs_sb = (a[0][2] * a[0][2] + a[1][2] * a[1][2]).sqrt();
        let eps = f32::EPSILON as f64;
        let (alpha, beta, gamma);
        if abs_sb > 16.0 * eps {
            gamma = a[1][2].atan2(-a[0][2]);
            alpha = a[2][1].atan2(a[2][0]);
            let sign_sb = if gamma.sin().abs() < eps {
                (-a[0][2] / gamma.cos()).signum()
            } else if gamma.sin() > 0.0 {
                a[1][2].signum()
            } else {
                -a[1][2].signum()
            };
            beta = (sign_sb * abs_sb).atan2(a[2][2]);
        } else if a[2][2] > 0.0 {
            alpha = 0.0;
            beta = 0.0;
            gamma = (-a[1][0]).atan2(a[0][0]);
        } else {
            alpha = 0.0;
            beta = std::f64::consts::PI;
            gamma = a[1][0].atan2(-a[0][0]);
        }
        EulerRelion { rot_deg: alpha.to_degrees(), tilt_deg: beta.to_degrees(), psi_deg: gamma.to_degrees() }
    }

    pub fn is_finite(&self) -> bool {
        self.rot_deg.is_finite() && self.tilt_deg.is_finite() && self.psi_deg.is_finite()
    }
}

impl CsRotVec {
    /// cryoDRGN's reading of a cryoSPARC pose: `A = exp([v]ₓ)ᵀ`.
    pub fn to_rot(&self) -> Rot3 {
        let v = Vector3::from(self.0);
        let r = nalgebra::Rotation3::new(v);
        Rot3::from_matrix(r.matrix()).transpose()
    }

    /// Inverse of [`CsRotVec::to_rot`].
    pub fn from_rot(a: &Rot3) -> CsRotVec {
        let m = a.transpose().orthonormalize().matrix();
        let r = nalgebra::Rotation3::from_matrix_unchecked(m);
        let v = r.scaled_axis();
        CsRotVec([v.x, v.y, v.z])
    }
}

impl Quat {
    pub fn from_rot(a: &Rot3) -> Quat {
        let m = a.orthonormalize().matrix();
        let r = nalgebra::Rotation3::from_matrix_unchecked(m);
        let q = nalgebra::UnitQuaternion::from_rotation_matrix(&r);
        let mut w = [q.w, q.i, q.j, q.k];
        if w[0] < 0.0 {
            w.iter_mut().for_each(|v| *v = -*v);
        }
        Quat(w)
    }

    pub fn to_rot(&self) -> Rot3 {
        let [w, x, y, z] = self.0;
        let q = nalgebra::UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(w, x, y, z));
        Rot3::from_matrix(q.to_rotation_matrix().matrix())
    }
}

/// Haar-uniform random rotation from three uniform numbers in [0, 1) (Shoemake 1992).
pub fn uniform_rotation(u1: f64, u2: f64, u3: f64) -> Rot3 {
    use std::f64::consts::TAU;
    let a = (1.0 - u1).sqrt();
    let b = u1.sqrt();
    let q = [a * (TAU * u2).sin(), a * (TAU * u2).cos(), b * (TAU * u3).sin(), b * (TAU * u3).cos()];
    // q = (x, y, z, w) in Shoemake's order.
    Quat([q[3], q[0], q[1], q[2]]).to_rot()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> Option<serde_json::Value> {
        let p = crate::testdata::test_data_file("rotation golden tests", "reference/cryodrgn_golden.json")?;
        Some(serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
    }

    /// Golden values: cryoDRGN 4.3.1 `cryodrgn.utils.R_from_relion` (= RELION Euler_angles2matrix).
    #[test]
    fn euler_matches_cryodrgn_golden() {
        let Some(g) = golden() else { return };
        let cases = g["euler"].as_array().unwrap();
        assert_eq!(cases.len(), 20);
        for c in cases {
            let a: Vec<f64> =
                c["rot_tilt_psi_deg"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let m: Vec<f64> =
                c["matrix_row_major"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let r = EulerRelion::new(a[0], a[1], a[2]).to_rot();
            for i in 0..3 {
                for j in 0..3 {
                    assert!((r.0[i][j] - m[3 * i + j]).abs() <= 1e-6, "{a:?} [{i}][{j}]");
                }
            }
        }
    }

    /// cryoDRGN's pinned case (tests/test_utils.py): angles (−147.9485, 22.58999, 162.539).
    #[test]
    fn euler_cryodrgn_pinned_case_round_trips() {
        let e = EulerRelion::new(-147.9485, 22.58999, 162.539);
        let r = e.to_rot();
        r.check().unwrap();
        let back = EulerRelion::from_rot(&r);
        assert!((back.rot_deg - e.rot_deg).abs() < 1e-9);
        assert!((back.tilt_deg - e.tilt_deg).abs() < 1e-9);
        assert!((back.psi_deg - e.psi_deg).abs() < 1e-9);
    }

    #[test]
    fn euler_round_trip() {
        for i in 0..500 {
            let t = i as f64;
            let e =
                EulerRelion::new((t * 37.1) % 360.0 - 180.0, (t * 13.7) % 180.0, (t * 71.3) % 360.0 - 180.0);
            let r = e.to_rot();
            let r2 = EulerRelion::from_rot(&r).to_rot();
            assert!(r.angle_to_deg(&r2) < 1e-6, "{e:?}");
        }
    }

    /// A = (Rz(φ)Ry(θ)Rz(ψ))ᵀ: the matrix is the transpose of intrinsic ZYZ.
    #[test]
    fn euler_is_transpose_of_intrinsic_zyz() {
        let (phi, theta, psi) = (0.3f64, 1.1f64, -0.7f64);
        let rz = |a: f64| Rot3::from_axis_angle([0.0, 0.0, 1.0], a);
        let ry = |a: f64| Rot3::from_axis_angle([0.0, 1.0, 0.0], a);
        let zyz = rz(phi).compose(&ry(theta)).compose(&rz(psi));
        let a = EulerRelion::new(phi.to_degrees(), theta.to_degrees(), psi.to_degrees()).to_rot();
        assert!(a.angle_to_deg(&zyz.transpose()) < 1e-9);
    }

    #[test]
    fn csparc_rotvec_round_trip() {
        let v = CsRotVec([0.3, -1.2, 0.7]);
        let a = v.to_rot();
        a.check().unwrap();
        let v2 = CsRotVec::from_rot(&a);
        for k in 0..3 {
            assert!((v.0[k] - v2.0[k]).abs() < 1e-9);
        }
        // A is the transpose of the exponential map: rotating by A undoes exp(v).
        let r = nalgebra::Rotation3::new(Vector3::from(v.0));
        let p = Vector3::new(1.0, 2.0, 3.0);
        let q = r * p;
        let back = a.apply([q.x, q.y, q.z]);
        assert!((back[0] - 1.0).abs() < 1e-12 && (back[1] - 2.0).abs() < 1e-12);
    }

    #[test]
    fn quaternion_round_trip_and_inverse() {
        let a = EulerRelion::new(10.0, 70.0, -30.0).to_rot();
        let q = Quat::from_rot(&a);
        assert!(q.to_rot().angle_to_deg(&a) < 1e-9);
        let i = a.compose(&a.transpose());
        assert!(i.angle_to_deg(&Rot3::IDENTITY) < 1e-6);
    }

    #[test]
    fn check_rejects_non_rotations() {
        assert!(Rot3([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]]).check().is_err());
        assert!(Rot3([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).check().is_err());
        assert!(Rot3([[f64::NAN, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).check().is_err());
        Rot3::IDENTITY.check().unwrap();
    }

    #[test]
    fn uniform_rotation_mean_is_zero() {
        // E[A] = 0 for the Haar measure; each entry's mean ~ N(0, 1/(3n)).
        let n = 20000;
        let mut s = [[0.0; 3]; 3];
        let mut state = 12345u64;
        let mut rnd = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..n {
            let r = uniform_rotation(rnd(), rnd(), rnd());
            for i in 0..3 {
                for j in 0..3 {
                    s[i][j] += r.0[i][j] / n as f64;
                }
            }
        }
        let tol = 5.0 / (3.0 * n as f64).sqrt();
        assert!(s.iter().flatten().all(|v| v.abs() < tol), "{s:?}");
    }
}
