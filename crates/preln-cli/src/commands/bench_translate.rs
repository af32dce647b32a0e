//! `preln bench translate`: decoding speed of a trained run at several beam sizes and thread
//! counts, side by side with plain PyTorch (tools/translate_ref.py) and with CTranslate2
//! (the run exported to float32 and int8, decoded by tools/ct2_translate.py), on the same
//! sentences: sentences/s, outputs identical to ours, and BLEU against a reference.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use preln_data::text::read_lines;
use preln_data::{Batch, Specials};
use preln_eval::bleu::{corpus_bleu, BleuOptions};
use preln_eval::{beam_search, Hypothesis, SearchConfig};
use preln_model::ctranslate2::Quantization;
use preln_train::compare::{python, reference_translate, run_json, tool};
use preln_train::translation::TrainedModel;
use serde::Serialize;
use serde_json::json;

use crate::cli::BenchTranslateArgs;

/// One timed decode of all sentences.
#[derive(Serialize)]
struct Row {
    system: String,
    beam: usize,
    threads: i32,
    sentences_per_s: f64,
    seconds: f64,
    /// The sentences compared (all for PyTorch, which ends them as preln does; for CTranslate2
    /// those that end before the length limit in both), and how many of them have exactly
    /// preln's tokens (same beam and threads).
    compared: Option<usize>,
    identical: Option<usize>,
    /// Sentences that ran into the length limit: preln (as fairseq) ends them with a forced EOS,
    /// CTranslate2 stops without one, and its limit is one per batch (the largest of preln's
    /// per-sentence limits `a * source + b` in it, less the EOS), so they are not compared.
    at_limit: usize,
    bleu: Option<f64>,
    /// The first sentences whose output differs from preln's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    differ: Vec<Differ>,
}

/// A sentence decoded differently by another system.
#[derive(Serialize)]
struct Differ {
    /// 1-based line of --input.
    line: usize,
    preln: String,
    theirs: String,
}

/// How another system's outputs compare with preln's.
struct Compared {
    compared: Option<usize>,
    identical: Option<usize>,
    bleu: Option<f64>,
    differ: Vec<Differ>,
}

/// The most differing sentences a row lists.
const DIFFER_SHOWN: usize = 20;

/// The sentences to decode, sorted by length, with their line numbers.
struct Inputs {
    lines: Vec<usize>,
    sources: Vec<Vec<i64>>,
    references: Option<Vec<String>>,
}

fn inputs(args: &BenchTranslateArgs, run: &TrainedModel) -> Result<Inputs> {
    let lines = read_lines(&args.input)?;
    let refs = args.reference.as_deref().map(read_lines).transpose()?;
    if let (Some(r), Some(path)) = (&refs, &args.reference) {
        if r.len() != lines.len() {
            bail!("{}: {} lines, but --input has {}", path.display(), r.len(), lines.len());
        }
    }
    let mut items: Vec<(usize, Vec<i64>)> = Vec::new();
    for (i, l) in lines.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let ids = run.bpe.encode(l).with_context(|| format!("{} line {}", args.input.display(), i + 1))?;
        items.push((i, ids.into_iter().map(i64::from).collect()));
    }
    items.sort_by_key(|(i, s)| (s.len(), *i));
    let references = refs.map(|r| items.iter().map(|(i, _)| r[*i].clone()).collect());
    let (lines, sources) = items.into_iter().unzip();
    Ok(Inputs { lines, sources, references })
}

pub fn translate(args: BenchTranslateArgs) -> Result<()> {
    if args.beams.is_empty() || args.beams.contains(&0) || args.search.batch_size < 1 {
        bail!("--beams must list sizes of at least 1, and --batch-size must be at least 1");
    }
    if args.thread_counts.iter().any(|&t| t < 1) {
        bail!("--thread-counts must all be at least 1");
    }
    let device = super::device(args.device)?;
    if args.vs_ctranslate2 && device.is_cuda() {
        bail!("--vs-ctranslate2 compares CPU decoding; use --device cpu");
    }
    let run = TrainedModel::load(&args.run.checkpoint, &args.run.which, device)?;
    let input = inputs(&args, &run)?;
    let ct2 = args.vs_ctranslate2.then(|| Ct2Models::export(&args.run.checkpoint, &run)).transpose()?;
    let thread_counts =
        if args.thread_counts.is_empty() { vec![tch::get_num_threads()] } else { args.thread_counts.clone() };
    eprintln!(
        "{} sentences from {}; {device:?}; {}",
        input.sources.len(),
        args.input.display(),
        preln_ops::caps::summary()
    );
    let mut rows = Vec::new();
    for &t in &thread_counts {
        tch::set_num_threads(t);
        for &beam in &args.beams {
            let search = args.search.config(beam, false)?;
            let (ours, secs) = decode(&run, &input.sources, &search, args.search.batch_size, device);
            let ours_tokens: Vec<Vec<i64>> = ours.iter().map(|h| h.tokens.clone()).collect();
            let limits = max_lens(&input.sources, &search);
            let ours_ended: Vec<bool> = ours_tokens.iter().zip(&limits).map(|(h, &m)| h.len() + 1 < m).collect();
            let at_limit = ours_ended.iter().filter(|e| !**e).count();
            let ours_text = texts(&run, &ours_tokens)?;
            let bleu = bleu_of(&ours_text, input.references.as_deref())?;
            // Of the sentences `comparable`, how many `theirs` decodes as we do.
            let compare_some = |theirs: &[Vec<i64>], comparable: &dyn Fn(usize) -> bool| -> Result<Compared> {
                let text = texts(&run, theirs)?;
                let both: Vec<usize> = (0..theirs.len()).filter(|&i| comparable(i)).collect();
                let differ = both
                    .iter()
                    .filter(|&&i| theirs[i] != ours_tokens[i])
                    .take(DIFFER_SHOWN)
                    .map(|&i| Differ { line: input.lines[i] + 1, preln: ours_text[i].clone(), theirs: text[i].clone() })
                    .collect();
                Ok(Compared {
                    compared: Some(both.len()),
                    identical: Some(both.iter().filter(|&&i| theirs[i] == ours_tokens[i]).count()),
                    bleu: bleu_of(&text, input.references.as_deref())?,
                    differ,
                })
            };
            let compare = |theirs: &[Vec<i64>], ended: &[bool]| compare_some(theirs, &|i| ours_ended[i] && ended[i]);
            let compare_all = |theirs: &[Vec<i64>]| compare_some(theirs, &|_| true);
            let row = |system: &str, secs: f64, c: Compared, at_limit| Row {
                system: system.to_string(),
                beam,
                threads: t,
                sentences_per_s: input.sources.len() as f64 / secs,
                seconds: secs,
                compared: c.compared,
                identical: c.identical,
                at_limit,
                bleu: c.bleu,
                differ: c.differ,
            };
            let ours_row = Compared { compared: None, identical: None, bleu, differ: Vec::new() };
            rows.push(row("preln", secs, ours_row, at_limit));
            print_row(rows.last().expect("just pushed"));
            if args.vs_pytorch {
                let with_eos: Vec<Vec<Vec<i64>>> = input
                    .sources
                    .chunks(args.search.batch_size)
                    .map(|b| b.iter().map(|s| [s.as_slice(), &[Specials::DEFAULT.eos]].concat()).collect())
                    .collect();
                let spec = json!({
                    "config": run.config_path, "checkpoint": run.checkpoint, "batches": with_eos, "beam": beam,
                    "lenpen": args.search.lenpen, "max_len_a": args.search.max_len_a,
                    "max_len_b": args.search.max_len_b, "threads": t,
                    "device": if device.is_cuda() { "cuda" } else { "cpu" },
                });
                let (theirs, secs) = reference_translate(&python(args.python.as_deref()), &spec)?;
                // The reference ends sentences at the limit as preln does: all of them compare.
                let all = compare_all(&theirs);
                rows.push(row("PyTorch", secs, all?, at_limit));
                print_row(rows.last().expect("just pushed"));
            }
            for (system, dir, quant) in ct2.iter().flat_map(|c| c.each()) {
                let out = ct2_decode(&args, &run, dir, quant, &input.sources, beam, &limits, t)?;
                let at_limit = out.ended.iter().filter(|e| !**e).count();
                rows.push(row(system, out.seconds, compare(&out.tokens, &out.ended)?, at_limit));
                print_row(rows.last().expect("just pushed"));
            }
        }
    }
    if let Some(c) = &ct2 {
        println!("(CTranslate2 {}, one translator thread group of the stated size)", c.version(&args)?);
    }
    if let Some(path) = &args.json {
        let doc = json!({"cpu": preln_ops::caps::summary(), "sentences": input.sources.len(), "rows": rows,
                         "input_lines": input.lines.len()});
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_row(r: &Row) {
    let same = match (r.identical, r.compared) {
        (Some(n), Some(m)) => format!(", identical to preln {n}/{m}"),
        _ => String::new(),
    };
    let bleu = r.bleu.map(|b| format!(", BLEU {b:.2}")).unwrap_or_default();
    println!(
        "beam {} threads {}: {:18} {:7.1} sentences/s ({:.2} s){same}{bleu}{}",
        r.beam,
        r.threads,
        r.system,
        r.sentences_per_s,
        r.seconds,
        if r.at_limit > 0 { format!(", {} at the length limit", r.at_limit) } else { String::new() }
    );
}

/// Our decode of every sentence in batches, after one untimed batch (warm caches, allocator).
fn decode(
    run: &TrainedModel,
    sources: &[Vec<i64>],
    search: &SearchConfig,
    batch_size: usize,
    device: tch::Device,
) -> (Vec<Hypothesis>, f64) {
    let batch = |b: &[Vec<i64>]| {
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = b.iter().map(|s| (s.clone(), Vec::new())).collect();
        Batch::from_pairs(&pairs, Specials::DEFAULT, device)
    };
    if let Some(first) = sources.chunks(batch_size).next() {
        beam_search(&run.model, &batch(first).src, search);
    }
    // `PRELN_PROFILE=trace.json`: libtorch's operator trace of the timed decode (the last one
    // timed, where there are several).
    let profile = std::env::var("PRELN_PROFILE").ok().and_then(|p| preln_ops::Profile::start(Path::new(&p)).ok());
    let t0 = std::time::Instant::now();
    let out = sources.chunks(batch_size).flat_map(|b| beam_search(&run.model, &batch(b).src, search)).collect();
    let secs = t0.elapsed().as_secs_f64();
    drop(profile);
    (out, secs)
}

/// Each sentence's length limit (EOS included), as the search computes it.
fn max_lens(sources: &[Vec<i64>], search: &SearchConfig) -> Vec<usize> {
    let n = |s: &Vec<i64>| ((search.max_len_a * (s.len() + 1) as f64) as i64 + search.max_len_b).max(1) as usize;
    sources.iter().map(n).collect()
}

/// The detokenized text of each output.
fn texts(run: &TrainedModel, outputs: &[Vec<i64>]) -> Result<Vec<String>> {
    let text = |t: &Vec<i64>| run.bpe.decode(&t.iter().map(|&i| i as u32).collect::<Vec<_>>());
    Ok(outputs.iter().map(text).collect::<Result<Vec<_>, _>>()?)
}

fn bleu_of(hyps: &[String], refs: Option<&[String]>) -> Result<Option<f64>> {
    let Some(refs) = refs else { return Ok(None) };
    Ok(Some(corpus_bleu(hyps, &[refs.to_vec()], BleuOptions::default())?.score))
}

/// The run exported twice into a temporary folder, removed when dropped.
struct Ct2Models {
    root: PathBuf,
}

impl Ct2Models {
    fn export(run_dir: &Path, run: &TrainedModel) -> Result<Ct2Models> {
        let root = std::env::temp_dir().join(format!("preln-bench-ct2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let models = Ct2Models { root };
        for q in [Quantization::Float32, Quantization::Int8] {
            super::export::write_ct2(run, run_dir, q, 1024, &models.root.join(q.name()))?;
        }
        Ok(models)
    }

    fn each(&self) -> [(&'static str, PathBuf, Quantization); 2] {
        [
            ("CTranslate2 float32", self.root.join("float32"), Quantization::Float32),
            ("CTranslate2 int8", self.root.join("int8"), Quantization::Int8),
        ]
    }

    fn version(&self, args: &BenchTranslateArgs) -> Result<String> {
        let out = std::process::Command::new(python(args.python.as_deref()))
            .args(["-c", "import ctranslate2; print(ctranslate2.__version__)"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Ct2Models {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

struct Ct2Out {
    tokens: Vec<Vec<i64>>,
    seconds: f64,
    /// Whether each sentence ended with EOS (else it ran into the length limit).
    ended: Vec<bool>,
}

/// CTranslate2's decode of `sources` (our token ids, given as pieces) with our search options
/// and batches; each batch's length limit is the largest of its sentences' limits in preln.
#[allow(clippy::too_many_arguments)]
fn ct2_decode(
    args: &BenchTranslateArgs,
    run: &TrainedModel,
    dir: PathBuf,
    quant: Quantization,
    sources: &[Vec<i64>],
    beam: usize,
    limits: &[usize],
    threads: i32,
) -> Result<Ct2Out> {
    let pieces: Vec<Vec<String>> =
        sources.iter().map(|s| run.bpe.pieces(&s.iter().map(|&i| i as u32).collect::<Vec<_>>())).collect();
    let spec = json!({
        "model": dir, "sources": pieces, "beam": beam, "lenpen": args.search.lenpen,
        "limits": limits.iter().map(|m| m.saturating_sub(1).max(1)).collect::<Vec<_>>(), "threads": threads,
        "compute_type": quant.name(), "batch_size": args.search.batch_size, "warmup": true,
    });
    let script = tool("ct2_translate.py");
    let py = python(args.python.as_deref());
    let what = format!("{} {}", py.display(), script.display());
    let v = run_json(std::process::Command::new(&py).arg(&script), &what, Some(&spec.to_string()))?;
    let outputs: Vec<Vec<String>> = serde_json::from_value(v["outputs"].clone()).context("its outputs")?;
    let ended: Vec<bool> = serde_json::from_value(v["ended"].clone()).context("its `ended`")?;
    let id = |p: &String| run.bpe.token_id(p).map_or(-1, i64::from);
    Ok(Ct2Out {
        tokens: outputs.iter().map(|o| o.iter().map(id).collect()).collect(),
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        ended,
    })
}
