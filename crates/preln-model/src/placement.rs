//! Where LayerNorm sits in a Transformer: one enum, resolved in one place into norm slots.
//!
//! Every sublayer (self-attention, cross-attention, FFN) is wrapped the same way
//! (PAPER.md, Table 1):
//!
//! ```text
//! Post-LN:  y = LayerNorm(x + Dropout(F(x)))           no final LayerNorm
//! Pre-LN:   y = x + Dropout(F(LayerNorm(x)))           one final LayerNorm after the stack
//! ```
//!
//! Layers never match on [`NormPlacement`]; they read [`Slots`]. A later variant (Sandwich,
//! DeepNorm, ReZero, ...) is a new enum value plus, where needed, a new slot here.

use serde::{Deserialize, Serialize};

/// The place of layer normalization in each residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    /// The original Transformer: normalize after the residual add.
    Post,
    /// Normalize the branch input; the stack ends with a final LayerNorm.
    Pre,
}

/// Where a sublayer's own LayerNorm is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPosition {
    /// `x + F(LN(x))`
    BeforeBranch,
    /// `LN(x + F(x))`
    AfterResidual,
}

/// The norms a placement puts into a stack of layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slots {
    /// The one LayerNorm of each sublayer, and where it goes (`None`: no sublayer norm).
    pub sublayer_norm: Option<NormPosition>,
    /// A LayerNorm applied to the output of the last layer of each stack.
    pub final_norm: bool,
}

impl NormPlacement {
    pub const ALL: [NormPlacement; 2] = [NormPlacement::Post, NormPlacement::Pre];

    /// The single point where a placement becomes concrete norms.
    pub const fn slots(self) -> Slots {
        match self {
            NormPlacement::Post => Slots { sublayer_norm: Some(NormPosition::AfterResidual), final_norm: false },
            NormPlacement::Pre => Slots { sublayer_norm: Some(NormPosition::BeforeBranch), final_norm: true },
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            NormPlacement::Post => "post",
            NormPlacement::Pre => "pre",
        }
    }
}

impl std::fmt::Display for NormPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NormPlacement::Post => "Post-LN",
            NormPlacement::Pre => "Pre-LN",
        })
    }
}

impl std::str::FromStr for NormPlacement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "post" | "post-ln" | "postln" => Ok(NormPlacement::Post),
            "pre" | "pre-ln" | "preln" => Ok(NormPlacement::Pre),
            other => Err(format!("unknown norm placement `{other}` (expected `post` or `pre`)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_has_final_norm_post_has_none() {
        assert!(NormPlacement::Pre.slots().final_norm);
        assert!(!NormPlacement::Post.slots().final_norm);
        assert_eq!(NormPlacement::Pre.slots().sublayer_norm, Some(NormPosition::BeforeBranch));
        assert_eq!(NormPlacement::Post.slots().sublayer_norm, Some(NormPosition::AfterResidual));
    }

    #[test]
    fn parses_names() {
        assert_eq!("Pre-LN".parse::<NormPlacement>().unwrap(), NormPlacement::Pre);
        assert_eq!("post".parse::<NormPlacement>().unwrap(), NormPlacement::Post);
        assert!("sandwich".parse::<NormPlacement>().is_err());
    }
}
