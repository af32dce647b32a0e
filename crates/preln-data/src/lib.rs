//! Translation data: the special token ids, padded batches, and the built-in synthetic task that
//! lets every command run without a download.

pub mod batch;
pub mod batching;
pub mod synthetic;

pub use batch::{Batch, Specials};
pub use batching::token_batches;
pub use synthetic::SyntheticTask;
