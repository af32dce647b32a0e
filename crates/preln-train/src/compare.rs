//! Measurements against the PyTorch reference, each in a fresh process, alternating sides and
//! precisions round by round (`preln bench`): running the worker processes, reading their JSON,
//! and the speed-ups.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use preln_data::synthetic::SplitMix64;
use preln_data::{Batch, Specials};
use serde_json::Value;

use crate::bench::median;
use crate::device::Precision;
use crate::TrainError;

/// The Python of the PyTorch reference: `explicit`, else the project's environment
/// (`PRELN_TORCH_VENV` at run time or build time), else `python3`.
pub fn python(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let venv = std::env::var("PRELN_TORCH_VENV").ok().or(option_env!("PRELN_TORCH_VENV").map(String::from));
    venv.map(|v| PathBuf::from(v).join("bin").join("python")).unwrap_or_else(|| PathBuf::from("python3"))
}

/// A reference script under `tools/`.
pub fn tool(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools")).join(name)
}

/// Runs `cmd` (with `input` on its standard input) and reads the JSON of its last output line.
pub fn run_json(cmd: &mut Command, what: &str, input: Option<&str>) -> Result<Value, TrainError> {
    let fail = |reason: String| TrainError::Process(format!("{what}: {reason}"));
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        std::io::Write::write_all(&mut stdin, text.as_bytes()).map_err(|e| fail(format!("writing its input: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!("failed:\n{}", String::from_utf8_lossy(&out.stderr))));
    }
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
    serde_json::from_str(&last).map_err(|e| fail(format!("its JSON: {e}")))
}

/// `sentences` pairs of `len - 1` random regular tokens a side (seeded, the same every run).
pub fn synthetic_batch(sentences: usize, len: usize, vocab: i64) -> Batch {
    let mut rng = SplitMix64::new(1);
    let words = len.saturating_sub(1);
    let regular = (vocab - Specials::FIRST_REGULAR).max(1) as u64;
    let mut sentence =
        || -> Vec<i64> { (0..words).map(|_| Specials::FIRST_REGULAR + (rng.next_u64() % regular) as i64).collect() };
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = (0..sentences).map(|_| (sentence(), sentence())).collect();
    Batch::from_pairs(&pairs, Specials::DEFAULT, tch::Device::Cpu)
}

/// The rows of a 2-d id tensor.
pub fn tensor_rows(t: &tch::Tensor) -> Vec<Vec<i64>> {
    (0..t.size()[0]).map(|i| Vec::<i64>::try_from(t.get(i)).expect("ids")).collect()
}

/// Step times and peak memory of one side (preln or PyTorch) in one precision.
#[derive(Clone, Debug)]
pub struct Timing {
    pub precision: Precision,
    pub steps: Vec<f64>,
    /// Data-parallel: seconds of each step in the gradient all-reduce.
    pub allreduce: Vec<f64>,
    pub peak_mib: f64,
}

impl Timing {
    pub fn median(&self) -> f64 {
        median(&self.steps)
    }
}

#[derive(Clone, Debug)]
pub struct Measured {
    pub ours: Vec<Timing>,
    pub theirs: Vec<Timing>,
    /// The reference's torch version.
    pub torch_version: String,
}

/// Where the PyTorch side comes from: its Python, its script, and the spec it reads on stdin.
pub struct Reference {
    pub python: PathBuf,
    pub script: PathBuf,
    pub spec: Value,
}

fn steps_of(v: &Value, what: &str) -> Result<Vec<f64>, TrainError> {
    let steps = v["step_s"].as_array().ok_or_else(|| TrainError::Process(format!("{what}: no step_s in its JSON")))?;
    Ok(steps.iter().filter_map(Value::as_f64).collect())
}

/// `rounds` rounds; in each, every precision is timed by a fresh `worker(precision)` process
/// and, with `reference`, by the PyTorch script. `progress` hears each measurement's median.
pub fn measure(
    rounds: usize,
    precisions: &[Precision],
    worker: impl Fn(Precision) -> Command,
    reference: Option<&Reference>,
    mut progress: impl FnMut(&str),
) -> Result<Measured, TrainError> {
    let empty: Vec<Timing> = precisions
        .iter()
        .map(|&p| Timing { precision: p, steps: Vec::new(), allreduce: Vec::new(), peak_mib: 0.0 })
        .collect();
    let mut m = Measured { ours: empty.clone(), theirs: empty, torch_version: String::new() };
    for round in 1..=rounds {
        for (k, &precision) in precisions.iter().enumerate() {
            let v = run_json(&mut worker(precision), "preln bench worker", None)?;
            let t = steps_of(&v, "preln bench worker")?;
            progress(&format!("round {round}: preln   {:4} median {:.3} s/step", precision.name(), median(&t)));
            m.ours[k].steps.extend(t);
            m.ours[k].allreduce.extend(v["allreduce_s"].as_array().into_iter().flatten().filter_map(Value::as_f64));
            m.ours[k].peak_mib = m.ours[k].peak_mib.max(v["peak_mib"].as_f64().unwrap_or(f64::NAN));
            let Some(r) = reference else { continue };
            let mut spec = r.spec.clone();
            spec["precision"] = serde_json::json!(precision.name());
            let what = format!("{} {}", r.python.display(), r.script.display());
            let v = run_json(Command::new(&r.python).arg(&r.script).arg("-"), &what, Some(&spec.to_string()))?;
            let t = steps_of(&v, &what)?;
            progress(&format!("round {round}: PyTorch {:4} median {:.3} s/step", precision.name(), median(&t)));
            m.theirs[k].steps.extend(t);
            m.theirs[k].peak_mib = m.theirs[k].peak_mib.max(v["peak_mib"].as_f64().unwrap_or(0.0));
            m.torch_version = v["torch"].as_str().unwrap_or("").to_string();
        }
    }
    Ok(m)
}

/// (ours, theirs, speed-up) for each of our precisions against PyTorch's in the same precision
/// and against PyTorch's fp32.
pub fn speedups(m: &Measured) -> Vec<(Precision, Precision, f64)> {
    let mut out = Vec::new();
    for ours in &m.ours {
        for q in [Precision::Fp32, Precision::Bf16] {
            if let Some(theirs) = m.theirs.iter().find(|t| t.precision == q && !t.steps.is_empty()) {
                if ours.precision == q || q == Precision::Fp32 {
                    out.push((ours.precision, q, theirs.median() / ours.median()));
                }
            }
        }
    }
    out
}

/// Decodes with the independent PyTorch decoder (`tools/translate_ref.py`): its tokens and
/// its seconds.
pub fn reference_translate(python: &Path, spec: &Value) -> Result<(Vec<Vec<i64>>, f64), TrainError> {
    let script = tool("translate_ref.py");
    let what = format!("{} {}", python.display(), script.display());
    let v = run_json(Command::new(python).arg(&script), &what, Some(&spec.to_string()))?;
    let tokens = serde_json::from_value(v["tokens"].clone())
        .map_err(|e| TrainError::Process(format!("{what}: its tokens: {e}")))?;
    Ok((tokens, v["seconds"].as_f64().unwrap_or(f64::NAN)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(precision: Precision, steps: &[f64]) -> Timing {
        Timing { precision, steps: steps.to_vec(), allreduce: Vec::new(), peak_mib: 0.0 }
    }

    #[test]
    fn speedups_compare_like_with_like_and_with_fp32() {
        let m = Measured {
            ours: vec![timing(Precision::Fp32, &[1.0, 3.0]), timing(Precision::Bf16, &[0.5])],
            theirs: vec![timing(Precision::Fp32, &[3.0]), timing(Precision::Bf16, &[1.0])],
            torch_version: String::new(),
        };
        let s = speedups(&m);
        assert_eq!(
            s,
            vec![
                (Precision::Fp32, Precision::Fp32, 1.5),
                (Precision::Bf16, Precision::Fp32, 6.0),
                (Precision::Bf16, Precision::Bf16, 2.0)
            ]
        );
        let b = synthetic_batch(3, 5, 60);
        assert_eq!(b.src.size(), vec![3, 5], "4 words and EOS");
        assert!(tensor_rows(&b.src).iter().flatten().all(|&t| t == Specials::DEFAULT.eos || (4..60).contains(&t)));
    }
}
