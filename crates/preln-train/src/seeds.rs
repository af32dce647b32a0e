//! Everything random in training is a function of (seed, epoch, update, batch): the data order
//! of an epoch, dropout masks, MLM masks. That is what makes a resumed run exact.

use preln_data::synthetic::SplitMix64;

/// A seed for libtorch's generator from (run seed, update, batch within the update).
pub fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut rng = SplitMix64::new(seed ^ step.wrapping_mul(0x9E37_79B9) ^ ((micro as u64) << 48));
    rng.next_u64() >> 1
}

/// The seed of what batch `micro` of update `step` draws for itself (MLM masks).
pub fn data_seed(seed: u64, step: u64, micro: usize) -> u64 {
    dropout_seed(seed ^ 0xDA7A_5EED_0000_0000, step, micro)
}

/// The order in which epoch `epoch` visits the fixed token batches.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ epoch);
    for i in (1..n).rev() {
        order.swap(i, rng.range(0, i));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, 1, 3);
        assert_eq!(a, epoch_order(50, 1, 3));
        assert_ne!(a, epoch_order(50, 1, 4));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }
}
