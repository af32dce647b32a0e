//! `preln reproduce [init|warmup|all]`: the paper's experiments at a chosen scale, and a report.
//!
//! - `init`: Figure 3 (gradient norms per layer at initialization) and the depth scan of
//!   Theorem 1, on the paper's model, through the same studies as `preln analyze`.
//! - `warmup`: the grid of training runs of Figures 2 and 4 (`configs/reproduce/`), scaled.
//!
//! Everything lands in `--out`: `init/`, `depth/`, one folder per run, `report.md` and
//! `report.html`. Finished pieces are kept and skipped, so rerunning continues an interrupted
//! reproduction, and `--report-only` redraws the report from what is there.

pub mod bert;
pub mod builtin;
mod doc;
pub mod grid;
pub mod report;
pub mod scale;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use preln_data::Dataset;

use crate::cli::{DepthArgs, DeviceArg, InitArgs, ModelArgs, ProbeArgs, ReproduceArgs, ReproduceWhat};
use scale::ScaleSpec;

/// What every part of a reproduction shares.
struct Setup {
    spec: ScaleSpec,
    out: PathBuf,
    started: Instant,
    /// Runs at once, and the machine's cores they share.
    jobs: usize,
    cores: usize,
}

impl Setup {
    fn threads_per_job(&self) -> usize {
        (self.cores / self.jobs).max(1)
    }
}

pub fn run(args: ReproduceArgs, threads: Option<i32>) -> Result<()> {
    let spec = ScaleSpec::of(args.scale);
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/reproduce-{}", spec.name)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cores = threads
        .map(|t| t.max(1) as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let jobs = args.jobs.unwrap_or(cores).max(1);
    let setup = Setup { spec, out, started: Instant::now(), jobs, cores };
    match args.what {
        ReproduceWhat::Bert => run_bert(&args, &setup),
        ReproduceWhat::Init => run_translation(&args, &setup, true, false),
        ReproduceWhat::Warmup => run_translation(&args, &setup, false, true),
        ReproduceWhat::All => run_translation(&args, &setup, true, true),
    }
}

/// `reproduce bert`: the three pretraining runs of Figure 5, fine-tuning, and the report.
fn run_bert(args: &ReproduceArgs, setup: &Setup) -> Result<()> {
    let scale = bert::BertScale::of(args.scale);
    let runs = bert::plan(&scale, &setup.out, &args.overrides)?;
    let Some(data) = &args.data else { bail!("reproduce bert: --data must name a folder made by `preln prepare-mlm`") };
    preln_data::mlm::MlmDataset::open(data)?;
    let mut failures = Vec::new();
    if !args.report_only {
        let Some(glue) = &args.glue else { bail!("reproduce bert: --glue must name the GLUE folder (MRPC/, RTE/)") };
        failures = bert::run(&runs, &scale, data, glue, setup.jobs, setup.threads_per_job(), setup.cores)?;
    }
    finish(setup, data, false, &[], &runs, failures)
}

/// `reproduce init|warmup|all`: Figure 3 and the depth scan, and/or the warmup grid, then the
/// report (which also shows any BERT results already in `--out`).
fn run_translation(args: &ReproduceArgs, setup: &Setup, init: bool, warmup: bool) -> Result<()> {
    let bert_runs = bert::plan(&bert::BertScale::of(args.scale), &setup.out, &[])?;
    let data = match &args.data {
        Some(d) => {
            Dataset::open(d)?;
            d.clone()
        }
        None => builtin::ensure(&setup.out.join("data"))?,
    };
    let mut failures = Vec::new();
    if !args.report_only {
        if init {
            run_init(&setup.spec, args.data.as_deref(), &setup.out)?;
        }
        if warmup {
            let runs = plan_runs(&setup.spec, &data, &setup.out, args)?;
            let jobs_list: Vec<grid::Job> = runs.iter().map(grid::PlannedRun::job).collect();
            failures = grid::run_all(&jobs_list, &data, setup.jobs, setup.threads_per_job())?;
        }
    }
    let runs = plan_runs(&setup.spec, &data, &setup.out, args)?;
    finish(setup, &data, args.data.is_none(), &runs, &bert_runs, failures)
}

/// Writes the report (whatever is on disk) and reports failed runs.
fn finish(
    setup: &Setup,
    data: &Path,
    builtin: bool,
    runs: &[grid::PlannedRun],
    bert_runs: &[bert::BertRun],
    failures: Vec<(String, String)>,
) -> Result<()> {
    let written = report::write(&report::Context {
        out: &setup.out,
        spec: &setup.spec,
        data,
        builtin,
        runs,
        bert: bert_runs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        wall_s: setup.started.elapsed().as_secs_f64(),
    })?;
    for f in &written {
        println!("{}", f.display());
    }
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|(n, m)| format!("{n}: {m}")).collect();
        bail!("{} run(s) failed (rerun the same command to retry them):\n{}", failures.len(), list.join("\n"));
    }
    Ok(())
}

fn plan_runs(spec: &ScaleSpec, data: &Path, out: &Path, args: &ReproduceArgs) -> Result<Vec<grid::PlannedRun>> {
    let ds = Dataset::open(data)?;
    grid::plan(spec, &ds.split("train")?, out, &args.only, &args.overrides)
}

/// Figure 3 and the depth scan, skipped when their JSON is already there.
fn run_init(spec: &ScaleSpec, data: Option<&Path>, out: &Path) -> Result<()> {
    let model = ModelArgs {
        preset: "iwslt14".into(),
        layers: None,
        d_model: None,
        ffn_dim: None,
        heads: None,
        vocab: None,
        placements: vec![preln_model::NormPlacement::Post, preln_model::NormPlacement::Pre],
    };
    let probe = |seeds: u64, dir: &str| ProbeArgs {
        data: data.map(Path::to_path_buf),
        split: "train".into(),
        langs: Vec::new(),
        seeds,
        tokens: spec.init_tokens,
        batch_seed: 0,
        label_smoothing: 0.1,
        device: DeviceArg::Auto,
        out: out.join(dir),
    };
    if out.join("init/init.json").exists() {
        eprintln!("init study: {} exists (kept)", out.join("init/init.json").display());
    } else {
        eprintln!("init study (Figure 3): the paper's model, {} seeds", spec.init_seeds);
        super::analyze::init(InitArgs { model: model.clone(), probe: probe(spec.init_seeds, "init") })?;
    }
    if out.join("depth/depth.json").exists() {
        eprintln!("depth scan: {} exists (kept)", out.join("depth/depth.json").display());
    } else {
        eprintln!("depth scan (Theorem 1): depths {:?}, {} seeds", spec.depths, spec.depth_seeds);
        super::analyze::depth(DepthArgs {
            model,
            probe: probe(spec.depth_seeds, "depth"),
            depths: spec.depths.clone(),
        })?;
    }
    Ok(())
}
