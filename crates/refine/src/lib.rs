//! cryoforge pose estimation: gold-standard 3D auto-refinement and orientation diagnostics.
//!
//! Above `recon` and `sim` (it projects with `sim::Projector` and reconstructs with
//! `recon`), below the method crates (cryoPROS, CryoWizard, ab initio), which call it as a
//! library.

pub mod abinit;
pub mod align;
pub mod band;
pub mod class2d;
pub mod config;
pub mod driver;
pub mod expect;
pub mod maps;
pub mod orient;
mod output;
mod parallel;
pub mod rebalance;
pub mod score;
pub mod search;
pub mod so3;

pub use config::{AssignmentMode, HalvesFrom, RefineConfig, RefineError};
pub use driver::{refine, IterationStats, Mode, Observer, ParticleStats, RefineInput, RefineOutcome, Silent};
