//! Latent-space analysis shared by every heterogeneity method (cryoSTAR,
//! cryoSPHERE, …), covering what users of cryoDRGN `analyze` expect:
//!
//! * [`Pca`] — principal components of the latent embedding;
//! * [`exact_knn`], [`nn_descent`] — k-nearest-neighbour graphs;
//! * [`kmeans()`] — k-means++ / Lloyd clustering with restarts;
//! * [`umap()`] — UMAP embedding (exact or NN-descent k-NN, fuzzy simplicial
//!   set, seeded reproducible SGD layout);
//! * [`trustworthiness`], [`adjusted_rand_index`] — quality metrics;
//! * [`pc_traversal`], [`nearest_index`], [`cluster_centres_snapped`],
//!   [`pearson`], [`spearman`] — traversal and correlation helpers.
//!
//! Each module's documentation gives the maths, the algorithmic choices and
//! an example.
//!
//! Inputs are row-major `N × D` matrices of `f32` or `f64` ([`MatrixView`]),
//! one particle per row. `N` may be in the millions: every pass over the rows
//! is parallel (rayon) and reduces in fixed row blocks, so results are
//! bit-identical regardless of the number of threads. All routines validate
//! their input and return an [`AnalysisError`] instead of panicking.

pub mod error;
pub mod kmeans;
pub mod knn;
mod layout;
pub mod matrix;
pub mod metrics;
pub mod pca;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod testutil;
pub mod traverse;
pub mod umap;

pub use error::{AnalysisError, Result};
pub use kmeans::{kmeans, standardize, KMeans, KMeansOptions, Standardizer};
pub use knn::{exact_knn, nn_descent, Knn, NnDescentOptions};
pub use matrix::{Matrix, MatrixView, Real};
pub use metrics::{adjusted_rand_index, roc_auc, trustworthiness};
pub use pca::Pca;
pub use traverse::{
    cluster_centres_snapped, nearest_index, nearest_indices, pc_traversal, pearson, percentile, spearman,
    TraversalPoint, DEFAULT_HI_PCT, DEFAULT_LO_PCT,
};
pub use umap::{fit_ab, umap, KnnMethod, SgdMode, Umap, UmapInit, UmapOptions};
