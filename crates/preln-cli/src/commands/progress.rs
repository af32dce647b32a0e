//! How `preln` shows a training run: a progress bar per epoch (loss, learning rate, tokens/s),
//! a line per validation, and notes, on stderr.

use indicatif::{ProgressBar, ProgressStyle};
use preln_train::metrics::{TrainRecord, ValidRecord};
use preln_train::report::Reporter;

#[derive(Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn boxed() -> Box<dyn Reporter> {
        Box::new(Progress::default())
    }

    /// Prints `line` without tearing the bar.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

/// `epoch 3: train loss 4.1234, valid loss ..., valid BLEU 12.34, 450 updates, 61 s, best so far`
pub fn valid_line(v: &ValidRecord, improved: bool) -> String {
    let extra: String = v
        .extra
        .iter()
        .filter_map(|(k, x)| {
            x.map(|f| match k.as_str() {
                "bleu" => format!(", valid BLEU {f:.2}"),
                _ => format!(", valid {} {f:.4}", k.replace('_', " ")),
            })
        })
        .collect();
    format!(
        "{} {}: train loss {:.4}, valid loss {:.4}, valid nll {:.4} (ppl {:.2}){extra}, {} updates, {:.0} s{}",
        if v.epoch_end { "epoch" } else { "update" },
        if v.epoch_end { v.epoch } else { v.step },
        v.train_loss,
        v.loss,
        v.nll,
        v.ppl,
        v.step,
        v.wall_s,
        if improved { ", best so far" } else { "" }
    )
}

impl Reporter for Progress {
    fn epoch_started(&mut self, epoch: u64, batches: usize, done: usize) {
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(epoch.to_string());
        bar.set_position(done as u64);
        self.bar = Some(bar);
    }

    fn updated(&mut self, batch_in_epoch: usize, logged: Option<&TrainRecord>) {
        if let Some(bar) = &self.bar {
            if let Some(r) = logged {
                bar.set_message(format!("loss {:.3} lr {:.2e} {:.0} tok/s", r.loss, r.lr, r.tokens_per_s));
            }
            bar.set_position(batch_in_epoch as u64);
        }
    }

    fn validated(&mut self, record: &ValidRecord, improved: bool) {
        self.say(&valid_line(record, improved));
    }

    fn epoch_ended(&mut self, finished: bool) {
        if let Some(bar) = self.bar.take() {
            if finished {
                bar.finish_and_clear();
            } else {
                bar.abandon();
            }
        }
    }

    fn note(&mut self, text: &str) {
        self.say(text);
    }
}
