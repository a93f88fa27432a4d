//! cryoforge-report: plots and reports. Plots are rendered to PNG with plotters and an
//! embedded DejaVu Sans font (no system fonts needed), so they look the same on every
//! machine and can be inlined into self-contained HTML.

pub mod plot;

pub use plot::{line_plot_png, LinePlot, Series};
