//! Writes the studies' results: JSON with every number, CSV, PNG figures and a Markdown summary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use preln_model::NormPlacement;

use crate::depth_study::DepthReport;
use crate::init_study::{FfnLayer, HiddenReport, InitReport};
use crate::plot::{draw, Panel, Series, GREY, POST_COLOR, PRE_COLOR};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|error| ReportError::Io { path: path.into(), error })
}

fn color(p: NormPlacement) -> plotters::style::RGBColor {
    match p {
        NormPlacement::Post => POST_COLOR,
        NormPlacement::Pre => PRE_COLOR,
    }
}

/// The files written, for the caller to list.
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
    write(&files[1], &csv)?;

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
                    l.lemma2_lower,
                    l.lemma2_upper
                );
            }
        }
    }
    write(&files[2], &csv)?;

    let m = &report.study.model;
    let shape = format!(
        "{}+{} layers, d {}, FFN {}, {} heads",
        m.encoder_layers, m.decoder_layers, m.d_model, m.ffn_dim, m.heads
    );
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
        &files[3],
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
            let bound = |upper: bool| -> Vec<(f64, f64, f64)> {
                h.layers
                    .iter()
                    .map(|l| (l.layer as f64, if upper { l.lemma2_upper } else { l.lemma2_lower }, 0.0))
                    .collect()
            };
            match r.placement {
                NormPlacement::Pre => {
                    series.push(Series {
                        label: "Pre-LN Lemma 2: 1 + l/2".into(),
                        color: PRE_COLOR,
                        points: bound(false),
                        dashed: true,
                        markers: false,
                    });
                    series.push(Series {
                        label: "Pre-LN Lemma 2: 1 + 3l/2".into(),
                        color: GREY,
                        points: bound(true),
                        dashed: true,
                        markers: false,
                    });
                }
                NormPlacement::Post => {
                    series.push(Series {
                        label: "Post-LN Lemma 2: 3/2".into(),
                        color: POST_COLOR,
                        points: bound(false),
                        dashed: true,
                        markers: false,
                    });
                }
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
        &files[4],
        &format!("Hidden-state norms at initialization ({shape})"),
        &[hidden_panel("encoder", |r| &r.encoder_hidden), hidden_panel("decoder", |r| &r.decoder_hidden)],
        2,
        (640, 460),
    )?;

    write(&files[5], &init_markdown(report, &shape))?;
    Ok(files.to_vec())
}

fn init_markdown(report: &InitReport, shape: &str) -> String {
    let mut md = String::new();
    let s = &report.study;
    let _ = writeln!(md, "# Gradients and hidden states at initialization\n");
    let _ = writeln!(
        md,
        "Model: {shape}, vocabulary {}. {} seeds. Data: {} ({} target tokens). Loss: label-smoothed \
         ({}) cross-entropy, mean over target tokens; dropout off.\n",
        s.model.vocab_size,
        s.seeds.len(),
        s.data,
        report.target_tokens,
        s.label_smoothing
    );
    let _ = writeln!(md, "![FFN gradient norms](fig3_ffn_grad_norms.png)\n");
    let _ = writeln!(md, "## FFN W2 gradient norm per layer (Figure 3)\n");
    let _ = writeln!(md, "| placement | stack | layer 1 | last layer | last / first |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in &report.results {
        for (stack, layers, ratio) in [
            ("encoder", &r.encoder_ffn, r.encoder_w2_last_over_first),
            ("decoder", &r.decoder_ffn, r.decoder_w2_last_over_first),
        ] {
            let (first, last) = (layers.first().unwrap().w2, layers.last().unwrap().w2);
            let _ = writeln!(
                md,
                "| {} | {stack} | {:.4} +- {:.4} | {:.4} +- {:.4} | {:.2} |",
                r.placement, first.mean, first.std, last.mean, last.std, ratio
            );
        }
    }
    let _ = writeln!(md, "\n## Hidden-state norms against Lemma 2\n");
    let _ = writeln!(md, "![Hidden norms](init_hidden_norms.png)\n");
    let _ = writeln!(
        md,
        "E||x||^2/d after each layer (Post-LN: the sum before the layer's last LayerNorm, the paper's x5; \
         Pre-LN: the residual stream). Lemma 2 assumes E||x_1||^2 = d; the measured input value is given as layer 0.\n"
    );
    let _ = writeln!(
        md,
        "For Pre-LN the Lemma's content is linear growth: each layer adds between 1/2 and 3/2 to E||x||^2/d \
         (column `added`). Its setting is a layer of two sublayers; a decoder layer has three.\n"
    );
    let _ = writeln!(
        md,
        "| placement | stack | layer | measured | added | Lemma 2 lower | Lemma 2 upper | measured / lower |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in &report.results {
        for (stack, h) in [("encoder", &r.encoder_hidden), ("decoder", &r.decoder_hidden)] {
            let _ = writeln!(md, "| {} | {stack} | 0 (input) | {:.3} | | | | |", r.placement, h.input.mean);
            let mut previous = h.input.mean;
            for l in &h.layers {
                let now = l.sq_norm_over_d.mean;
                let _ = writeln!(
                    md,
                    "| {} | {stack} | {} | {now:.3} | {:.3} | {:.2} | {:.2} | {:.2} |",
                    r.placement,
                    l.layer,
                    now - previous,
                    l.lemma2_lower,
                    l.lemma2_upper,
                    now / l.lemma2_lower
                );
                previous = now;
            }
        }
    }
    md
}

pub fn write_depth(report: &DepthReport, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(out).map_err(|error| ReportError::Io { path: out.into(), error })?;
    let files = ["depth.json", "depth.csv", "depth_w2.png", "depth.md"].map(|f| out.join(f));
    write(&files[0], &serde_json::to_string_pretty(report).expect("report serializes"))?;
    let mut csv = String::from("placement,layers,stack,grad_norm_mean,grad_norm_std,seeds\n");
    for r in &report.rows {
        for (stack, s) in [("encoder", r.encoder_last_w2), ("decoder", r.decoder_last_w2)] {
            let _ = writeln!(csv, "{},{},{stack},{:.6e},{:.6e},{}", r.placement.name(), r.layers, s.mean, s.std, s.n);
        }
    }
    write(&files[1], &csv)?;

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
            series.push(Series {
                label: format!("{p} measured"),
                color: color(p),
                points: pts,
                dashed: false,
                markers: true,
            });
            if let Some(f) = report.fits.iter().find(|f| f.placement == p && f.stack == stack) {
                let line = rows
                    .iter()
                    .map(|r| (r.layers as f64, (f.fit.intercept + f.fit.slope * (r.layers as f64).ln()).exp(), 0.0))
                    .collect();
                series.push(Series {
                    label: format!(
                        "{p} fit: slope {:.3} +- {:.3} (theory {})",
                        f.fit.slope, f.fit.slope_stderr, f.predicted_slope
                    ),
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
        &files[2],
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

    let mut md = String::new();
    let _ = writeln!(md, "# Gradient norm of the last FFN W2 against depth (Theorem 1)\n");
    let _ = writeln!(
        md,
        "Model: d {}, FFN {}, {} heads, vocabulary {}; encoder depth = decoder depth. {} seeds. Data: {} ({} target tokens).\n",
        m.d_model,
        m.ffn_dim,
        m.heads,
        m.vocab_size,
        report.study.seeds.len(),
        report.study.data,
        report.target_tokens
    );
    let _ = writeln!(md, "![W2 gradient norm vs depth](depth_w2.png)\n");
    let _ = writeln!(md, "| placement | layers | encoder last W2 | decoder last W2 |");
    let _ = writeln!(md, "|---|---|---|---|");
    for r in &report.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.4} +- {:.4} | {:.4} +- {:.4} |",
            r.placement,
            r.layers,
            r.encoder_last_w2.mean,
            r.encoder_last_w2.std,
            r.decoder_last_w2.mean,
            r.decoder_last_w2.std
        );
    }
    let _ = writeln!(md, "\nLeast-squares fit of ln(norm) on ln(L) over every seed's point:\n");
    let _ = writeln!(md, "| placement | stack | slope | std. error | R^2 | Theorem 1 |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for f in &report.fits {
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {} |",
            f.placement, f.stack, f.fit.slope, f.fit.slope_stderr, f.fit.r2, f.predicted_slope
        );
    }
    write(&files[3], &md)?;
    Ok(files.to_vec())
}
