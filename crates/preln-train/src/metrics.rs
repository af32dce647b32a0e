//! Metrics as JSON lines (`metrics.jsonl` in the run folder), one object per event, each with
//! a `kind` (`train`, `diag`, `valid`, `diverged`) and the update `step` it belongs to.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::TrainError;

pub struct Metrics {
    path: PathBuf,
    file: File,
}

impl Metrics {
    /// Opens the file for appending. On resume, `keep_until_step` drops lines written after the
    /// checkpoint (by a run that was interrupted later), so the file reads as one run.
    pub fn open(path: &Path, keep_until_step: Option<u64>) -> Result<Metrics, TrainError> {
        let io = |e| TrainError::Io(path.to_path_buf(), e);
        if let Some(step) = keep_until_step {
            if path.exists() {
                let text = std::fs::read_to_string(path).map_err(io)?;
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<Value>(l)
                            .ok()
                            .and_then(|v| v["step"].as_u64())
                            .is_some_and(|s| s <= step)
                    })
                    .collect();
                let mut body = kept.join("\n");
                if !body.is_empty() {
                    body.push('\n');
                }
                preln_model::checkpoint::write_file_atomic(path, body.as_bytes())?;
            }
        } else if path.exists() {
            std::fs::remove_file(path).map_err(io)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        Ok(Metrics { path: path.to_path_buf(), file })
    }

    pub fn write(&mut self, v: &Value) -> Result<(), TrainError> {
        writeln!(self.file, "{v}").map_err(|e| TrainError::Io(self.path.clone(), e))
    }

    /// All lines of a metrics file, parsed.
    pub fn read(path: &Path) -> Result<Vec<Value>, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io(path.to_path_buf(), e))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| TrainError::Checkpoint(format!("{}:{}: {e}", path.display(), i + 1)))
            })
            .collect()
    }
}
