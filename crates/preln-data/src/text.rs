//! Reading parallel text: one sentence a line, line i of the source translating line i of the
//! target. Checks UTF-8 line by line and that both files have the same number of lines.

use std::path::{Path, PathBuf};

use crate::error::{io_error, DataError, Result};

/// Sentence pairs read from two files, with what was skipped.
#[derive(Debug, Default)]
pub struct ParallelText {
    pub pairs: Vec<(String, String)>,
    /// Line numbers (1-based) of pairs skipped because a side was empty or blank.
    pub skipped_empty: Vec<usize>,
}

/// The lines of a UTF-8 file, without their `\n` / `\r\n` ends.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let mut lines = Vec::new();
    let mut rest: &[u8] = &bytes;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let mut line = &rest[..end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| DataError::InvalidUtf8 { path: path.to_path_buf(), line: lines.len() + 1 })?;
        lines.push(text.to_string());
        rest = if end < rest.len() { &rest[end + 1..] } else { &[] };
    }
    Ok(lines)
}

/// Reads `src` and `tgt` as parallel files. A pair with an empty or blank side is skipped and
/// its line number recorded.
pub fn read_parallel(src: &Path, tgt: &Path) -> Result<ParallelText> {
    let (s, t) = (read_lines(src)?, read_lines(tgt)?);
    if s.len() != t.len() {
        return Err(DataError::LineCountMismatch {
            src: src.to_path_buf(),
            src_lines: s.len(),
            tgt: tgt.to_path_buf(),
            tgt_lines: t.len(),
        });
    }
    let mut out = ParallelText::default();
    for (i, (a, b)) in s.into_iter().zip(t).enumerate() {
        if a.trim().is_empty() || b.trim().is_empty() {
            out.skipped_empty.push(i + 1);
        } else {
            out.pairs.push((a, b));
        }
    }
    Ok(out)
}

/// `PREFIX.LANG`, fairseq's naming of parallel files.
pub fn lang_file(prefix: &Path, lang: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(lang);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_pairs_and_counts_empty_ones() {
        let d = tempfile::tempdir().unwrap();
        let s = write(d.path(), "a.de", b"eins\r\n\nzwei\n");
        let t = write(d.path(), "a.en", b"one\nnothing\ntwo");
        let p = read_parallel(&s, &t).unwrap();
        assert_eq!(p.pairs, vec![("eins".into(), "one".into()), ("zwei".into(), "two".into())]);
        assert_eq!(p.skipped_empty, vec![2]);
    }

    #[test]
    fn line_count_mismatch_names_both_files() {
        let d = tempfile::tempdir().unwrap();
        let s = write(d.path(), "b.de", b"a\nb\nc\n");
        let t = write(d.path(), "b.en", b"a\nb\n");
        let e = read_parallel(&s, &t).unwrap_err().to_string();
        assert!(e.contains("b.de has 3 lines") && e.contains("b.en has 2"), "{e}");
    }

    #[test]
    fn invalid_utf8_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let s = write(d.path(), "c.de", b"gut\nschl\xffcht\n");
        let t = write(d.path(), "c.en", b"good\nbad\n");
        let e = read_parallel(&s, &t).unwrap_err().to_string();
        assert!(e.ends_with("c.de:2: invalid UTF-8"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = read_lines(Path::new("/nonexistent/x.de")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.de"), "{e}");
    }
}
