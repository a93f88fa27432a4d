//! The report of a `cryoforge class2d` folder: command and results, the gallery of class
//! averages, class sizes and the convergence of the EM iterations.

use super::{sec, Builder};
use crate::html::{Html, Section};
use crate::plot::{line_plot_png, LinePlot, Series};
use crate::rundir::*;
use std::path::Path;

impl Builder {
    pub(super) fn class2d(&mut self, dir: &Path, prefix: &str) -> Vec<Section> {
        let intro = "Results from summary.json: number of classes and particles per class.";
        let keys = ["classes", "class_sizes", "seconds"];
        let mut out = self.summary_sections(dir, prefix, intro, &keys);
        let mut g = Html::new();
        let p = dir.join("gallery.png");
        match std::fs::read(&p) {
            Ok(b) => {
                g.png(&b, "class averages", "Class averages (classes.mrcs), largest first, with class number and size. Keep the good classes with `cryoforge select particles.star --classes 1,4,7 -o good.star`.");
            }
            Err(e) => {
                let m = format!("{}: cannot read: {e}", p.display());
                g.p_class("warn", &m);
                self.warnings.push(m);
            }
        }
        out.push(sec(prefix, "gallery", "Class averages", g));
        let mut cl = Html::new();
        self.guard(&mut cl, |_, h| {
            let csv = Csv::read(&dir.join("classes.csv"))?;
            h.table(&csv.header.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &csv.rows);
            Ok(())
        });
        out.push(sec(prefix, "classes", "Classes", cl));
        let mut it = Html::new();
        self.guard(&mut it, |b, h| {
            let path = dir.join("iterations.jsonl");
            let text = read_text(&path)?;
            let mut changed = Vec::new();
            let mut prob = Vec::new();
            for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(l).map_err(|e| rerr(&path, format!("line {}: invalid JSON: {e}", i + 1)))?;
                let x = v.get("iter").and_then(|x| x.as_f64()).unwrap_or((i + 1) as f64);
                if let Some(c) = v.get("changed").and_then(|x| x.as_f64()) {
                    changed.push((x, c));
                }
                if let Some(c) = v.get("mean_max_prob").and_then(|x| x.as_f64()) {
                    prob.push((x, c));
                }
            }
            let mut p = LinePlot::new("Convergence", "iteration", "fraction");
            p.series.push(Series { name: "particles changing class".into(), points: changed });
            p.series.push(Series { name: "mean class posterior of the best class".into(), points: prob });
            p.y_range = Some((0.0, 1.05));
            b.png(h, line_plot_png(&p), "convergence", "Share of particles whose class changed in each iteration, and the mean posterior probability of each particle's class (RELION's rlnMaxValueProbDistribution, summed over its poses).");
            Ok(())
        });
        out.push(sec(prefix, "iterations", "EM iterations", it));
        out
    }
}
