//! Metrics as JSON lines (`metrics.jsonl` in the run folder): one [`Record`] per line, an object
//! whose `kind` says which (`train`, `diag`, `valid`, `diverged`, `interrupted`), each with the
//! update `step` and `epoch` it belongs to. Every writer and reader goes through [`Record`].
//!
//! Each line is written with one `write` call, so a process killed by a signal leaves whole
//! lines. A line cut short anyway (a power cut, a full disk) can only be the last one: readers
//! skip it and say so, and a resumed run drops it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Every `train.log_every` updates.
    Train(TrainRecord),
    /// Every `train.diag_every` updates: gradient norms by layer, hidden-state norms.
    Diag(DiagRecord),
    /// After each validation.
    Valid(ValidRecord),
    /// The update whose loss or gradient was not finite; the run stopped there.
    Diverged(DivergedRecord),
    /// A signal stopped the run after saving this update.
    Interrupted(InterruptedRecord),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    pub step: u64,
    pub epoch: u64,
    pub lr: f64,
    /// Label-smoothed loss and NLL per target token of the update.
    pub loss: f64,
    pub nll: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens: i64,
    pub tokens_per_s: f64,
    /// Data-parallel runs: the mean time per update spent in collectives (the gradient
    /// all-reduce and the small ones beside it), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allreduce_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagRecord {
    pub step: u64,
    pub epoch: u64,
    /// Gradient norm of each layer (`encoder.layers.3`) and of the other groups (`embed_tokens`).
    pub grad_norm_groups: BTreeMap<String, f64>,
    /// `E ||x||^2 / d` after the embedding and every layer, by stack (`encoder`, `decoder`).
    pub hidden_sq_norm_over_d: Option<BTreeMap<String, Vec<f64>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidRecord {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub nll: f64,
    pub ppl: f64,
    /// The token-weighted training loss of the epoch so far.
    pub train_loss: f64,
    pub wall_s: f64,
    /// Whether this validation closes an epoch (else it is one of `train.valid_every`).
    pub epoch_end: bool,
    /// Task metrics (`bleu`, `mlm_accuracy`, `accuracy`, `f1`); `null` where not computed.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Option<f64>>,
}

impl ValidRecord {
    /// A task metric, if it was computed.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.extra.get(name).copied().flatten()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DivergedRecord {
    pub step: u64,
    pub epoch: u64,
    /// Non-finite values are written as JSON `null` and read back as NaN.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    pub largest_grad: String,
    #[serde(deserialize_with = "nan_if_null")]
    pub largest_grad_norm: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterruptedRecord {
    pub step: u64,
    pub epoch: u64,
    /// `SIGINT` or `SIGTERM`.
    pub signal: String,
    pub wall_s: f64,
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Record {
    pub fn step(&self) -> u64 {
        match self {
            Record::Train(r) => r.step,
            Record::Diag(r) => r.step,
            Record::Valid(r) => r.step,
            Record::Diverged(r) => r.step,
            Record::Interrupted(r) => r.step,
        }
    }

    pub fn as_valid(&self) -> Option<&ValidRecord> {
        match self {
            Record::Valid(v) => Some(v),
            _ => None,
        }
    }
}

/// The validation records of `records`, in order.
pub fn valid_records(records: &[Record]) -> impl Iterator<Item = &ValidRecord> {
    records.iter().filter_map(Record::as_valid)
}

pub struct Metrics {
    /// `None`: records are dropped (the ranks of a data-parallel run other than rank 0).
    out: Option<(PathBuf, File)>,
    /// The same records as TensorBoard scalars, when the run writes them.
    tb: Option<crate::tensorboard::EventWriter>,
}

/// The records of a metrics file, and the line number of a torn last line that was skipped.
#[derive(Debug, Default)]
pub struct MetricsFile {
    pub records: Vec<Record>,
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
                    .filter(|l| serde_json::from_str::<Record>(l).ok().is_some_and(|r| r.step() <= step))
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
        Ok(Metrics { out: Some((path.to_path_buf(), file)), tb: None })
    }

    /// Metrics that write nothing.
    pub fn discard() -> Metrics {
        Metrics { out: None, tb: None }
    }

    /// Also writes every record to a new TensorBoard event file in `dir`, starting with the
    /// resolved `config` (text, update 0) and the records already in the file (a resumed run's
    /// history, as kept by [`Metrics::open`]).
    pub fn with_tensorboard(mut self, dir: &Path, config: &str) -> Result<Metrics, TrainError> {
        let Some((metrics_path, _)) = &self.out else { return Ok(self) };
        let records = Metrics::read(metrics_path)?;
        let mut tb = crate::tensorboard::EventWriter::create(dir).map_err(|e| TrainError::Io(dir.to_path_buf(), e))?;
        let path = tb.path().to_path_buf();
        let io = |e| TrainError::Io(path.clone(), e);
        tb.text(0, "config", &format!("```toml\n{config}\n```")).map_err(io)?;
        for r in records {
            tb.write(&r).map_err(io)?;
        }
        self.tb = Some(tb);
        Ok(self)
    }

    /// Appends one record as one line, in one write.
    pub fn write(&mut self, record: &Record) -> Result<(), TrainError> {
        let Some((path, file)) = &mut self.out else { return Ok(()) };
        let mut line = serde_json::to_string(record).expect("records serialize");
        line.push('\n');
        preln_model::fsio::write_record(file, path, line.as_bytes()).map_err(|e| TrainError::Io(path.clone(), e))?;
        if let Some(tb) = &mut self.tb {
            tb.write(record).map_err(|e| TrainError::Io(tb.path().to_path_buf(), e))?;
        }
        Ok(())
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

    /// All records of a metrics file; a torn last line is skipped (see [`Self::read_checked`]
    /// to hear of it).
    pub fn read(path: &Path) -> Result<Vec<Record>, TrainError> {
        Ok(Self::read_checked(path)?.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: u64) -> Record {
        Record::Train(TrainRecord {
            step,
            epoch: 1,
            lr: 1e-3,
            loss: 2.5,
            nll: 2.0,
            grad_norm: 1.0,
            tokens: 10,
            tokens_per_s: 100.0,
            allreduce_ms: None,
        })
    }

    #[test]
    fn records_round_trip_with_their_kind_and_non_finite_values() {
        let valid = Record::Valid(ValidRecord {
            step: 7,
            epoch: 2,
            loss: 1.5,
            nll: 1.25,
            ppl: 1.25f64.exp(),
            train_loss: 1.75,
            wall_s: 3.0,
            epoch_end: true,
            extra: BTreeMap::from([("bleu".to_string(), Some(12.5)), ("f1".to_string(), None)]),
        });
        let line = serde_json::to_string(&valid).unwrap();
        assert!(line.starts_with("{\"kind\":\"valid\",\"step\":7") && line.contains("\"bleu\":12.5"), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), valid);
        assert_eq!(valid.as_valid().unwrap().metric("bleu"), Some(12.5));
        assert_eq!(valid.as_valid().unwrap().metric("f1"), None);
        let diverged = Record::Diverged(DivergedRecord {
            step: 3,
            epoch: 1,
            loss: f64::NAN,
            grad_norm: f64::INFINITY,
            largest_grad: "encoder.layers.0.ffn.fc1.weight".into(),
            largest_grad_norm: f64::INFINITY,
        });
        let line = serde_json::to_string(&diverged).unwrap();
        assert!(line.contains("\"loss\":null"), "{line}");
        let Record::Diverged(back) = serde_json::from_str::<Record>(&line).unwrap() else { panic!("{line}") };
        assert!(back.loss.is_nan() && back.grad_norm.is_nan() && back.step == 3);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_reported_a_bad_middle_line_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("metrics.jsonl");
        let mut m = Metrics::open(&path, None).unwrap();
        for step in 1..=3 {
            m.write(&train(step)).unwrap();
        }
        drop(m);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"kind\": \"train\", \"st");
        std::fs::write(&path, &text).unwrap();
        let f = Metrics::read_checked(&path).unwrap();
        assert_eq!((f.records.len(), f.torn_last_line), (3, Some(4)));
        // Resuming at step 3 drops the torn line; appending continues on a fresh line.
        let mut m = Metrics::open(&path, Some(3)).unwrap();
        m.write(&train(4)).unwrap();
        let f = Metrics::read_checked(&path).unwrap();
        assert_eq!((f.records.len(), f.torn_last_line), (4, None));

        let good = serde_json::to_string(&train(1)).unwrap();
        std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let e = Metrics::read(&path).unwrap_err().to_string();
        assert!(e.starts_with("metrics: ") && e.contains("metrics.jsonl:2:"), "{e}");
    }
}
