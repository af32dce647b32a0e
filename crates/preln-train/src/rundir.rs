//! A run folder: its paths, and the lock that keeps a second process out of it while one
//! trains there.
//!
//! The lock is `RUN/run.lock`, held with `flock` for the life of the [`RunLock`] and holding the
//! holder's pid. The kernel drops it when the holder exits, however it exits, so the lock of a
//! killed process is simply taken over by the next run.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::TrainError;

pub const LOCK_FILE: &str = "run.lock";

pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

pub fn last_checkpoint(run_dir: &Path) -> PathBuf {
    checkpoint_dir(run_dir).join("last.safetensors")
}

pub fn best_checkpoint(run_dir: &Path) -> PathBuf {
    checkpoint_dir(run_dir).join("best.safetensors")
}

/// Exclusive use of a folder until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `dir` (creating the folder), or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock, TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Io(dir.into(), e))?;
        let path = dir.join(LOCK_FILE);
        let io = |e| TrainError::Io(path.clone(), e);
        let _ = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.file_type().is_symlink())
            .map(|_| std::fs::remove_file(&path));
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        // SAFETY: flock on a descriptor we own; LOCK_NB makes it return at once.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(TrainError::Busy {
                dir: dir.into(),
                holder: if holder.is_empty() { "another process".into() } else { format!("process {holder}") },
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io)?;
        Ok(RunLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Locks the run folder and checks it: a new run must not overwrite one, a resumed run needs a
/// checkpoint.
pub fn prepare_run_dir(run_dir: &Path, resume: bool) -> Result<RunLock, TrainError> {
    let lock = RunLock::acquire(run_dir)?;
    let last = last_checkpoint(run_dir);
    if resume && !last.exists() {
        return Err(TrainError::Config(format!("--resume: no checkpoint at {}", last.display())));
    }
    if !resume && last.exists() {
        return Err(TrainError::Config(format!(
            "{} already holds a run (pass --resume to continue it, or choose another --out)",
            run_dir.display()
        )));
    }
    std::fs::create_dir_all(checkpoint_dir(run_dir)).map_err(|e| TrainError::Io(run_dir.into(), e))?;
    Ok(lock)
}

/// `RUN/run.json`: the data folder a run trains on and the checksums that tie the run to it,
/// so that `--resume` without `--data` finds the data, and other data or an edited tokenizer are
/// refused.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    /// The data folder, absolute.
    pub data: PathBuf,
    /// [`preln_data::prepare::fingerprint`] of its files (absent in runs of older versions).
    #[serde(default)]
    pub data_sha256: Option<String>,
    /// SHA-256 of `RUN/tokenizer.json` when the run started.
    #[serde(default)]
    pub tokenizer_sha256: Option<String>,
}

pub const RUN_INFO: &str = "run.json";
pub const TOKENIZER: &str = "tokenizer.json";

impl RunInfo {
    pub fn read(run: &Path) -> Result<RunInfo, TrainError> {
        let path = run.join(RUN_INFO);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Io(path.clone(), e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
    }

    /// Starts the record of a new run: copies the data's tokenizer into `run` and records both.
    pub fn start(run: &Path, data: &Path, data_sha256: &str) -> Result<RunInfo, TrainError> {
        let src = data.join(TOKENIZER);
        let bytes = std::fs::read(&src).map_err(|e| TrainError::Io(src.clone(), e))?;
        preln_model::checkpoint::write_file_atomic(&run.join(TOKENIZER), &bytes)?;
        let info = RunInfo {
            data: std::fs::canonicalize(data).unwrap_or(data.to_path_buf()),
            data_sha256: Some(data_sha256.to_string()),
            tokenizer_sha256: Some(preln_data::prepare::sha256_hex(&bytes)),
        };
        info.write(run)?;
        Ok(info)
    }

    pub fn write(&self, run: &Path) -> Result<(), TrainError> {
        let json = serde_json::to_string_pretty(self).expect("run info serializes");
        Ok(preln_model::checkpoint::write_file_atomic(&run.join(RUN_INFO), json.as_bytes())?)
    }

    /// Refuses data whose fingerprint differs from the one the run started with.
    pub fn check_data(&self, run: &Path, data: &Path, data_sha256: &str) -> Result<(), TrainError> {
        match &self.data_sha256 {
            Some(want) if want != data_sha256 => Err(TrainError::Config(format!(
                "--resume --data {}: not the data this run trained on ({}; the checksums of its files differ from \
                 data_sha256 {want} in {}); resume with the original data, or start a new run with --out elsewhere",
                data.display(),
                self.data.display(),
                run.join(RUN_INFO).display()
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a `RUN/tokenizer.json` changed since the run started.
    pub fn check_tokenizer(&self, run: &Path) -> Result<(), TrainError> {
        let Some(want) = &self.tokenizer_sha256 else { return Ok(()) };
        let tok = run.join(TOKENIZER);
        let bytes = std::fs::read(&tok).map_err(|e| TrainError::Io(tok.clone(), e))?;
        if preln_data::prepare::sha256_hex(&bytes) == *want {
            return Ok(());
        }
        Err(TrainError::Config(format!(
            "{}: changed since the run started (its checksum differs from tokenizer_sha256 in run.json); the \
             model's token ids belong to the original tokenizer: put it back (it is also in the data folder {})",
            tok.display(),
            self.data.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_a_dropped_lock_is_free() {
        let d = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(d.path()).unwrap();
        let e = RunLock::acquire(d.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("process {}", std::process::id())) && e.contains("in use"), "{e}");
        drop(first);
        // A stale lock file (its process gone) is taken over.
        std::fs::write(d.path().join(LOCK_FILE), "999999999\n").unwrap();
        let again = RunLock::acquire(d.path()).unwrap();
        let pid = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }
}
