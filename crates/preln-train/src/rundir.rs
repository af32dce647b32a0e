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
