//! The report of a `cryoforge ranker score` folder: command and results, the score
//! histogram, and the best- and worst-scored particles.

use super::{sec, Builder};
use crate::charts::{histogram_png, image_tiles_png, Tile};
use crate::html::{Html, Section};
use crate::rundir::*;
use std::path::Path;

impl Builder {
    pub(super) fn ranker(&mut self, dir: &Path, prefix: &str) -> Vec<Section> {
        let intro = "Results from summary.json: particles scored, mean score, particles above 0.5, speed.";
        let keys = ["particles", "head", "mean_score", "above_0.5", "top", "particles_per_s"];
        let mut out = self.summary_sections(dir, prefix, intro, &keys);
        let mut hs = Html::new();
        self.guard(&mut hs, |b, h| {
            let csv = Csv::read(&dir.join("scores.csv"))?;
            let ci = csv
                .header
                .iter()
                .position(|c| c == "score")
                .ok_or_else(|| rerr(&csv.path, "line 1: no score column"))?;
            let mut v = Vec::with_capacity(csv.rows.len());
            for (i, r) in csv.rows.iter().enumerate() {
                let s = r.get(ci).and_then(|x| x.parse::<f64>().ok()).ok_or_else(|| {
                    rerr(&csv.path, format!("line {}: score is not a number", i + 2))
                })?;
                v.push(s);
            }
            b.png(h, histogram_png("CryoRanker scores", "score", &v, 40), "score histogram", "Scores of all particles (scores.csv). The top_N.star subsets hold the best-scored particles.");
            Ok(())
        });
        out.push(sec(prefix, "scores", "Score distribution", hs));
        let mut ex = Html::new();
        self.guard(&mut ex, |b, h| {
            let a = read_npy(&dir.join("examples.npy"))?;
            let csv = Csv::read(&dir.join("examples.csv"))?;
            if a.shape.len() != 3 || a.shape[0] != csv.rows.len() {
                return Err(rerr(&dir.join("examples.npy"), format!("shape {:?} does not match examples.csv's {} rows", a.shape, csv.rows.len())));
            }
            let (ny, nx) = (a.shape[1], a.shape[2]);
            let tiles: Vec<Tile> = csv
                .rows
                .iter()
                .enumerate()
                .map(|(i, r)| Tile {
                    pixels: a.data[i * nx * ny..(i + 1) * nx * ny].to_vec(),
                    nx,
                    ny,
                    caption: format!("{} #{} {}", r.first().map(String::as_str).unwrap_or(""), r.get(1).map(String::as_str).unwrap_or(""), r.get(2).map(String::as_str).unwrap_or("")),
                })
                .collect();
            b.png(h, image_tiles_png("Best and worst particles", &tiles, 8, 96), "best and worst particles", "The best-scored particles (first row) and the worst (second row), as stored, with their index and score.");
            Ok(())
        });
        out.push(sec(prefix, "examples", "Best and worst particles", ex));
        out
    }
}
