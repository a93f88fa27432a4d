//! The report of a `cryoforge wizard` folder: the outcome, the gate decisions, resolution
//! against particle count and against the score threshold, every step (status, time,
//! folder, equivalent command) and the final refinement's own diagnostics.

use super::{sec, Builder};
use crate::html::{Html, Section};
use crate::plot::{line_plot_png, LinePlot, Series};
use crate::rundir::*;
use cryoforge_wizard::pipeline::{curve_points, State};
use cryoforge_wizard::Candidate;
use std::path::Path;

fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "–".into()
    }
}

fn cand_rows(cs: &[Candidate], cfar_min: f64, res_max: f64) -> Vec<Vec<String>> {
    cs.iter()
        .map(|c| {
            let pass = cryoforge_wizard::plan::passes_gate(c, cfar_min, res_max);
            vec![
                c.label.clone(),
                c.particles.to_string(),
                f2(c.resolution_a),
                format!("{:.3}", c.cfar),
                if pass { "yes" } else { "no" }.into(),
                c.dir.clone(),
            ]
        })
        .collect()
}

impl Builder {
    pub(super) fn wizard(&mut self, dir: &Path) -> Vec<Section> {
        let mut out = Vec::new();
        let p = dir.join(cryoforge_wizard::STATE_FILE);
        let st: State = match read_text(&p).and_then(|t| {
            serde_json::from_str(&t).map_err(|e| {
                rerr(&p, format!("invalid wizard state at line {}, column {}: {e}", e.line(), e.column()))
            })
        }) {
            Ok(s) => s,
            Err(e) => {
                let mut h = Html::new();
                h.p_class("warn", &format!("Could not read {e}"));
                self.warnings.push(e.to_string());
                out.push(sec("", "overview", "Overview", h));
                return out;
            }
        };
        let (cfar_min, res_max) = (st.config.cfar_min, st.scaled.resolution_max_a);
        // Overview.
        let mut ov = Html::new();
        ov.p(&format!("Command: {}", st.command));
        let mut rows = vec![
            ("status".to_string(), st.status.clone()),
            ("particles".to_string(), st.particles.to_string()),
            ("pixel size (Å)".to_string(), format!("{:.3}", st.apix_a)),
            (
                "scoring".to_string(),
                if st.scoring == "ranker" {
                    "CryoRanker (score/)".to_string()
                } else {
                    "consensus refinement log-likelihoods → two-component mixture (consensus/)".to_string()
                },
            ),
            ("initial subsets".to_string(), format!("{:?}", st.scaled.subsets)),
            ("gate".to_string(), format!("cFAR ≥ {cfar_min}, resolution ≤ {res_max:.2} Å")),
            ("total time (s)".to_string(), format!("{:.0}", st.seconds)),
        ];
        if let Some(f) = &st.final_result {
            rows.push((
                "final map".into(),
                format!(
                    "{} ({} particles, {} Å, cFAR {:.3})",
                    f.map,
                    f.candidate.particles,
                    f2(f.candidate.resolution_a),
                    f.candidate.cfar
                ),
            ));
            rows.push(("final decision".into(), f.reason.clone()));
            self.numbers.insert("final_particles".into(), serde_json::json!(f.candidate.particles));
            self.numbers.insert("final_resolution_A".into(), serde_json::json!(f.candidate.resolution_a));
            self.numbers.insert("final_cfar".into(), serde_json::json!(f.candidate.cfar));
        }
        self.numbers.insert("status".into(), serde_json::json!(st.status));
        self.numbers.insert("seconds".into(), serde_json::json!(st.seconds));
        ov.kv_table(&rows);
        for n in &st.scaled.notes {
            ov.p_class("note", n);
        }
        out.push(sec("", "overview", "Overview", ov));
        // Gate.
        let mut g = Html::new();
        g.p("Initial models: ab initio (one class) and refinement on the best-scored subsets, then the orientation gate.");
        let head = ["volume", "particles", "resolution (Å)", "cFAR", "passes the gate", "folder"];
        g.table(&head, &cand_rows(&st.initial, cfar_min, res_max));
        if let Some(d) = &st.gate {
            g.p(&format!("Gate: {}", d.reason));
        }
        if let Some(b) = &st.branch {
            g.h3(&format!(
                "Preferred-orientation branch ({})",
                if b.method == "kmeans" {
                    "k-means on Cryo-IEF features"
                } else {
                    "viewing directions rebalanced"
                }
            ));
            g.table(&head, &cand_rows(&b.candidates, cfar_min, res_max));
            g.p(&format!("Branch: {}", b.reason));
        }
        out.push(sec("", "gate", "Initial models and the orientation gate", g));
        // Search.
        let mut s = Html::new();
        if let Some((lo, hi)) = st.search_range {
            s.p(&format!(
                "Particle-number search from {lo} to {hi} particles (where the score drops below {} and {}), {} sizes then {} around the best; refined from {}.",
                st.config.score_high,
                st.config.score_low,
                st.config.search_first,
                st.config.search_second,
                st.final_result.as_ref().map(|f| f.start_map.as_str()).unwrap_or("the start volume")
            ));
        }
        let pts = curve_points(&st);
        if !pts.is_empty() {
            let res: Vec<(f64, f64)> = pts.iter().map(|p| (p.0 as f64, p.1)).collect();
            let mut lp =
                LinePlot::new("Resolution vs particle count", "particles", "resolution (Å, FSC 0.143)");
            lp.series.push(Series { name: "refinement".into(), points: res });
            self.png(
                &mut s,
                line_plot_png(&lp),
                "resolution vs particles",
                "Each point a refinement of the best-scored particles.",
            );
            let mut by_score: Vec<(f64, f64)> = pts.iter().map(|p| (p.2, p.1)).collect();
            by_score.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut lp = LinePlot::new(
                "Resolution vs score threshold",
                "lowest score used",
                "resolution (Å, FSC 0.143)",
            );
            lp.series.push(Series { name: "refinement".into(), points: by_score });
            self.png(
                &mut s,
                line_plot_png(&lp),
                "resolution vs score",
                "The same refinements against the lowest score they include.",
            );
            let rows: Vec<Vec<String>> = st
                .search
                .iter()
                .map(|p| {
                    vec![
                        p.round.to_string(),
                        p.candidate.particles.to_string(),
                        format!("{:.3}", p.min_score),
                        f2(p.candidate.resolution_a),
                        format!("{:.3}", p.candidate.cfar),
                        if p.passes_cfar { "yes" } else { "no" }.into(),
                        p.candidate.dir.clone(),
                    ]
                })
                .collect();
            s.table(
                &["round", "particles", "lowest score", "resolution (Å)", "cFAR", "cFAR ≥ min", "folder"],
                &rows,
            );
        } else {
            s.p_class("note", "The search has not run yet.");
        }
        out.push(sec("", "search", "Particle-number search", s));
        // Steps.
        let mut t = Html::new();
        let rows: Vec<Vec<String>> = st
            .steps
            .iter()
            .map(|x| {
                vec![
                    x.name.clone(),
                    if x.resumed { format!("{} (earlier run)", x.status) } else { x.status.clone() },
                    format!("{:.1}", x.seconds),
                    x.dir.clone(),
                    if x.status == "failed" { x.message.clone() } else { x.command.clone() },
                ]
            })
            .collect();
        t.table(&["step", "status", "seconds", "folder", "command (or error)"], &rows);
        out.push(sec("", "steps", "Steps", t));
        // The final refinement.
        if let Some(f) = &st.final_result {
            let d = dir.join(&f.candidate.dir);
            if d.is_dir() {
                // (the refinement's page includes its orientation diagnostics)
                out.extend(self.refine(&d, "final"));
            }
        }
        out
    }
}
