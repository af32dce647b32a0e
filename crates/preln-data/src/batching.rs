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
}
