//! Parameters by path: listing in natural order, and safetensors files keyed by those paths.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::Tensor;

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
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

fn checkpoint_error(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes `tensors` as safetensors to `path` through a temporary file and a rename, so that
/// an interrupted write never leaves a truncated file behind.
pub fn write_atomic(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("safetensors.tmp");
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&cpu, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Saves every variable of `vs` under its path.
pub fn save(vs: &VarStore, path: &Path) -> Result<()> {
    write_atomic(&parameters(vs), path)
}

/// Reads a safetensors file into a map from name to tensor.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(checkpoint_error(path, "file not found"));
    }
    Ok(Tensor::read_safetensors(path)
        .map_err(|e| checkpoint_error(path, e.to_string()))?
        .into_iter()
        .collect())
}

/// Loads every variable of `vs` from `path`. Strict: a missing or unexpected key, or a shape
/// that differs, is an error that names the key.
pub fn load(vs: &mut VarStore, path: &Path) -> Result<()> {
    let mut file = read(path)?;
    let vars = parameters(vs);
    let missing: Vec<&str> = vars
        .iter()
        .filter(|(n, _)| !file.contains_key(n))
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(checkpoint_error(
            path,
            format!("missing keys: {}", missing.join(", ")),
        ));
    }
    let mut unexpected: Vec<&String> = file
        .keys()
        .filter(|k| !vars.iter().any(|(n, _)| n == *k))
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        let names: Vec<&str> = unexpected.iter().map(|s| s.as_str()).collect();
        return Err(checkpoint_error(
            path,
            format!("unexpected keys: {}", names.join(", ")),
        ));
    }
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let src = file.remove(&name).expect("checked above");
            if src.size() != var.size() {
                return Err(checkpoint_error(
                    path,
                    format!(
                        "`{name}` has shape {:?} in the file but {:?} in the model",
                        src.size(),
                        var.size()
                    ),
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
    fn natural_order_of_paths() {
        let mut v = vec![
            "encoder.layers.10.ffn",
            "encoder.layers.2.ffn",
            "embed_tokens.weight",
            "encoder.final_norm",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            vec![
                "embed_tokens.weight",
                "encoder.final_norm",
                "encoder.layers.2.ffn",
                "encoder.layers.10.ffn"
            ]
        );
    }
}
