//! CryoWizard (paper 001; METHODS.md §5) on cryoforge's own ranker, ab initio, refinement
//! and orientation diagnostics.
//!
//! 1. Score every particle: CryoRanker when weights are given, otherwise a consensus
//!    refinement's log-likelihoods through a two-component mixture ([`score`]).
//! 2. Initial models: the top P particles for each subset size, ab initio (one class) →
//!    refinement → orientation diagnostics.
//! 3. The gate (cFAR ≥ 0.15 and resolution ≤ 4 Å, scaled): the finest passing initial
//!    model; else the preferred-orientation branch — k-means++ (k = 8, standardised,
//!    10 restarts) on the Cryo-IEF features of the top 8·P particles, every cluster refined,
//!    the finest passing cluster (else the finest) — or, without features, the top P
//!    rebalanced by viewing direction and refined.
//! 4. The particle-number search from that volume: 8 sizes evenly spaced between the ranks
//!    where the score drops below 0.8 and 0.3 (clamped), then 4 around the best; the
//!    finest refinement with cFAR ≥ 0.15 wins.
//!
//! [`plan`] holds the decisions (no I/O), [`pipeline`] the steps and their record.
//!
//! [`solver`] is CryoSolver, the paper's heterogeneous reconstruction: a DRGN-AI volume
//! decoder whose latents are the frozen Cryo-IEF features.

pub mod pipeline;
pub mod plan;
pub mod score;
pub mod solver;

pub use pipeline::{read_state, Done, RefineNumbers, Runner, State, StepRecord, Wizard, STATE_FILE};
pub use plan::{Candidate, Scaled, WizardConfig};
