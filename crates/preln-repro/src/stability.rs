//! The stability map (`preln reproduce stability`): which norm placement trains at which depth
//! and peak learning rate, without warmup and with the paper's warmup (scaled), on one footing.
//!
//! Every cell is a short `preln train` run of `configs/reproduce/stability.toml` with the cell's
//! placement, depth (encoder = decoder), peak lr and warmup, trained by the grid runner (kept when
//! finished, resumed when interrupted, `--jobs` at a time). A cell ends diverged (a non-finite
//! loss: at which update, and the parameter with the largest gradient), stuck (validation NLL no
//! better than a unigram model of the target language, which ignores the source and the prefix)
//! or trained (its final validation NLL). The claims of each placement's paper are then checked
//! against the map.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use preln_data::Dataset;
use preln_model::NormPlacement;
use preln_train::config::{resolve, TrainConfig};
use preln_train::metrics::{valid_records, Record};
use serde::{Deserialize, Serialize};

use crate::claims::{Claim, Verdict};
use crate::grid::{status, Job, RunStatus};
use crate::paper::{scaled_warmup, PAPER_WARMUP};
use crate::scale::Scale;

/// One cell's recipe at the paper's scale (compiled in).
pub const BASE: &str = include_str!("../../../configs/reproduce/stability.toml");
const BASE_SOURCE: &str = "configs/reproduce/stability.toml";

/// A cell whose validation NLL is within this many nats per token of the unigram baseline (or
/// above it) has learned nothing beyond word frequencies: stuck.
pub const STUCK_MARGIN: f64 = 0.05;

/// What a scale of the map trains.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StabilityScale {
    pub name: String,
    /// d_model, FFN width and heads (None: the recipe's own, the paper's).
    pub width: Option<(i64, i64, i64)>,
    /// Layers per stack (encoder = decoder).
    pub depths: Vec<i64>,
    /// Peak learning rates.
    pub lrs: Vec<f64>,
    /// Updates per run.
    pub updates: u64,
    pub max_tokens: usize,
    /// The gradient-norm scan at initialization (Theorem 1): depths, seeds and batch tokens.
    pub scan_depths: Vec<i64>,
    pub init_seeds: u64,
    pub init_tokens: i64,
}

impl StabilityScale {
    pub fn of(scale: Scale) -> StabilityScale {
        let (name, width, depths, updates, max_tokens, init_seeds, init_tokens) = match scale {
            Scale::Quick => ("quick", Some((64, 256, 4)), vec![6, 12], 200, 512, 4, 2048),
            Scale::Cpu => ("cpu", Some((128, 512, 4)), vec![6, 12, 24], 1500, 4096, 5, 4096),
            Scale::Paper => ("paper", None, vec![6, 12, 24], 16_500, 4096, 10, 4096),
        };
        StabilityScale {
            name: name.into(),
            width,
            depths,
            lrs: vec![5e-4, 1e-3, 2e-3],
            updates,
            max_tokens,
            scan_depths: vec![3, 6, 12, 24],
            init_seeds,
            init_tokens,
        }
    }

    /// The two warmups of the map: none (the peak lr from the first update) and the paper's 4000
    /// updates scaled by run length (a linear ramp to the peak).
    pub fn warmups(&self) -> [u64; 2] {
        [0, scaled_warmup(PAPER_WARMUP, self.updates, 1)]
    }
}

/// One cell of the map, as it will be trained.
#[derive(Clone, Debug)]
pub struct Cell {
    pub placement: NormPlacement,
    pub depth: i64,
    pub lr: f64,
    pub warmup: u64,
    pub name: String,
    pub dir: PathBuf,
    pub config: TrainConfig,
}

impl Cell {
    pub fn job(&self) -> Job {
        crate::grid::train_job(&self.name, &self.dir, &self.config)
    }
}

/// `5e-4` for 0.0005.
pub fn lr_text(lr: f64) -> String {
    format!("{lr:e}")
}

/// Every cell at this scale under `out/stability/`, in the order they are trained: placement by
/// placement, so that each heatmap fills in together. `user` overrides apply to every cell, last.
pub fn plan(scale: &StabilityScale, placements: &[NormPlacement], out: &Path, user: &[String]) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for &placement in placements {
        for &depth in &scale.depths {
            for &lr in &scale.lrs {
                for warmup in scale.warmups() {
                    let name = format!("{}-L{depth}-lr{}-w{warmup}", placement.name(), lr_text(lr));
                    let mut o = vec![
                        format!("model.placement={}", placement.name()),
                        format!("model.encoder_layers={depth}"),
                        format!("model.decoder_layers={depth}"),
                        format!("train.lr={lr}"),
                        format!("schedule.warmup={warmup}"),
                        format!("train.max_updates={}", scale.updates),
                        format!("train.max_tokens={}", scale.max_tokens),
                        format!("train.save_every={}", (scale.updates / 4).max(1)),
                        format!("train.diag_every={}", (scale.updates / 8).max(1)),
                    ];
                    if let Some((d, ffn, heads)) = scale.width {
                        o.extend([
                            format!("model.d_model={d}"),
                            format!("model.ffn_dim={ffn}"),
                            format!("model.heads={heads}"),
                        ]);
                    }
                    o.extend(user.iter().cloned());
                    let config = resolve(BASE_SOURCE, BASE, &o).with_context(|| format!("stability cell {name}"))?;
                    let dir = out.join("stability").join(&name);
                    cells.push(Cell { placement, depth, lr, warmup, name, dir, config });
                }
            }
        }
    }
    Ok(cells)
}

/// How a cell ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    NotRun,
    Unfinished {
        step: u64,
    },
    /// A non-finite loss at `step`; `parameter` had the largest gradient norm then.
    Diverged {
        step: u64,
        parameter: String,
    },
    /// Final validation NLL no better than the unigram baseline (less `STUCK_MARGIN`).
    Stuck {
        nll: f64,
    },
    Trained {
        nll: f64,
    },
}

impl Outcome {
    /// A result: trained, stuck or diverged (not: not run, unfinished).
    pub fn finished(&self) -> bool {
        matches!(self, Outcome::Trained { .. } | Outcome::Stuck { .. } | Outcome::Diverged { .. })
    }

    pub fn trained(&self) -> bool {
        matches!(self, Outcome::Trained { .. })
    }

    /// The final validation NLL of a finished, finite run.
    pub fn nll(&self) -> Option<f64> {
        match self {
            Outcome::Trained { nll } | Outcome::Stuck { nll } => Some(*nll),
            Outcome::NotRun | Outcome::Unfinished { .. } | Outcome::Diverged { .. } => None,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Outcome::NotRun => "not run".into(),
            Outcome::Unfinished { step } => format!("unfinished (update {step})"),
            Outcome::Diverged { step, parameter } => format!("diverged at update {step} ({parameter})"),
            Outcome::Stuck { nll } => format!("stuck ({nll:.2})"),
            Outcome::Trained { nll } => format!("{nll:.2}"),
        }
    }
}

/// How the run in `dir` ended, judged against the unigram `baseline` (nats per token).
pub fn outcome(dir: &Path, baseline: f64) -> Result<Outcome> {
    let metrics = dir.join("metrics.jsonl");
    let records = if metrics.exists() { crate::grid::read_metrics(&metrics)? } else { Vec::new() };
    if let Some(d) = records.iter().find_map(|r| match r {
        Record::Diverged(d) => Some(d),
        _ => None,
    }) {
        return Ok(Outcome::Diverged { step: d.step, parameter: d.largest_grad.clone() });
    }
    Ok(match status(dir)? {
        RunStatus::NotStarted => Outcome::NotRun,
        RunStatus::Partial { step, .. } => Outcome::Unfinished { step },
        RunStatus::Diverged { step } => Outcome::Diverged { step, parameter: "?".into() },
        RunStatus::Complete => match valid_records(&records).last() {
            Some(v) if v.nll < baseline - STUCK_MARGIN => Outcome::Trained { nll: v.nll },
            Some(v) => Outcome::Stuck { nll: v.nll },
            None => Outcome::Unfinished { step: 0 },
        },
    })
}

/// The training clock of the run's last validation.
fn train_seconds(dir: &Path) -> Option<f64> {
    let records = preln_train::metrics::Metrics::read(&dir.join("metrics.jsonl")).ok()?;
    valid_records(&records).last().map(|v| v.wall_s)
}

/// The cross-entropy (nats per token) of the validation targets, end-of-sentence included,
/// under the training targets' unigram distribution with add-one smoothing: what a model that
/// has learned word frequencies and nothing else scores.
pub fn unigram_baseline(data: &Path) -> Result<f64> {
    let ds = Dataset::open(data)?;
    let vocab = ds.tokenizer.vocab_size();
    let eos = preln_data::Specials::DEFAULT.eos;
    let tokens = |pairs: &preln_data::Pairs| -> Vec<i64> {
        pairs.iter().flat_map(|(_, t)| t.iter().copied().chain([eos])).collect()
    };
    let mut counts = vec![1.0f64; vocab];
    let train = tokens(&ds.split("train")?);
    for &t in &train {
        counts[t as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    let valid = tokens(&ds.split("valid")?);
    let nll: f64 = valid.iter().map(|&t| -(counts[t as usize] / total).ln()).sum();
    Ok(nll / valid.len().max(1) as f64)
}

/// A finished cell of the map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellResult {
    pub placement: NormPlacement,
    pub depth: i64,
    pub lr: f64,
    pub warmup: u64,
    pub outcome: Outcome,
    /// Training seconds of the run (its last validation's clock), if it validated.
    #[serde(default)]
    pub train_s: Option<f64>,
}

/// Everything the map measured (`stability.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StabilityMap {
    pub scale: StabilityScale,
    pub baseline_nll: f64,
    pub cells: Vec<CellResult>,
}

impl StabilityMap {
    pub fn read(scale: &StabilityScale, cells: &[Cell], data: &Path) -> Result<StabilityMap> {
        let baseline_nll = unigram_baseline(data)?;
        let cells = cells
            .iter()
            .map(|c| {
                Ok(CellResult {
                    placement: c.placement,
                    depth: c.depth,
                    lr: c.lr,
                    warmup: c.warmup,
                    outcome: outcome(&c.dir, baseline_nll)?,
                    train_s: train_seconds(&c.dir),
                })
            })
            .collect::<Result<_>>()?;
        Ok(StabilityMap { scale: scale.clone(), baseline_nll, cells })
    }

    pub fn placements(&self) -> Vec<NormPlacement> {
        let mut v: Vec<NormPlacement> = Vec::new();
        for c in &self.cells {
            if !v.contains(&c.placement) {
                v.push(c.placement);
            }
        }
        v
    }

    pub fn get(&self, p: NormPlacement, depth: i64, lr: f64, warmup: u64) -> Option<&Outcome> {
        self.cells
            .iter()
            .find(|c| c.placement == p && c.depth == depth && c.lr == lr && c.warmup == warmup)
            .map(|c| &c.outcome)
    }

    /// The largest peak lr at which `p` trains without warmup at `depth`.
    pub fn largest_lr_without_warmup(&self, p: NormPlacement, depth: i64) -> Option<f64> {
        self.scale
            .lrs
            .iter()
            .copied()
            .filter(|&lr| self.get(p, depth, lr, 0).is_some_and(Outcome::trained))
            .fold(None, |m: Option<f64>, lr| Some(m.map_or(lr, |m| m.max(lr))))
    }
}

/// Each paper's headline, checked on the map. A claim whose cells have not all finished is left
/// out (it would say nothing yet).
pub fn claims(map: &StabilityMap, depth_slopes: &[(NormPlacement, &str, f64)]) -> Vec<Claim> {
    let has = |p| map.placements().contains(&p);
    let warm = map.scale.warmups()[1];
    let deepest = map.scale.depths.iter().copied().max().unwrap_or(0);
    let cell = |p, d, lr, w| map.get(p, d, lr, w).cloned().unwrap_or(Outcome::NotRun);
    let verdict = |held: bool| if held { Verdict::Reproduced } else { Verdict::NotReproduced };
    let mut out = Vec::new();
    if has(NormPlacement::Post) {
        // At each depth, at the largest lr that trains with warmup: without warmup the run fails,
        // or ends clearly worse.
        let post = NormPlacement::Post;
        let complete = map.scale.depths.iter().all(|&d| {
            map.scale.lrs.iter().all(|&lr| cell(post, d, lr, 0).finished() && cell(post, d, lr, warm).finished())
        });
        let rows: Vec<(i64, Option<(f64, Outcome, Outcome)>)> = map
            .scale
            .depths
            .iter()
            .map(|&d| {
                let lr = map.scale.lrs.iter().copied().filter(|&lr| cell(post, d, lr, warm).trained()).reduce(f64::max);
                (d, lr.map(|lr| (lr, cell(post, d, lr, 0), cell(post, d, lr, warm))))
            })
            .collect();
        let held = rows.iter().all(|(_, r)| match r {
            Some((_, no, Outcome::Trained { nll: with })) => !no.trained() || no.nll().is_some_and(|n| n > with + 0.1),
            _ => false,
        });
        out.extend(complete.then(|| Claim {
            claim: "Post-LN needs the learning-rate warmup".into(),
            paper: "Xiong et al. (2020), Figure 2: without warmup Post-LN fails or ends far worse (here: at each depth, at the largest lr that trains with warmup, the run without warmup is stuck, diverged or worse by > 0.1 nats)".into(),
            measured: rows
                .iter()
                .map(|(d, r)| match r {
                    Some((lr, no, yes)) => {
                        format!("{d} layers, lr {}: no warmup {}, warmup {warm}: {}", lr_text(*lr), no.text(), yes.text())
                    }
                    None => format!("{d} layers: no lr trains even with warmup"),
                })
                .collect::<Vec<_>>()
                .join("; "),
            verdict: verdict(held),
        }));
    }
    let trains_everywhere = |p: NormPlacement, depths: &[i64]| -> Option<(bool, String)> {
        let mut failed = Vec::new();
        for &d in depths {
            for &lr in &map.scale.lrs {
                let o = cell(p, d, lr, 0);
                if !o.finished() {
                    return None;
                }
                if !o.trained() {
                    failed.push(format!("{d} layers lr {}: {}", lr_text(lr), o.text()));
                }
            }
        }
        let n = depths.len() * map.scale.lrs.len();
        let text = if failed.is_empty() {
            format!("all {n} no-warmup cells train")
        } else {
            format!("{} of {n} no-warmup cells fail: {}", failed.len(), failed.join("; "))
        };
        Some((failed.is_empty(), text))
    };
    let all_depths = map.scale.depths.clone();
    for (p, claim, paper, depths) in [
        (
            NormPlacement::Pre,
            "Pre-LN trains without warmup",
            "Xiong et al. (2020), Figure 4: at every lr of the grid",
            all_depths.clone(),
        ),
        (
            NormPlacement::DeepNorm,
            "DeepNorm trains a deep Post-LN stack stably",
            "Wang et al. (2022): without warmup, at every lr, at the deepest setting",
            vec![deepest],
        ),
        (
            NormPlacement::Admin,
            "Admin trains a deep Post-LN stack stably",
            "Liu et al. (2020): without warmup, at every lr, at the deepest setting",
            vec![deepest],
        ),
        (
            NormPlacement::ReZero,
            "ReZero trains without any LayerNorm",
            "Bachlechner et al. (2020): without warmup, at every depth and lr",
            all_depths.clone(),
        ),
    ] {
        if let Some((held, measured)) = trains_everywhere(p, &depths) {
            out.push(Claim { claim: claim.into(), paper: paper.into(), measured, verdict: verdict(held) });
        }
    }
    let slope = |p: NormPlacement| -> Vec<f64> {
        depth_slopes.iter().filter(|(q, _, _)| *q == p).map(|(_, _, s)| *s).collect()
    };
    let (pre, post) = (slope(NormPlacement::Pre), slope(NormPlacement::Post));
    if !pre.is_empty() && !post.is_empty() {
        let text = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
        out.push(Claim {
            claim: "Pre-LN's last-layer gradients shrink with depth; Post-LN's do not".into(),
            paper: "Xiong et al. (2020), Theorem 1: slope of ln ||dL/dW2|| on ln L is -1/2 for Pre-LN, 0 for Post-LN (here: Pre-LN <= -0.2, Post-LN within +-0.2, encoder and decoder)".into(),
            measured: format!(
                "at initialization over {:?} layers: Pre-LN slopes {}; Post-LN slopes {}",
                map.scale.scan_depths,
                text(&pre),
                text(&post)
            ),
            verdict: verdict(pre.iter().all(|s| *s <= -0.2) && post.iter().all(|s| s.abs() < 0.2)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_sets_each_cells_placement_depth_lr_and_warmup() {
        let scale = StabilityScale::of(Scale::Quick);
        let cells = plan(&scale, &[NormPlacement::DeepNorm], Path::new("/x"), &[]).unwrap();
        assert_eq!(cells.len(), 2 * 3 * 2);
        let c = cells.iter().find(|c| c.name == "deepnorm-L12-lr2e-3-w48").expect("named by its settings");
        let m = &c.config.model;
        assert_eq!((m.placement, m.encoder_layers, m.decoder_layers, m.d_model), (NormPlacement::DeepNorm, 12, 12, 64));
        assert_eq!((c.config.train.lr, c.config.schedule.warmup(), c.config.train.max_updates), (2e-3, 48, 200));
        assert_eq!(c.config.schedule.lr_at(2e-3, 100, 1), 2e-3, "constant after the warmup");
        assert_eq!(c.dir, Path::new("/x/stability/deepnorm-L12-lr2e-3-w48"));
        assert_eq!(scale.warmups(), [0, 48]);
    }

    fn map(cells: &[(NormPlacement, i64, f64, u64, Outcome)]) -> StabilityMap {
        let mut scale = StabilityScale::of(Scale::Quick);
        scale.depths = vec![6];
        scale.lrs = vec![1e-3, 2e-3];
        let cells = cells
            .iter()
            .map(|(placement, depth, lr, warmup, outcome)| CellResult {
                placement: *placement,
                depth: *depth,
                lr: *lr,
                warmup: *warmup,
                outcome: outcome.clone(),
                train_s: None,
            })
            .collect();
        StabilityMap { scale, baseline_nll: 4.0, cells }
    }

    #[test]
    fn post_ln_needs_warmup_when_it_fails_or_lags_without_it_at_the_largest_lr_warmup_trains() {
        use NormPlacement::Post;
        let t = |nll| Outcome::Trained { nll };
        let stuck = Outcome::Stuck { nll: 4.1 };
        let diverged = Outcome::Diverged { step: 3, parameter: "x".into() };
        // 2e-3 fails either way; at 1e-3 warmup trains and no warmup is stuck: held.
        let m = map(&[
            (Post, 6, 1e-3, 0, stuck.clone()),
            (Post, 6, 1e-3, 48, t(2.0)),
            (Post, 6, 2e-3, 0, diverged.clone()),
            (Post, 6, 2e-3, 48, stuck.clone()),
        ]);
        let c = &claims(&m, &[])[0];
        assert_eq!(c.verdict, Verdict::Reproduced, "{}", c.measured);
        assert!(c.measured.contains("6 layers, lr 1e-3: no warmup stuck (4.10), warmup 48: 2.00"), "{}", c.measured);
        assert_eq!(m.largest_lr_without_warmup(Post, 6), None);
        // Without warmup as good as with it: not reproduced.
        let m = map(&[
            (Post, 6, 1e-3, 0, t(2.2)),
            (Post, 6, 1e-3, 48, t(2.2)),
            (Post, 6, 2e-3, 0, t(2.05)),
            (Post, 6, 2e-3, 48, t(2.0)),
        ]);
        assert_eq!(claims(&m, &[])[0].verdict, Verdict::NotReproduced);
        assert_eq!(m.largest_lr_without_warmup(Post, 6), Some(2e-3));
        // A cell still missing: no claim yet.
        let m = map(&[(Post, 6, 2e-3, 0, t(2.05)), (Post, 6, 2e-3, 48, t(2.0))]);
        assert!(claims(&m, &[]).is_empty());
    }

    #[test]
    fn a_claim_that_every_cell_trains_names_the_cells_that_did_not() {
        use NormPlacement::Pre;
        let m =
            map(&[(Pre, 6, 1e-3, 0, Outcome::Trained { nll: 2.0 }), (Pre, 6, 2e-3, 0, Outcome::Stuck { nll: 4.1 })]);
        let c = &claims(&m, &[])[0];
        assert_eq!(c.verdict, Verdict::NotReproduced);
        assert!(c.measured.contains("1 of 2") && c.measured.contains("lr 2e-3: stuck (4.10)"), "{}", c.measured);
    }

    #[test]
    fn the_unigram_baseline_of_the_built_in_task_lies_between_nothing_and_uniform() {
        let tmp = tempfile::tempdir().unwrap();
        let data = crate::builtin::ensure(tmp.path(), &|_| {}).unwrap();
        let b = unigram_baseline(&data).unwrap();
        let uniform = (Dataset::open(&data).unwrap().tokenizer.vocab_size() as f64).ln();
        // Zipf-distributed words: well below the uniform ln V, well above zero.
        assert!(b > 2.0 && b < uniform - 0.5, "baseline {b}, uniform {uniform}");
    }
}
