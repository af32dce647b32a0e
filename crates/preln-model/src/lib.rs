//! Transformers on libtorch with the norm placement as one enum (Post-LN, Pre-LN and their
//! family): the encoder-decoder of Xiong et al. (2020) for translation and an encoder-only BERT.
//!
//! Every parameter has a stable dotted path (`encoder.layers.3.ffn.fc2.weight`), built by
//! scoping `tch::nn::Path`s; those paths are the checkpoint keys and the names diagnostics use.

pub mod attention;
pub mod bert;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod ctranslate2;
pub mod diagnostics;
pub mod embedding;
pub mod error;
pub mod ffn;
pub mod fsio;
pub mod init;
pub mod linear;
pub mod loss;
pub mod mask;
pub mod memory;
pub mod norm;
pub mod placement;
pub mod seq2seq;
pub mod stack;
pub mod sublayer;

pub use bert::Bert;
pub use config::{Activation, BertConfig, LayerConfig, Seq2SeqConfig, WeightInit};
pub use error::{ModelError, Result};
pub use loss::{label_smoothed_nll, LossSums};
pub use placement::{DeepNormInit, NormKind, NormPlacement, PlacementOptions, StackRole};
pub use seq2seq::Seq2Seq;
