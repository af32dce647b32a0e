//! Files that are either complete or absent: writes through a temporary sibling and a rename,
//! never following a symlink, never leaving the temporary behind; and a test hook that makes a
//! chosen write fail, to prove it.
//!
//! The hook: `PRELN_FAULT=NAME:ACTION[@N]` acts on the `N`-th write (1-based, default 1) to a
//! file named `NAME` in this process. `kill` writes half of the bytes and kills the process
//! with SIGKILL (a power cut in the middle of the write); `enospc` writes half and fails with
//! "No space left on device" (a full disk). Several faults are separated by commas. Without the
//! variable nothing changes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{ModelError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Kill,
    NoSpace,
}

struct Fault {
    name: String,
    action: Action,
    nth: usize,
    seen: AtomicUsize,
}

fn faults() -> &'static [Fault] {
    static FAULTS: OnceLock<Vec<Fault>> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let spec = std::env::var("PRELN_FAULT").unwrap_or_default();
        spec.split(',').filter(|s| !s.trim().is_empty()).filter_map(|s| parse_fault(s.trim())).collect()
    })
}

fn parse_fault(s: &str) -> Option<Fault> {
    let (name, rest) = s.rsplit_once(':')?;
    let (action, nth) = match rest.split_once('@') {
        Some((a, n)) => (a, n.parse().ok()?),
        None => (rest, 1),
    };
    let action = match action {
        "kill" => Action::Kill,
        "enospc" => Action::NoSpace,
        _ => return None,
    };
    Some(Fault { name: name.to_string(), action, nth, seen: AtomicUsize::new(0) })
}

/// The fault planned for this write to a file named like `path`, if any.
fn planned(path: &Path) -> Option<Action> {
    let name = path.file_name()?.to_str()?;
    faults()
        .iter()
        .find_map(|f| (f.name == name && f.seen.fetch_add(1, Ordering::SeqCst) + 1 == f.nth).then_some(f.action))
}

/// Kills this process now, as a power cut or `kill -9` would: no destructor, no flush.
pub fn kill_now() -> ! {
    // SAFETY: signalling our own process; SIGKILL cannot be caught, so this does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// Marks a point of a multi-step update (`NAME` as if a write to that file): the `kill` fault
/// stops the process there, `enospc` returns the error.
pub fn point(path: &Path) -> io::Result<()> {
    match planned(path) {
        Some(Action::Kill) => kill_now(),
        Some(Action::NoSpace) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        None => Ok(()),
    }
}

/// Writes all of `bytes` to `file` (which stands for `path`) in one `write` call where the OS
/// allows, so that a process killed by a signal leaves the whole record or none of it.
pub fn write_record(file: &mut File, path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(action) = planned(path) {
        file.write_all(&bytes[..bytes.len() / 2])?;
        match action {
            Action::Kill => kill_now(),
            Action::NoSpace => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        }
    }
    let n = file.write(bytes)?;
    if n < bytes.len() {
        file.write_all(&bytes[n..])?;
    }
    Ok(())
}

/// `path` with `.tmp` appended to its file name.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Creates `path` afresh: whatever sits there (a stale file, a symlink) is removed first, and
/// the file is created exclusively, so a write never goes through a link.
pub fn create_fresh(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so that
/// an interrupted write never leaves a truncated file behind. A symlink at `path` is replaced,
/// not followed. On failure (a full disk) the temporary file is removed and `path` keeps its
/// previous content.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = create_fresh(&tmp)?;
        write_record(&mut f, path, bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|error| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::Io { path: path.to_path_buf(), error }
    })
}

/// Makes `dest` a second name of the finished file `src` (a hard link; a copy where the file
/// system has none), atomically: `dest` is the old file or the new one, never a part.
pub fn publish_copy(src: &Path, dest: &Path) -> Result<()> {
    let tmp = tmp_path(dest);
    let io = |error| ModelError::Io { path: dest.to_path_buf(), error };
    let _ = std::fs::remove_file(&tmp);
    point(dest).map_err(io)?;
    if std::fs::hard_link(src, &tmp).is_err() {
        let bytes = std::fs::read(src).map_err(|error| ModelError::Io { path: src.to_path_buf(), error })?;
        return write_file_atomic(dest, &bytes);
    }
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_links_and_publish_copies() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("victim");
        std::fs::write(&target, b"keep me").unwrap();
        let link = d.path().join("file");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        std::os::unix::fs::symlink(&target, tmp_path(&link)).unwrap();
        write_file_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me", "the link's target is untouched");
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(!tmp_path(&link).exists());

        let copy = d.path().join("copy");
        publish_copy(&link, &copy).unwrap();
        write_file_atomic(&link, b"newer").unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"new", "replacing the source leaves the copy");
    }

    #[test]
    fn fault_specs_parse() {
        let f = parse_fault("last.safetensors:enospc@2").unwrap();
        assert_eq!((f.name.as_str(), f.action, f.nth), ("last.safetensors", Action::NoSpace, 2));
        assert_eq!(parse_fault("metrics.jsonl:kill").unwrap().nth, 1);
        assert!(parse_fault("x:explode").is_none() && parse_fault("nocolon").is_none());
    }
}
