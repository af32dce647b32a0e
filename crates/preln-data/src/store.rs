//! The compact binary form of a tokenized split side: `PRELNIDS`, version, count, offsets, ids.
//!
//! ```text
//! b"PRELNIDS" | u32 version = 1 | u64 n | u64 offsets[n + 1] | u32 ids[offsets[n]]   (little-endian)
//! ```

use std::path::Path;

use crate::error::{io_error, DataError, Result};

const MAGIC: &[u8; 8] = b"PRELNIDS";
const VERSION: u32 = 1;

pub fn encode(sentences: &[Vec<u32>]) -> Vec<u8> {
    let total: usize = sentences.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(20 + 8 * (sentences.len() + 1) + 4 * total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(sentences.len() as u64).to_le_bytes());
    let mut offset = 0u64;
    out.extend_from_slice(&offset.to_le_bytes());
    for s in sentences {
        offset += s.len() as u64;
        out.extend_from_slice(&offset.to_le_bytes());
    }
    for id in sentences.iter().flatten() {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

pub fn decode(bytes: &[u8], path: &Path) -> Result<Vec<Vec<u32>>> {
    let bad = |reason: &str| DataError::Invalid { path: path.into(), reason: reason.into() };
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(bad("not a preln id file (bad magic)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(&format!("unsupported version {version}")));
    }
    let n = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    let ids_start = 20 + 8 * (n + 1);
    if bytes.len() < ids_start {
        return Err(bad("truncated offsets"));
    }
    let offset = |i: usize| u64::from_le_bytes(bytes[20 + 8 * i..28 + 8 * i].try_into().expect("8 bytes")) as usize;
    if bytes.len() != ids_start + 4 * offset(n) {
        return Err(bad("length does not match its offsets"));
    }
    let id =
        |k: usize| u32::from_le_bytes(bytes[ids_start + 4 * k..ids_start + 4 * k + 4].try_into().expect("4 bytes"));
    (0..n)
        .map(|i| {
            let (a, b) = (offset(i), offset(i + 1));
            if a > b {
                return Err(bad("offsets decrease"));
            }
            Ok((a..b).map(id).collect())
        })
        .collect()
}

pub fn read(path: &Path) -> Result<Vec<Vec<u32>>> {
    decode(&std::fs::read(path).map_err(io_error(path))?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let s = vec![vec![4, 5, 6], vec![], vec![70_000]];
        let bytes = encode(&s);
        let p = Path::new("x.bin");
        assert_eq!(decode(&bytes, p).unwrap(), s);
        let e = decode(&bytes[..bytes.len() - 1], p).unwrap_err().to_string();
        assert!(e.starts_with("x.bin: ") && e.contains("length"), "{e}");
        assert!(decode(b"NOTMAGICxxxxxxxxxxxxxxxx", p).unwrap_err().to_string().contains("magic"));
    }
}
