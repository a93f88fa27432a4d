//! The report of a `cryoforge ief cluster` folder: command and results (cluster sizes,
//! purity against labels), and the UMAP of the features coloured by cluster and by label.

use super::{sec, Builder};
use crate::charts::{scatter_png, Colouring, ScatterPlot};
use crate::html::{Html, Section};
use crate::rundir::*;
use std::path::Path;

impl Builder {
    pub(super) fn clusters(&mut self, dir: &Path, prefix: &str) -> Vec<Section> {
        let intro = "Results from summary.json: particles, clusters and their sizes (largest first), k-means inertia, and the agreement with the labels when given.";
        let keys =
            ["particles", "k", "sizes", "inertia", "purity", "adjusted_rand_index", "labels", "seconds"];
        let mut out = self.summary_sections(dir, prefix, intro, &keys);
        let mut hs = Html::new();
        self.guard(&mut hs, |b, h| {
            let csv = Csv::read(&dir.join("umap.csv"))?;
            let col = |name: &str| csv.header.iter().position(|c| c == name);
            let (xi, yi, ci) = match (col("x"), col("y"), col("cluster")) {
                (Some(x), Some(y), Some(c)) => (x, y, c),
                _ => return Err(rerr(&csv.path, "line 1: expected columns x, y, cluster")),
            };
            let li = col("label");
            let mut pts = Vec::with_capacity(csv.rows.len());
            let mut cl = Vec::with_capacity(csv.rows.len());
            let mut lab: Vec<String> = Vec::new();
            for (i, r) in csv.rows.iter().enumerate() {
                let num = |j: usize| r.get(j).and_then(|v| v.parse::<f64>().ok());
                match (num(xi), num(yi), num(ci)) {
                    (Some(x), Some(y), Some(c)) if c >= 1.0 => {
                        pts.push((x, y));
                        cl.push(c as usize - 1);
                    }
                    _ => return Err(rerr(&csv.path, format!("line {}: x, y or cluster is not a number", i + 2))),
                }
                if let Some(l) = li {
                    lab.push(r.get(l).cloned().unwrap_or_default());
                }
            }
            let k = cl.iter().copied().max().map_or(0, |m| m + 1);
            let mut p = ScatterPlot::new("UMAP of the features, by cluster", "UMAP 1", "UMAP 2", pts.clone());
            p.colouring = Colouring::Categorical { labels: cl, names: (0..k).map(|c| format!("cluster {}", c + 1)).collect() };
            b.png(h, scatter_png(&p), "UMAP by cluster", "Standardised Cryo-IEF features of the particles in umap.csv, coloured by k-means cluster (cluster_NN.star).");
            if !lab.is_empty() {
                let mut names: Vec<String> = lab.clone();
                names.sort();
                names.dedup();
                let ids: Vec<usize> = lab.iter().map(|l| names.binary_search(l).unwrap_or(0)).collect();
                let mut p = ScatterPlot::new("UMAP of the features, by label", "UMAP 1", "UMAP 2", pts);
                p.colouring = Colouring::Categorical { labels: ids, names };
                b.png(h, scatter_png(&p), "UMAP by label", "The same embedding coloured by the given labels.");
            }
            Ok(())
        });
        out.push(sec(prefix, "umap", "Feature map", hs));
        out
    }
}
