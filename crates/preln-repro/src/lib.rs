//! The paper's experiments as a library: `preln reproduce [init|warmup|all|bert]` is argument
//! parsing plus one call of [`run`].
//!
//! - `init`: Figure 3 (gradient norms per layer at initialization) and the depth scan of
//!   Theorem 1, on the paper's model, through the studies of `preln analyze`.
//! - `warmup`: the grid of training runs of Figures 2 and 4 (`configs/reproduce/`), scaled.
//! - `bert`: the pre-training runs of Figure 5 and GLUE fine-tuning.
//! - `stability`: the stability map of every norm placement over depth, peak lr and warmup.
//!
//! Everything lands in `out`: `init/`, `depth/`, one folder per run, `report.md` and
//! `report.html`. Finished pieces are kept and skipped, so rerunning continues an interrupted
//! reproduction, and `report_only` redraws the report from what is there.
//!
//! Modules: [`paper`] (the paper's numbers), [`scale`] (what a scale changes), [`builtin`] (the
//! built-in task), [`grid`] (planning, training and reading runs), [`bert`] (Figure 5),
//! [`results`] (what runs left on disk), [`claims`] (verdicts), [`report`] (figures, the report), the document model is `preln_analysis::doc`.

pub mod bert;
pub mod builtin;
pub mod claims;
pub mod grid;
pub mod paper;
pub mod report;
pub mod results;
pub mod scale;
pub mod stability;
pub mod stability_report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use preln_analysis::studies::{self, ProbeSpec};
use preln_data::Dataset;
use preln_model::{NormPlacement, Seq2SeqConfig};

pub use grid::{Pool, Say};
pub use scale::{Scale, ScaleSpec};

/// Which experiments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// Figure 3 and the depth scan.
    Init,
    /// The warmup grid of Figures 2 and 4.
    Warmup,
    /// Both.
    All,
    /// Figure 5: BERT pre-training and GLUE fine-tuning.
    Bert,
    /// The stability map: placements x depth x peak lr x warmup.
    Stability,
}

impl std::str::FromStr for What {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "init" => Ok(What::Init),
            "warmup" => Ok(What::Warmup),
            "all" => Ok(What::All),
            "bert" => Ok(What::Bert),
            "stability" => Ok(What::Stability),
            _ => Err(format!("unknown experiment `{s}` (known: init, warmup, all, bert, stability)")),
        }
    }
}

/// A reproduction, fully specified.
#[derive(Clone, Debug)]
pub struct ReproduceSpec {
    pub what: What,
    pub scale: Scale,
    pub out: PathBuf,
    /// A prepared data folder; `None` for the built-in task (not for `bert`).
    pub data: Option<PathBuf>,
    /// The GLUE folder (MRPC/, RTE/) for `bert`.
    pub glue: Option<PathBuf>,
    /// Grid runs to train (all when empty).
    pub only: Vec<String>,
    /// The placements of the stability map.
    pub placements: Vec<NormPlacement>,
    /// `key=value` overrides applied to every run.
    pub overrides: Vec<String>,
    /// Redraw the report from what is on disk, training nothing.
    pub report_only: bool,
    /// The `preln` processes that train and fine-tune.
    pub pool: Pool,
    /// The command line, for the report.
    pub command: String,
}

/// What a reproduction wrote, and the runs that failed (to retry by running it again).
#[derive(Debug)]
pub struct Outcome {
    pub files: Vec<PathBuf>,
    pub failures: Vec<(String, String)>,
}

/// Runs the reproduction and writes the report (whatever is on disk, also after failed runs);
/// `say` hears the progress.
pub fn run(spec: &ReproduceSpec, say: Say) -> Result<Outcome> {
    std::fs::create_dir_all(&spec.out).with_context(|| format!("creating {}", spec.out.display()))?;
    let started = Instant::now();
    match spec.what {
        What::Bert => run_bert(spec, started, say),
        What::Stability => run_stability(spec, started, say),
        What::Init | What::Warmup | What::All => run_translation(spec, started, say),
    }
}

/// `bert`: the three pretraining runs of Figure 5, fine-tuning, and the report.
fn run_bert(spec: &ReproduceSpec, started: Instant, say: Say) -> Result<Outcome> {
    let scale = bert::BertScale::of(spec.scale);
    let runs = bert::plan(&scale, &spec.out, &spec.overrides)?;
    let Some(data) = &spec.data else { bail!("reproduce bert: --data must name a folder made by `preln prepare-mlm`") };
    preln_data::mlm::MlmDataset::open(data)?;
    let mut failures = Vec::new();
    if !spec.report_only {
        let Some(glue) = &spec.glue else { bail!("reproduce bert: --glue must name the GLUE folder (MRPC/, RTE/)") };
        failures = bert::run(&runs, &scale, data, glue, &spec.pool, say)?;
    }
    finish(spec, started, data, &[], &runs, failures)
}

/// `stability`: the depth scan at initialization over the map's depths for every placement,
/// the cells (kept when finished), and the map's report.
fn run_stability(spec: &ReproduceSpec, started: Instant, say: Say) -> Result<Outcome> {
    let scale = stability::StabilityScale::of(spec.scale);
    let data = match &spec.data {
        Some(d) => {
            Dataset::open(d)?;
            d.clone()
        }
        None => builtin::ensure(&spec.out.join("data"), say)?,
    };
    let cells = stability::plan(&scale, &spec.placements, &spec.out, &spec.overrides)?;
    for o in &spec.only {
        if !cells.iter().any(|c| &c.name == o) {
            bail!("--only: no cell `{o}` in the map (cells are named like {})", cells[0].name);
        }
    }
    let mut failures = Vec::new();
    if !spec.report_only {
        let depth_json = spec.out.join(stability_report::DEPTH_DIR).join("depth.json");
        if depth_json.exists() {
            say(&format!("depth scan: {} exists (kept)", depth_json.display()));
        } else {
            let mut model = Seq2SeqConfig::iwslt14(NormPlacement::Pre).without_dropout();
            if let Some((d, ffn, heads)) = scale.width {
                (model.d_model, model.ffn_dim, model.heads) = (d, ffn, heads);
            }
            let probe = ProbeSpec {
                data: spec.data.clone(),
                split: "train".into(),
                langs: Vec::new(),
                seeds: scale.init_seeds,
                tokens: scale.init_tokens,
                batch_seed: 0,
                label_smoothing: 0.1,
                device: tch::Device::cuda_if_available(),
                out: spec.out.join(stability_report::DEPTH_DIR),
            };
            say(&format!(
                "depth scan at initialization: {:?} layers, {} placements",
                scale.scan_depths,
                spec.placements.len()
            ));
            studies::depth(&model, &spec.placements, &scale.scan_depths, &probe, say)?;
        }
        let jobs: Vec<grid::Job> =
            cells.iter().filter(|c| spec.only.is_empty() || spec.only.contains(&c.name)).map(|c| c.job()).collect();
        failures = grid::run_all(&jobs, &data, &spec.pool, say)?;
    }
    let map = stability::StabilityMap::read(&scale, &cells, &data)?;
    let files = stability_report::write(&stability_report::Context {
        out: &spec.out,
        map: &map,
        data: &data,
        builtin: spec.data.is_none(),
        command: spec.command.clone(),
        wall_s: started.elapsed().as_secs_f64(),
    })?;
    Ok(Outcome { files, failures })
}

/// `init|warmup|all`: Figure 3 and the depth scan, and/or the warmup grid, then the report
/// (which also shows any BERT results already in `out`).
fn run_translation(spec: &ReproduceSpec, started: Instant, say: Say) -> Result<Outcome> {
    let (init, warmup) = (spec.what != What::Warmup, spec.what != What::Init);
    let scale = ScaleSpec::of(spec.scale);
    let bert_runs = bert::plan(&bert::BertScale::of(spec.scale), &spec.out, &[])?;
    let data = match &spec.data {
        Some(d) => {
            Dataset::open(d)?;
            d.clone()
        }
        None => builtin::ensure(&spec.out.join("data"), say)?,
    };
    let mut failures = Vec::new();
    if !spec.report_only {
        if init {
            run_init(&scale, spec.data.as_deref(), &spec.out, say)?;
        }
        if warmup {
            let runs = plan_runs(&scale, &data, spec)?;
            let jobs: Vec<grid::Job> = runs.iter().map(grid::PlannedRun::job).collect();
            failures = grid::run_all(&jobs, &data, &spec.pool, say)?;
        }
    }
    let runs = plan_runs(&scale, &data, spec)?;
    finish(spec, started, &data, &runs, &bert_runs, failures)
}

/// Writes the report (whatever is on disk) and reports failed runs.
fn finish(
    spec: &ReproduceSpec,
    started: Instant,
    data: &Path,
    runs: &[grid::PlannedRun],
    bert_runs: &[bert::BertRun],
    failures: Vec<(String, String)>,
) -> Result<Outcome> {
    let written = report::write(&report::Context {
        out: &spec.out,
        spec: &ScaleSpec::of(spec.scale),
        data,
        builtin: spec.data.is_none(),
        runs,
        bert: bert_runs,
        command: spec.command.clone(),
        wall_s: started.elapsed().as_secs_f64(),
    })?;
    Ok(Outcome { files: written, failures })
}

fn plan_runs(scale: &ScaleSpec, data: &Path, spec: &ReproduceSpec) -> Result<Vec<grid::PlannedRun>> {
    let ds = Dataset::open(data)?;
    grid::plan(scale, &ds.split("train")?, &spec.out, &spec.only, &spec.overrides)
}

/// Figure 3 and the depth scan on the paper's model, each skipped when its JSON is there.
fn run_init(scale: &ScaleSpec, data: Option<&Path>, out: &Path, say: Say) -> Result<()> {
    let model = Seq2SeqConfig::iwslt14(NormPlacement::Pre).without_dropout();
    let placements = [NormPlacement::Post, NormPlacement::Pre];
    let probe = |seeds: u64, dir: &str| ProbeSpec {
        data: data.map(Path::to_path_buf),
        split: "train".into(),
        langs: Vec::new(),
        seeds,
        tokens: scale.init_tokens,
        batch_seed: 0,
        label_smoothing: 0.1,
        device: tch::Device::cuda_if_available(),
        out: out.join(dir),
    };
    if out.join("init/init.json").exists() {
        say(&format!("init study: {} exists (kept)", out.join("init/init.json").display()));
    } else {
        say(&format!("init study (Figure 3): the paper's model, {} seeds", scale.init_seeds));
        studies::init(&model, &placements, &probe(scale.init_seeds, "init"), say)?;
    }
    if out.join("depth/depth.json").exists() {
        say(&format!("depth scan: {} exists (kept)", out.join("depth/depth.json").display()));
    } else {
        say(&format!("depth scan (Theorem 1): depths {:?}, {} seeds", scale.depths, scale.depth_seeds));
        studies::depth(&model, &placements, &scale.depths, &probe(scale.depth_seeds, "depth"), say)?;
    }
    Ok(())
}
