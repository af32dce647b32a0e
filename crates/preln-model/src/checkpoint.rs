//! Parameters by path: listing in natural order, and safetensors files keyed by those paths.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// Compares dotted paths piecewise, numbers as numbers: `layers.2` sorts before `layers.10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let mut pa = a.split('.');
    let mut pb = b.split('.');
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    _ => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

/// Every variable of `vs` with its path, in natural path order.
pub fn parameters(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    named
}

/// The number of scalar parameters.
pub fn count(vs: &VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

fn checkpoint_error(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

fn dtype_name(kind: Kind) -> Option<(&'static str, usize)> {
    Some(match kind {
        Kind::Float => ("F32", 4),
        Kind::Double => ("F64", 8),
        Kind::Half => ("F16", 2),
        Kind::BFloat16 => ("BF16", 2),
        Kind::Int64 => ("I64", 8),
        Kind::Int => ("I32", 4),
        Kind::Int16 => ("I16", 2),
        Kind::Int8 => ("I8", 1),
        Kind::Uint8 => ("U8", 1),
        Kind::Bool => ("BOOL", 1),
        _ => return None,
    })
}

/// The safetensors encoding of `tensors` with string `metadata` (`__metadata__`).
pub fn encode_safetensors(tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings serialize"));
    }
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let (dtype, size) = dtype_name(t.kind()).ok_or_else(|| ModelError::Checkpoint {
            path: PathBuf::from(name),
            reason: format!("cannot store tensors of kind {:?}", t.kind()),
        })?;
        let numel = t.numel();
        let start = data.len();
        data.resize(start + numel * size, 0);
        t.copy_data_u8(&mut data[start..], numel);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut json = serde_json::to_vec(&header).expect("header serializes");
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&data);
    Ok(out)
}

pub use crate::fsio::write_file_atomic;

/// Writes `tensors` (and `metadata`) as safetensors to `path`, atomically.
pub fn write_atomic(tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>, path: &Path) -> Result<()> {
    write_file_atomic(path, &encode_safetensors(tensors, metadata)?)
}

/// The `__metadata__` of a safetensors file (empty if it has none).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let bad = |reason: String| checkpoint_error(path, reason);
    let mut f = std::fs::File::open(path).map_err(|error| ModelError::Io { path: path.to_path_buf(), error })?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(bad("not a safetensors file: header too large".into()));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| bad(format!("truncated header: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(format!("bad header: {e}")))?;
    match v.get("__metadata__") {
        None => Ok(BTreeMap::new()),
        Some(m) => serde_json::from_value(m.clone()).map_err(|e| bad(format!("bad metadata: {e}"))),
    }
}

/// Saves every variable of `vs` under its path.
pub fn save(vs: &VarStore, path: &Path) -> Result<()> {
    write_atomic(&parameters(vs), &BTreeMap::new(), path)
}

/// Reads a safetensors file into a map from name to tensor.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(checkpoint_error(path, "file not found"));
    }
    Ok(Tensor::read_safetensors(path).map_err(|e| checkpoint_error(path, e.to_string()))?.into_iter().collect())
}

/// Loads every variable of `vs` from `path`. Strict: a missing or unexpected key, or a shape
/// that differs, is an error that names the key.
pub fn load(vs: &mut VarStore, path: &Path) -> Result<()> {
    load_from(vs, read(path)?, path)
}

/// Loads every variable of `vs` from `file` (tensors read from `path`), strictly as [`load`].
pub fn load_from(vs: &mut VarStore, mut file: HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let vars = parameters(vs);
    let missing: Vec<&str> = vars.iter().filter(|(n, _)| !file.contains_key(n)).map(|(n, _)| n.as_str()).collect();
    if !missing.is_empty() {
        return Err(checkpoint_error(path, format!("missing keys: {}", missing.join(", "))));
    }
    let mut unexpected: Vec<&String> = file.keys().filter(|k| !vars.iter().any(|(n, _)| n == *k)).collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        let names: Vec<&str> = unexpected.iter().map(|s| s.as_str()).collect();
        return Err(checkpoint_error(path, format!("unexpected keys: {}", names.join(", "))));
    }
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let src = file.remove(&name).expect("checked above");
            if src.size() != var.size() {
                return Err(checkpoint_error(
                    path,
                    format!("`{name}` has shape {:?} in the file but {:?} in the model", src.size(), var.size()),
                ));
            }
            var.copy_(&src.to_kind(var.kind()));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_with_metadata_round_trip() {
        let d = std::env::temp_dir().join(format!("preln-st-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("x.safetensors");
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25]).view([3, 1]);
        let b = Tensor::from_slice(&[7i64, 8]);
        let c = Tensor::from_slice(&[0.1f64]);
        let meta = BTreeMap::from([("step".to_string(), "42".to_string())]);
        write_atomic(
            &[("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone()), ("c".into(), c.shallow_clone())],
            &meta,
            &path,
        )
        .unwrap();
        let back = read(&path).unwrap();
        assert!(back["a"].equal(&a) && back["b"].equal(&b) && back["c"].equal(&c));
        assert_eq!(back["a"].size(), vec![3, 1]);
        assert_eq!(read_metadata(&path).unwrap(), meta);
        assert!(!d.join("x.safetensors.tmp").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn natural_order_of_paths() {
        let mut v = vec!["encoder.layers.10.ffn", "encoder.layers.2.ffn", "embed_tokens.weight", "encoder.final_norm"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            vec!["embed_tokens.weight", "encoder.final_norm", "encoder.layers.2.ffn", "encoder.layers.10.ffn"]
        );
    }
}
