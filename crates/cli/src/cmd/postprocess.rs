//! `cryoforge postprocess`: masked, phase-randomisation corrected FSC and a sharpened
//! map from two half maps, as `relion_postprocess`.

use super::mask::read_cubic_map;
use crate::common::{ensure_dir, write_json_atomic, Ctx};
use anyhow::{bail, Context, Result};
use cryoforge_core::fsc::FscCurve;
use cryoforge_io::mrc;
use cryoforge_recon::postprocess::{postprocess, BFactor, PostprocessOptions, Postprocessed};
use cryoforge_report::{line_plot_png, LinePlot, Series};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Masked, phase-randomisation corrected FSC and a sharpened map from two half maps (as
/// `relion_postprocess`).
///
/// As RELION 3.1: the FSC of the halves unmasked and masked, corrected for the mask's own
/// correlation by phase randomisation (Chen et al. 2013: phases beyond the shell where the
/// unmasked FSC drops below --randomize-at-fsc are randomised, the halves masked again, and
/// FSC_true = (FSC_masked − FSC_random)/(1 − FSC_random)); the resolution where the
/// corrected FSC drops below 0.143; the average map weighted by sqrt(2·FSC/(1+FSC)) per
/// shell, sharpened by a B-factor (fitted to the Guinier plot between --autob-lowres-a and
/// the resolution, or given) and low-passed at the resolution.
///
/// Writes OUT/postprocess.mrc, postprocess_masked.mrc (× the mask), fsc.csv (unmasked,
/// masked, phase-randomised masked and corrected FSC), fsc.png, guinier.csv, guinier.png,
/// summary.json and report.html. Nothing is written when an input is wrong.
///
/// Examples:
///   cryoforge postprocess recon/half_a.mrc recon/half_b.mrc --mask mask.mrc --out post/
///   cryoforge postprocess half1.mrc half2.mrc --mask mask.mrc --bfactor -80 --out post/ --json
///   cryoforge postprocess half1.mrc half2.mrc --mask mask.mrc --autob-lowres-a 8 --lowpass-a 4.5 --out post/
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// First half map (MRC).
    pub half1: PathBuf,
    /// Second half map (MRC, same box).
    pub half2: PathBuf,
    /// Soft mask (MRC, same box, values in [0, 1]; see `cryoforge mask`).
    #[arg(long, value_name = "MASK.mrc")]
    pub mask: PathBuf,
    /// B-factor in Å² (negative sharpens; RELION --adhoc_bfac), or `auto` (RELION --auto_bfac).
    #[arg(long, default_value = "auto", value_name = "A2|auto", allow_hyphen_values = true)]
    pub bfactor: String,
    /// Output folder.
    #[arg(long, short, default_value = "postprocess", value_name = "DIR")]
    pub out: PathBuf,
    /// Low-resolution end of the automatic B-factor fit (Å).
    #[arg(long, default_value_t = 10.0, value_name = "A")]
    pub autob_lowres_a: f64,
    /// High-resolution end of the fit (Å; default: the final resolution).
    #[arg(long, value_name = "A")]
    pub autob_highres_a: Option<f64>,
    /// Low-pass the sharpened map here (Å; default: the final resolution).
    #[arg(long, value_name = "A")]
    pub lowpass_a: Option<f64>,
    /// Randomise phases beyond the shell where the unmasked FSC first drops below this.
    #[arg(long, default_value_t = 0.8, value_name = "FSC")]
    pub randomize_at_fsc: f64,
    /// Width of the low-pass filter's raised-cosine edge in Fourier shells.
    #[arg(long, default_value_t = 2.0, value_name = "SHELLS")]
    pub filter_edge_shells: f64,
    /// Do not weight the shells by sqrt(2·FSC/(1+FSC)).
    #[arg(long)]
    pub skip_fsc_weighting: bool,
    /// Pixel size in Å (default: half1's header).
    #[arg(long, value_name = "A")]
    pub apix: Option<f64>,
    /// Seed of the random phases.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    fn options(&self) -> Result<PostprocessOptions> {
        let bfactor = if self.bfactor.eq_ignore_ascii_case("auto") {
            BFactor::Auto
        } else {
            match self.bfactor.parse::<f64>() {
                Ok(b) if b.is_finite() => BFactor::Fixed(b),
                _ => bail!("--bfactor {:?}: expected a B-factor in Å² (e.g. -80) or `auto`", self.bfactor),
            }
        };
        Ok(PostprocessOptions {
            bfactor,
            autob_lowres_a: self.autob_lowres_a,
            autob_highres_a: self.autob_highres_a,
            randomize_at_fsc: self.randomize_at_fsc,
            lowpass_a: self.lowpass_a,
            filter_edge_shells: self.filter_edge_shells,
            fsc_weighting: !self.skip_fsc_weighting,
            seed: self.seed,
        })
    }
}

/// Where the inputs of a post-processing came from, for summary.json and the map headers.
pub struct Inputs<'a> {
    pub half1: &'a Path,
    pub half2: &'a Path,
    /// `None` when the mask was made in memory.
    pub mask: Option<&'a Path>,
    /// Origin (Å) written into the output maps' headers.
    pub origin_a: [f32; 3],
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let opts = a.options()?;
    let h1 = read_cubic_map(&a.half1, "first half map")?;
    let h2 = read_cubic_map(&a.half2, "second half map")?;
    let m = read_cubic_map(&a.mask, "mask")?;
    let n = h1.n;
    if h2.n != n {
        bail!("{}: the second half map is {}³ but {} is {n}³", a.half2.display(), h2.n, a.half1.display());
    }
    if m.n != n {
        bail!("{}: the mask is {}³ but the half maps are {n}³", a.mask.display(), m.n);
    }
    let apix = match (a.apix, h1.apix_a) {
        (Some(p), _) if p.is_finite() && p > 0.0 => p,
        (Some(p), _) => bail!("--apix {p} must be > 0"),
        (None, Some(p)) => p,
        (None, None) => bail!("{}: the header has no pixel size; give --apix", a.half1.display()),
    };
    for (p, v) in [(&a.half2, h2.apix_a), (&a.mask, m.apix_a)] {
        if let Some(q) = v.filter(|q| (q - apix).abs() > 1e-3 * apix) {
            tracing::warn!("{}: pixel size {q} Å differs from {apix} Å", p.display());
        }
    }
    let t0 = std::time::Instant::now();
    let p = postprocess(&h1.data, &h2.data, &m.data, n, apix, &opts).with_context(|| {
        format!("post-processing {} and {} with {}", a.half1.display(), a.half2.display(), a.mask.display())
    })?;
    let secs = t0.elapsed().as_secs_f64();
    for w in &p.warnings {
        tracing::warn!("{w}");
    }
    let inputs = Inputs { half1: &a.half1, half2: &a.half2, mask: Some(&a.mask), origin_a: h1.origin_a };
    let summary = write_outputs(&a.out, &p, &opts, &inputs, secs)?;
    let report = a.out.join("report.html");
    if let Err(e) = crate::cmd::report::write(&a.out, &report) {
        tracing::warn!("results written, but the report failed: {e:#}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    ctx.done(format!(
        "resolution {:.2} Å (corrected masked FSC 0.143), B-factor {:.1} Å² in {secs:.1} s; results in {}",
        p.resolution_a,
        p.bfactor_a2,
        a.out.display()
    ));
    Ok(())
}

/// Write the outputs of a post-processing into `out` (created): the two maps, fsc.csv,
/// fsc.png, guinier.csv, guinier.png and, last, summary.json, which is returned. Every
/// file is built in memory first and written atomically.
pub fn write_outputs(
    out: &Path,
    p: &Postprocessed,
    opts: &PostprocessOptions,
    inputs: &Inputs<'_>,
    seconds: f64,
) -> Result<serde_json::Value> {
    let files = [
        ("fsc.csv", fsc_csv(p).into_bytes()),
        ("fsc.png", line_plot_png(&fsc_plot(p))?),
        ("guinier.csv", guinier_csv(p).into_bytes()),
        ("guinier.png", line_plot_png(&guinier_plot(p))?),
    ];
    let summary = summary_json(p, opts, inputs, seconds);
    ensure_dir(out)?;
    let n = p.n;
    for (name, map) in [("postprocess.mrc", &p.map), ("postprocess_masked.mrc", &p.map_masked)] {
        mrc::write_volume(out.join(name), map, [n, n, n], p.apix_a as f32, inputs.origin_a)?;
    }
    for (name, bytes) in &files {
        let path = out.join(name);
        cryoforge_io::atomic::write_bytes_atomic(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    write_json_atomic(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}

fn summary_json(
    p: &Postprocessed,
    opts: &PostprocessOptions,
    inputs: &Inputs<'_>,
    seconds: f64,
) -> serde_json::Value {
    let fit = p.fit.map(|f| {
        json!({
            "intercept": f.intercept, "slope_A2": f.slope_a2, "correlation": f.correlation,
            "points": f.points, "lowres_A": f.lowres_a, "highres_A": f.highres_a, "bfactor_A2": f.bfactor_a2(),
        })
    });
    json!({
        "kind": "postprocess",
        "half1": inputs.half1, "half2": inputs.half2, "mask": inputs.mask,
        "box_px": p.n, "apix_A": p.apix_a,
        "resolution_A": p.resolution_a,
        "resolution_0.143_unmasked_A": p.fsc_unmasked.resolution_at(0.143),
        "resolution_0.143_masked_A": p.fsc_masked.resolution_at(0.143),
        "bfactor_A2": p.bfactor_a2,
        "bfactor_mode": match opts.bfactor { BFactor::Auto => "auto", BFactor::Fixed(_) => "given" },
        "guinier_fit": fit,
        "randomize_at_fsc": opts.randomize_at_fsc,
        "randomize_shell": p.randomize_shell,
        "randomize_resolution_A": p.randomize_resolution_a(),
        "lowpass_A": finite(p.lowpass_a),
        "filter_edge_shells": opts.filter_edge_shells,
        "fsc_weighting": opts.fsc_weighting,
        "seed": opts.seed,
        "warnings": p.warnings,
        "seconds": seconds,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn fsc_csv(p: &Postprocessed) -> String {
    let mut t = String::from(
        "shell,frequency_per_A,resolution_A,fsc_unmasked,fsc_masked,fsc_random_masked,fsc_corrected\n",
    );
    for k in 0..p.fsc_unmasked.fsc.len() {
        let f = p.fsc_unmasked.freq(k);
        let res = if f > 0.0 { 1.0 / f } else { f64::INFINITY };
        let rnd = p.fsc_random_masked.as_ref().map_or(f64::NAN, |c| c.fsc[k]);
        t.push_str(&format!(
            "{k},{f:.6},{res:.4},{:.6},{:.6},{rnd:.6},{:.6}\n",
            p.fsc_unmasked.fsc[k], p.fsc_masked.fsc[k], p.fsc_corrected.fsc[k]
        ));
    }
    t
}

fn guinier_csv(p: &Postprocessed) -> String {
    let mut t =
        String::from("shell,s2_per_A2,resolution_A,ln_amp_input,ln_amp_weighted,ln_amp_sharpened,in_fit\n");
    for g in &p.guinier {
        t.push_str(&format!(
            "{},{:.8},{:.4},{:.6},{:.6},{:.6},{}\n",
            g.shell,
            g.s2_per_a2,
            1.0 / g.s2_per_a2.sqrt(),
            g.ln_amp_input,
            g.ln_amp_weighted,
            g.ln_amp_sharpened,
            g.in_fit as u8
        ));
    }
    t
}

fn fsc_plot(p: &Postprocessed) -> LinePlot {
    let mut pl =
        LinePlot::new("Fourier shell correlation (post-processing)", "spatial frequency (1/Å)", "FSC");
    let pts = |c: &FscCurve| (1..c.fsc.len()).map(|k| (c.freq(k), c.fsc[k])).collect::<Vec<_>>();
    pl.series.push(Series { name: "unmasked".into(), points: pts(&p.fsc_unmasked) });
    pl.series.push(Series { name: "masked".into(), points: pts(&p.fsc_masked) });
    if let Some(r) = &p.fsc_random_masked {
        pl.series.push(Series { name: "phase-randomised, masked".into(), points: pts(r) });
    }
    pl.series.push(Series { name: "corrected".into(), points: pts(&p.fsc_corrected) });
    pl.hlines.push((0.143, "0.143".into()));
    pl.y_range = Some((-0.1, 1.05));
    pl
}

fn guinier_plot(p: &Postprocessed) -> LinePlot {
    let mut pl = LinePlot::new("Guinier plot", "s² = 1/resolution² (1/Å²)", "ln(mean amplitude)");
    let series = |name: &str, f: &dyn Fn(&cryoforge_recon::postprocess::GuinierPoint) -> f64| Series {
        name: name.into(),
        points: p.guinier.iter().map(|g| (g.s2_per_a2, f(g))).filter(|(_, y)| y.is_finite()).collect(),
    };
    pl.series.push(series("average of the halves", &|g| g.ln_amp_input));
    pl.series.push(series("FSC-weighted", &|g| g.ln_amp_weighted));
    pl.series.push(series("sharpened", &|g| g.ln_amp_sharpened));
    if let Some(f) = p.fit {
        let xs: Vec<f64> = p.guinier.iter().filter(|g| g.in_fit).map(|g| g.s2_per_a2).collect();
        if let (Some(&x0), Some(&x1)) = (xs.first(), xs.last()) {
            let line = |x: f64| (x, f.intercept + f.slope_a2 * x);
            pl.series.push(Series {
                name: format!("fit, B = {:.1} Å²", f.bfactor_a2()),
                points: vec![line(x0), line(x1)],
            });
        }
    }
    pl
}
