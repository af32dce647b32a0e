//! Beam search and greedy decoding (greedy is beam 1), batched over sentences, following fairseq's
//! `SequenceGenerator`: each step takes the top `2k` extensions of the `k` live hypotheses; an EOS
//! among the top `k` finishes a hypothesis with score `sum log p / length^lenpen` (length counts
//! the EOS); the first `k` other extensions stay live; a sentence is done when it has `k` finished
//! hypotheses; at the length limit `a * source length + b`, EOS is forced.

use preln_data::{Batch, Bpe, DataError, Specials};
use preln_model::seq2seq::Encoded;
use preln_model::stack::DecoderCache;
use preln_model::Seq2Seq;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchConfig {
    pub beam: usize,
    /// Length penalty exponent (fairseq `--lenpen`; the paper used 1.2).
    pub lenpen: f64,
    /// Generate at most `max_len_a * source_tokens + max_len_b` tokens (EOS included).
    pub max_len_a: f64,
    pub max_len_b: i64,
    pub specials: Specials,
    /// Recompute the whole prefix every step instead of using the key/value cache (slow; for
    /// checking that both give the same output).
    pub no_cache: bool,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            beam: 5,
            lenpen: 1.2,
            max_len_a: 1.2,
            max_len_b: 10,
            specials: Specials::DEFAULT,
            no_cache: false,
        }
    }
}

impl SearchConfig {
    /// The longest `max_len_a` accepted: outputs 1000 times longer than their source.
    pub const MAX_LEN_A: f64 = 1000.0;
    /// The largest `max_len_b` accepted.
    pub const MAX_LEN_B: i64 = 1_000_000;

    /// Checks the options, naming the one at fault (as the command line spells it).
    pub fn validate(&self) -> Result<(), String> {
        if self.beam < 1 {
            return Err(format!("--beam must be at least 1, got {}", self.beam));
        }
        if !self.lenpen.is_finite() {
            return Err(format!("--lenpen must be a finite number, got {}", self.lenpen));
        }
        if !(self.max_len_a.is_finite() && (0.0..=Self::MAX_LEN_A).contains(&self.max_len_a)) {
            return Err(format!("--max-len-a must lie in [0, {}], got {}", Self::MAX_LEN_A, self.max_len_a));
        }
        if !(0..=Self::MAX_LEN_B).contains(&self.max_len_b) {
            return Err(format!("--max-len-b must lie in [0, {}], got {}", Self::MAX_LEN_B, self.max_len_b));
        }
        Ok(())
    }
}

/// A finished translation: regular token ids (no BOS/EOS) and its normalized score.
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<i64>,
    pub score: f64,
}

/// How the next-token logits are computed: from the cache, or from the whole prefix.
enum Stepper {
    Cached(DecoderCache),
    Full { enc: Encoded, prefix: Tensor },
}

impl Stepper {
    fn step(&mut self, model: &Seq2Seq, last: &Tensor) -> Tensor {
        match self {
            Stepper::Cached(cache) => model.decode_step(last, cache),
            Stepper::Full { enc, prefix } => {
                *prefix = Tensor::cat(&[&*prefix, &last.unsqueeze(1)], 1);
                let logits = model.decode(enc, prefix, false).logits;
                logits.select(1, logits.size()[1] - 1)
            }
        }
    }

    /// Row `r` continues old row `rows[r]`; the rows come `beam` to a sentence.
    fn select(&mut self, rows: &[i64], beam: usize) {
        match self {
            Stepper::Cached(cache) => cache.select(rows, beam),
            Stepper::Full { enc, prefix } => {
                let index = Tensor::from_slice(rows).to_device(prefix.device());
                enc.stack.out = enc.stack.out.index_select(0, &index);
                enc.mask = enc.mask.index_select(0, &index);
                *prefix = prefix.index_select(0, &index);
            }
        }
    }
}

/// Log-probabilities of the next token: pad and BOS excluded, and rows in `force` (at their
/// length limit) allowed only EOS.
fn next_lprobs(logits: &Tensor, force: &[i64], sp: Specials) -> Tensor {
    let device = logits.device();
    let mut lprobs = logits.log_softmax(-1, Kind::Float);
    let _ = lprobs.index_fill_(1, &Tensor::from_slice(&[sp.pad, sp.bos]).to_device(device), f64::NEG_INFINITY);
    if !force.is_empty() {
        let idx = Tensor::from_slice(force).to_device(device);
        let eos_col = lprobs.index_select(0, &idx).select(1, sp.eos);
        let _ = lprobs.index_fill_(0, &idx, f64::NEG_INFINITY);
        let _ = lprobs.index_put_(
            &[Some(idx), Some(Tensor::full([force.len() as i64], sp.eos, (Kind::Int64, device)))],
            &eos_col,
            false,
        );
    }
    lprobs
}

/// One step's top `2k` candidates of every active sentence (flattened, sentence by sentence).
struct Beams<'a> {
    k: usize,
    v: i64,
    tokens: &'a [Vec<i64>],
    top_v: &'a [f64],
    top_i: &'a [i64],
    lenpen: f64,
    eos: i64,
}

/// The beams after a step: the sentences still decoding, and for each of their `k` rows the
/// row it extends, its tokens and score.
struct Advanced {
    still: Vec<usize>,
    src_rows: Vec<i64>,
    new_tokens: Vec<Vec<i64>>,
    new_scores: Vec<f64>,
}

impl Beams<'_> {
    /// Ends hypotheses at EOS (into `finished`) and keeps the `k` best live extensions of every
    /// sentence that is not done.
    fn advance(&self, active: &[usize], finished: &mut [Vec<Hypothesis>]) -> Advanced {
        let rows = active.len() * self.k;
        let mut src_rows = Vec::with_capacity(rows);
        let mut new_tokens = Vec::with_capacity(rows);
        let mut new_scores = Vec::with_capacity(rows);
        let mut still = Vec::with_capacity(active.len());
        for (a, &i) in active.iter().enumerate() {
            let (mut live_rows, mut live_tokens, mut live_scores) = (Vec::new(), Vec::new(), Vec::new());
            for c in 0..2 * self.k {
                let (val, idx) = (self.top_v[a * 2 * self.k + c], self.top_i[a * 2 * self.k + c]);
                if val == f64::NEG_INFINITY {
                    break;
                }
                let row = a * self.k + (idx / self.v) as usize;
                let tok = idx % self.v;
                if tok == self.eos {
                    if c < self.k {
                        let len = (self.tokens[row].len() + 1) as f64;
                        finished[i]
                            .push(Hypothesis { tokens: self.tokens[row].clone(), score: val / len.powf(self.lenpen) });
                    }
                } else if live_rows.len() < self.k {
                    live_rows.push(row as i64);
                    live_tokens.push([self.tokens[row].as_slice(), &[tok]].concat());
                    live_scores.push(val);
                }
                if live_rows.len() == self.k && c + 1 >= self.k {
                    break;
                }
            }
            if finished[i].len() >= self.k || live_rows.is_empty() {
                continue;
            }
            // Too few live extensions: pad with dead rows.
            while live_rows.len() < self.k {
                live_rows.push(live_rows[0]);
                live_tokens.push(Vec::new());
                live_scores.push(f64::NEG_INFINITY);
            }
            still.push(i);
            src_rows.extend(live_rows);
            new_tokens.extend(live_tokens);
            new_scores.extend(live_scores);
        }
        Advanced { still, src_rows, new_tokens, new_scores }
    }
}

/// Translates text lines with `model` and its tokenizer: empty lines stay empty, the others are
/// decoded in batches of `batch_size` sentences sorted by length (less padding) and returned
/// in input order. `done` hears how many sentences each batch finished.
pub fn translate_lines(
    model: &Seq2Seq,
    bpe: &Bpe,
    lines: &[String],
    cfg: &SearchConfig,
    batch_size: usize,
    device: Device,
    mut done: impl FnMut(usize),
) -> Result<Vec<String>, DataError> {
    let mut encoded: Vec<(usize, Vec<i64>)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.trim().is_empty() {
            let ids = bpe
                .encode(line)
                .map_err(|e| DataError::Invalid { path: format!("line {}", i + 1).into(), reason: e.to_string() })?;
            encoded.push((i, ids.into_iter().map(i64::from).collect()));
        }
    }
    encoded.sort_by_key(|(i, ids)| (ids.len(), *i));
    let mut out: Vec<String> = vec![String::new(); lines.len()];
    for chunk in encoded.chunks(batch_size.max(1)) {
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = chunk.iter().map(|(_, ids)| (ids.clone(), Vec::new())).collect();
        let batch = Batch::from_pairs(&pairs, cfg.specials, device);
        for ((i, _), hyp) in chunk.iter().zip(beam_search(model, &batch.src, cfg)) {
            let ids: Vec<u32> = hyp.tokens.iter().map(|&t| t as u32).collect();
            out[*i] = bpe.decode(&ids)?;
        }
        done(chunk.len());
    }
    Ok(out)
}

/// Translates a batch of right-padded sources `[B, S]` (each ending in EOS); returns the best
/// hypothesis of each sentence.
pub fn beam_search(model: &Seq2Seq, src: &Tensor, cfg: &SearchConfig) -> Vec<Hypothesis> {
    tch::no_grad(|| search(model, src, cfg))
}

fn search(model: &Seq2Seq, src: &Tensor, cfg: &SearchConfig) -> Vec<Hypothesis> {
    let sp = cfg.specials;
    let device = src.device();
    let (b, _) = src.size2().expect("src must be [B, S]");
    let (bsz, k) = (b as usize, cfg.beam.max(1));
    let src_lens = Vec::<i64>::try_from(src.ne(sp.pad).sum_dim_intlist(1, false, Kind::Int64).to_device(Device::Cpu))
        .expect("lengths");
    let max_lens: Vec<usize> =
        src_lens.iter().map(|&l| ((cfg.max_len_a * l as f64) as i64 + cfg.max_len_b).max(1) as usize).collect();
    let enc = model.encode(src, false);
    let expand: Vec<i64> = (0..b).flat_map(|i| std::iter::repeat_n(i, k)).collect();
    let mut stepper = if cfg.no_cache {
        Stepper::Full { enc, prefix: Tensor::zeros([b, 0], (Kind::Int64, device)) }
    } else {
        Stepper::Cached(model.start_decoding(&enc))
    };
    stepper.select(&expand, k);

    // Sentences still being decoded; finished ones leave the batch (and the cache), as in
    // fairseq, so late steps only pay for what is left.
    let mut active: Vec<usize> = (0..bsz).collect();
    let rows = bsz * k;
    let mut tokens: Vec<Vec<i64>> = vec![Vec::new(); rows];
    let mut scores: Vec<f64> = (0..rows).map(|r| if r % k == 0 { 0.0 } else { f64::NEG_INFINITY }).collect();
    let mut finished: Vec<Vec<Hypothesis>> = vec![Vec::new(); bsz];
    let mut last = Tensor::full([rows as i64], sp.bos, (Kind::Int64, device));
    let longest = max_lens.iter().copied().max().unwrap_or(1);
    for step in 0..longest {
        let rows = active.len() * k;
        let logits = stepper.step(model, &last);
        let v = logits.size()[1];
        // Rows at their length limit may only end.
        let force: Vec<i64> = (0..rows).filter(|&r| step + 1 >= max_lens[active[r / k]]).map(|r| r as i64).collect();
        let lprobs = next_lprobs(&logits, &force, sp);
        let prior = Tensor::from_slice(&scores).to_kind(Kind::Float).to_device(device).unsqueeze(1);
        let cand = (lprobs + prior).view([active.len() as i64, k as i64 * v]);
        let (top_v, top_i) = cand.topk((2 * k) as i64, 1, true, true);
        let top_v =
            Vec::<f64>::try_from(top_v.to_kind(Kind::Double).to_device(Device::Cpu).flatten(0, -1)).expect("values");
        let top_i = Vec::<i64>::try_from(top_i.to_device(Device::Cpu).flatten(0, -1)).expect("indices");

        let beams = Beams { k, v, tokens: &tokens, top_v: &top_v, top_i: &top_i, lenpen: cfg.lenpen, eos: sp.eos };
        let Advanced { still, src_rows, new_tokens, new_scores } = beams.advance(&active, &mut finished);
        if still.is_empty() {
            break;
        }
        active = still;
        let identity = src_rows.len() == rows && src_rows.iter().enumerate().all(|(r, &src)| src == r as i64);
        if !identity {
            stepper.select(&src_rows, k);
        }
        last = Tensor::from_slice(&new_tokens.iter().map(|t| t.last().copied().unwrap_or(sp.pad)).collect::<Vec<_>>())
            .to_device(device);
        tokens = new_tokens;
        scores = new_scores;
    }
    finished
        .into_iter()
        .map(|mut hyps| {
            hyps.sort_by(|a, b| b.score.total_cmp(&a.score));
            hyps.into_iter().next().unwrap_or(Hypothesis { tokens: Vec::new(), score: f64::NEG_INFINITY })
        })
        .collect()
}
