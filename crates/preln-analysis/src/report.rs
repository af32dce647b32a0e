//! Writes the studies' results: JSON with every number, CSV, PNG figures and a Markdown summary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::depth_study::DepthReport;
use crate::doc::{markdown, Block};
use crate::init_study::{FfnLayer, HiddenReport, InitReport};
use crate::plot::{draw, placement_color as color, Panel, Series, GREY};

pub use crate::doc::ReportError;

/// A number with `digits` decimals, or empty where there is none.
fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_default()
}

/// A dashed theory line.
fn line(label: String, color: plotters::style::RGBColor, points: Vec<(f64, f64, f64)>) -> Series {
    Series { label, color, points, dashed: true, markers: false }
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|error| ReportError::Io { path: path.into(), error })
}

/// Writes `init.json`, the two CSV files, Figure 3, the hidden-norm figure and `init.md` into
/// `out`; returns the files written, for the caller to list.
pub fn write_init(report: &InitReport, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(out).map_err(|error| ReportError::Io { path: out.into(), error })?;
    let files = [
        "init.json",
        "init_grad_norms.csv",
        "init_hidden_norms.csv",
        "fig3_ffn_grad_norms.png",
        "init_hidden_norms.png",
        "init.md",
    ]
    .map(|f| out.join(f));
    write(&files[0], &serde_json::to_string_pretty(report).expect("report serializes"))?;
    write(&files[1], &init_grad_csv(report))?;
    write(&files[2], &init_hidden_csv(report))?;
    let m = &report.study.model;
    let shape = format!(
        "{}+{} layers, d {}, FFN {}, {} heads",
        m.encoder_layers, m.decoder_layers, m.d_model, m.ffn_dim, m.heads
    );
    draw_fig3(report, &shape, &files[3])?;
    draw_hidden(report, &shape, &files[4])?;
    write(&files[5], &markdown(&init_doc(report, &shape)))?;
    Ok(files.to_vec())
}

fn init_grad_csv(report: &InitReport) -> String {
    let mut csv = String::from("placement,path,grad_norm_mean,grad_norm_std,seeds\n");
    for r in &report.results {
        for p in &r.params {
            let _ = writeln!(
                csv,
                "{},{},{:.6e},{:.6e},{}",
                r.placement.name(),
                p.path,
                p.grad_norm.mean,
                p.grad_norm.std,
                p.grad_norm.n
            );
        }
    }
    csv
}

fn init_hidden_csv(report: &InitReport) -> String {
    let mut csv =
        String::from("placement,stack,layer,sq_norm_over_d_mean,sq_norm_over_d_std,lemma2_lower,lemma2_upper\n");
    for r in &report.results {
        for (stack, h) in [("encoder", &r.encoder_hidden), ("decoder", &r.decoder_hidden)] {
            let _ = writeln!(csv, "{},{stack},0,{:.6},{:.6},,", r.placement.name(), h.input.mean, h.input.std);
            for l in &h.layers {
                let _ = writeln!(
                    csv,
                    "{},{stack},{},{:.6},{:.6},{},{}",
                    r.placement.name(),
                    l.layer,
                    l.sq_norm_over_d.mean,
                    l.sq_norm_over_d.std,
                    opt(l.lemma2_lower, 6),
                    opt(l.lemma2_upper, 6)
                );
            }
        }
    }
    csv
}

/// Figure 3: the FFN W1 and W2 gradient norm of every layer, each placement.
fn draw_fig3(report: &InitReport, shape: &str, path: &Path) -> Result<(), ReportError> {
    let seeds = report.study.seeds.len();
    let ffn_panel =
        |stack: &str, w: &str, pick: fn(&crate::init_study::PlacementInit) -> &Vec<FfnLayer>, w2: bool| Panel {
            title: format!("{stack} FFN {w}"),
            x_label: "layer".into(),
            y_label: format!("||dL/d{w}||_F"),
            series: report
                .results
                .iter()
                .map(|r| Series {
                    label: r.placement.to_string(),
                    color: color(r.placement),
                    points: pick(r)
                        .iter()
                        .map(|l| {
                            let s = if w2 { l.w2 } else { l.w1 };
                            (l.layer as f64, s.mean, s.std)
                        })
                        .collect(),
                    dashed: false,
                    markers: true,
                })
                .collect(),
            log_log: false,
            integer_x: true,
        };
    draw(
        path,
        &format!("Gradient norms at initialization ({shape}; mean +- std over {seeds} seeds)"),
        &[
            ffn_panel("encoder", "W1", |r| &r.encoder_ffn, false),
            ffn_panel("encoder", "W2", |r| &r.encoder_ffn, true),
            ffn_panel("decoder", "W1", |r| &r.decoder_ffn, false),
            ffn_panel("decoder", "W2", |r| &r.decoder_ffn, true),
        ],
        2,
        (640, 440),
    )?;
    Ok(())
}

/// `E||x||^2/d` after every layer against Lemma 2's bounds.
fn draw_hidden(report: &InitReport, shape: &str, path: &Path) -> Result<(), ReportError> {
    let hidden_panel = |stack: &str, pick: fn(&crate::init_study::PlacementInit) -> &HiddenReport| {
        let mut series = Vec::new();
        for r in &report.results {
            let h = pick(r);
            let mut pts = vec![(0.0, h.input.mean, h.input.std)];
            pts.extend(h.layers.iter().map(|l| (l.layer as f64, l.sq_norm_over_d.mean, l.sq_norm_over_d.std)));
            series.push(Series {
                label: format!("{} measured", r.placement),
                color: color(r.placement),
                points: pts,
                dashed: false,
                markers: true,
            });
            let bound = |pick_bound: fn(&crate::init_study::HiddenLayer) -> Option<f64>| -> Vec<(f64, f64, f64)> {
                h.layers.iter().filter_map(|l| pick_bound(l).map(|b| (l.layer as f64, b, 0.0))).collect()
            };
            // Lemma 2 is proved for Post-LN and Pre-LN only.
            let (lower, upper) = (bound(|l| l.lemma2_lower), bound(|l| l.lemma2_upper));
            let c = color(r.placement);
            if !lower.is_empty() && lower == upper {
                series.push(line(format!("{} Lemma 2: 3/2", r.placement), c, lower));
            } else if !lower.is_empty() {
                series.push(line(format!("{} Lemma 2: 1 + l/2", r.placement), c, lower));
                series.push(line(format!("{} Lemma 2: 1 + 3l/2", r.placement), GREY, upper));
            }
        }
        Panel {
            title: format!("{stack}: E||x||^2 / d after each layer"),
            x_label: "layers applied (0 = embedded input)".into(),
            y_label: "E||x||^2 / d".into(),
            series,
            log_log: false,
            integer_x: true,
        }
    };
    draw(
        path,
        &format!("Hidden-state norms at initialization ({shape})"),
        &[hidden_panel("encoder", |r| &r.encoder_hidden), hidden_panel("decoder", |r| &r.decoder_hidden)],
        2,
        (640, 460),
    )?;
    Ok(())
}

/// `init.md`: the study's settings, the W2 ratio table (Figure 3) and the hidden norms against
/// Lemma 2.
fn init_doc(report: &InitReport, shape: &str) -> Vec<Block> {
    let s = &report.study;
    let mut w2_rows = Vec::new();
    for r in &report.results {
        for (stack, layers, ratio) in [
            ("encoder", &r.encoder_ffn, r.encoder_w2_last_over_first),
            ("decoder", &r.decoder_ffn, r.decoder_w2_last_over_first),
        ] {
            let (first, last) = (layers.first().unwrap().w2, layers.last().unwrap().w2);
            w2_rows.push(vec![
                r.placement.to_string(),
                stack.to_string(),
                format!("{:.4} +- {:.4}", first.mean, first.std),
                format!("{:.4} +- {:.4}", last.mean, last.std),
                crate::init_study::ratio_text(ratio),
            ]);
        }
    }
    vec![
        Block::Heading(1, "Gradients and hidden states at initialization".into()),
        Block::Para(format!(
            "Model: {shape}, vocabulary {}. {} seeds. Data: {} ({} target tokens). Loss: label-smoothed ({}) \
             cross-entropy, mean over target tokens; dropout off.",
            s.model.vocab_size,
            s.seeds.len(),
            s.data,
            report.target_tokens,
            s.label_smoothing
        )),
        Block::Image { path: "fig3_ffn_grad_norms.png".into(), alt: "FFN gradient norms".into() },
        Block::Heading(2, "FFN W2 gradient norm per layer (Figure 3)".into()),
        Block::Table {
            head: ["placement", "stack", "layer 1", "last layer", "last / first"].map(String::from).to_vec(),
            rows: w2_rows,
        },
        Block::Heading(2, "Hidden-state norms against Lemma 2".into()),
        Block::Image { path: "init_hidden_norms.png".into(), alt: "Hidden norms".into() },
        Block::Para(
            "E||x||^2/d after each layer (Post-LN: the sum before the layer's last LayerNorm, the paper's x5; \
             Pre-LN: the residual stream). Lemma 2 assumes E||x_1||^2 = d; the measured input value is given as layer 0."
                .into(),
        ),
        Block::Para(
            "For Pre-LN the Lemma's content is linear growth: each layer adds between 1/2 and 3/2 to E||x||^2/d \
             (column `added`). Its setting is a layer of two sublayers; a decoder layer has three."
                .into(),
        ),
        Block::Table {
            head: ["placement", "stack", "layer", "measured", "added", "Lemma 2 lower", "Lemma 2 upper", "measured / lower"]
                .map(String::from)
                .to_vec(),
            rows: hidden_rows(report),
        },
    ]
}

fn hidden_rows(report: &InitReport) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for r in &report.results {
        for (stack, h) in [("encoder", &r.encoder_hidden), ("decoder", &r.decoder_hidden)] {
            let blank = || String::new();
            rows.push(vec![
                r.placement.to_string(),
                stack.into(),
                "0 (input)".into(),
                format!("{:.3}", h.input.mean),
                blank(),
                blank(),
                blank(),
                blank(),
            ]);
            let mut previous = h.input.mean;
            for l in &h.layers {
                let now = l.sq_norm_over_d.mean;
                rows.push(vec![
                    r.placement.to_string(),
                    stack.into(),
                    l.layer.to_string(),
                    format!("{now:.3}"),
                    format!("{:.3}", now - previous),
                    opt(l.lemma2_lower, 2),
                    opt(l.lemma2_upper, 2),
                    opt(l.lemma2_lower.map(|b| now / b), 2),
                ]);
                previous = now;
            }
        }
    }
    rows
}

/// Writes `depth.json`, `depth.csv`, the figure and `depth.md` into `out`; returns the files.
pub fn write_depth(report: &DepthReport, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(out).map_err(|error| ReportError::Io { path: out.into(), error })?;
    let files = ["depth.json", "depth.csv", "depth_w2.png", "depth.md"].map(|f| out.join(f));
    write(&files[0], &serde_json::to_string_pretty(report).expect("report serializes"))?;
    write(&files[1], &depth_csv(report))?;
    draw_depth(report, &files[2])?;
    write(&files[3], &markdown(&depth_doc(report)))?;
    Ok(files.to_vec())
}

fn depth_csv(report: &DepthReport) -> String {
    let mut csv = String::from("placement,layers,stack,grad_norm_mean,grad_norm_std,seeds\n");
    for r in &report.rows {
        for (stack, s) in [("encoder", r.encoder_last_w2), ("decoder", r.decoder_last_w2)] {
            let _ = writeln!(csv, "{},{},{stack},{:.6e},{:.6e},{}", r.placement.name(), r.layers, s.mean, s.std, s.n);
        }
    }
    csv
}

/// The last W2 gradient norm against depth, log-log, with the fitted lines.
fn draw_depth(report: &DepthReport, path: &Path) -> Result<(), ReportError> {
    let panel = |stack: &str, enc: bool| {
        let mut series = Vec::new();
        for &p in &report.study.placements {
            let rows: Vec<_> = report.rows.iter().filter(|r| r.placement == p).collect();
            let pts = rows
                .iter()
                .map(|r| {
                    let s = if enc { r.encoder_last_w2 } else { r.decoder_last_w2 };
                    (r.layers as f64, s.mean, s.std)
                })
                .collect();
            // One legend entry per placement: the measured points carry the fit's numbers, the
            // dashed fit line none.
            let fit = report.fits.iter().find(|f| f.placement == p && f.stack == stack);
            let label = match fit {
                Some(f) => format!(
                    "{p}: slope {:.2} +- {:.2}{}",
                    f.fit.slope,
                    f.fit.slope_stderr,
                    f.predicted_slope.map(|t| format!(" (theory {t})")).unwrap_or_default()
                ),
                None => format!("{p}: zero gradient, not drawn"),
            };
            series.push(Series { label, color: color(p), points: pts, dashed: false, markers: true });
            if let Some(f) = fit {
                let line = rows
                    .iter()
                    .map(|r| (r.layers as f64, (f.fit.intercept + f.fit.slope * (r.layers as f64).ln()).exp(), 0.0))
                    .collect();
                series.push(Series {
                    label: String::new(),
                    color: color(p),
                    points: line,
                    dashed: true,
                    markers: false,
                });
            }
        }
        Panel {
            title: format!("last {stack} layer"),
            x_label: "layers L (encoder = decoder), log scale".into(),
            y_label: "||dL/dW2||_F, log scale".into(),
            series,
            log_log: true,
            integer_x: false,
        }
    };
    let m = &report.study.model;
    draw(
        path,
        &format!(
            "Gradient norm of the last FFN W2 vs depth (d {}, FFN {}, {} heads; {} seeds)",
            m.d_model,
            m.ffn_dim,
            m.heads,
            report.study.seeds.len()
        ),
        &[panel("encoder", true), panel("decoder", false)],
        2,
        (640, 460),
    )?;
    Ok(())
}

/// `depth.md`: the settings, the norms by depth and the fitted slopes against Theorem 1.
fn depth_doc(report: &DepthReport) -> Vec<Block> {
    let m = &report.study.model;
    let stat = |s: crate::stats::Stat| format!("{:.4} +- {:.4}", s.mean, s.std);
    vec![
        Block::Heading(1, "Gradient norm of the last FFN W2 against depth (Theorem 1)".into()),
        Block::Para(format!(
            "Model: d {}, FFN {}, {} heads, vocabulary {}; encoder depth = decoder depth. {} seeds. Data: {} ({} target tokens).",
            m.d_model,
            m.ffn_dim,
            m.heads,
            m.vocab_size,
            report.study.seeds.len(),
            report.study.data,
            report.target_tokens
        )),
        Block::Image { path: "depth_w2.png".into(), alt: "W2 gradient norm vs depth".into() },
        Block::Table {
            head: ["placement", "layers", "encoder last W2", "decoder last W2"].map(String::from).to_vec(),
            rows: report
                .rows
                .iter()
                .map(|r| vec![r.placement.to_string(), r.layers.to_string(), stat(r.encoder_last_w2), stat(r.decoder_last_w2)])
                .collect(),
        },
        Block::Para("Least-squares fit of ln(norm) on ln(L) over every seed's point:".into()),
        Block::Table {
            head: ["placement", "stack", "slope", "std. error", "R^2", "Theorem 1"].map(String::from).to_vec(),
            rows: report
                .fits
                .iter()
                .map(|f| {
                    vec![
                        f.placement.to_string(),
                        f.stack.to_string(),
                        format!("{:.3}", f.fit.slope),
                        format!("{:.3}", f.fit.slope_stderr),
                        format!("{:.3}", f.fit.r2),
                        f.predicted_slope.map_or_else(|| "none".into(), |v| v.to_string()),
                    ]
                })
                .collect(),
        },
    ]
}
