//! The stability map's report: `stability.json`, one heatmap per placement
//! (`stability_map.png`), the largest learning rate that trains without warmup per depth, the
//! claims table, the gradient scan at initialization over the map's depths, and every cell.
//! Written as `stability.md` and a self-contained `stability.html` from what is on disk.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use preln_analysis::depth_study::DepthReport;
use preln_analysis::doc::{html, markdown, Block};
use preln_analysis::heatmap::{draw_heatmaps, HeatCell, Heatmap, Shade};
use preln_model::NormPlacement;

use crate::claims::Claim;
use crate::stability::{claims, lr_text, Outcome, StabilityMap};

/// Where the map's depth scan at initialization goes, under `out`.
pub const DEPTH_DIR: &str = "stability-depth";

pub struct Context<'a> {
    pub out: &'a Path,
    pub map: &'a StabilityMap,
    pub data: &'a Path,
    pub builtin: bool,
    pub command: String,
    pub wall_s: f64,
}

/// Writes the report files; returns them.
pub fn write(ctx: &Context) -> Result<Vec<PathBuf>> {
    let out = ctx.out;
    let map = ctx.map;
    let json = out.join("stability.json");
    std::fs::write(&json, serde_json::to_string_pretty(map)?).with_context(|| format!("writing {}", json.display()))?;
    let png = out.join("stability_map.png");
    draw_map(map, &png)?;
    let depth: Option<DepthReport> = crate::report::read_json(&out.join(DEPTH_DIR).join("depth.json"))?;
    let slopes: Vec<(NormPlacement, &str, f64)> = depth
        .as_ref()
        .map(|d| d.fits.iter().map(|f| (f.placement, f.stack.as_str(), f.fit.slope)).collect())
        .unwrap_or_default();
    let claims = claims(map, &slopes);
    let doc = document(ctx, &claims, depth.as_ref());
    let md = out.join("stability.md");
    std::fs::write(&md, markdown(&doc)).with_context(|| format!("writing {}", md.display()))?;
    let page = out.join("stability.html");
    std::fs::write(&page, html(&doc, "preln reproduce stability", out)?)
        .with_context(|| format!("writing {}", page.display()))?;
    Ok(vec![json, png, md, page])
}

/// Columns: each peak lr without and with warmup.
fn columns(map: &StabilityMap) -> Vec<(f64, u64)> {
    map.scale.lrs.iter().flat_map(|&lr| map.scale.warmups().map(|w| (lr, w))).collect()
}

fn draw_map(map: &StabilityMap, path: &Path) -> Result<()> {
    let best = map.cells.iter().filter_map(|c| c.outcome.nll()).fold(f64::INFINITY, f64::min);
    let span = (map.baseline_nll - best).max(1e-6);
    let cols = columns(map);
    let panels: Vec<Heatmap> = map
        .placements()
        .into_iter()
        .map(|p| Heatmap {
            title: p.to_string(),
            x_title: "peak lr / warmup updates".into(),
            y_title: "layers".into(),
            x_labels: cols.iter().map(|(lr, w)| format!("{} / {w}", lr_text(*lr))).collect(),
            y_labels: map.scale.depths.iter().map(|d| d.to_string()).collect(),
            cells: map
                .scale
                .depths
                .iter()
                .map(|&d| {
                    cols.iter()
                        .map(|&(lr, w)| heat_cell(map.get(p, d, lr, w).unwrap_or(&Outcome::NotRun), best, span))
                        .collect()
                })
                .collect(),
        })
        .collect();
    let legend = format!(
        "Final validation NLL (nats/token): green = the best ({best:.2}) to red = the unigram baseline ({:.2}).\n\
         Grey: stuck (no better than the baseline); black: diverged at update u; pale: not run.",
        map.baseline_nll
    );
    let cols_n = panels.len().clamp(1, 3);
    draw_heatmaps(
        path,
        "Stability map: final validation NLL by depth, peak lr and warmup",
        &legend,
        &panels,
        cols_n,
        (560, 300),
    )?;
    Ok(())
}

fn heat_cell(o: &Outcome, best: f64, span: f64) -> HeatCell {
    let (text, shade) = match o {
        Outcome::Trained { nll } => (format!("{nll:.2}"), Shade::Value((nll - best) / span)),
        Outcome::Stuck { nll } => (format!("stuck {nll:.2}"), Shade::Grey),
        Outcome::Diverged { step, .. } => (format!("div@{step}"), Shade::Failed),
        Outcome::Unfinished { step } => (format!("({step})"), Shade::Empty),
        Outcome::NotRun => ("-".into(), Shade::Empty),
    };
    HeatCell { text, shade }
}

fn document(ctx: &Context, claims: &[Claim], depth: Option<&DepthReport>) -> Vec<Block> {
    let map = ctx.map;
    let s = &map.scale;
    let width = match s.width {
        Some((d, ffn, h)) => format!("d {d}, FFN {ffn}, {h} heads"),
        None => "the paper's width (d 512, FFN 1024, 4 heads)".into(),
    };
    let data = if ctx.builtin {
        format!("the built-in synthetic translation task (`{}`)", ctx.data.display())
    } else {
        format!("`{}`", ctx.data.display())
    };
    let [_, warm] = s.warmups();
    let mut doc = vec![
        Block::Heading(1, "Stability map: which placement trains at which depth, learning rate and warmup".into()),
        Block::List(vec![
            format!("Command: `{}`", ctx.command),
            format!("Scale `{}`: encoder = decoder depth {:?}, {width}; {} updates of {} tokens per run; Adam (0.9, 0.98), the peak lr constant after the warmup, label smoothing 0.1, dropout 0.1 (`configs/reproduce/stability.toml`)", s.name, s.depths, s.updates, s.max_tokens),
            format!("Peak lr {}; warmup 0 (the peak lr from the first update) or a linear warmup of {warm} updates (the paper's 4000 in runs of 16,500 updates, scaled by run length)", s.lrs.iter().map(|l| lr_text(*l)).collect::<Vec<_>>().join(", ")),
            format!("Data: {data}. Unigram baseline (target word frequencies, no context): {:.3} nats per token; a run within {:.2} of it counts as stuck", map.baseline_nll, crate::stability::STUCK_MARGIN),
            format!(
                "Training time of the cells: {:.1} min in all (summed over cells, which run `--jobs` at a time); wall time of this invocation: {:.0} s; CPU: {}",
                map.cells.iter().filter_map(|c| c.train_s).sum::<f64>() / 60.0,
                ctx.wall_s,
                crate::report::cpu_name()
            ),
        ]),
        Block::Image { path: "stability_map.png".into(), alt: "stability map".into() },
        Block::Heading(2, "The largest peak lr that trains without warmup".into()),
    ];
    let mut head = vec!["placement".to_string()];
    head.extend(s.depths.iter().map(|d| format!("{d} layers")));
    doc.push(Block::Table {
        head,
        rows: map
            .placements()
            .into_iter()
            .map(|p| {
                let mut row = vec![p.to_string()];
                row.extend(
                    s.depths
                        .iter()
                        .map(|&d| map.largest_lr_without_warmup(p, d).map(lr_text).unwrap_or_else(|| "none".into())),
                );
                row
            })
            .collect(),
    });
    doc.push(Block::Heading(2, "Claims".into()));
    doc.push(Block::Table {
        head: ["claim", "source and criterion", "measured here", "verdict"].map(String::from).to_vec(),
        rows: claims
            .iter()
            .map(|c| vec![c.claim.clone(), c.paper.clone(), c.measured.clone(), c.verdict.to_string()])
            .collect(),
    });
    if let Some(d) = depth {
        doc.push(Block::Heading(2, "Last-layer gradients at initialization against depth".into()));
        doc.push(Block::Image { path: format!("{DEPTH_DIR}/depth_w2.png"), alt: "W2 gradient norm vs depth".into() });
        doc.push(Block::Table {
            head: ["placement", "stack", "slope of ln ||dL/dW2|| on ln L", "std. error", "Theorem 1"]
                .map(String::from)
                .to_vec(),
            rows: d
                .fits
                .iter()
                .map(|f| {
                    vec![
                        f.placement.to_string(),
                        f.stack.clone(),
                        format!("{:.3}", f.fit.slope),
                        format!("{:.3}", f.fit.slope_stderr),
                        f.predicted_slope.map_or_else(|| "no prediction".into(), |v| v.to_string()),
                    ]
                })
                .collect(),
        });
    }
    doc.push(Block::Details {
        summary: format!("All {} cells", map.cells.len()),
        body: vec![Block::Table {
            head: ["placement", "layers", "peak lr", "warmup", "outcome"].map(String::from).to_vec(),
            rows: map
                .cells
                .iter()
                .map(|c| {
                    vec![
                        c.placement.to_string(),
                        c.depth.to_string(),
                        lr_text(c.lr),
                        c.warmup.to_string(),
                        c.outcome.text(),
                    ]
                })
                .collect(),
        }],
    });
    doc
}
