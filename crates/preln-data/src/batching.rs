//! Token-based batching: examples sorted by length and cut into batches whose padded size stays
//! within a token budget (fairseq's `--max-tokens`).

/// Groups example indices into batches. Examples are sorted by length (longest side, then
/// source, then index, so the result is deterministic); a batch grows while
/// `examples * longest side` stays within `max_tokens`. An example longer than the budget
/// gets a batch of its own.
///
/// `lengths[i]` is `(source tokens, target tokens)` of example `i`, specials included.
pub fn token_batches(lengths: &[(usize, usize)], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i].0.max(lengths[i].1), lengths[i].0, i));
    cut(lengths, order, max_tokens)
}

/// [`token_batches`] with examples of equal length in a seeded random order instead of corpus
/// order (fairseq shuffles before its stable sort by size). Where many examples share a length,
/// as packed MLM segments do, batches in corpus order hold consecutive text of one document.
pub fn shuffled_token_batches(lengths: &[(usize, usize)], max_tokens: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    let tie =
        |i: usize| crate::synthetic::SplitMix64::new(seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64();
    order.sort_by_cached_key(|&i| (lengths[i].0.max(lengths[i].1), lengths[i].0, tie(i), i));
    cut(lengths, order, max_tokens)
}

/// Cuts examples, in `order`, into batches within the token budget.
fn cut(lengths: &[(usize, usize)], order: Vec<usize>, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = lengths[i].0.max(lengths[i].1);
        let grown = longest.max(len);
        if !current.is_empty() && (current.len() + 1) * grown > max_tokens {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_within_budget() {
        let lengths: Vec<(usize, usize)> = (0..100).map(|i| (3 + i % 17, 2 + (i * 7) % 23)).collect();
        let batches = token_batches(&lengths, 64);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i].0.max(lengths[i].1)).max().unwrap();
            assert!(b.len() * longest <= 64, "{b:?}");
        }
    }

    #[test]
    fn overlong_example_gets_its_own_batch() {
        let batches = token_batches(&[(5, 5), (100, 3), (4, 4)], 16);
        assert_eq!(batches, vec![vec![2, 0], vec![1]]);
    }

    #[test]
    fn deterministic() {
        let lengths: Vec<(usize, usize)> = (0..50).map(|i| (i % 5 + 1, i % 3 + 1)).collect();
        assert_eq!(token_batches(&lengths, 10), token_batches(&lengths, 10));
    }

    #[test]
    fn shuffled_ties_mix_the_corpus_and_keep_the_budget() {
        // 400 examples of one length: corpus order would give batches 0..8, 8..16, ...
        let lengths = vec![(8, 8); 400];
        let batches = shuffled_token_batches(&lengths, 64, 1);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..400).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| b.len() == 8));
        let spread = |b: &Vec<usize>| b.iter().max().unwrap() - b.iter().min().unwrap();
        let mean = batches.iter().map(spread).sum::<usize>() as f64 / batches.len() as f64;
        assert!(mean > 200.0, "a batch spans {mean} examples of the corpus on average");
        assert_eq!(batches, shuffled_token_batches(&lengths, 64, 1));
        assert_ne!(batches, shuffled_token_batches(&lengths, 64, 2));
        // Lengths still sort: short examples share batches.
        let mixed: Vec<(usize, usize)> = (0..100).map(|i| (2 + i % 10, 2 + i % 10)).collect();
        for b in shuffled_token_batches(&mixed, 40, 3) {
            let longest = b.iter().map(|&i| mixed[i].0).max().unwrap();
            let shortest = b.iter().map(|&i| mixed[i].0).min().unwrap();
            assert!(b.len() * longest <= 40 && longest - shortest <= 1, "{b:?}");
        }
    }
}
