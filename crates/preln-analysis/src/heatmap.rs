//! Heatmaps as PNG files: a grid of labelled cells per panel, coloured from good (green) to bad
//! (red), with failed cells black and cells outside the scale grey (the stability map).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::plot::{register_font, PlotError};

/// How a cell is filled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shade {
    /// 0 = best, 1 = worst, on a green-yellow-red scale.
    Value(f64),
    /// Black, white text (a run that diverged).
    Failed,
    /// Grey (a run that learned nothing).
    Grey,
    /// Pale grey (nothing measured).
    Empty,
}

#[derive(Clone, Debug)]
pub struct HeatCell {
    pub text: String,
    pub shade: Shade,
}

/// One panel: `cells[row][col]`, rows drawn top to bottom.
pub struct Heatmap {
    pub title: String,
    pub x_title: String,
    pub y_title: String,
    pub x_labels: Vec<String>,
    pub y_labels: Vec<String>,
    pub cells: Vec<Vec<HeatCell>>,
}

fn fill(shade: Shade) -> (RGBColor, RGBColor) {
    let lerp = |a: (f64, f64, f64), b: (f64, f64, f64), t: f64| {
        let c = |x: f64, y: f64| (x + (y - x) * t).round() as u8;
        RGBColor(c(a.0, b.0), c(a.1, b.1), c(a.2, b.2))
    };
    let (green, yellow, red) = ((26.0, 152.0, 80.0), (254.0, 224.0, 139.0), (215.0, 48.0, 39.0));
    match shade {
        Shade::Value(t) => {
            let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 1.0 };
            let bg = if t < 0.5 { lerp(green, yellow, 2.0 * t) } else { lerp(yellow, red, 2.0 * t - 1.0) };
            (bg, BLACK)
        }
        Shade::Failed => (BLACK, WHITE),
        Shade::Grey => (RGBColor(190, 190, 190), BLACK),
        Shade::Empty => (RGBColor(242, 242, 242), RGBColor(120, 120, 120)),
    }
}

/// Draws `panels` in a grid of `cols` columns under `title`, with the lines of `legend` below.
pub fn draw_heatmaps(
    path: &Path,
    title: &str,
    legend: &str,
    panels: &[Heatmap],
    cols: usize,
    panel_size: (u32, u32),
) -> Result<(), PlotError> {
    register_font();
    let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), reason: e.to_string() };
    let rows = panels.len().div_ceil(cols.max(1));
    let size = (panel_size.0 * cols as u32, panel_size.1 * rows as u32 + 80);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, ("sans-serif", 26)).map_err(|e| err(&e))?;
    let (body, foot) = root.split_vertically(size.1 - 80);
    for (i, line) in legend.lines().enumerate() {
        foot.draw(&Text::new(line.to_string(), (20, 8 + 22 * i as i32), ("sans-serif", 16))).map_err(|e| err(&e))?;
    }
    for (panel, area) in panels.iter().zip(body.split_evenly((rows, cols))) {
        draw_panel(panel, &area).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

fn center(style: TextStyle<'_>) -> TextStyle<'_> {
    style.pos(Pos::new(HPos::Center, VPos::Center))
}

fn draw_panel<DB: DrawingBackend>(
    p: &Heatmap,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (w, h) = area.dim_in_pixel();
    let (left, top, bottom, right) = (90i32, 34i32, 58i32, 12i32);
    let nx = p.x_labels.len().max(1) as i32;
    let ny = p.y_labels.len().max(1) as i32;
    let cw = (w as i32 - left - right) / nx;
    let ch = (h as i32 - top - bottom) / ny;
    area.draw(&Text::new(p.title.clone(), (w as i32 / 2, 16), center(("sans-serif", 20).into_text_style(area))))?;
    for (r, row) in p.cells.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let (x0, y0) = (left + c as i32 * cw, top + r as i32 * ch);
            let (bg, fg) = fill(cell.shade);
            area.draw(&Rectangle::new([(x0, y0), (x0 + cw, y0 + ch)], bg.filled()))?;
            area.draw(&Rectangle::new([(x0, y0), (x0 + cw, y0 + ch)], WHITE.stroke_width(2)))?;
            let style = ("sans-serif", 15).into_text_style(area).color(&fg);
            area.draw(&Text::new(cell.text.clone(), (x0 + cw / 2, y0 + ch / 2), center(style)))?;
        }
    }
    let label = ("sans-serif", 14).into_text_style(area);
    for (c, text) in p.x_labels.iter().enumerate() {
        let x = left + c as i32 * cw + cw / 2;
        area.draw(&Text::new(text.clone(), (x, top + ny * ch + 12), center(label.clone())))?;
    }
    for (r, text) in p.y_labels.iter().enumerate() {
        let y = top + r as i32 * ch + ch / 2;
        area.draw(&Text::new(text.clone(), (left - 36, y), center(label.clone())))?;
    }
    let axis = ("sans-serif", 15).into_text_style(area);
    area.draw(&Text::new(p.x_title.clone(), (left + nx * cw / 2, top + ny * ch + 36), center(axis.clone())))?;
    area.draw(&Text::new(p.y_title.clone(), (8, top - 12), axis))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shades_run_from_green_through_yellow_to_red_and_failures_are_black() {
        assert_eq!(fill(Shade::Value(0.0)).0, RGBColor(26, 152, 80));
        assert_eq!(fill(Shade::Value(0.5)).0, RGBColor(254, 224, 139));
        assert_eq!(fill(Shade::Value(1.0)).0, RGBColor(215, 48, 39));
        assert_eq!(fill(Shade::Value(f64::NAN)).0, RGBColor(215, 48, 39));
        assert_eq!(fill(Shade::Failed), (BLACK, WHITE));
    }

    #[test]
    fn a_panel_grid_draws_to_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        let cell = |t: &str, shade| HeatCell { text: t.into(), shade };
        let panel = Heatmap {
            title: "Post-LN".into(),
            x_title: "peak lr, warmup".into(),
            y_title: "layers".into(),
            x_labels: vec!["5e-4 w0".into(), "5e-4 w58".into()],
            y_labels: vec!["6".into(), "12".into()],
            cells: vec![
                vec![cell("2.10", Shade::Value(0.1)), cell("div@12", Shade::Failed)],
                vec![cell("stuck", Shade::Grey), cell("-", Shade::Empty)],
            ],
        };
        draw_heatmaps(&path, "map", "legend", &[panel], 1, (400, 300)).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
    }
}
