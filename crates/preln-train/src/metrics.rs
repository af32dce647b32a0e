//! Metrics as JSON lines (`metrics.jsonl` in the run folder), one object per event, each with
//! a `kind` (`train`, `diag`, `valid`, `diverged`, `interrupted`) and the update `step` it
//! belongs to.
//!
//! Each line is written with one `write` call, so a process killed by a signal leaves whole
//! lines. A line cut short anyway (a power cut, a full disk) can only be the last one: readers
//! skip it and say so, and a resumed run drops it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::TrainError;

pub struct Metrics {
    path: PathBuf,
    file: File,
}

/// The records of a metrics file, and the line number of a torn last line that was skipped.
#[derive(Debug, Default)]
pub struct MetricsFile {
    pub records: Vec<Value>,
    pub torn_last_line: Option<usize>,
}

impl Metrics {
    /// Opens the file for appending. On resume, `keep_until_step` drops lines written after the
    /// checkpoint (by a run that was interrupted later) and a torn last line, so the file reads
    /// as one run. A symlink in its place is replaced, not followed.
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
        } else if std::fs::symlink_metadata(path).is_ok() {
            std::fs::remove_file(path).map_err(io)?;
        }
        let file =
            OpenOptions::new().create(true).append(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io)?;
        Ok(Metrics { path: path.to_path_buf(), file })
    }

    /// Appends one record as one line, in one write.
    pub fn write(&mut self, v: &Value) -> Result<(), TrainError> {
        let mut line = v.to_string();
        line.push('\n');
        preln_model::fsio::write_record(&mut self.file, &self.path, line.as_bytes())
            .map_err(|e| TrainError::Io(self.path.clone(), e))
    }

    /// All records of a metrics file. A torn last line (no newline, not JSON) is skipped and
    /// reported in the result; a bad line anywhere else is an error naming it.
    pub fn read_checked(path: &Path) -> Result<MetricsFile, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io(path.to_path_buf(), e))?;
        let lines: Vec<&str> = text.lines().collect();
        let mut out = MetricsFile::default();
        for (i, l) in lines.iter().enumerate() {
            match serde_json::from_str(l) {
                Ok(v) => out.records.push(v),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => out.torn_last_line = Some(i + 1),
                Err(e) => return Err(TrainError::Metrics(format!("{}:{}: {e}", path.display(), i + 1))),
            }
        }
        Ok(out)
    }

    /// All records of a metrics file; a torn last line is skipped with a warning.
    pub fn read(path: &Path) -> Result<Vec<Value>, TrainError> {
        let file = Self::read_checked(path)?;
        if let Some(line) = file.torn_last_line {
            eprintln!(
                "warning: {}:{line}: the last line is cut short (its writer was killed); skipped",
                path.display()
            );
        }
        Ok(file.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_torn_last_line_is_skipped_and_reported_a_bad_middle_line_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("metrics.jsonl");
        let mut m = Metrics::open(&path, None).unwrap();
        for step in 1..=3 {
            m.write(&json!({"kind": "train", "step": step})).unwrap();
        }
        drop(m);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"kind\": \"train\", \"st");
        std::fs::write(&path, &text).unwrap();
        let f = Metrics::read_checked(&path).unwrap();
        assert_eq!((f.records.len(), f.torn_last_line), (3, Some(4)));
        // Resuming at step 3 drops the torn line; appending continues on a fresh line.
        let mut m = Metrics::open(&path, Some(3)).unwrap();
        m.write(&json!({"kind": "train", "step": 4})).unwrap();
        let f = Metrics::read_checked(&path).unwrap();
        assert_eq!((f.records.len(), f.torn_last_line), (4, None));

        std::fs::write(&path, "{\"step\": 1}\nnot json\n{\"step\": 2}\n").unwrap();
        let e = Metrics::read(&path).unwrap_err().to_string();
        assert!(e.starts_with("metrics: ") && e.contains("metrics.jsonl:2:"), "{e}");
    }
}
