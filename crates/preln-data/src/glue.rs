//! GLUE sentence-pair tasks (MRPC, RTE): their TSV files, and pairs as BERT reads them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io_error, DataError, Result};
use crate::mlm::MlmSpecials;

/// One labelled sentence pair.
#[derive(Clone, Debug, PartialEq)]
pub struct PairExample {
    pub a: String,
    pub b: String,
    pub label: i64,
}

/// A GLUE task this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlueTask {
    Mrpc,
    Rte,
}

impl std::str::FromStr for GlueTask {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mrpc" => Ok(GlueTask::Mrpc),
            "rte" => Ok(GlueTask::Rte),
            _ => Err(format!("unknown GLUE task `{s}` (known: mrpc, rte)")),
        }
    }
}

impl GlueTask {
    pub fn name(self) -> &'static str {
        match self {
            GlueTask::Mrpc => "mrpc",
            GlueTask::Rte => "rte",
        }
    }

    /// Reads `train.tsv` or `dev.tsv` of the task's GLUE folder. MRPC: `Quality, #1 ID, #2 ID,
    /// #1 String, #2 String` (label 1 = paraphrase); RTE: `sentence1, sentence2, label, idx`
    /// (label 0 = entailment, as a number or as the word). Errors name file and line.
    pub fn read(self, path: &Path) -> Result<Vec<PairExample>> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let text = text.trim_start_matches('\u{feff}');
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let bad = |what: &str| DataError::Invalid {
                path: format!("{}:{}", path.display(), i + 1).into(),
                reason: what.to_string(),
            };
            let (a, b, label) = match self {
                GlueTask::Mrpc if f.len() >= 5 => (f[3], f[4], f[0]),
                GlueTask::Rte if f.len() >= 3 => (f[0], f[1], f[2]),
                _ => {
                    return Err(bad(&format!(
                        "expected at least {} tab-separated fields, found {}",
                        if self == GlueTask::Mrpc { 5 } else { 3 },
                        f.len()
                    )))
                }
            };
            let label = match (self, label.trim()) {
                (_, "0") | (GlueTask::Rte, "entailment") => 0,
                (_, "1") | (GlueTask::Rte, "not_entailment") => 1,
                (_, other) => return Err(bad(&format!("label `{other}` is not 0 or 1"))),
            };
            out.push(PairExample { a: a.to_string(), b: b.to_string(), label });
        }
        if out.is_empty() {
            return Err(DataError::Invalid { path: path.into(), reason: "no examples".into() });
        }
        Ok(out)
    }
}

/// Encoded pairs: `<s> A </s> B </s>`, cut (longest side first) to `max_len`.
pub fn encode_pair(a: &[u32], b: &[u32], max_len: usize) -> (Vec<i64>, Vec<i64>) {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    while a.len() + b.len() + 3 > max_len && !(a.is_empty() && b.is_empty()) {
        if a.len() >= b.len() {
            a.pop();
        } else {
            b.pop();
        }
    }
    let sp = MlmSpecials::BASE;
    let mut ids = vec![sp.bos];
    ids.extend(a.iter().map(|&x| i64::from(x)));
    ids.push(sp.eos);
    let first = ids.len();
    ids.extend(b.iter().map(|&x| i64::from(x)));
    ids.push(sp.eos);
    let segs = (0..ids.len()).map(|i| i64::from(i >= first)).collect();
    (ids, segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_cut_longest_first_with_segments() {
        let (ids, segs) = encode_pair(&[10, 11, 12, 13], &[20], 7);
        assert_eq!(ids, vec![2, 10, 11, 12, 3, 20, 3]);
        assert_eq!(segs, vec![0, 0, 0, 0, 0, 1, 1]);
        let (ids, _) = encode_pair(&[10, 11, 12, 13], &[20, 21, 22], 7);
        assert_eq!(ids, vec![2, 10, 11, 3, 20, 21, 3]);
    }

    #[test]
    fn glue_files_are_read_with_their_labels_and_errors_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let mrpc = d.path().join("m.tsv");
        std::fs::write(
            &mrpc,
            "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tB a.\n0\t3\t4\tC.\tD.\n",
        )
        .unwrap();
        let xs = GlueTask::Mrpc.read(&mrpc).unwrap();
        assert_eq!(
            xs,
            vec![
                PairExample { a: "A b.".into(), b: "B a.".into(), label: 1 },
                PairExample { a: "C.".into(), b: "D.".into(), label: 0 },
            ]
        );
        let rte = d.path().join("r.tsv");
        std::fs::write(&rte, "sentence1\tsentence2\tlabel\tidx\nP.\tH.\tnot_entailment\t0\nP2.\tH2.\t0\t1\n").unwrap();
        assert_eq!(GlueTask::Rte.read(&rte).unwrap().iter().map(|x| x.label).collect::<Vec<_>>(), vec![1, 0]);
        std::fs::write(&rte, "sentence1\tsentence2\tlabel\tidx\nP.\tH.\tmaybe\t0\n").unwrap();
        let e = GlueTask::Rte.read(&rte).unwrap_err().to_string();
        assert!(e.contains("r.tsv:2") && e.contains("maybe"), "{e}");
    }
}
