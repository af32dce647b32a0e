//! Incremental decoding with a key/value cache gives the logits of full teacher-forced decoding.

use preln_model::init::seeded;
use preln_model::{NormPlacement, Seq2Seq, Seq2SeqConfig};
use tch::nn::VarStore;
use tch::{Device, Tensor};

#[test]
fn cached_steps_equal_full_decoding_for_every_placement() {
    for placement in NormPlacement::ALL {
        let cfg = Seq2SeqConfig {
            placement,
            vocab_size: 30,
            d_model: 16,
            ffn_dim: 32,
            heads: 2,
            encoder_layers: 2,
            decoder_layers: 3,
            ..Default::default()
        }
        .without_dropout();
        let vs = VarStore::new(Device::Cpu);
        let m = seeded(7, || Seq2Seq::new(&vs.root(), &cfg)).unwrap();
        let src = Tensor::from_slice(&[5i64, 6, 7, 8, 3, 9, 10, 3, 0, 0]).view([2, 5]);
        let prev = Tensor::from_slice(&[2i64, 11, 12, 13, 14, 2, 15, 16, 17, 18]).view([2, 5]);
        tch::no_grad(|| {
            let enc = m.encode(&src, false);
            let full = m.decode(&enc, &prev, false).logits;
            let mut cache = m.start_decoding(&enc);
            for t in 0..5 {
                let step = m.decode_step(&prev.select(1, t), &mut cache);
                let want = full.select(1, t);
                let err = (&step - &want).abs().max().double_value(&[]);
                assert!(err < 1e-5, "{placement} step {t}: max difference {err:e}");
            }
            // Reordering the cache reorders the rows.
            let mut cache = m.start_decoding(&enc);
            let _ = m.decode_step(&prev.select(1, 0), &mut cache);
            cache.select(&[1, 0], 1);
            let swapped = m.decode_step(&prev.select(1, 1).flip([0]), &mut cache);
            let want = full.select(1, 1).flip([0]);
            assert!((&swapped - &want).abs().max().double_value(&[]) < 1e-5, "{placement}: reorder");
            // Two beams of one sentence share its encoder output (one row of keys and values)
            // and are swapped after a few steps.
            let one = m.encode(&src.narrow(0, 0, 1), false);
            let two = m.encode(&src.narrow(0, 0, 1).repeat([2, 1]), false);
            let full_one = m.decode(&two, &prev, false).logits;
            let mut cache = m.start_decoding(&one);
            cache.select(&[0, 0], 2);
            for t in 0..3 {
                let step = m.decode_step(&prev.select(1, t), &mut cache);
                let err = (&step - &full_one.select(1, t)).abs().max().double_value(&[]);
                assert!(err < 1e-5, "{placement} beams step {t}: max difference {err:e}");
            }
            cache.select(&[1, 0], 2);
            let swapped = m.decode_step(&prev.select(1, 3).flip([0]), &mut cache);
            let want = full_one.select(1, 3).flip([0]);
            assert!((&swapped - &want).abs().max().double_value(&[]) < 1e-5, "{placement}: beams reordered");
            // Two sentences of two beams each, then rows that break the groups (the first of
            // sentence 1's beams, then both of sentence 0's): each row gets its own encoder output.
            let mut cache = m.start_decoding(&enc);
            cache.select(&[0, 0, 1, 1], 2);
            let _ = m.decode_step(&prev.select(1, 0).repeat_interleave_self_int(2, 0, None), &mut cache);
            cache.select(&[2, 0, 1], 1);
            let order = Tensor::from_slice(&[1i64, 0, 0]);
            let got = m.decode_step(&prev.select(1, 1).index_select(0, &order), &mut cache);
            let want = full.select(1, 1).index_select(0, &order);
            assert!((&got - &want).abs().max().double_value(&[]) < 1e-5, "{placement}: rows regrouped");
            // The first sentence leaves; the second's beams swap.
            let mut cache = m.start_decoding(&enc);
            cache.select(&[0, 0, 1, 1], 2);
            let _ = m.decode_step(&prev.select(1, 0).repeat_interleave_self_int(2, 0, None), &mut cache);
            cache.select(&[3, 2], 2);
            let got = m.decode_step(&prev.select(1, 1).narrow(0, 1, 1).repeat([2]), &mut cache);
            let want = full.select(1, 1).narrow(0, 1, 1).repeat([2, 1]);
            assert!((&got - &want).abs().max().double_value(&[]) < 1e-5, "{placement}: a sentence left");
        });
    }
}

