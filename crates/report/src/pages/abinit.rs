//! The report of a `cryoforge abinit` folder: command and results, class table, the SGD
//! schedule (resolution, step, class fractions, score by iteration) and every class map.

use super::{sec, Builder};
use crate::html::{Html, Section};
use crate::plot::{line_plot_png, LinePlot, Series};
use crate::rundir::*;
use std::path::Path;

impl Builder {
    pub(super) fn abinit(&mut self, dir: &Path, prefix: &str) -> Vec<Section> {
        let intro = "Results from summary.json: class sizes, the resolution of each class's gold-standard reconstruction from its particles (FSC 0.143 of the half maps; an initial model, not a refined map) and the start kept.";
        let keys = ["classes", "class_sizes", "largest_class", "chosen_start", "seconds"];
        let mut out = self.summary_sections(dir, prefix, intro, &keys);
        let mut cl = Html::new();
        self.guard(&mut cl, |_, h| {
            let csv = Csv::read(&dir.join("classes.csv"))?;
            h.p("Each particle goes to its most probable class after a last global search of every particle against every class. An ab initio map has either hand: dock it onto a known map with `cryoforge align-maps --try-hand`.");
            h.table(&csv.header.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &csv.rows);
            Ok(())
        });
        out.push(sec(prefix, "classes", "Classes", cl));
        let mut it = Html::new();
        self.guard(&mut it, |b, h| b.abinit_iterations(dir, h));
        out.push(sec(prefix, "iterations", "SGD iterations", it));
        for c in 1..=50 {
            let map = dir.join(format!("class_{c:03}.mrc"));
            if !map.is_file() {
                break;
            }
            let caption = format!("Central sections and a projection of class {c} (contrast stretched); open class_{c:03}.mrc in ChimeraX.");
            out.push(self.map_sections(&map, prefix, &format!("class{c}"), &format!("Class {c}"), &caption));
        }
        out
    }

    fn abinit_iterations(&mut self, dir: &Path, h: &mut Html) -> Result<()> {
        let path = dir.join("iterations.jsonl");
        let text = read_text(&path)?;
        let mut rows: Vec<serde_json::Value> = Vec::new();
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            rows.push(
                serde_json::from_str(l)
                    .map_err(|e| rerr(&path, format!("line {}: invalid JSON: {e}", i + 1)))?,
            );
        }
        let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64());
        let starts = rows.iter().filter_map(|r| f(r, "start")).fold(0f64, f64::max) as usize + 1;
        let mut p =
            LinePlot::new("Resolution and step by iteration", "iteration", "resolution (Å) / step η × 100");
        let mut q = LinePlot::new("Class fractions by iteration", "iteration", "fraction of the mini-batch");
        let mut s = LinePlot::new("Mean log-likelihood of the mini-batch", "iteration", "score");
        for st in 0..starts {
            let mine: Vec<&serde_json::Value> =
                rows.iter().filter(|r| f(r, "start") == Some(st as f64)).collect();
            let pts = |k: &str, scale: f64| -> Vec<(f64, f64)> {
                mine.iter().filter_map(|r| Some((f(r, "iter")?, f(r, k)? * scale))).collect()
            };
            let tag = if starts > 1 { format!(" (start {})", st + 1) } else { String::new() };
            p.series.push(Series { name: format!("resolution{tag}"), points: pts("resolution_a", 1.0) });
            p.series.push(Series { name: format!("η × 100{tag}"), points: pts("eta", 100.0) });
            s.series.push(Series { name: format!("score{tag}"), points: pts("mean_score", 1.0) });
            let k = mine
                .first()
                .and_then(|r| r.get("class_fractions"))
                .and_then(|c| c.as_array())
                .map_or(0, |a| a.len());
            for c in 0..k {
                let pts: Vec<(f64, f64)> = mine
                    .iter()
                    .filter_map(|r| Some((f(r, "iter")?, r.get("class_fractions")?.get(c)?.as_f64()?)))
                    .collect();
                q.series.push(Series { name: format!("class {}{tag}", c + 1), points: pts });
            }
        }
        self.png(h, line_plot_png(&p), "resolution", "The band of each mini-batch's search and update (35 → 12 Å by default, linear in 1/Å over 70 % of the iterations) and the SGD step η.");
        self.png(h, line_plot_png(&q), "class fractions", "Share of each mini-batch's posterior per class.");
        self.png(h, line_plot_png(&s), "score", "Mean class-marginal best log-likelihood of each mini-batch (rises as the maps improve, falls when the band widens).");
        Ok(())
    }
}
