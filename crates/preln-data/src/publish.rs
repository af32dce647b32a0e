//! Publishing a folder of our files. A new folder is written next to its destination and
//! appears whole, by a rename. An existing folder is never deleted: a non-empty one is refused
//! unless `force`, and then only our own files in it are replaced, one rename each, the
//! manifest last; whatever else it holds stays.

use std::path::{Path, PathBuf};

use crate::error::{io_error, DataError, Result};

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_error(dir))? {
        out.push(e.map_err(io_error(dir))?.path());
    }
    out.sort();
    Ok(out)
}

/// Checks, before any work, that `out` may receive our files: absent, an empty folder, or
/// (with `force`) a folder whose other files will be kept.
pub fn check_out(out: &Path, force: bool) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(out) else { return Ok(()) };
    if !meta.is_dir() {
        return Err(DataError::Invalid { path: out.into(), reason: "exists and is not a folder".into() });
    }
    let held = entries(out)?;
    if held.is_empty() || force {
        return Ok(());
    }
    let names: Vec<String> =
        held.iter().take(3).map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    Err(DataError::Invalid {
        path: out.into(),
        reason: format!(
            "already exists and holds {} entr{} ({}{}); choose an empty or new folder, or pass --force to write our \
             files into it (only files of the same names are replaced; nothing else there is touched)",
            held.len(),
            if held.len() == 1 { "y" } else { "ies" },
            names.join(", "),
            if held.len() > 3 { ", ..." } else { "" }
        ),
    })
}

/// A fresh staging folder beside `out`, for this process.
pub fn staging(out: &Path) -> Result<PathBuf> {
    // `.` or `dir/..` name no folder of their own: stage beside the real one.
    let out = &std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
    name.push(format!(".tmp-{}", std::process::id()));
    let parent = match out.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    let tmp = parent.join(name);
    if std::fs::symlink_metadata(&tmp).is_ok() {
        std::fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_error(&tmp))?;
    Ok(tmp)
}

/// Moves the finished staging folder `tmp` to `out` (see the module doc); `manifest` names the
/// file that goes last, if any. `tmp` is gone afterwards, whether this succeeds or not.
pub fn publish(tmp: &Path, out: &Path, force: bool, manifest: Option<&str>) -> Result<()> {
    let result = (|| {
        check_out(out, force)?;
        match std::fs::symlink_metadata(out) {
            Err(_) => {
                if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(io_error(parent))?;
                }
                std::fs::rename(tmp, out).map_err(io_error(out))
            }
            Ok(_) => {
                if let Some(m) = manifest {
                    // The old manifest goes first: a folder caught half-replaced reads as
                    // unprepared, never as a folder whose files disagree with its manifest.
                    match std::fs::remove_file(out.join(m)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(out.join(m))(e)),
                        _ => {}
                    }
                }
                let files = entries(tmp)?;
                let last = manifest.map(|m| tmp.join(m));
                for f in files.iter().filter(|f| Some(*f) != last.as_ref()).chain(last.iter().filter(|l| l.exists())) {
                    let dest = out.join(f.file_name().unwrap_or_default());
                    std::fs::rename(f, &dest).map_err(io_error(&dest))?;
                }
                std::fs::remove_dir(tmp).map_err(io_error(tmp))
            }
        }
    })();
    if result.is_err() && tmp.exists() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

/// Publishes `tmp` as `out` if `written` (the work of filling `tmp`) succeeded, else removes
/// `tmp`; returns what the work returned.
pub fn publish_if_ok<T>(written: Result<T>, tmp: &Path, out: &Path, force: bool, manifest: Option<&str>) -> Result<T> {
    match written {
        Ok(value) => {
            publish(tmp, out, force, manifest)?;
            Ok(value)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(out: &Path, files: &[(&str, &str)]) -> PathBuf {
        let tmp = staging(out).unwrap();
        for (n, t) in files {
            std::fs::write(tmp.join(n), t).unwrap();
        }
        tmp
    }

    #[test]
    fn never_deletes_a_users_folder() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        // New folder: appears whole.
        publish(&stage(&out, &[("a", "1"), ("manifest.json", "m")]), &out, false, Some("manifest.json")).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "1");
        // A folder holding a user's file: refused without --force, and the file stays.
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let e = check_out(&out, false).unwrap_err().to_string();
        assert!(e.contains("already exists and holds 3 entries") && e.contains("--force"), "{e}");
        let tmp = stage(&out, &[("a", "2")]);
        assert!(publish(&tmp, &out, false, None).is_err());
        assert!(!tmp.exists(), "the staging folder is removed on failure");
        // With --force only our files are replaced.
        publish(&stage(&out, &[("a", "3"), ("manifest.json", "m2")]), &out, true, Some("manifest.json")).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "3");
        assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
        assert_eq!(std::fs::read_to_string(out.join("manifest.json")).unwrap(), "m2");
        // An empty folder is fine without --force; a file is not a folder.
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        publish(&stage(&empty, &[("a", "4")]), &empty, false, None).unwrap();
        assert_eq!(std::fs::read_to_string(empty.join("a")).unwrap(), "4");
        let e = check_out(&out.join("a"), true).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
    }
}
