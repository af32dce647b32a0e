//! Beam search: cached and uncached decoding agree for every placement; batching does not change
//! results; limits and specials are respected.

use preln_data::{Batch, Specials, SyntheticTask};
use preln_eval::{beam_search, SearchConfig};
use preln_model::init::seeded;
use preln_model::{NormPlacement, Seq2Seq, Seq2SeqConfig};
use tch::nn::VarStore;
use tch::Device;

fn model(placement: NormPlacement, vs: &VarStore) -> Seq2Seq {
    let cfg = Seq2SeqConfig {
        placement,
        vocab_size: 24,
        d_model: 16,
        ffn_dim: 32,
        heads: 2,
        encoder_layers: 2,
        decoder_layers: 2,
        ..Default::default()
    }
    .without_dropout();
    seeded(11, || Seq2Seq::new(&vs.root(), &cfg)).unwrap()
}

fn sources() -> Batch {
    let task = SyntheticTask::new(24, 2, 7, 3);
    Batch::from_pairs(&task.pairs(6, 9), Specials::DEFAULT, Device::Cpu)
}

#[test]
fn cached_and_uncached_search_agree() {
    for placement in NormPlacement::ALL {
        let vs = VarStore::new(Device::Cpu);
        let m = model(placement, &vs);
        let src = sources().src;
        for beam in [1, 4] {
            let cfg = SearchConfig { beam, max_len_a: 1.0, max_len_b: 3, ..Default::default() };
            let cached = beam_search(&m, &src, &cfg);
            let full = beam_search(&m, &src, &SearchConfig { no_cache: true, ..cfg });
            assert_eq!(cached.len(), 6);
            for (i, (a, b)) in cached.iter().zip(&full).enumerate() {
                assert_eq!(a.tokens, b.tokens, "{placement} beam {beam} sentence {i}");
                assert!(
                    (a.score - b.score).abs() < 1e-4,
                    "{placement} beam {beam} sentence {i}: {} vs {}",
                    a.score,
                    b.score
                );
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_batch() {
    let vs = VarStore::new(Device::Cpu);
    let m = model(NormPlacement::Pre, &vs);
    let src = sources().src;
    let cfg = SearchConfig { beam: 3, max_len_a: 1.0, max_len_b: 3, ..Default::default() };
    let together = beam_search(&m, &src, &cfg);
    let sp = Specials::DEFAULT;
    for i in 0..6 {
        let row = src.get(i);
        let len = row.ne(sp.pad).sum(tch::Kind::Int64).int64_value(&[]);
        let alone = beam_search(&m, &row.narrow(0, 0, len).unsqueeze(0), &cfg);
        assert_eq!(alone[0].tokens, together[i as usize].tokens, "sentence {i}");
    }
}

#[test]
fn respects_length_limit_and_never_emits_specials() {
    let vs = VarStore::new(Device::Cpu);
    let m = model(NormPlacement::Post, &vs);
    let b = sources();
    let lens: Vec<i64> = (0..6).map(|i| b.src.get(i).ne(0).sum(tch::Kind::Int64).int64_value(&[])).collect();
    let cfg = SearchConfig { beam: 2, max_len_a: 0.5, max_len_b: 1, ..Default::default() };
    for (h, len) in beam_search(&m, &b.src, &cfg).iter().zip(lens) {
        let limit = ((0.5 * len as f64) as i64 + 1) as usize;
        assert!(h.tokens.len() < limit.max(1), "{} tokens, limit {limit} with EOS", h.tokens.len());
        assert!(h.tokens.iter().all(|&t| t >= Specials::FIRST_REGULAR || t == Specials::DEFAULT.unk), "{:?}", h.tokens);
        assert!(h.score.is_finite());
    }
}

#[test]
fn a_later_sentence_finishing_first_leaves_the_batch_cleanly() {
    // Sentence 1 is short, so its length limit ends it first; the batch shrinks to sentence 0,
    // whose row keeps index 0 (a regression: that reorder was once skipped as the identity).
    let vs = VarStore::new(Device::Cpu);
    let m = model(NormPlacement::Pre, &vs);
    let src = tch::Tensor::from_slice(&[5i64, 6, 7, 8, 9, 10, 3, 11, 3, 0, 0, 0, 0, 0]).view([2, 7]);
    for beam in [1, 2] {
        let cfg = SearchConfig { beam, max_len_a: 1.0, max_len_b: 0, ..Default::default() };
        let together = beam_search(&m, &src, &cfg);
        assert!(together[1].tokens.len() < 2 && together[0].tokens.len() < 7, "beam {beam}: {together:?}");
        let alone = beam_search(&m, &src.narrow(0, 0, 1), &cfg);
        assert_eq!(alone[0].tokens, together[0].tokens, "beam {beam}");
    }
}
