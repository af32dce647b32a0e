//! Line charts as PNG files (plotters, with an embedded DejaVu Sans so no system fonts are needed).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;
pub use plotters::style::RGBColor;

pub const POST_COLOR: RGBColor = RGBColor(214, 39, 40);
pub const PRE_COLOR: RGBColor = RGBColor(31, 119, 180);
pub const GREY: RGBColor = RGBColor(110, 110, 110);

/// One colour per placement, the same in every figure (Post-LN red and Pre-LN blue as before).
pub fn placement_color(p: preln_model::NormPlacement) -> RGBColor {
    use preln_model::NormPlacement as P;
    match p {
        P::Post => POST_COLOR,
        P::Pre => PRE_COLOR,
        P::Sandwich => RGBColor(44, 160, 44),
        P::Peri => RGBColor(148, 103, 189),
        P::DeepNorm => RGBColor(255, 127, 14),
        P::Admin => RGBColor(140, 86, 75),
        P::ReZero => RGBColor(227, 119, 194),
        P::B2t => RGBColor(188, 189, 34),
        P::Mix => RGBColor(23, 190, 207),
    }
}

/// One line of a panel.
pub struct Series {
    /// The legend entry; empty for none.
    pub label: String,
    pub color: RGBColor,
    /// (x, y, y error) where the error is drawn as a bar of +-error.
    pub points: Vec<(f64, f64, f64)>,
    pub dashed: bool,
    /// Draw markers at the points.
    pub markers: bool,
}

pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Log10 axes for both x and y; tick labels show the original values.
    pub log_log: bool,
    /// Label the x axis at whole numbers only (layer indices).
    pub integer_x: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {reason}")]
pub struct PlotError {
    pub path: String,
    pub reason: String,
}

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let _ = plotters::style::register_font("sans-serif", style, dejavu::sans::regular());
        }
    });
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// Draws `panels` in a grid of `cols` columns under a common `title`.
pub fn draw(path: &Path, title: &str, panels: &[Panel], cols: usize, panel_size: (u32, u32)) -> Result<(), PlotError> {
    register_font();
    let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), reason: e.to_string() };
    let rows = panels.len().div_ceil(cols);
    let size = (panel_size.0 * cols as u32, panel_size.1 * rows as u32 + 50);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, ("sans-serif", 26)).map_err(|e| err(&e))?;
    for (panel, area) in panels.iter().zip(root.split_evenly((rows, cols))) {
        draw_panel(panel, &area).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

fn draw_panel<DB: DrawingBackend>(
    panel: &Panel,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let tf = |v: f64| if panel.log_log { v.log10() } else { v };
    // Log axes cannot show a value <= 0 (a gradient that is exactly zero): such points are left out.
    let visible = move |p: &&(f64, f64, f64)| !panel.log_log || (p.0 > 0.0 && p.1 > 0.0);
    let all = || panel.series.iter().flat_map(|s| s.points.iter()).filter(visible);
    let (x0, x1) = bounds(all().map(|p| tf(p.0)));
    let (y0, y1) = bounds(
        all()
            .flat_map(|p| {
                let low = if panel.log_log && p.1 - p.2 <= 0.0 { p.1 } else { p.1 - p.2 };
                [tf(low), tf(p.1 + p.2)]
            })
            .filter(|v| v.is_finite()),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let untf = move |v: &f64| if panel.log_log { 10f64.powf(*v) } else { *v };
    let fmt = move |v: &f64| {
        let x = untf(v);
        if panel.log_log && x >= 1.0 {
            return if x >= 10.0 { format!("{x:.0}") } else { format!("{x:.1}") };
        }
        if x.abs() >= 100.0 || x == x.round() {
            format!("{x:.0}")
        } else if x.abs() >= 1.0 {
            format!("{x:.2}")
        } else {
            format!("{x:.3}")
        }
    };
    let x_fmt = move |v: &f64| {
        if panel.integer_x && (v - v.round()).abs() > 1e-6 {
            String::new()
        } else {
            fmt(v)
        }
    };
    let x_ticks = if panel.integer_x { ((x1 - x0).ceil() as usize + 1).min(30) } else { 10 };
    chart
        .configure_mesh()
        .x_labels(x_ticks)
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&fmt)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for s in &panel.series {
        let style = s.color.stroke_width(2);
        let pts: Vec<(f64, f64)> = s.points.iter().filter(visible).map(|p| (tf(p.0), tf(p.1))).collect();
        let color = s.color;
        let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2));
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style))?
        };
        if !s.label.is_empty() {
            drawn.label(&s.label).legend(legend);
        }
        if s.markers {
            chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled())))?;
        }
        let bars = s.points.iter().filter(|p| p.2 > 0.0 && (!panel.log_log || p.1 - p.2 > 0.0));
        chart.draw_series(bars.map(|p| {
            ErrorBar::new_vertical(tf(p.0), tf(p.1 - p.2), tf(p.1), tf(p.1 + p.2), color.stroke_width(1), 8)
        }))?;
    }
    chart
        .configure_series_labels()
        .position(if panel.log_log { SeriesLabelPosition::MiddleRight } else { SeriesLabelPosition::UpperLeft })
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log-log panel with a series that is exactly zero (ReZero's gradients at initialization,
    /// or an error bar reaching below zero) draws the rest and leaves those points out; it once
    /// sent the axis range to -1.8e308 and never finished.
    #[test]
    fn a_log_log_panel_with_zeros_leaves_them_out_and_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let series = |label: &str, ys: [f64; 3], err: f64| Series {
            label: label.into(),
            color: GREY,
            points: [2.0, 4.0, 8.0].iter().zip(ys).map(|(&x, y)| (x, y, err)).collect(),
            dashed: false,
            markers: true,
        };
        let panel = Panel {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![series("zero", [0.0; 3], 0.0), series("wide", [1.0, 0.5, 0.25], 2.0)],
            log_log: true,
            integer_x: false,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || tx.send(draw(&p, "zeros", &[panel], 1, (300, 200)).is_ok()));
        let drawn = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("drawing did not finish in 60 s");
        assert!(drawn && path.exists());
    }
}
