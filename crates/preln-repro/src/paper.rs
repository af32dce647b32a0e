//! The paper's numbers the reproduction scales from (PAPER.md, Experimental settings).

/// The paper's run, which the warmup length and the decay epoch are scaled from: 4000 warmup
/// updates and a x0.1 decay at epoch 8 in runs of about 15 epochs of ~1,100 updates (IWSLT14,
/// 4096 tokens a batch).
pub const PAPER_WARMUP: u64 = 4000;
pub const PAPER_EPOCHS: u64 = 15;
pub const PAPER_UPDATES_PER_EPOCH: u64 = 1100;

/// The paper's warmup of `paper` updates, scaled by the ratio of run lengths (total updates).
/// Warmups of 0 and 1 mean "no warmup" and stay as they are.
pub fn scaled_warmup(paper: u64, updates_per_epoch: u64, epochs: u64) -> u64 {
    if paper <= 1 {
        return paper;
    }
    let ratio = (updates_per_epoch * epochs) as f64 / (PAPER_EPOCHS * PAPER_UPDATES_PER_EPOCH) as f64;
    ((paper as f64 * ratio).round() as u64).max(2)
}

/// The paper's epoch `paper` (of `PAPER_EPOCHS`) at the same fraction of a run of `epochs`.
pub fn scaled_epoch(paper: u64, epochs: u64) -> u64 {
    ((paper * epochs).div_ceil(PAPER_EPOCHS)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_scales_with_run_length() {
        // The paper's own run length keeps 4000; a tenth of it gets 400; no warmup stays none.
        assert_eq!(scaled_warmup(4000, PAPER_UPDATES_PER_EPOCH, PAPER_EPOCHS), 4000);
        assert_eq!(scaled_warmup(4000, 110, 15), 400);
        assert_eq!(scaled_warmup(4000, 111, 5), 135);
        assert_eq!(scaled_warmup(1, 111, 5), 1);
        assert_eq!(scaled_warmup(0, 111, 5), 0);
        assert_eq!(scaled_warmup(4000, 1, 1), 2);
    }

    #[test]
    fn decay_epoch_keeps_its_place_in_the_run() {
        assert_eq!(scaled_epoch(8, 15), 8);
        assert_eq!(scaled_epoch(8, 5), 3);
        assert_eq!(scaled_epoch(8, 6), 4);
        assert_eq!(scaled_epoch(8, 1), 1);
    }
}
