//! The report of a `cryoforge pros run` folder: one row per iteration (pose errors before
//! and after when the truth was given, raw-only and co-refinement resolutions, quality of
//! the generated particles), then per iteration the raw-only reconstruction (FSC, orientation
//! diagnostics, map), the co-refinement (a `refine` report) and the HVAE training run.

use super::{sec, Builder};
use crate::html::{Html, Section};
use crate::plot::LinePlot;
use crate::rundir::*;
use std::path::Path;

impl Builder {
    pub(super) fn pros(&mut self, dir: &Path) -> Vec<Section> {
        let mut out = Vec::new();
        let mut ov = Html::new();
        ov.p("cryoPROS: per iteration, the conditional HVAE is trained on the raw particles (current poses and reference), auxiliary particles are generated at uniform poses, raw + auxiliary particles are co-refined, and the raw particles alone are reconstructed with their new poses; that map starts the next iteration.");
        let mut iters: Vec<(usize, std::path::PathBuf)> = Vec::new();
        match read_json(&dir.join("summary.json")) {
            Ok(serde_json::Value::Array(a)) => {
                let f = |v: Option<&serde_json::Value>, scale: f64, digits: usize| {
                    v.and_then(|x| x.as_f64())
                        .map(|x| format!("{:.*}", digits, x * scale))
                        .unwrap_or_else(|| "—".into())
                };
                let rows: Vec<Vec<String>> = a
                    .iter()
                    .map(|s| {
                        let it = s.get("iteration").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                        iters.push((it, dir.join(format!("iter_{it:02}"))));
                        let tb = s.get("truth_before");
                        let ta = s.get("truth_after");
                        let g = s.get("generated");
                        vec![
                            it.to_string(),
                            f(tb.and_then(|t| t.get("fraction_over_30deg")), 100.0, 1),
                            f(ta.and_then(|t| t.get("fraction_over_30deg")), 100.0, 1),
                            f(tb.and_then(|t| t.get("median_angle_deg")), 1.0, 2),
                            f(ta.and_then(|t| t.get("median_angle_deg")), 1.0, 2),
                            f(s.get("raw_resolution_0143_a"), 1.0, 2),
                            f(s.get("corefine_resolution_a"), 1.0, 2),
                            f(g.and_then(|g| g.get("histogram_kl")), 1.0, 3),
                            f(g.and_then(|g| g.get("snr_db_generated")), 1.0, 2),
                            f(g.and_then(|g| g.get("snr_db_raw")), 1.0, 2),
                            format!(
                                "{} / {}",
                                f(g.and_then(|g| g.get("corr_own_pose")), 1.0, 3),
                                f(g.and_then(|g| g.get("corr_other_pose")), 1.0, 3)
                            ),
                            f(s.get("seconds"), 1.0, 0),
                        ]
                    })
                    .collect();
                ov.table(
                    &[
                        "iteration",
                        "% > 30° before",
                        "% > 30° after",
                        "median error before (°)",
                        "after (°)",
                        "raw-only (Å, 0.143)",
                        "co-refinement (Å)",
                        "histogram KL",
                        "SNR generated (dB)",
                        "SNR raw (dB)",
                        "corr own / other pose",
                        "seconds",
                    ],
                    &rows,
                );
                if let Some(last) = a.last() {
                    for k in ["raw_resolution_0143_a", "raw_resolution_05_a", "corefine_resolution_a"] {
                        if let Some(v) = last.get(k) {
                            self.numbers.insert(k.into(), v.clone());
                        }
                    }
                    if let Some(v) = last.get("truth_after").and_then(|t| t.get("fraction_over_30deg")) {
                        self.numbers.insert("truth_fraction_over_30deg".into(), v.clone());
                    }
                }
            }
            Ok(_) => {
                let m = format!("{}: not a list of iterations", dir.join("summary.json").display());
                ov.p_class("warn", &m);
                self.warnings.push(m);
            }
            Err(e) => {
                ov.p_class("warn", &format!("Could not read {e}"));
                self.warnings.push(e.to_string());
            }
        }
        out.push(sec("", "overview", "Iterations", ov));
        for (it, d) in iters {
            let raw = d.join("raw");
            let prefix = format!("iteration {it} raw-only");
            let mut p = LinePlot::new("Half-map FSC, raw particles only", "spatial frequency (1/Å)", "FSC");
            p.hlines.push((0.143, "0.143".into()));
            p.hlines.push((0.5, "0.5".into()));
            p.y_range = Some((-0.1, 1.05));
            let fsc = self.csv_plot(
                &raw.join("fsc.csv"),
                "frequency_per_A",
                &[("fsc_unmasked", "raw-only half maps")],
                p,
                "FSC of the half maps of the raw particles reconstructed alone with their co-refined poses (the co-refinement's half sets).",
            );
            out.push(sec(&prefix, "fsc", "FSC", fsc));
            if raw.join("orient").join("orient.json").is_file() {
                out.extend(self.orient(&raw.join("orient"), &format!("{prefix}/orient")));
            }
            if raw.join("raw_only.mrc").is_file() {
                out.push(self.map_sections(
                    &raw.join("raw_only.mrc"),
                    &prefix,
                    "map",
                    "Map sections",
                    "Central sections and a projection of the raw-only map.",
                ));
            }
            out.extend(self.refine(&d.join("corefine"), &format!("iteration {it} co-refinement")));
            out.extend(self.run(&d.join("train"), &format!("iteration {it} HVAE")));
        }
        let b = dir.join("balanced_local");
        if b.join("iterations.jsonl").is_file() {
            out.extend(self.refine(&b, "balanced-subset local refinement"));
        }
        out
    }
}
