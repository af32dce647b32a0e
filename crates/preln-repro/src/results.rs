//! What the runs of a reproduction left on disk: their validation curves and status, and how
//! the report and the claims write numbers.

use anyhow::Result;
use preln_train::metrics::valid_records;

use crate::grid::{status, PlannedRun, RunStatus};

/// One epoch's validation line.
#[derive(Clone, Debug)]
pub struct EpochRow {
    pub epoch: u64,
    pub loss: f64,
    pub bleu: Option<f64>,
    pub wall_s: f64,
}

/// What a run left on disk.
pub struct RunResult<'a> {
    pub run: &'a PlannedRun,
    pub status: RunStatus,
    pub epochs: Vec<EpochRow>,
}

impl RunResult<'_> {
    pub fn last(&self) -> Option<&EpochRow> {
        self.epochs.last()
    }

    /// The epoch with the lowest validation loss.
    pub fn best(&self) -> Option<&EpochRow> {
        self.epochs.iter().min_by(|a, b| a.loss.total_cmp(&b.loss))
    }

    pub fn best_bleu(&self) -> Option<(f64, u64)> {
        self.epochs.iter().filter_map(|e| e.bleu.map(|b| (b, e.epoch))).max_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// The first epoch whose validation loss is at or below `loss`.
    pub fn first_reaching(&self, loss: f64) -> Option<u64> {
        self.epochs.iter().find(|e| e.loss <= loss).map(|e| e.epoch)
    }

    pub fn finished(&self) -> bool {
        matches!(self.status, RunStatus::Complete | RunStatus::Diverged { .. })
    }
}

pub fn read_run(run: &PlannedRun) -> Result<RunResult<'_>> {
    let path = run.dir.join("metrics.jsonl");
    let lines = if path.exists() { crate::grid::read_metrics(&path)? } else { Vec::new() };
    let epochs = valid_records(&lines)
        .map(|v| EpochRow { epoch: v.epoch, loss: v.loss, bleu: v.metric("bleu"), wall_s: v.wall_s })
        .collect();
    Ok(RunResult { run, status: status(&run.dir)?, epochs })
}

pub fn find<'a>(results: &'a [RunResult<'a>], name: &str) -> Option<&'a RunResult<'a>> {
    results.iter().find(|r| r.run.name == name)
}

pub fn f2(x: f64) -> String {
    format!("{x:.2}")
}

pub fn f3(x: f64) -> String {
    format!("{x:.3}")
}

pub fn bleu_text(b: Option<f64>) -> String {
    b.map(f2).unwrap_or_else(|| "-".into())
}
