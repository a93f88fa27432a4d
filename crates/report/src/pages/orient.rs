//! The report of a `cryoforge orient` folder: verdict and key numbers, conical FSC,
//! directional resolution, and the viewing directions when poses were given.

use super::{sec, Builder};
use crate::html::{Html, Section};
use crate::rundir::*;
use std::path::Path;

impl Builder {
    pub(super) fn orient(&mut self, dir: &Path, prefix: &str) -> Vec<Section> {
        let mut out = Vec::new();
        let mut ov = Html::new();
        self.guard(&mut ov, |b, h| b.orient_overview(dir, prefix, h));
        out.push(sec(prefix, "orient", "Orientation diagnostics", ov));
        let plots = [
            ("conical_fsc.png", "Conical FSC", "FSC of the half maps over all directions and within the 20° cones of the worst, median and best axes (ranked by the area under the curve up to the 0.143 crossing, as cFAR)."),
            ("directional_resolution.png", "Directional resolution", "Histogram of the resolution at FSC 0.143 along each cone axis. A narrow peak means isotropic resolution; a long tail of poor directions is the signature of preferred orientation."),
            ("resolution_map.png", "Resolution by direction", "Each cone axis at its azimuth and elevation, coloured by its resolution (Å): missing views show up as a band or cap of poor resolution."),
            ("viewing_directions.png", "Viewing directions", "Density of the particles' viewing directions (log-scaled counts)."),
        ];
        for (file, title, caption) in plots {
            let p = dir.join(file);
            if !p.is_file() {
                continue;
            }
            let mut h = Html::new();
            match std::fs::read(&p) {
                Ok(bytes) => {
                    h.png(&bytes, title, caption);
                }
                Err(e) => {
                    let msg = format!("{}: cannot read: {e}", p.display());
                    h.p_class("warn", &msg);
                    self.warnings.push(msg);
                }
            }
            out.push(sec(prefix, file.trim_end_matches(".png"), title, h));
        }
        out
    }

    fn orient_overview(&mut self, dir: &Path, prefix: &str, h: &mut Html) -> Result<()> {
        let path = dir.join("orient.json");
        let j = read_json(&path)?;
        let f = |k: &str| j.get(k).and_then(|v| v.as_f64());
        if let Some(v) = j.get("verdict").and_then(|v| v.as_str()) {
            let flagged = j.get("preferred_orientation").and_then(|v| v.as_bool()).unwrap_or(false);
            h.p_class(if flagged { "warn" } else { "ok" }, v);
        }
        let fmt =
            |v: Option<f64>, unit: &str| v.map(|x| format!("{x:.3}{unit}")).unwrap_or_else(|| "—".into());
        let scf = j.get("scf").filter(|v| !v.is_null());
        let sf = |k: &str| scf.and_then(|s| s.get(k)).and_then(|v| v.as_f64());
        let rows = vec![
            ("cFAR (< 0.5 flags preferred orientation)".to_string(), fmt(f("cfar"), "")),
            ("3DFSC sphericity at FSC 0.5".to_string(), fmt(f("sphericity"), "")),
            ("global resolution (FSC 0.143)".to_string(), fmt(f("resolution_0143_a"), " Å")),
            ("best direction".to_string(), fmt(f("directional_resolution_best_a"), " Å")),
            ("median direction".to_string(), fmt(f("directional_resolution_median_a"), " Å")),
            ("worst direction".to_string(), fmt(f("directional_resolution_worst_a"), " Å")),
            ("SCF* (< 0.81 flags a harmful bias)".to_string(), fmt(sf("scf_star"), "")),
            ("SCF".to_string(), fmt(sf("scf"), "")),
            ("unsampled fraction of the SCF shell".to_string(), fmt(sf("fraction_unsampled"), "")),
            ("masked".to_string(), j.get("masked").map(|v| v.to_string()).unwrap_or_default()),
        ];
        h.kv_table(&rows);
        let np = super::num_prefix(prefix);
        for k in ["cfar", "sphericity", "resolution_0143_a", "directional_resolution_worst_a"] {
            if let Some(v) = j.get(k) {
                self.numbers.insert(format!("{np}{k}"), v.clone());
            }
        }
        if let Some(v) = sf("scf_star") {
            self.numbers.insert(format!("{np}scf_star"), serde_json::json!(v));
        }
        if let Some(c) = j.get("command").and_then(|c| c.as_str()) {
            h.pre(c);
        }
        Ok(())
    }
}
