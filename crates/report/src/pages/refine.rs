//! The report of a `cryoforge refine` folder: command and results, iterations (resolution,
//! band, sampling, pose changes, and pose errors when the truth was given), FSC curves,
//! viewing directions, per-particle posterior statistics and the map.

use super::{sec, Builder};
use crate::charts::{density_png, histogram_png};
use crate::html::{Html, Section};
use crate::plot::{line_plot_png, LinePlot, Series};
use crate::rundir::*;
use std::path::Path;

impl Builder {
    pub(super) fn refine(&mut self, dir: &Path, prefix: &str) -> Vec<Section> {
        let intro = "Results from summary.json: gold-standard resolutions of the final half maps (Å, masked with the soft mask of mask.mrc, and unmasked), and, for simulations given --truth, the median pose errors of the final iteration.";
        let keys = [
            "resolution_0.143_masked_A",
            "resolution_0.5_masked_A",
            "resolution_0.143_unmasked_A",
            "iterations",
            "particles",
            "truth_median_angle_deg",
            "truth_median_shift_px",
            "truth_fraction_over_30deg",
        ];
        let mut out = self.summary_sections(dir, prefix, intro, &keys);
        let mut it = Html::new();
        self.guard(&mut it, |b, h| b.iterations(dir, prefix, h));
        out.push(sec(prefix, "iterations", "Iterations", it));
        let cols = [("fsc_unmasked", "half maps, unmasked"), ("fsc_masked", "half maps, masked")];
        let mut p = LinePlot::new("Half-map FSC (final iteration)", "spatial frequency (1/Å)", "FSC");
        p.hlines.push((0.143, "0.143".into()));
        p.hlines.push((0.5, "0.5".into()));
        p.y_range = Some((-0.1, 1.05));
        let caption = "FSC between the two independently refined half maps of the final iteration, unmasked and within the soft mask (mask.mrc). Resolution at 0.143.";
        let fsc = self.csv_plot(&dir.join("fsc.csv"), "frequency_per_A", &cols, p, caption);
        out.push(sec(prefix, "fsc", "FSC curves", fsc));
        let mut ang = Html::new();
        self.guard(&mut ang, |b, h| b.viewing_directions(dir, h));
        out.push(sec(prefix, "angdist", "Viewing directions", ang));
        let od = dir.join("orient");
        if od.join("orient.json").is_file() {
            let p = if prefix.is_empty() { "orient".to_string() } else { format!("{prefix}/orient") };
            out.extend(self.orient(&od, &p));
        }
        let mut sc = Html::new();
        self.guard(&mut sc, |b, h| b.particle_scores(dir, h));
        out.push(sec(prefix, "scores", "Per-particle posterior", sc));
        let map = dir.join("map.mrc");
        if map.is_file() {
            let caption = "Central sections and a projection of the refined map (contrast stretched); open map.mrc in ChimeraX to see it in 3D.";
            out.push(self.map_sections(&map, prefix, "map", "Map sections", caption));
        }
        out
    }

    fn iterations(&mut self, dir: &Path, prefix: &str, h: &mut Html) -> Result<()> {
        let path = dir.join("iterations.jsonl");
        let text = read_text(&path)?;
        let mut its = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| rerr(&path, format!("line {}: invalid JSON: {e}", i + 1)))?;
            its.push(v);
        }
        let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64());
        let cell = |x: Option<f64>, d: usize| x.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "–".into());
        let rows: Vec<Vec<String>> = its
            .iter()
            .map(|v| {
                vec![
                    cell(f(v, "iter"), 0),
                    v.get("mode").and_then(|m| m.as_str()).unwrap_or("").to_string(),
                    cell(f(v, "band_a"), 1),
                    cell(f(v, "fine_step_deg"), 2),
                    cell(f(v, "resolution_0143_a"), 2),
                    cell(f(v, "resolution_05_a"), 2),
                    cell(f(v, "median_angle_change_deg"), 2),
                    cell(f(v, "median_angular_spread_deg"), 2),
                    cell(f(v, "truth_median_angle_deg"), 2),
                    cell(f(v, "truth_median_shift_px"), 2),
                    cell(f(v, "search_seconds").zip(f(v, "reconstruct_seconds")).map(|(a, b)| a + b), 1),
                ]
            })
            .collect();
        let head = [
            "iteration",
            "search",
            "band (Å)",
            "fine step (°)",
            "FSC 0.143 (Å)",
            "FSC 0.5 (Å)",
            "median pose change (°)",
            "median angular spread (°)",
            "vs truth (°)",
            "vs truth (px)",
            "time (s)",
        ];
        h.p("One row per iteration (iterations.jsonl): the band searched, the finest angular step, the masked half-map resolutions, the median change of each particle's best pose, its posterior spread and, for simulations, the median error against the true poses.");
        h.table(&head, &rows);
        let mut p = LinePlot::new("Resolution by iteration", "iteration", "resolution (Å)");
        for (k, name) in
            [("resolution_0143_a", "FSC 0.143"), ("resolution_05_a", "FSC 0.5"), ("band_a", "band searched")]
        {
            let pts: Vec<(f64, f64)> = its.iter().filter_map(|v| Some((f(v, "iter")?, f(v, k)?))).collect();
            p.series.push(Series { name: name.into(), points: pts });
        }
        self.png(h, line_plot_png(&p), "resolution by iteration", "Frequency marching: the masked half-map resolution and the band the next iteration searches (FSC 0.5 shell plus a margin; Nyquist in the final iteration).");
        if let Some(last) = its.last() {
            for k in ["resolution_0143_a", "truth_median_angle_deg", "search_seconds"] {
                if let Some(v) = last.get(k) {
                    self.numbers.insert(format!("{}last_{k}", super::num_prefix(prefix)), v.clone());
                }
            }
        }
        Ok(())
    }

    fn viewing_directions(&mut self, dir: &Path, h: &mut Html) -> Result<()> {
        let star = dir.join("particles.star");
        let s = cryoforge_io::stack::ParticleStack::load(&star, &Default::default())
            .map_err(|e| rerr(&star, e.to_string()))?;
        let poses = s.poses.as_ref().ok_or_else(|| rerr(&star, "no poses"))?;
        let pts: Vec<(f64, f64)> = poses
            .iter()
            .map(|p| {
                let e = cryoforge_core::EulerRelion::from_rot(&p.rot);
                (e.rot_deg, 90.0 - e.tilt_deg)
            })
            .collect();
        let caption = "Density of the refined viewing directions (azimuth = rlnAngleRot, elevation = 90° − rlnAngleTilt; log-scaled counts). Uniform data fill the plane evenly (denser towards the poles on this projection is not preferred orientation: equal areas are compressed there).";
        self.png(
            h,
            density_png("Viewing directions", "azimuth (°)", "elevation (°)", &pts, 72),
            "viewing directions",
            caption,
        );
        Ok(())
    }

    fn particle_scores(&mut self, dir: &Path, h: &mut Html) -> Result<()> {
        let csv = Csv::read(&dir.join("scores.csv"))?;
        h.row_start();
        for (col, title, x) in [
            ("max_prob", "Maximum posterior probability", "rlnMaxValueProbDistribution"),
            ("angular_spread_deg", "Posterior angular spread", "degrees"),
            ("log_likelihood", "Log-likelihood", "rlnLogLikeliContribution (best pose)"),
        ] {
            let v = csv.numbers_named(col)?;
            self.png(h, histogram_png(title, x, &v, 40), title, "Per particle, from scores.csv.");
        }
        h.row_end();
        Ok(())
    }
}
