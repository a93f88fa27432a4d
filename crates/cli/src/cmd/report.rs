//! `cryoforge report`: a self-contained HTML report of an output folder.

use crate::common::Ctx;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Write one self-contained HTML report of a cryoforge output folder: the command,
/// configuration and provenance, loss curves, PCA/UMAP latent plots coloured by cluster
/// and by the true frame when known, PC histograms, example particles next to their
/// rendered predictions, the cryoSPHERE segmentation, FSC curves, agreement with the
/// ground truth, and every output file with what to open it with.
///
/// The kind of folder is detected: a `reconstruct` output (summary.json + fsc.csv), a
/// cryoSTAR/cryoSPHERE training run (run.toml with a [run] table, analysis/), a
/// `simulate` output, or a `demo` folder (demo.json). Plots are embedded as PNG data
/// URIs; the file refers to nothing outside itself and opens in any browser, offline.
///
/// Examples:
///   cryoforge report recon/
///   cryoforge report runs/star1 --out star1.html
///   cryoforge report cryoforge-demo --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The output folder to report on.
    pub dir: PathBuf,
    /// Where to write the report (default DIR/report.html).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Print a JSON summary (kind, path, key numbers, warnings) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Build and write the report of `dir` to `out`; check its structure first.
pub fn write(dir: &Path, out: &Path) -> Result<cryoforge_report::Report> {
    let r = cryoforge_report::build_report(dir)?;
    if let Err(e) = cryoforge_report::html::check_html(&r.html) {
        bail!("internal error: the report of {} is malformed ({e}); nothing written", dir.display());
    }
    crate::common::ensure_parent(out)?;
    cryoforge_io::atomic::write_bytes_atomic(out, r.html.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    for w in &r.warnings {
        tracing::warn!("report: {w}");
    }
    Ok(r)
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.dir.join("report.html"));
    // Warnings (unreadable files) are logged by `write`.
    let r = write(&a.dir, &out)?;
    if a.json {
        let v = serde_json::json!({
            "kind": r.kind.name(),
            "report": out.display().to_string(),
            "bytes": r.html.len(),
            "numbers": r.numbers,
            "warnings": r.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    ctx.done(format!("report of the {} in {}: {}", r.kind.name(), a.dir.display(), out.display()));
    Ok(())
}
