//! cryoforge-report: plots and self-contained HTML reports of cryoforge output folders.
//!
//! Plots are rendered to PNG with plotters and an embedded DejaVu Sans font (no system
//! fonts needed), so they look the same on every machine and are inlined into the HTML
//! as base64 `data:` URIs. A report refers to nothing outside itself: no scripts, fonts,
//! style sheets or images from anywhere (ChimeraX and papers are named as plain text).
//!
//! The crate reads only the run-directory contract files (run.toml, metrics.csv,
//! analysis/…, summary.json, fsc.csv, demo.json; see docs/ARCHITECTURE.md), never a
//! method crate, so it sits below them and the `cli` writes the reports.
//!
//! `analysis/examples.npy` (optional, written by a method's analyze): float32
//! `[M, 2, D, D]`, for M example particles `[i, 0]` is the particle image as the method
//! saw it and `[i, 1]` the model's rendering of the same particle (predicted structure,
//! the particle's pose and CTF); `analysis/examples.txt` optionally gives the M particle
//! indices, one per line.

pub mod charts;
pub mod html;
pub mod pages;
pub mod plot;
pub mod rundir;

pub use charts::{
    density_png, histogram_png, image_tiles_png, scatter_png, sequence_strip_png, Colouring, ScatterPlot,
    Tile,
};
pub use pages::{build_report, write_report, Report};
pub use plot::{line_plot_png, LinePlot, Series};
pub use rundir::{detect, DirKind, ReadError};
