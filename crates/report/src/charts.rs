//! Scatter plots, 2-D density maps, histograms and image tiles, rendered to PNG with
//! plotters and the embedded font (see [`crate::plot`]).

use crate::plot::{encode_png, ensure_font, png_canvas, PlotError, COLOURS};
use plotters::prelude::*;

/// How the points of a scatter plot are coloured.
#[derive(Debug, Clone)]
pub enum Colouring {
    /// All points one colour.
    Single,
    /// One category per point (e.g. k-means cluster); `names[c]` labels category `c`
    /// in the legend (missing names read "c").
    Categorical { labels: Vec<usize>, names: Vec<String> },
    /// A continuous value per point (e.g. the true trajectory frame), viridis colour map
    /// with a colour bar titled `label`.
    Continuous { values: Vec<f64>, label: String },
}

/// A 2-D scatter plot.
#[derive(Debug, Clone)]
pub struct ScatterPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
    pub colouring: Colouring,
    pub width: u32,
    pub height: u32,
}

impl ScatterPlot {
    pub fn new(title: &str, x_label: &str, y_label: &str, points: Vec<(f64, f64)>) -> ScatterPlot {
        ScatterPlot {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            points,
            colouring: Colouring::Single,
            width: 640,
            height: 520,
        }
    }
}

/// The viridis colour map at `t` in [0, 1] (piecewise linear through 9 samples).
pub fn viridis(t: f64) -> RGBColor {
    const S: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (S.len() - 1) as f64;
    let i = (x.floor() as usize).min(S.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    RGBColor(lerp(S[i].0, S[i + 1].0), lerp(S[i].1, S[i + 1].1), lerp(S[i].2, S[i + 1].2))
}

/// Range of the finite values, widened by 5 % (and to a unit range when flat).
fn padded_range(v: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in v.filter(|x| x.is_finite()) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        return None;
    }
    if hi <= lo {
        return Some((lo - 0.5, hi + 0.5));
    }
    let pad = (hi - lo) * 0.05;
    Some((lo - pad, hi + pad))
}

/// Render a scatter plot to PNG bytes.
pub fn scatter_png(p: &ScatterPlot) -> Result<Vec<u8>, PlotError> {
    ensure_font();
    let err = |m: String| PlotError { title: p.title.clone(), msg: m };
    let n = p.points.len();
    match &p.colouring {
        Colouring::Categorical { labels, .. } if labels.len() != n => {
            return Err(err(format!("{} labels for {n} points", labels.len())))
        }
        Colouring::Continuous { values, .. } if values.len() != n => {
            return Err(err(format!("{} colour values for {n} points", values.len())))
        }
        _ => {}
    }
    let (x0, x1) =
        padded_range(p.points.iter().map(|q| q.0)).ok_or_else(|| err("no finite points".into()))?;
    let (y0, y1) =
        padded_range(p.points.iter().map(|q| q.1)).ok_or_else(|| err("no finite points".into()))?;
    // Point size shrinks with the count so dense clouds stay readable.
    let radius = if n > 20_000 {
        1
    } else if n > 2_000 {
        2
    } else {
        3
    };
    let alpha = if n > 5_000 { 0.5 } else { 0.8 };
    let (w, h) = (p.width, p.height);
    png_canvas(w, h, |root| {
        let colour_bar = matches!(p.colouring, Colouring::Continuous { .. });
        let (plot_area, bar_area) =
            if colour_bar { root.split_horizontally(w - 90) } else { (root.clone(), root.clone()) };
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&p.title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(p.x_label.as_str())
            .y_desc(p.y_label.as_str())
            .label_style(("sans-serif", 13))
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| e.to_string())?;
        let finite = |q: &(f64, f64)| q.0.is_finite() && q.1.is_finite();
        match &p.colouring {
            Colouring::Single => {
                chart
                    .draw_series(
                        p.points
                            .iter()
                            .filter(|q| finite(q))
                            .map(|&q| Circle::new(q, radius, COLOURS[0].mix(alpha).filled())),
                    )
                    .map_err(|e| e.to_string())?;
            }
            Colouring::Categorical { labels, names } => {
                let k = labels.iter().copied().max().map_or(0, |m| m + 1);
                for c in 0..k {
                    let col = COLOURS[c % COLOURS.len()];
                    let name = names.get(c).cloned().unwrap_or_else(|| c.to_string());
                    chart
                        .draw_series(
                            p.points
                                .iter()
                                .zip(labels)
                                .filter(|(q, &l)| l == c && finite(q))
                                .map(|(&q, _)| Circle::new(q, radius, col.mix(alpha).filled())),
                        )
                        .map_err(|e| e.to_string())?
                        .label(name)
                        .legend(move |(x, y)| Circle::new((x + 6, y), 4, col.filled()));
                }
                if k <= 12 {
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperRight)
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .label_font(("sans-serif", 12))
                        .draw()
                        .map_err(|e| e.to_string())?;
                }
            }
            Colouring::Continuous { values, label } => {
                let (v0, v1) = padded_range(values.iter().copied()).unwrap_or((0.0, 1.0));
                let t = |v: f64| (v - v0) / (v1 - v0);
                chart
                    .draw_series(
                        p.points
                            .iter()
                            .zip(values)
                            .filter(|(q, _)| finite(q))
                            .map(|(&q, &v)| Circle::new(q, radius, viridis(t(v)).mix(alpha).filled())),
                    )
                    .map_err(|e| e.to_string())?;
                // Colour bar.
                let mut bar = ChartBuilder::on(&bar_area)
                    .margin_top(40)
                    .margin_bottom(50)
                    .margin_right(8)
                    .y_label_area_size(45)
                    .caption(label.as_str(), ("sans-serif", 12))
                    .build_cartesian_2d(0.0..1.0, v0..v1)
                    .map_err(|e| e.to_string())?;
                bar.configure_mesh()
                    .disable_x_mesh()
                    .disable_x_axis()
                    .disable_y_mesh()
                    .label_style(("sans-serif", 11))
                    .draw()
                    .map_err(|e| e.to_string())?;
                let steps = 64;
                bar.draw_series((0..steps).map(|i| {
                    let a = v0 + (v1 - v0) * i as f64 / steps as f64;
                    let b = v0 + (v1 - v0) * (i + 1) as f64 / steps as f64;
                    Rectangle::new([(0.0, a), (1.0, b)], viridis((i as f64 + 0.5) / steps as f64).filled())
                }))
                .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
    .map_err(err)
}

/// A 2-D histogram (density map) of points on a `bins`×`bins` grid, log-scaled counts
/// with the viridis map; empty cells stay white.
pub fn density_png(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
    bins: usize,
) -> Result<Vec<u8>, PlotError> {
    ensure_font();
    let err = |m: String| PlotError { title: title.into(), msg: m };
    let bins = bins.clamp(4, 400);
    let (x0, x1) = padded_range(points.iter().map(|q| q.0)).ok_or_else(|| err("no finite points".into()))?;
    let (y0, y1) = padded_range(points.iter().map(|q| q.1)).ok_or_else(|| err("no finite points".into()))?;
    let mut counts = vec![0u32; bins * bins];
    for &(x, y) in points.iter().filter(|q| q.0.is_finite() && q.1.is_finite()) {
        let i = (((x - x0) / (x1 - x0)) * bins as f64).floor().clamp(0.0, (bins - 1) as f64) as usize;
        let j = (((y - y0) / (y1 - y0)) * bins as f64).floor().clamp(0.0, (bins - 1) as f64) as usize;
        counts[j * bins + i] += 1;
    }
    let cmax = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (w, h) = (640u32, 520u32);
    png_canvas(w, h, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 13))
            .disable_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        let dx = (x1 - x0) / bins as f64;
        let dy = (y1 - y0) / bins as f64;
        chart
            .draw_series(counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(k, &c)| {
                let (i, j) = (k % bins, k / bins);
                let t = (c as f64).ln_1p() / cmax.ln_1p();
                let (a, b) = (x0 + i as f64 * dx, y0 + j as f64 * dy);
                Rectangle::new([(a, b), (a + dx, b + dy)], viridis(t).filled())
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
    .map_err(err)
}

/// Bin edges and counts of a histogram of the finite values (`bins` equal bins).
pub fn histogram_counts(values: &[f64], bins: usize) -> Option<(Vec<f64>, Vec<usize>)> {
    let bins = bins.max(1);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &v in values.iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return None;
    }
    if hi <= lo {
        lo -= 0.5;
        hi += 0.5;
    }
    let edges: Vec<f64> = (0..=bins).map(|i| lo + (hi - lo) * i as f64 / bins as f64).collect();
    let mut counts = vec![0usize; bins];
    for &v in values.iter().filter(|v| v.is_finite()) {
        let i = (((v - lo) / (hi - lo)) * bins as f64).floor() as isize;
        counts[i.clamp(0, bins as isize - 1) as usize] += 1;
    }
    Some((edges, counts))
}

/// A histogram of `values` with `bins` equal bins.
pub fn histogram_png(title: &str, x_label: &str, values: &[f64], bins: usize) -> Result<Vec<u8>, PlotError> {
    ensure_font();
    let err = |m: String| PlotError { title: title.into(), msg: m };
    let (edges, counts) = histogram_counts(values, bins).ok_or_else(|| err("no finite values".into()))?;
    let cmax = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (w, h) = (520u32, 360u32);
    png_canvas(w, h, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(edges[0]..edges[edges.len() - 1], 0.0..cmax * 1.05)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("particles")
            .label_style(("sans-serif", 12))
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                Rectangle::new([(edges[i], 0.0), (edges[i + 1], c as f64)], COLOURS[0].mix(0.85).filled())
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
    .map_err(err)
}

/// One grey-scale image for [`image_tiles_png`]: `nx`×`ny` values, row-major.
#[derive(Debug, Clone)]
pub struct Tile {
    pub pixels: Vec<f32>,
    pub nx: usize,
    pub ny: usize,
    pub caption: String,
}

/// A grid of grey-scale images, `cols` per row, each shown at `tile_px`×`tile_px`
/// (nearest-neighbour scaling) with its caption beneath. Each image is contrast-stretched
/// between its own 1st and 99th percentiles, so a noisy particle and a clean rendering
/// can sit side by side.
pub fn image_tiles_png(title: &str, tiles: &[Tile], cols: usize, tile_px: u32) -> Result<Vec<u8>, PlotError> {
    ensure_font();
    let err = |m: String| PlotError { title: title.into(), msg: m };
    if tiles.is_empty() {
        return Err(err("no images".into()));
    }
    for (i, t) in tiles.iter().enumerate() {
        if t.nx == 0 || t.ny == 0 || t.pixels.len() != t.nx * t.ny {
            return Err(err(format!("image {i}: {} values for {}×{}", t.pixels.len(), t.nx, t.ny)));
        }
    }
    let cols = cols.clamp(1, tiles.len());
    let rows = tiles.len().div_ceil(cols);
    let (gap, cap_h, title_h) = (8u32, 22u32, 34u32);
    let w = cols as u32 * (tile_px + gap) + gap;
    let h = title_h + rows as u32 * (tile_px + cap_h + gap) + gap;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    for (k, t) in tiles.iter().enumerate() {
        let mut sorted: Vec<f32> = t.pixels.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f32::total_cmp);
        let (lo, hi) = if sorted.is_empty() {
            (0.0, 1.0)
        } else {
            let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f).round() as usize];
            let (a, b) = (q(0.01), q(0.99));
            if b > a {
                (a, b)
            } else {
                (a - 0.5, a + 0.5)
            }
        };
        let ox = gap + (k % cols) as u32 * (tile_px + gap);
        let oy = title_h + (k / cols) as u32 * (tile_px + cap_h + gap);
        for py in 0..tile_px {
            // Row 0 of the image at the top of the tile.
            let sy = ((py as usize * t.ny) / tile_px as usize).min(t.ny - 1);
            for px in 0..tile_px {
                let sx = ((px as usize * t.nx) / tile_px as usize).min(t.nx - 1);
                let v = t.pixels[sy * t.nx + sx];
                let g = if v.is_finite() {
                    (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0).round() as u8
                } else {
                    0
                };
                let o = (((oy + py) * w + ox + px) * 3) as usize;
                buf[o..o + 3].copy_from_slice(&[g, g, g]);
            }
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let style = ("sans-serif", 18).into_font().color(&BLACK);
        root.draw(&Text::new(title.to_string(), (gap as i32, 8), style)).map_err(|e| err(e.to_string()))?;
        let cap = ("sans-serif", 13).into_font().color(&BLACK);
        for (k, t) in tiles.iter().enumerate() {
            let ox = gap + (k % cols) as u32 * (tile_px + gap);
            let oy = title_h + (k / cols) as u32 * (tile_px + cap_h + gap) + tile_px + 4;
            root.draw(&Text::new(t.caption.clone(), (ox as i32, oy as i32), cap.clone()))
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    encode_png(&buf, w, h).map_err(err)
}

/// A strip chart of a per-residue category (e.g. cryoSPHERE segments) along the sequence,
/// with optional per-residue weights drawn as lines above it.
pub fn sequence_strip_png(
    title: &str,
    residues: &[i64],
    segment: &[usize],
    weights: &[Vec<f64>],
) -> Result<Vec<u8>, PlotError> {
    ensure_font();
    let err = |m: String| PlotError { title: title.into(), msg: m };
    let n = residues.len();
    if n == 0 || segment.len() != n || weights.iter().any(|w| w.len() != n) {
        return Err(err(format!("{n} residues, {} segment labels; weights must match", segment.len())));
    }
    let (w, h) = (900u32, if weights.is_empty() { 200 } else { 420 });
    png_canvas(w, h, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..n as f64, -0.25..if weights.is_empty() { 0.0 } else { 1.05 })
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("residue (index along the chain)")
            .y_desc(if weights.is_empty() { "" } else { "weight" })
            .label_style(("sans-serif", 12))
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(segment.iter().enumerate().map(|(i, &s)| {
                Rectangle::new(
                    [(i as f64, -0.22), (i as f64 + 1.0, -0.03)],
                    COLOURS[s % COLOURS.len()].filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        for (k, wk) in weights.iter().enumerate() {
            let c = COLOURS[k % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    wk.iter().enumerate().map(|(i, &v)| (i as f64 + 0.5, v)),
                    c.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("w{} (segment {k})", k + 1))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        if !weights.is_empty() && weights.len() <= 12 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_png(b: &[u8]) -> bool {
        b.len() > 1000 && &b[1..4] == b"PNG"
    }

    #[test]
    fn scatter_all_colourings() {
        let pts: Vec<(f64, f64)> =
            (0..300).map(|i| ((i as f64 * 0.1).sin(), (i as f64 * 0.07).cos())).collect();
        let mut p = ScatterPlot::new("PCA", "PC1", "PC2", pts.clone());
        assert!(is_png(&scatter_png(&p).unwrap()));
        p.colouring = Colouring::Categorical { labels: (0..300).map(|i| i % 4).collect(), names: vec![] };
        assert!(is_png(&scatter_png(&p).unwrap()));
        p.colouring =
            Colouring::Continuous { values: (0..300).map(|i| i as f64).collect(), label: "frame".into() };
        assert!(is_png(&scatter_png(&p).unwrap()));
        p.colouring = Colouring::Continuous { values: vec![1.0], label: "frame".into() };
        assert!(scatter_png(&p).unwrap_err().to_string().contains("1 colour values for 300 points"));
        assert!(is_png(&density_png("d", "x", "y", &pts, 40).unwrap()));
    }

    #[test]
    fn histogram_counts_sum_and_edges() {
        let v: Vec<f64> = (0..100).map(|i| i as f64).chain([f64::NAN]).collect();
        let (e, c) = histogram_counts(&v, 10).unwrap();
        assert_eq!(c.iter().sum::<usize>(), 100);
        assert_eq!(c, vec![10; 10]);
        assert_eq!((e[0], e[10]), (0.0, 99.0));
        assert!(is_png(&histogram_png("PC1", "PC1", &v, 20).unwrap()));
        assert!(histogram_counts(&[f64::NAN], 5).is_none());
    }

    #[test]
    fn tiles_and_strip() {
        let t =
            Tile { pixels: (0..64).map(|i| i as f32).collect(), nx: 8, ny: 8, caption: "particle 3".into() };
        let png = image_tiles_png("examples", &[t.clone(), t.clone(), t], 2, 64).unwrap();
        assert!(is_png(&png));
        let bad = Tile { pixels: vec![0.0; 5], nx: 8, ny: 8, caption: String::new() };
        assert!(image_tiles_png("x", &[bad], 1, 32).is_err());
        let res: Vec<i64> = (1..=50).collect();
        let seg: Vec<usize> = (0..50).map(|i| i / 20).collect();
        let w: Vec<Vec<f64>> =
            (0..3).map(|k| (0..50).map(|i| if i / 20 == k { 1.0 } else { 0.0 }).collect()).collect();
        assert!(is_png(&sequence_strip_png("segments", &res, &seg, &w).unwrap()));
    }
}
