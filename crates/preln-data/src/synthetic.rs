//! The built-in translation task: a deterministic "language pair" generated from a seed.
//!
//! Source sentences draw words from a Zipf(1) distribution over the regular ids (like word
//! frequencies in text). The target is the source with every word replaced through a fixed
//! random bijection and each adjacent pair of words swapped: a task that needs attention (the
//! reordering) and a vocabulary mapping, learnable in minutes on a CPU.

use crate::batch::Specials;

/// A small, fast, seedable generator (SplitMix64); the task must not depend on libtorch's RNG.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

#[derive(Clone, Debug)]
pub struct SyntheticTask {
    vocab_size: i64,
    /// `mapping[w - FIRST_REGULAR]` is the target word of source word `w`.
    mapping: Vec<i64>,
    /// Cumulative Zipf weights over the regular words.
    cumulative: Vec<f64>,
    min_len: usize,
    max_len: usize,
}

impl SyntheticTask {
    /// A task over `vocab_size` ids (the first four are the specials), sentences of
    /// `min_len..=max_len` words, defined entirely by `seed`.
    pub fn new(vocab_size: i64, min_len: usize, max_len: usize, seed: u64) -> Self {
        assert!(vocab_size > Specials::FIRST_REGULAR + 1, "vocabulary too small");
        assert!(1 <= min_len && min_len <= max_len, "bad sentence lengths");
        let words = (vocab_size - Specials::FIRST_REGULAR) as usize;
        let mut rng = SplitMix64::new(seed);
        let mut mapping: Vec<i64> = (0..words as i64).map(|w| w + Specials::FIRST_REGULAR).collect();
        for i in (1..words).rev() {
            mapping.swap(i, rng.range(0, i));
        }
        let mut total = 0.0;
        let cumulative = (1..=words)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        SyntheticTask { vocab_size, mapping, cumulative, min_len, max_len }
    }

    pub fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    fn word(&self, rng: &mut SplitMix64) -> i64 {
        let u = rng.next_f64() * self.cumulative.last().copied().unwrap_or(1.0);
        self.cumulative.partition_point(|&c| c < u) as i64 + Specials::FIRST_REGULAR
    }

    /// The reference translation of a source sentence.
    pub fn translate(&self, src: &[i64]) -> Vec<i64> {
        let mut out: Vec<i64> = src.iter().map(|&w| self.mapping[(w - Specials::FIRST_REGULAR) as usize]).collect();
        for pair in out.chunks_mut(2) {
            pair.reverse();
        }
        out
    }

    /// An endless stream of sentence pairs drawn with `seed` (different seeds give different
    /// splits).
    pub fn pair_iter(&self, seed: u64) -> impl Iterator<Item = (Vec<i64>, Vec<i64>)> + '_ {
        let mut rng = SplitMix64::new(seed ^ 0x5EED_0F_DA7A);
        std::iter::from_fn(move || {
            let len = rng.range(self.min_len, self.max_len);
            let src: Vec<i64> = (0..len).map(|_| self.word(&mut rng)).collect();
            let tgt = self.translate(&src);
            Some((src, tgt))
        })
    }

    /// The first `n` pairs of [`Self::pair_iter`].
    pub fn pairs(&self, n: usize, seed: u64) -> Vec<(Vec<i64>, Vec<i64>)> {
        self.pair_iter(seed).take(n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let task = SyntheticTask::new(100, 3, 9, 7);
        let a = task.pairs(50, 1);
        assert_eq!(a, SyntheticTask::new(100, 3, 9, 7).pairs(50, 1));
        assert_ne!(a, task.pairs(50, 2));
        for (s, t) in &a {
            assert!((3..=9).contains(&s.len()) && s.len() == t.len());
            assert!(s.iter().chain(t).all(|&w| (4..100).contains(&w)));
        }
    }

    #[test]
    fn translation_maps_and_swaps_pairs() {
        let task = SyntheticTask::new(10, 1, 5, 3);
        let m = |w: i64| task.translate(&[w])[0];
        assert_eq!(task.translate(&[4, 5, 6]), vec![m(5), m(4), m(6)]);
        // The mapping is a bijection.
        let mut images: Vec<i64> = (4..10).map(m).collect();
        images.sort();
        assert_eq!(images, (4..10).collect::<Vec<_>>());
    }

    #[test]
    fn frequent_words_are_frequent() {
        let task = SyntheticTask::new(1000, 10, 10, 0);
        let words: Vec<i64> = task.pairs(200, 0).into_iter().flat_map(|(s, _)| s).collect();
        let top = words.iter().filter(|&&w| w == 4).count();
        let rare = words.iter().filter(|&&w| w == 900).count();
        assert!(top > 50 && rare < 5, "top {top}, rare {rare}");
    }
}
