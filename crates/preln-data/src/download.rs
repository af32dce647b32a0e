//! Public data sets for users with internet access: download (or copy from a local folder),
//! gunzip, verify SHA-256, and publish the folder only when every file checks out.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io_error, DataError, Result};
use crate::publish::{check_out, publish, staging};

/// Multi30k task 1, raw (github.com/multi30k/dataset, data/task1/raw), gzipped there.
pub const MULTI30K_BASE_URL: &str = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw";

/// The files and the SHA-256 of their gunzipped text.
pub const MULTI30K_FILES: [(&str, &str); 6] = [
    ("train.de", "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72"),
    ("train.en", "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6"),
    ("val.de", "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660"),
    ("val.en", "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227"),
    ("test_2016_flickr.de", "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16"),
    ("test_2016_flickr.en", "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182"),
];

/// Where the files come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// `{url}/{name}.gz` for each file.
    Url(String),
    /// A local folder with `name` or `name.gz` for each file.
    Dir(PathBuf),
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn gunzip(bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| DataError::Invalid { path: what.into(), reason: format!("not valid gzip: {e}") })?;
    Ok(out)
}

fn get(url: &str) -> Result<Vec<u8>> {
    let fail = |reason: String| DataError::Invalid { path: url.into(), reason };
    let mut response = ureq::get(url).call().map_err(|e| fail(format!("download failed: {e}")))?;
    response.body_mut().with_config().limit(1 << 30).read_to_vec().map_err(|e| fail(format!("download failed: {e}")))
}

fn fetch_one(source: &Source, name: &str) -> Result<Vec<u8>> {
    match source {
        Source::Url(base) => {
            let url = format!("{}/{name}.gz", base.trim_end_matches('/'));
            gunzip(&get(&url)?, &url)
        }
        Source::Dir(dir) => {
            let plain = dir.join(name);
            let gz = dir.join(format!("{name}.gz"));
            if plain.exists() {
                std::fs::read(&plain).map_err(io_error(&plain))
            } else if gz.exists() {
                gunzip(&std::fs::read(&gz).map_err(io_error(&gz))?, &gz.display().to_string())
            } else {
                Err(DataError::Invalid { path: plain, reason: format!("missing (neither {name} nor {name}.gz)") })
            }
        }
    }
}

/// Fetches `files` (name, SHA-256 of the text) from `source` into `out`. Every file is checked
/// before anything is written; a new `out` appears complete or not at all. An existing
/// non-empty `out` is refused unless `force`, and then only the fetched files in it are
/// replaced (see [`crate::publish`]).
pub fn fetch(
    files: &[(&str, &str)],
    source: &Source,
    out: &Path,
    force: bool,
    mut progress: impl FnMut(&str),
) -> Result<()> {
    check_out(out, force)?;
    let mut fetched = Vec::new();
    for (name, sha) in files {
        let bytes = fetch_one(source, name)?;
        let got = sha256_hex(&bytes);
        if got != *sha {
            return Err(DataError::Invalid {
                path: name.into(),
                reason: format!("SHA-256 {got} does not match the expected {sha} (corrupt or different version)"),
            });
        }
        progress(&format!("{name}: {} bytes, checksum ok", bytes.len()));
        fetched.push((name, bytes));
    }
    let tmp = staging(out)?;
    for (name, bytes) in &fetched {
        if let Err(e) = std::fs::write(tmp.join(name), bytes) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io_error(tmp.join(name))(e));
        }
    }
    publish(&tmp, out, force, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    fn gz(text: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text).unwrap();
        e.finish().unwrap()
    }

    /// Serves `files` (path -> body) over HTTP/1.1 on 127.0.0.1 for `requests` requests.
    fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => {
                        write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .unwrap();
                        stream.write_all(body).unwrap();
                    }
                    None => write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .unwrap(),
                }
            }
        });
        format!("http://{addr}/raw")
    }

    #[test]
    fn downloads_gunzips_and_checks() {
        let (a, b) = (b"ein Hund\n".to_vec(), b"a dog\n".to_vec());
        let files = [("x.de", sha256_hex(&a)), ("x.en", sha256_hex(&b))];
        let table: Vec<(&str, &str)> = files.iter().map(|(n, s)| (*n, s.as_str())).collect();
        let url = serve(vec![("/raw/x.de.gz".into(), gz(&a)), ("/raw/x.en.gz".into(), gz(&b))], 2);
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("m30k");
        let mut lines = Vec::new();
        fetch(&table, &Source::Url(url), &out, false, |l| lines.push(l.to_string())).unwrap();
        assert_eq!(std::fs::read(out.join("x.de")).unwrap(), a);
        assert_eq!(std::fs::read(out.join("x.en")).unwrap(), b);
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn bad_checksum_and_missing_file_name_the_file() {
        let a = b"ein Hund\n".to_vec();
        let table = [("x.de", "0000"), ("y.de", "1111")];
        let url = serve(vec![("/raw/x.de.gz".into(), gz(&a))], 2);
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("m30k");
        let e = fetch(&table, &Source::Url(url.clone()), &out, false, |_| {}).unwrap_err().to_string();
        assert!(e.starts_with("x.de: SHA-256") && e.contains("does not match"), "{e}");
        assert!(!out.exists());
        let good = sha256_hex(&a);
        let e = fetch(&[("x.de", good.as_str()), ("y.de", "1111")], &Source::Url(url), &out, false, |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("y.de.gz") && e.contains("download failed"), "{e}");
        assert!(!out.exists(), "nothing is published when a file fails");
    }

    #[test]
    fn an_existing_folder_is_refused_or_written_into_never_deleted() {
        let d = tempfile::tempdir().unwrap();
        let text = b"eins\n".to_vec();
        std::fs::write(d.path().join("x.de"), &text).unwrap();
        let sha = sha256_hex(&text);
        let out = d.path().join("mine");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let table = [("x.de", sha.as_str())];
        let e = fetch(&table, &Source::Dir(d.path().into()), &out, false, |_| {}).unwrap_err().to_string();
        assert!(e.contains("already exists") && e.contains("--force"), "{e}");
        assert!(!out.join("x.de").exists());
        fetch(&table, &Source::Dir(d.path().into()), &out, true, |_| {}).unwrap();
        assert_eq!(std::fs::read(out.join("x.de")).unwrap(), text);
        assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    }

    #[test]
    fn copies_from_a_local_folder_plain_or_gzipped() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (b"eins\n".to_vec(), b"one\n".to_vec());
        std::fs::write(d.path().join("x.de"), &a).unwrap();
        std::fs::write(d.path().join("x.en.gz"), gz(&b)).unwrap();
        let (sa, sb) = (sha256_hex(&a), sha256_hex(&b));
        let out = d.path().join("copy");
        fetch(&[("x.de", sa.as_str()), ("x.en", sb.as_str())], &Source::Dir(d.path().into()), &out, false, |_| {})
            .unwrap();
        assert_eq!(std::fs::read(out.join("x.en")).unwrap(), b);
        let e =
            fetch(&[("z.de", sa.as_str())], &Source::Dir(d.path().into()), &out, true, |_| {}).unwrap_err().to_string();
        assert!(e.contains("z.de") && e.contains("missing"), "{e}");
    }
}
