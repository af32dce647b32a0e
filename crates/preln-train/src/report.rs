//! What the loop tells the person watching it. The library prints nothing itself: a program
//! implements [`Reporter`] (the `preln` command draws a progress bar and a line per
//! validation); [`Silent`] says nothing.

use crate::metrics::{TrainRecord, ValidRecord};

pub trait Reporter {
    /// An epoch starts, or resumes at batch `done` of `batches`.
    fn epoch_started(&mut self, _epoch: u64, _batches: usize, _done: usize) {}
    /// An update is done, the epoch is at batch `batch_in_epoch`; `logged` is its metrics
    /// record when one was written.
    fn updated(&mut self, _batch_in_epoch: usize, _logged: Option<&TrainRecord>) {}
    /// A validation finished; `improved` when it is the best so far.
    fn validated(&mut self, _record: &ValidRecord, _improved: bool) {}
    /// The epoch's display can go: the epoch finished, or the run stopped inside it.
    fn epoch_ended(&mut self, _finished: bool) {}
    /// Something worth saying (a repaired checkpoint).
    fn note(&mut self, _text: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Reporter for Silent {}
