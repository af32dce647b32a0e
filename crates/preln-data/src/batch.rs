//! A batch of sentence pairs as right-padded id tensors, in the layout the model consumes.

use tch::{Device, Tensor};

/// Ids of the special tokens; every vocabulary of the project starts with these four.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Specials {
    pub pad: i64,
    pub unk: i64,
    pub bos: i64,
    pub eos: i64,
}

impl Specials {
    pub const DEFAULT: Specials = Specials { pad: 0, unk: 1, bos: 2, eos: 3 };
    /// The first id of a regular token.
    pub const FIRST_REGULAR: i64 = 4;
}

/// Source `x EOS`, decoder input `BOS y`, target `y EOS`, each right-padded.
pub struct Batch {
    /// `[B, S]`
    pub src: Tensor,
    /// `[B, T]`
    pub prev: Tensor,
    /// `[B, T]`
    pub target: Tensor,
    /// Non-padding target tokens (the loss is averaged over these).
    pub target_tokens: i64,
    /// Non-padding source tokens.
    pub src_tokens: i64,
}

fn padded(rows: &[Vec<i64>], pad: i64, device: Device) -> Tensor {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut flat = Vec::with_capacity(rows.len() * width);
    for row in rows {
        flat.extend_from_slice(row);
        flat.extend(std::iter::repeat_n(pad, width - row.len()));
    }
    Tensor::from_slice(&flat).view([rows.len() as i64, width as i64]).to_device(device)
}

impl Batch {
    /// Builds a batch from pairs of regular-token sequences (no specials).
    pub fn from_pairs(pairs: &[(Vec<i64>, Vec<i64>)], sp: Specials, device: Device) -> Batch {
        let src: Vec<Vec<i64>> = pairs.iter().map(|(s, _)| s.iter().copied().chain([sp.eos]).collect()).collect();
        let prev: Vec<Vec<i64>> =
            pairs.iter().map(|(_, t)| [sp.bos].into_iter().chain(t.iter().copied()).collect()).collect();
        let target: Vec<Vec<i64>> = pairs.iter().map(|(_, t)| t.iter().copied().chain([sp.eos]).collect()).collect();
        Batch {
            src_tokens: src.iter().map(|r| r.len() as i64).sum(),
            target_tokens: target.iter().map(|r| r.len() as i64).sum(),
            src: padded(&src, sp.pad, device),
            prev: padded(&prev, sp.pad, device),
            target: padded(&target, sp.pad, device),
        }
    }

    pub fn sentences(&self) -> i64 {
        self.src.size()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_a_two_sentence_batch() {
        let sp = Specials::DEFAULT;
        let b = Batch::from_pairs(&[(vec![10, 11], vec![20]), (vec![12], vec![21, 22])], sp, Device::Cpu);
        let rows = |t: &Tensor| -> Vec<Vec<i64>> { (0..2).map(|i| Vec::<i64>::try_from(t.get(i)).unwrap()).collect() };
        assert_eq!(rows(&b.src), vec![vec![10, 11, 3], vec![12, 3, 0]]);
        assert_eq!(rows(&b.prev), vec![vec![2, 20, 0], vec![2, 21, 22]]);
        assert_eq!(rows(&b.target), vec![vec![20, 3, 0], vec![21, 22, 3]]);
        assert_eq!((b.src_tokens, b.target_tokens), (5, 5));
    }
}
