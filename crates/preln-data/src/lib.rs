//! Translation data: reading parallel text, the joint BPE, prepared data folders, padded
//! batches, token-based batching, and the built-in synthetic task that lets every command run
//! without a download.

pub mod batch;
pub mod batching;
pub mod dataset;
pub mod download;
pub mod error;
pub mod glue;
pub mod mlm;
pub mod prepare;
pub mod publish;
pub mod store;
pub mod synthetic;
pub mod text;
pub mod tokenizer;

pub use batch::{Batch, Specials};
pub use batching::{shuffled_token_batches, token_batches};
pub use dataset::{Dataset, Pairs};
pub use error::{DataError, Result};
pub use prepare::{prepare, Manifest, PrepareSpec};
pub use synthetic::SyntheticTask;
pub use tokenizer::Bpe;
