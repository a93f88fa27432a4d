//! Densities from atomic models: full atomic (Peng 1996 five-Gaussian) and Cα Gaussian.
//!
//! # Atomic density
//! An atom of element e at c with isotropic B-factor B (Å²) and occupancy o has the
//! 3D Fourier transform (q = |q| = 1/d in Å⁻¹, s = q/2)
//!
//! ```text
//! F(q) = o·Σᵢ aᵢ·exp(−(bᵢ + B)·q²/4) = o·f_e(s)·exp(−B s²)
//! ```
//!
//! and, inverting the Gaussian transform `∫ exp(−α q²) e^{2πi q·r} d³q = (π/α)^{3/2}
//! exp(−π² r²/α)` with α = (bᵢ + B)/4, the real-space density
//!
//! ```text
//! ρ(r) = o·Σᵢ aᵢ·(4π/(bᵢ + B))^{3/2}·exp(−4π²|r − c|²/(bᵢ + B))
//! ```
//!
//! i.e. a sum of normalised isotropic Gaussians of variance σᵢ² = (bᵢ + B)/(8π²) and
//! mass o·aᵢ, so ∫ρ = o·f_e(0) = o·Σ aᵢ. ρ is in Å⁻² ("Å of scattering amplitude per
//! Å³"); multiplying by h²/(2π m₀ e) = [`POTENTIAL_V_A2`] = 47.878 V·Å² gives the
//! Coulomb potential in volts (Kirkland, *Advanced Computing in Electron Microscopy*,
//! 2nd ed., eq. 5.9; Peng 1999 Micron 30, 625). Each term is **integrated over each
//! voxel** (erf differences, see `splat`) within [`ATOM_CUTOFF_SIGMA`]·σᵢ, and the grid
//! stores voxel means — so Σ voxels·h³ = o·Σ aᵢ even for atoms far narrower than a
//! voxel. Pinned by `tests/density.rs::atomic_density_integrates_to_f0` and
//! `::atomic_density_fourier_transform_matches_peng_formula`.
//!
//! # Cα Gaussian density (cryoSTAR, cryoSPHERE)
//! One isotropic Gaussian per residue, σ = [`CA_SIGMA_A`] = 2 Å, peak amplitude A_r:
//! `ρ(r) = Σ_r A_r·exp(−|r − c_r|²/2σ²)`, point-sampled at voxel centres within
//! [`CA_CUTOFF_SIGMA`]·σ. Its line integral along z is `√(2π)·σ` times the 2D image
//! `Σ_r A_r exp(−|p − c_r|²/2σ²)` of [`crate::gaussian_image`].
//!
//! Grids are n³, `vol[z][y][x]`, voxel size apix Å, world (0, 0, 0) Å at voxel index
//! n/2 on each axis. Rendering is parallel over fixed z-slabs and bit-identical for any
//! number of rayon threads (`tests/density.rs::atomic_rendering_is_thread_count_independent`).

use crate::elements::Element;
use crate::error::{check_apix, SimError};
use crate::splat::{render, Item, Sampling};

/// Truncation radius of each atomic Gaussian term, in units of its σ (mass lost per
/// term ≲ 3·erfc(4/√2) ≈ 2e-4).
pub const ATOM_CUTOFF_SIGMA: f64 = 4.0;

/// Width of the Cα Gaussians of cryoSTAR and cryoSPHERE (Å), at every pixel size.
pub const CA_SIGMA_A: f64 = 2.0;

/// Truncation radius of Cα Gaussians in units of σ (relative value there exp(−12.5) ≈ 4e-6).
pub const CA_CUTOFF_SIGMA: f64 = 5.0;

/// h²/(2π m₀ e) in V·Å²: converts the density of [`atomic_density`] to volts.
pub const POTENTIAL_V_A2: f64 = 47.878;

/// One atom of an atomic model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AtomSpec {
    /// Position in Å, origin at the box centre.
    pub pos_a: [f64; 3],
    pub element: Element,
    /// Isotropic B-factor in Å² (0 for a static atom).
    pub b_factor_a2: f64,
    /// Occupancy (scales the atom's density; 1 for a fully occupied site).
    pub occupancy: f64,
}

impl AtomSpec {
    /// A fully occupied atom with B = 0.
    pub fn new(pos_a: [f64; 3], element: Element) -> AtomSpec {
        AtomSpec { pos_a, element, b_factor_a2: 0.0, occupancy: 1.0 }
    }

    /// The atom's 3D Fourier transform at spatial frequency q (Å⁻¹), including
    /// occupancy and B-factor: `o·Σᵢ aᵢ exp(−(bᵢ + B) q²/4)`.
    pub fn form_factor(&self, q: f64) -> f64 {
        self.occupancy * self.element.peng().f_of_q(q, self.b_factor_a2)
    }

    /// Real-space density (Å⁻²) at distance `r_a` (Å) from the centre (not voxel-averaged).
    pub fn density_at(&self, r_a: f64) -> f64 {
        let p = self.element.peng();
        let four_pi = 4.0 * std::f64::consts::PI;
        p.a.iter()
            .zip(&p.b)
            .map(|(a, b)| {
                let w = b + self.b_factor_a2;
                a * (four_pi / w).powf(1.5) * (-four_pi * std::f64::consts::PI * r_a * r_a / w).exp()
            })
            .sum::<f64>()
            * self.occupancy
    }

    /// Error if any field is unusable; `index` names the atom in the message.
    fn check(&self, index: usize) -> Result<(), SimError> {
        for (field, value) in [
            ("x coordinate", self.pos_a[0]),
            ("y coordinate", self.pos_a[1]),
            ("z coordinate", self.pos_a[2]),
            ("B-factor", self.b_factor_a2),
            ("occupancy", self.occupancy),
        ] {
            if !value.is_finite() {
                return Err(SimError::NonFiniteAtom { index, field, value });
            }
        }
        // The narrowest term must keep a positive variance (b₁ + B > 0).
        let min_b = self.element.peng().b.iter().cloned().fold(f64::INFINITY, f64::min);
        if min_b + self.b_factor_a2 <= 0.0 {
            return Err(SimError::InvalidBFactor { index, b_factor_a2: self.b_factor_a2, min_a2: -min_b });
        }
        Ok(())
    }
}

fn check_grid(n: usize, apix_a: f64) -> Result<(), SimError> {
    if n == 0 {
        return Err(SimError::ZeroBox);
    }
    check_apix(apix_a)
}

/// Render the atomic density (Å⁻², voxel means; see module docs) of `atoms` onto an
/// n³ grid of voxel size `apix_a`. Atoms outside the box contribute only their parts
/// that fall inside it.
pub fn atomic_density(atoms: &[AtomSpec], n: usize, apix_a: f64) -> Result<Vec<f32>, SimError> {
    check_grid(n, apix_a)?;
    let mut items = Vec::with_capacity(atoms.len() * 5);
    let eight_pi2 = 8.0 * std::f64::consts::PI * std::f64::consts::PI;
    for (index, atom) in atoms.iter().enumerate() {
        atom.check(index)?;
        let p = atom.element.peng();
        for (a, b) in p.a.iter().zip(&p.b) {
            items.push(Item {
                center_a: atom.pos_a,
                amp: a * atom.occupancy,
                sigma_a: ((b + atom.b_factor_a2) / eight_pi2).sqrt(),
            });
        }
    }
    Ok(render(n, apix_a, &items, Sampling::VoxelMean, ATOM_CUTOFF_SIGMA))
}

/// A Cα (coarse-grained) Gaussian model: one isotropic Gaussian per residue.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianModel {
    centers_a: Vec<[f64; 3]>,
    amplitudes: Vec<f64>,
    sigma_a: f64,
}

impl GaussianModel {
    /// Residue centres (Å, origin at the box centre), peak amplitudes (cryoSTAR: the sum
    /// of the atomic numbers of the residue's atoms) and the common width σ (Å).
    pub fn new(
        centers_a: Vec<[f64; 3]>,
        amplitudes: Vec<f64>,
        sigma_a: f64,
    ) -> Result<GaussianModel, SimError> {
        if centers_a.len() != amplitudes.len() {
            return Err(SimError::SizeMismatch {
                what: "Cα amplitudes (one per centre)",
                expected: centers_a.len(),
                got: amplitudes.len(),
            });
        }
        if !(sigma_a.is_finite() && sigma_a > 0.0) {
            return Err(SimError::InvalidSigma { sigma_a });
        }
        for (index, (c, a)) in centers_a.iter().zip(&amplitudes).enumerate() {
            for (field, value) in
                [("x coordinate", c[0]), ("y coordinate", c[1]), ("z coordinate", c[2]), ("amplitude", *a)]
            {
                if !value.is_finite() {
                    return Err(SimError::NonFiniteResidue { index, field, value });
                }
            }
        }
        Ok(GaussianModel { centers_a, amplitudes, sigma_a })
    }

    /// σ = [`CA_SIGMA_A`] (2 Å), as in cryoSTAR and cryoSPHERE.
    pub fn with_default_sigma(
        centers_a: Vec<[f64; 3]>,
        amplitudes: Vec<f64>,
    ) -> Result<GaussianModel, SimError> {
        GaussianModel::new(centers_a, amplitudes, CA_SIGMA_A)
    }

    pub fn len(&self) -> usize {
        self.centers_a.len()
    }

    pub fn is_empty(&self) -> bool {
        self.centers_a.is_empty()
    }

    pub fn centers_a(&self) -> &[[f64; 3]] {
        &self.centers_a
    }

    pub fn amplitudes(&self) -> &[f64] {
        &self.amplitudes
    }

    pub fn sigma_a(&self) -> f64 {
        self.sigma_a
    }

    /// Render `ρ(r) = Σ_r A_r exp(−|r − c_r|²/2σ²)` point-sampled on an n³ grid.
    pub fn render_volume(&self, n: usize, apix_a: f64) -> Result<Vec<f32>, SimError> {
        check_grid(n, apix_a)?;
        let items: Vec<Item> = self
            .centers_a
            .iter()
            .zip(&self.amplitudes)
            .map(|(c, a)| Item { center_a: *c, amp: *a, sigma_a: self.sigma_a })
            .collect();
        Ok(render(n, apix_a, &items, Sampling::Point, CA_CUTOFF_SIGMA))
    }
}
