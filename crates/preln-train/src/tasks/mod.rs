//! What the loop trains: each task supplies a model, its batches, its loss and its validation
//! ([`crate::task::Task`]).

pub mod finetune;
pub mod mlm;
pub mod translation;
