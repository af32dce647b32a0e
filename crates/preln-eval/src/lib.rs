//! Evaluation: corpus BLEU identical to sacreBLEU 2.x (tokenizers 13a / intl / none,
//! exponential smoothing, brevity penalty, several references).

pub mod bleu;
pub mod search;
pub mod stats;
pub mod tokenize;

pub use bleu::{corpus_bleu, Bleu, BleuError, BleuOptions};
pub use search::{beam_search, translate_lines, Hypothesis, SearchConfig};
pub use tokenize::Tokenize;
