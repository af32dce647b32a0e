//! The report of `preln reproduce`: plots in the style of Figures 2, 3 and 4, the claims of the
//! paper next to what was measured here, a table per run, the exact configs and the software.
//! Written from what is on disk, so it can be redrawn at any time (`--report-only`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use preln_analysis::depth_study::DepthReport;
use preln_analysis::init_study::InitReport;
use preln_analysis::plot::{draw, Panel, RGBColor, Series};
use preln_train::optim::OptimizerConfig;
use preln_train::schedule::Schedule;

use crate::claims::{init_claims, warmup_claims, Claim};
use crate::grid::{PlannedRun, RunStatus};
use crate::paper::{PAPER_EPOCHS, PAPER_UPDATES_PER_EPOCH, PAPER_WARMUP};
use crate::results::{bleu_text, f2, f3, find, read_run, RunResult};
use crate::scale::ScaleSpec;
use preln_analysis::doc::{html, markdown, Block};

pub struct Context<'a> {
    pub out: &'a Path,
    pub spec: &'a ScaleSpec,
    pub data: &'a Path,
    pub builtin: bool,
    pub runs: &'a [PlannedRun],
    pub bert: &'a [crate::bert::BertRun],
    pub command: String,
    pub wall_s: f64,
}

/// One colour per (placement, optimizer, lr) across all figures; with and without warmup share
/// it (solid and dashed), as in the paper's figures.
fn run_color(name: &str) -> RGBColor {
    let family = name.trim_end_matches("-nowarmup").trim_end_matches("-warmup");
    match family {
        "post-adam-5e-4" => RGBColor(214, 39, 40),
        "post-adam-1e-3" => RGBColor(255, 127, 14),
        "post-sgd-5e-3" => RGBColor(140, 86, 75),
        "post-sgd-1e-3" => RGBColor(196, 156, 148),
        "post-adam-5e-4-warmup500" => RGBColor(255, 152, 150),
        "post-adam-1e-3-warmup500" => RGBColor(219, 219, 141),
        "post-adam-1e-4-constant" => RGBColor(127, 127, 127),
        "pre-adam-5e-4" => RGBColor(31, 119, 180),
        "pre-adam-1e-3" => RGBColor(23, 190, 207),
        "post-radam-5e-4" => RGBColor(148, 103, 189),
        "pre-radam-5e-4" => RGBColor(44, 160, 44),
        _ => RGBColor(110, 110, 110),
    }
}

/// Loss and BLEU panels of a figure over the named runs (missing ones are left out).
fn curve_panels(results: &[RunResult], names: &[&str], title: &str, bleu_name: &str) -> Vec<Panel> {
    let series = |bleu: bool| -> Vec<Series> {
        names
            .iter()
            .filter_map(|n| find(results, n))
            .filter(|r| !r.epochs.is_empty())
            .map(|r| Series {
                label: r.run.name.clone(),
                color: run_color(&r.run.name),
                points: r
                    .epochs
                    .iter()
                    .filter_map(|e| if bleu { e.bleu } else { Some(e.loss) }.map(|y| (e.epoch as f64, y, 0.0)))
                    .collect(),
                dashed: r.run.config.schedule.warmup() <= 1,
                markers: true,
            })
            .collect()
    };
    vec![
        Panel {
            title: format!("{title}: validation loss"),
            x_label: "epoch".into(),
            y_label: "label-smoothed loss (nats / token)".into(),
            series: series(false),
            log_log: false,
            integer_x: true,
        },
        Panel {
            title: format!("{title}: validation BLEU ({bleu_name})"),
            x_label: "epoch".into(),
            y_label: "BLEU".into(),
            series: series(true),
            log_log: false,
            integer_x: true,
        },
    ]
}

fn opt_name(o: &OptimizerConfig) -> &'static str {
    match o {
        OptimizerConfig::Adam { .. } => "Adam",
        OptimizerConfig::AdamW { .. } => "AdamW",
        OptimizerConfig::Sgd { .. } => "SGD",
        OptimizerConfig::RAdam { .. } => "RAdam",
    }
}

fn schedule_text(s: &Schedule) -> String {
    match s {
        Schedule::InverseSqrt { warmup } if *warmup <= 1 => "no warmup, lr_max / sqrt(t)".into(),
        Schedule::InverseSqrt { warmup } => format!("{warmup} warmup, then inverse sqrt"),
        Schedule::Constant { warmup } => format!("constant, warmup {warmup}"),
        Schedule::StepDecay { warmup, epochs, gamma } => {
            let w = if *warmup <= 1 { "no warmup".to_string() } else { format!("warmup {warmup}") };
            let at: Vec<String> = epochs.iter().map(|e| e.to_string()).collect();
            format!("{w}, constant, x{gamma} from epoch {}", at.join(", "))
        }
        Schedule::LinearDecay { warmup, total_steps } => format!("warmup {warmup}, linear decay to {total_steps}"),
    }
}

/// What the paper reports for a run of the grid (PAPER.md), for the table.
fn paper_reports(name: &str) -> &'static str {
    match name {
        "post-adam-5e-4-warmup" => "BLEU about 34 (Fig. 2, 4)",
        "post-adam-5e-4-nowarmup" => "BLEU 8.45 (Fig. 2)",
        "post-adam-1e-3-warmup" => "trains (Fig. 2)",
        "post-adam-1e-3-nowarmup" => "fails to train well (Fig. 2)",
        "post-sgd-5e-3-nowarmup" => "BLEU just above 0 after 15 epochs (Fig. 2)",
        "post-sgd-5e-3-warmup" => "better than without warmup (Fig. 2)",
        "post-sgd-1e-3-nowarmup" => "worse than with warmup (Fig. 2)",
        "post-sgd-1e-3-warmup" => "better than without warmup (Fig. 2)",
        "post-adam-5e-4-warmup500" => "BLEU 31.16 (Fig. 2)",
        "post-adam-1e-3-warmup500" => "BLEU 2.77 (Fig. 2)",
        "post-adam-1e-4-constant-nowarmup" => "valid loss about 4.3 by epoch 27: trains, slowly (Fig. 2)",
        "pre-adam-5e-4-nowarmup" => "BLEU about 34, epoch 9 as good as Post-LN's 15th (Fig. 4)",
        "pre-adam-1e-3-nowarmup" => "trains without warmup (Fig. 4)",
        "post-radam-5e-4-nowarmup" => "RAdam rescues Post-LN without warmup (Fig. 4)",
        "pre-radam-5e-4-nowarmup" => "RAdam changes little for Pre-LN (Fig. 4)",
        _ => "",
    }
}

fn run_status_text(r: &RunResult) -> String {
    match &r.status {
        RunStatus::Complete => "complete".into(),
        RunStatus::Diverged { step } => format!("diverged at update {step}"),
        RunStatus::Partial { step, epoch } => format!("unfinished (update {step}, epoch {epoch})"),
        RunStatus::NotStarted => "not run".into(),
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?))
}

/// The CPU's model name (`/proc/cpuinfo`).
pub(crate) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn software() -> Vec<String> {
    let cpu = cpu_name();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| l[12..].trim_matches('"').to_string()))
        .unwrap_or_else(|| std::env::consts::OS.into());
    vec![
        format!("preln {} (tch 0.24.0 on libtorch 2.11.0)", env!("CARGO_PKG_VERSION")),
        format!(
            "CPU: {cpu}, {} hardware threads; OS: {os}",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        ),
        format!(
            "CUDA available to libtorch: {}",
            if tch::Cuda::is_available() {
                format!("yes, {} device(s)", tch::Cuda::device_count())
            } else {
                "no".into()
            }
        ),
    ]
}

fn claims_table(claims: &[Claim]) -> Block {
    Block::Table {
        head: vec!["claim".into(), "the paper".into(), "measured here".into(), "verdict".into()],
        rows: claims
            .iter()
            .map(|c| vec![c.claim.clone(), c.paper.clone(), c.measured.clone(), c.verdict.to_string()])
            .collect(),
    }
}

fn hms(s: f64) -> String {
    let s = s.round() as u64;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

/// Writes report.md, report.html and the figures; returns the files written.
pub fn write(ctx: &Context) -> Result<Vec<PathBuf>> {
    let out = ctx.out;
    let results: Vec<RunResult> = ctx.runs.iter().map(read_run).collect::<Result<_>>()?;
    let init: Option<InitReport> = read_json(&out.join("init/init.json"))?;
    let depth: Option<DepthReport> = read_json(&out.join("depth/depth.json"))?;
    let mut files = Vec::new();
    let mut doc = header(ctx, &results);
    let claims: Vec<Claim> = init_claims(init.as_ref(), depth.as_ref())
        .into_iter()
        .chain(warmup_claims(&results))
        .chain(crate::bert::claims(ctx.bert)?)
        .collect();
    doc.extend(claims_section(&claims));
    if results.iter().any(|r| !r.epochs.is_empty() || r.finished()) {
        doc.extend(warmup_section(ctx, &results, &mut files)?);
    }
    doc.extend(init_section(out, init.as_ref(), depth.as_ref()));
    doc.extend(crate::bert::section(out, ctx.bert, &mut files)?);
    doc.extend(configs_section(ctx));
    let md_path = out.join("report.md");
    std::fs::write(&md_path, markdown(&doc)).with_context(|| format!("writing {}", md_path.display()))?;
    let html_path = out.join("report.html");
    std::fs::write(&html_path, html(&doc, "preln reproduce: report", out)?)
        .with_context(|| format!("writing {}", html_path.display()))?;
    files.push(md_path);
    files.push(html_path);
    Ok(files)
}

/// The title and what was run, on what, for how long.
fn header(ctx: &Context, results: &[RunResult]) -> Vec<Block> {
    let mut doc = vec![Block::Heading(
        1,
        "Reproducing Xiong et al. (2020), On Layer Normalization in the Transformer Architecture".into(),
    )];
    let data_text = if ctx.builtin {
        format!("the built-in synthetic translation task (generated by preln, prepared in `{}`)", ctx.data.display())
    } else {
        format!("`{}`", ctx.data.display())
    };
    doc.push(Block::List(vec![
        format!("Command: `{}`", ctx.command),
        format!("Scale: `{}`; data: {data_text}", ctx.spec.name),
        format!(
            "Wall time of this invocation: {}; training time summed over runs: {}",
            hms(ctx.wall_s),
            hms(results.iter().filter_map(|r| r.last().map(|e| e.wall_s)).sum())
        ),
    ]));

    doc
}

fn claims_section(claims: &[Claim]) -> Vec<Block> {
    let mut doc = Vec::new();
    doc.push(Block::Heading(2, "Claims".into()));
    if claims.is_empty() {
        doc.push(Block::Para(
            "No claim can be checked yet: neither the initialization study nor a pair of runs that a claim compares has finished."
                .into(),
        ));
    } else {
        doc.push(Block::Para("Each claim as the paper states it, what this reproduction measured, and whether the measurement agrees. Verdicts are mechanical (criteria in the source, `report.rs`); read the numbers.".into()));
        doc.push(claims_table(claims));
    }

    doc
}

/// The name of the validation search: `greedy` or `beam K`.
fn bleu_name(ctx: &Context) -> String {
    let beam = ctx.runs.first().map(|r| r.config.train.valid_bleu_beam).unwrap_or(ctx.spec.bleu_beam);
    if beam <= 1 {
        "greedy".to_string()
    } else {
        format!("beam {beam}")
    }
}

/// Figures 2 and 4 at this scale: the settings, the figures, a table of runs, every curve.
fn warmup_section(ctx: &Context, results: &[RunResult], files: &mut Vec<PathBuf>) -> Result<Vec<Block>> {
    let mut doc = vec![Block::Heading(2, "Warmup study (Figures 2 and 4)".into())];
    doc.push(warmup_settings(ctx));
    doc.extend(warmup_figures(ctx.out, results, &bleu_name(ctx), files)?);
    doc.push(runs_table(results));
    doc.push(curves_details(results));
    Ok(doc)
}

fn warmup_settings(ctx: &Context) -> Block {
    let bleu_name = bleu_name(ctx);
    let sample = ctx.runs.first();
    let upe = sample.map(|r| r.updates_per_epoch).unwrap_or(0);
    let epochs = sample.map(|r| r.config.train.max_epochs).unwrap_or(0);
    let tokens = sample.map(|r| r.config.train.max_tokens).unwrap_or(0);
    let total = upe * epochs;
    let sample = sample.map(|r| &r.config.model);
    Block::List(vec![
        format!(
            "Model: {} layers each side, d_model {}, FFN {}, {} heads, dropout {}, shared embeddings; label smoothing 0.1; batches of {} tokens ({} updates an epoch); {} epochs.",
            sample.map(|m| m.encoder_layers).unwrap_or(0),
            sample.map(|m| m.d_model).unwrap_or(0),
            sample.map(|m| m.ffn_dim).unwrap_or(0),
            sample.map(|m| m.heads).unwrap_or(0),
            sample.map(|m| m.dropout).unwrap_or(0.0),
            tokens, upe, epochs
        ),
        format!(
            "Warmup scaled by run length: the paper's {PAPER_WARMUP} warmup updates in runs of about {PAPER_EPOCHS} epochs of {PAPER_UPDATES_PER_EPOCH} updates ({} updates) become {PAPER_WARMUP} x {total} / {} = {} updates here ({:.1}% of the run in both).",
            PAPER_EPOCHS * PAPER_UPDATES_PER_EPOCH,
            PAPER_EPOCHS * PAPER_UPDATES_PER_EPOCH,
            crate::paper::scaled_warmup(PAPER_WARMUP, upe, epochs),
            100.0 * PAPER_WARMUP as f64 / (PAPER_EPOCHS * PAPER_UPDATES_PER_EPOCH) as f64
        ),
        format!(
            "The Pre-LN decay (x0.1 at the paper's epoch 8 of {PAPER_EPOCHS}) moves to epoch {} of {}, the same fraction of the run.",
            crate::paper::scaled_epoch(8, epochs),
            epochs
        ),
        "\"No warmup\" is the paper's T_warmup = 1: Post-LN runs start at lr_max and decay as lr_max / sqrt(t); Pre-LN runs keep lr_max until the decay.".into(),
        format!("Validation every epoch: label-smoothed loss (nats per target token) and corpus BLEU ({bleu_name}, length penalty 1.2, sacreBLEU 13a)."),
        "Dashed lines: runs without warmup.".into(),
    ])
}

fn warmup_figures(out: &Path, results: &[RunResult], bleu_name: &str, files: &mut Vec<PathBuf>) -> Result<Vec<Block>> {
    let mut doc = Vec::new();
    let figs: [(&str, &str, Vec<(&[&str], &str)>); 2] = [
        (
            "fig2_post_ln_warmup.png",
            "Figure 2 (this scale): Post-LN with and without warmup",
            vec![
                (
                    &[
                        "post-adam-5e-4-warmup",
                        "post-adam-5e-4-nowarmup",
                        "post-adam-1e-3-warmup",
                        "post-adam-1e-3-nowarmup",
                    ],
                    "Post-LN, Adam",
                ),
                (
                    &[
                        "post-adam-5e-4-warmup",
                        "post-adam-5e-4-warmup500",
                        "post-adam-1e-3-warmup",
                        "post-adam-1e-3-warmup500",
                        "post-adam-1e-4-constant-nowarmup",
                    ],
                    "Post-LN, Adam: warmup length",
                ),
                (
                    &[
                        "post-sgd-5e-3-warmup",
                        "post-sgd-5e-3-nowarmup",
                        "post-sgd-1e-3-warmup",
                        "post-sgd-1e-3-nowarmup",
                    ],
                    "Post-LN, SGD",
                ),
            ],
        ),
        (
            "fig4_pre_vs_post.png",
            "Figure 4 (this scale): Pre-LN without warmup against Post-LN; RAdam",
            vec![
                (
                    &[
                        "pre-adam-5e-4-nowarmup",
                        "pre-adam-1e-3-nowarmup",
                        "post-adam-5e-4-warmup",
                        "post-adam-1e-3-warmup",
                    ],
                    "Pre-LN vs Post-LN",
                ),
                (
                    &[
                        "post-radam-5e-4-nowarmup",
                        "pre-radam-5e-4-nowarmup",
                        "post-adam-5e-4-nowarmup",
                        "pre-adam-5e-4-nowarmup",
                    ],
                    "RAdam",
                ),
            ],
        ),
    ];
    for (file, title, groups) in figs {
        // Groups without any curve yet are left out rather than drawn empty.
        let panels: Vec<Panel> = groups
            .iter()
            .map(|(names, t)| curve_panels(results, names, t, bleu_name))
            .filter(|pair| pair.iter().any(|p| !p.series.is_empty()))
            .flatten()
            .collect();
        if panels.is_empty() {
            continue;
        }
        let path = out.join(file);
        draw(&path, title, &panels, 2, (620, 420))?;
        files.push(path);
        doc.push(Block::Image { path: file.into(), alt: title.into() });
    }
    Ok(doc)
}

fn runs_table(results: &[RunResult]) -> Block {
    let mut rows = Vec::new();
    for r in results {
        let c = &r.run.config;
        let best = r.best();
        let bb = r.best_bleu();
        rows.push(vec![
            format!("`{}`", r.run.name),
            c.model.placement.to_string(),
            opt_name(&c.optimizer).into(),
            format!("{}", c.train.lr),
            schedule_text(&c.schedule),
            run_status_text(r),
            r.last().map(|e| f3(e.loss)).unwrap_or_else(|| "-".into()),
            best.map(|e| format!("{} ({})", f3(e.loss), e.epoch)).unwrap_or_else(|| "-".into()),
            bleu_text(r.last().and_then(|e| e.bleu)),
            bb.map(|(b, e)| format!("{} ({e})", f2(b))).unwrap_or_else(|| "-".into()),
            r.last().map(|e| format!("{:.0}", e.wall_s)).unwrap_or_else(|| "-".into()),
            paper_reports(&r.run.name).into(),
        ]);
    }
    Block::Table {
        head: [
            "run",
            "placement",
            "optimizer",
            "lr_max",
            "schedule",
            "status",
            "final valid loss",
            "best valid loss (epoch)",
            "final BLEU",
            "best BLEU (epoch)",
            "train s",
            "the paper reports",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

fn curves_details(results: &[RunResult]) -> Block {
    let mut curves = Vec::new();
    for r in results.iter().filter(|r| !r.epochs.is_empty()) {
        let cells: Vec<String> =
            r.epochs.iter().map(|e| format!("{}: {} / {}", e.epoch, f3(e.loss), bleu_text(e.bleu))).collect();
        curves.push(format!("`{}`: {}", r.run.name, cells.join("; ")));
    }
    Block::Details { summary: "Per-epoch validation loss / BLEU of every run".into(), body: vec![Block::List(curves)] }
}

/// Figure 3 and the depth scan, when their studies have run.
fn init_section(out: &Path, init: Option<&InitReport>, depth: Option<&DepthReport>) -> Vec<Block> {
    let mut doc = Vec::new();
    if init.is_some() || depth.is_some() {
        doc.push(Block::Heading(2, "Gradients at initialization (Figure 3, Lemma 2, Theorem 1)".into()));
        if let Some(init) = init {
            doc.push(Block::Para(format!(
                "The paper's model (6+6 layers, d 512, FFN 1024, 4 heads, dropout off), {} seeds, one batch of {} target tokens from {}. Details: `init/init.md`.",
                init.study.seeds.len(),
                init.target_tokens,
                init.study.data
            )));
            for (file, alt) in [
                ("init/fig3_ffn_grad_norms.png", "Figure 3"),
                ("init/init_hidden_norms.png", "Hidden-state norms (Lemma 2)"),
            ] {
                if out.join(file).exists() {
                    doc.push(Block::Image { path: file.into(), alt: alt.into() });
                }
            }
        }
        if let Some(depth) = depth {
            doc.push(Block::Para(format!(
                "Depth scan: {:?} layers each side, {} seeds, last-layer W2 gradient norm, least-squares slope of ln(norm) on ln(L). Details: `depth/depth.md`.",
                depth.study.depths,
                depth.study.seeds.len()
            )));
            if out.join("depth/depth_w2.png").exists() {
                doc.push(Block::Image {
                    path: "depth/depth_w2.png".into(),
                    alt: "W2 gradient norm against depth".into(),
                });
            }
        }
    }

    doc
}

/// Each run's config as trained, and the software and machine.
fn configs_section(ctx: &Context) -> Vec<Block> {
    let mut doc = Vec::new();
    doc.push(Block::Heading(2, "Exact configs".into()));
    doc.push(Block::Para("Each run's config as trained (the paper-scale file in `configs/reproduce/` with this scale's overrides; also `RUN/config.toml`).".into()));
    for r in ctx.runs {
        doc.push(Block::Details {
            summary: format!("{}: {}", r.name, r.description),
            body: vec![Block::Code(r.config.to_toml())],
        });
    }
    doc.push(Block::Heading(2, "Software and machine".into()));
    doc.push(Block::List(software()));

    doc
}
