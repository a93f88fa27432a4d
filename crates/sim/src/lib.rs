//! cryoforge-sim: the numerical heart of the particle simulator — densities from
//! atomic models and Fourier-slice projection.
//!
//! - [`density`]: atomic density from Peng et al. (1996) five-Gaussian electron
//!   scattering factors (voxel-integrated, B-factors, occupancies) and the Cα Gaussian
//!   density of cryoSTAR/cryoSPHERE ([`GaussianModel`]).
//! - [`gaussian_image`]: analytic images of a Cα Gaussian model at any pose, computed
//!   in Fourier space as a separable complex matrix product.
//! - [`project`]: the Fourier-slice projector (gridding-corrected, padded, trilinear),
//!   its adjoint, and [`reference`](mod@reference): a real-space projector for validation.
//!
//! Conventions are those of `cryoforge_core` (CONVENTIONS.md): volumes `[z][y][x]` with
//! the origin at index n/2, poses as RELION matrices A (a model point x lands at image
//! position (A·x)ₓᵧ), shifts t in pixels with `img(x) = proj(x + t)`, centred spectra,
//! forward DFT unnormalised.
//!
//! ```
//! use cryoforge_sim::{atomic_density, AtomSpec, Element, Projector};
//! use cryoforge_core::Rot3;
//! let atoms = [AtomSpec::new([0.0, 0.0, 0.0], Element::from_symbol("Fe")?)];
//! let vol = atomic_density(&atoms, 32, 1.5)?;
//! let proj = Projector::new(&vol, 32, 1.5, 2.0)?;
//! let mut work = proj.work();
//! let mut img = vec![0f32; 32 * 32];
//! proj.project_image(&Rot3::IDENTITY, [0.0, 0.0], None, &mut work, &mut img)?;
//! # Ok::<(), cryoforge_sim::SimError>(())
//! ```

pub mod density;
pub mod elements;
pub mod error;
pub mod fft3;
pub mod gaussian_image;
pub mod junk;
pub mod morph;
pub mod project;
pub mod reference;
pub mod sampling;
pub mod simulate;
mod splat;

pub use density::{atomic_density, AtomSpec, GaussianModel, CA_SIGMA_A};
pub use elements::{Element, PengCoeffs};
pub use error::SimError;
pub use fft3::PaddedSpectrum;
pub use gaussian_image::{gaussian_image_direct, GaussianImageWork, GaussianImager};
pub use project::{Projector, ProjectorWork, DEFAULT_PAD};
pub use reference::{project_real_space, project_real_space_with, RealSpaceKernel};
pub use splat::{erf, erfc_abs};
