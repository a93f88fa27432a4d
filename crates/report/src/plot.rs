//! Plots to PNG bytes: line plots, scatter plots (categorical or continuous colour),
//! 2-D density maps, histograms and image tiles.

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

pub(crate) fn ensure_font() {
    REGISTER.call_once(|| {
        // Registration only fails for an unparsable font, which the embedded one is not.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

#[derive(Debug, thiserror::Error)]
#[error("plot {title:?}: {msg}")]
pub struct PlotError {
    pub title: String,
    pub msg: String,
}

/// One named curve.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line plot: curves, optional horizontal reference lines, axis labels.
#[derive(Debug, Clone)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Horizontal lines with labels (e.g. FSC thresholds 0.143 and 0.5).
    pub hlines: Vec<(f64, String)>,
    /// Fixed y range; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    pub width: u32,
    pub height: u32,
}

impl LinePlot {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> LinePlot {
        LinePlot {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            hlines: Vec::new(),
            y_range: None,
            width: 800,
            height: 500,
        }
    }
}

pub(crate) const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Render a line plot to PNG bytes.
pub fn line_plot_png(p: &LinePlot) -> Result<Vec<u8>, PlotError> {
    ensure_font();
    let err = |m: String| PlotError { title: p.title.clone(), msg: m };
    let pts = p.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return Err(err("no finite points".into()));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (y0, y1) = p.y_range.unwrap_or_else(|| {
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        (y0 - pad, y1 + pad)
    });
    png_canvas(p.width, p.height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&p.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(p.x_label.as_str())
            .y_desc(p.y_label.as_str())
            .x_labels(if p.width < 600 { 5 } else { 10 })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in p.series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        for (v, label) in &p.hlines {
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(LineSeries::new(vec![(x0, *v), (x1, *v)], grey.stroke_width(1)))
                .map_err(|e| e.to_string())?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
    .map_err(err)
}

/// A `w`×`h` white canvas handed to `draw`, presented and encoded as PNG.
pub(crate) fn png_canvas(
    w: u32,
    h: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    ensure_font();
    let mut buf = vec![0u8; (w as usize) * (h as usize) * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    encode_png(&buf, w, h)
}

/// Encode an RGB buffer as PNG in memory.
pub(crate) fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, w, h, image::ColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_png() {
        let mut p = LinePlot::new("FSC", "resolution (1/Å)", "FSC");
        p.series.push(Series {
            name: "half maps".into(),
            points: (0..20).map(|i| (i as f64 * 0.01, 1.0 - i as f64 * 0.05)).collect(),
        });
        p.hlines.push((0.143, "0.143".into()));
        p.y_range = Some((-0.1, 1.05));
        let png = line_plot_png(&p).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 2000);
    }
}
