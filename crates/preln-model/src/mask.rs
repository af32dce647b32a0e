//! Attention masks. Convention: boolean, `true` = the key takes part in attention, shaped to
//! broadcast against attention scores `[B, heads, T, S]`.

use tch::{Device, Kind, Tensor};

/// `true` where `tokens` is not padding.
///
/// # Shapes
/// tokens: `[B, S]` -> `[B, S]`
pub fn non_pad(tokens: &Tensor, pad_id: i64) -> Tensor {
    tokens.ne(pad_id)
}

/// Key-padding mask for attention over `tokens`.
///
/// # Shapes
/// tokens: `[B, S]` -> `[B, 1, 1, S]`
pub fn key_padding(tokens: &Tensor, pad_id: i64) -> Tensor {
    non_pad(tokens, pad_id).unsqueeze(1).unsqueeze(1)
}

/// Lower-triangular mask: query `t` sees keys `0..=t`.
///
/// # Shapes
/// -> `[T, T]`
pub fn causal(t: i64, device: Device) -> Tensor {
    Tensor::ones([t, t], (Kind::Bool, device)).tril(0)
}

/// Decoder self-attention mask: causal and key padding together.
///
/// # Shapes
/// tokens: `[B, T]` -> `[B, 1, T, T]`
pub fn causal_with_padding(tokens: &Tensor, pad_id: i64) -> Tensor {
    let t = tokens.size()[1];
    key_padding(tokens, pad_id).logical_and(&causal(t, tokens.device()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &Tensor) -> Vec<Vec<bool>> {
        let t = t.to_kind(Kind::Int64);
        (0..t.size()[0])
            .map(|i| Vec::<i64>::try_from(t.get(i)).unwrap().into_iter().map(|v| v != 0).collect())
            .collect()
    }

    #[test]
    fn causal_is_lower_triangular() {
        let m = causal(3, Device::Cpu);
        assert_eq!(rows(&m), vec![vec![true, false, false], vec![true, true, false], vec![true, true, true]]);
    }

    #[test]
    fn padding_and_causal_combine() {
        // One sentence of 2 real tokens and 1 pad (pad id 0).
        let tokens = Tensor::from_slice(&[5i64, 7, 0]).view([1, 3]);
        let m = causal_with_padding(&tokens, 0);
        assert_eq!(m.size(), vec![1, 1, 3, 3]);
        let m = m.view([3, 3]);
        assert_eq!(rows(&m), vec![vec![true, false, false], vec![true, true, false], vec![true, true, false]]);
        assert_eq!(key_padding(&tokens, 0).size(), vec![1, 1, 1, 3]);
    }
}
