//! Training checkpoints: one safetensors file holding the model (by parameter path), the
//! optimizer state (`optimizer.*`) and, in its metadata, the position of the run. Written
//! atomically; a small JSON copy of the position sits beside it for people and scripts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use preln_model::checkpoint::{self, parameters, read_metadata};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Tensor;

use crate::optim::Optimizer;
use crate::TrainError;

/// Where a run stands. Everything else that decides what comes next (data order, dropout
/// masks, learning rate) is a function of this and the config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Updates done.
    pub step: u64,
    /// The current epoch, 1-based.
    pub epoch: u64,
    /// Batches of the current epoch already consumed.
    pub batch_in_epoch: usize,
    /// Best validation loss so far, its epoch and its update (`best.safetensors` holds the
    /// model of that update).
    pub best_valid_loss: Option<f64>,
    pub best_epoch: Option<u64>,
    #[serde(default)]
    pub best_step: Option<u64>,
    /// Token-weighted training loss summed over the current epoch so far, and its tokens (the
    /// `train_loss` of validation lines, exact across a resume).
    #[serde(default)]
    pub epoch_loss_sum: f64,
    #[serde(default)]
    pub epoch_tokens: i64,
    /// Training wall time so far, seconds.
    pub wall_s: f64,
    /// Whether the run has finished.
    pub done: bool,
}

const STATE_KEY: &str = "preln.train_state";
const OPTIMIZER_KEY: &str = "preln.optimizer";

/// Saves model, optimizer and position to `path`, then its readable copy `path.json`. The
/// safetensors file is the truth; the JSON copy is rewritten from it on every resume.
pub fn save(path: &Path, vs: &VarStore, opt: &Optimizer, state: &TrainState) -> Result<(), TrainError> {
    let mut tensors = parameters(vs);
    tensors.extend(opt.state_tensors());
    let json = serde_json::to_string(state).expect("state serializes");
    let meta = BTreeMap::from([
        (STATE_KEY.to_string(), json.clone()),
        (OPTIMIZER_KEY.to_string(), opt.kind().to_string()),
        ("format".to_string(), "preln-train-1".to_string()),
    ]);
    checkpoint::write_atomic(&tensors, &meta, path)?;
    write_state_json(path, state)
}

/// Writes `path.json`, the readable copy of the position stored in `path`.
pub fn write_state_json(path: &Path, state: &TrainState) -> Result<(), TrainError> {
    let json = serde_json::to_string_pretty(state).expect("state serializes");
    checkpoint::write_file_atomic(&path.with_extension("json"), json.as_bytes())?;
    Ok(())
}

impl TrainState {
    /// Closes the epoch just validated: the run is done after `max_epochs`, else the next
    /// epoch starts with fresh loss sums.
    pub fn next_epoch(&mut self, max_epochs: u64) {
        if self.epoch >= max_epochs {
            self.done = true;
        }
        if !self.done {
            self.epoch += 1;
            self.batch_in_epoch = 0;
            self.epoch_loss_sum = 0.0;
            self.epoch_tokens = 0;
        }
    }

    /// A finished run resumed with larger limits (`max_epochs`, `max_updates`) continues where
    /// it stopped; `batches` is the number of batches in an epoch.
    pub fn extend_limits(&mut self, t: &crate::config::TrainSection, batches: usize) {
        if !(self.done && self.epoch <= t.max_epochs && (t.max_updates == 0 || self.step < t.max_updates)) {
            return;
        }
        self.done = false;
        if self.batch_in_epoch >= batches {
            if self.epoch == t.max_epochs {
                self.done = true;
            } else {
                self.epoch += 1;
                self.batch_in_epoch = 0;
                self.epoch_loss_sum = 0.0;
                self.epoch_tokens = 0;
            }
        }
    }
}

/// Makes sure `best` holds the best model `state` (read from `last`) records. A run killed
/// between saving `last` (which records a new best) and publishing `best` left `best` older or
/// absent: `last` is then that best model, and becomes `best`. Returns what was repaired.
pub fn repair_best(last: &Path, best: &Path, state: &TrainState) -> Result<Option<String>, TrainError> {
    let Some(want) = state.best_step else { return Ok(None) };
    match read_state(best) {
        Ok(b) if b.step == want => Ok(None),
        found if state.step == want => {
            let what = match found {
                Ok(b) => format!("holds update {}", b.step),
                Err(e) => format!("is unreadable ({e})"),
            };
            preln_model::fsio::publish_copy(last, best)?;
            Ok(Some(format!(
                "repaired {}: it {what} but the best validation loss was at update {want}, which {} holds",
                best.display(),
                last.display()
            )))
        }
        Ok(b) => Err(TrainError::Checkpoint(format!(
            "{}: holds update {} but the run's best model was update {want}, which no checkpoint holds any more",
            best.display(),
            b.step
        ))),
        Err(e) => Err(TrainError::Checkpoint(format!(
            "{}: the run's best model (update {want}) is lost ({e}); no other checkpoint holds it",
            best.display()
        ))),
    }
}

/// Reads the position stored in a training checkpoint.
pub fn read_state(path: &Path) -> Result<TrainState, TrainError> {
    state_of(path, &read_metadata(path)?)
}

/// The position stored in a checkpoint's metadata `meta` (read from `path`).
fn state_of(path: &Path, meta: &BTreeMap<String, String>) -> Result<TrainState, TrainError> {
    let json = meta.get(STATE_KEY).ok_or_else(|| {
        TrainError::Checkpoint(format!("{}: not a training checkpoint (no {STATE_KEY})", path.display()))
    })?;
    serde_json::from_str(json).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}

/// Splits a checkpoint's tensors into model parameters and optimizer state.
pub fn split(tensors: HashMap<String, Tensor>) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    tensors.into_iter().partition(|(k, _)| !k.starts_with("optimizer."))
}

/// Restores model, optimizer and position from `path`. Refuses optimizer state of another
/// kind (Adam's moments are not RAdam's or SGD's momentum).
pub fn load(path: &Path, vs: &mut VarStore, opt: &mut Optimizer) -> Result<TrainState, TrainError> {
    let meta = read_metadata(path)?;
    let state = state_of(path, &meta)?;
    if let Some(saved) = meta.get(OPTIMIZER_KEY).filter(|k| k.as_str() != opt.kind()) {
        return Err(TrainError::Config(format!(
            "{}: the checkpoint holds {saved}'s optimizer state but the config asks for optimizer.kind = \"{}\"; \
             resuming would feed one optimizer the other's moments. Resume with optimizer.kind = \"{saved}\", or \
             start a new run with the new optimizer",
            path.display(),
            opt.kind()
        )));
    }
    let (model, optim) = split(checkpoint::read(path)?);
    checkpoint::load_from(vs, model, path)?;
    opt.load_state(&optim, state.step).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    Ok(state)
}

/// Loads only the model parameters of a training checkpoint (for evaluation and decoding).
pub fn load_model(path: &Path, vs: &mut VarStore) -> Result<(), TrainError> {
    let (model, _) = split(checkpoint::read(path)?);
    checkpoint::load_from(vs, model, path)?;
    Ok(())
}
