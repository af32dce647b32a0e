//! The scales of `preln reproduce`: how large the models, how long the runs, how many seeds.
//! The grid's configs are written at the paper's scale; a scale turns them into runs this
//! machine can afford, by overrides that the report lists.

use preln_train::config::TrainConfig;
use preln_train::schedule::Schedule;

use crate::paper::{scaled_epoch, scaled_warmup};

/// How large a reproduction: `quick` (minutes), `cpu` (hours on a CPU), `paper` (the paper's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Quick,
    Cpu,
    Paper,
}

impl std::str::FromStr for Scale {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quick" => Ok(Scale::Quick),
            "cpu" => Ok(Scale::Cpu),
            "paper" => Ok(Scale::Paper),
            _ => Err(format!("unknown scale `{s}` (known: quick, cpu, paper)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScaleSpec {
    pub name: &'static str,
    /// d_model, FFN width and heads of the trained models (None: the configs' own, the paper's).
    pub width: Option<(i64, i64, i64)>,
    pub epochs: u64,
    pub max_tokens: usize,
    /// Validation BLEU beam (1 = greedy).
    pub bleu_beam: usize,
    /// Checkpoint every this many updates besides epoch ends.
    pub save_every: u64,
    /// Figure 3 at initialization: seeds and target tokens of the batch.
    pub init_seeds: u64,
    pub init_tokens: i64,
    /// The depth scan (Theorem 1): seeds and depths.
    pub depth_seeds: u64,
    pub depths: Vec<i64>,
}

impl ScaleSpec {
    pub fn of(scale: Scale) -> ScaleSpec {
        match scale {
            Scale::Quick => ScaleSpec {
                name: "quick",
                width: Some((64, 256, 4)),
                epochs: 8,
                max_tokens: 512,
                bleu_beam: 1,
                save_every: 100,
                init_seeds: 3,
                init_tokens: 1024,
                depth_seeds: 2,
                depths: vec![6, 10, 14],
            },
            Scale::Cpu => ScaleSpec {
                name: "cpu",
                width: Some((128, 512, 4)),
                epochs: 5,
                max_tokens: 4096,
                bleu_beam: 5,
                save_every: 50,
                init_seeds: 5,
                init_tokens: 2048,
                depth_seeds: 3,
                depths: vec![6, 8, 10, 12, 14],
            },
            Scale::Paper => ScaleSpec {
                name: "paper",
                width: None,
                epochs: 15,
                max_tokens: 4096,
                bleu_beam: 5,
                save_every: 500,
                init_seeds: 10,
                init_tokens: 4096,
                depth_seeds: 10,
                depths: vec![6, 8, 10, 12, 14],
            },
        }
    }

    /// `--set` overrides that size a paper-scale config of the grid for this scale: model width,
    /// epochs, batch, validation BLEU beam, checkpoint interval.
    pub fn size_overrides(&self) -> Vec<String> {
        let mut o = Vec::new();
        if let Some((d, ffn, heads)) = self.width {
            o.push(format!("model.d_model={d}"));
            o.push(format!("model.ffn_dim={ffn}"));
            o.push(format!("model.heads={heads}"));
        }
        o.push(format!("train.max_epochs={}", self.epochs));
        o.push(format!("train.max_tokens={}", self.max_tokens));
        o.push(format!("train.valid_bleu_beam={}", self.bleu_beam));
        o.push(format!("train.save_every={}", self.save_every));
        o
    }
}

/// `--set` overrides that scale the schedule of a paper-scale config to a run of `epochs` epochs
/// of `updates_per_epoch` updates: warmup by the ratio of run lengths, decay epochs by their
/// place in the run; diagnostics twice an epoch.
pub fn schedule_overrides(paper: &TrainConfig, updates_per_epoch: u64, epochs: u64) -> Vec<String> {
    let mut o = vec![
        format!("train.diag_every={}", (updates_per_epoch / 2).max(1)),
        format!("schedule.warmup={}", scaled_warmup(paper.schedule.warmup(), updates_per_epoch, epochs)),
    ];
    if let Schedule::StepDecay { epochs: at, .. } = &paper.schedule {
        let scaled: Vec<String> = at.iter().map(|&e| scaled_epoch(e, epochs).to_string()).collect();
        o.push(format!("schedule.epochs=[{}]", scaled.join(", ")));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use preln_train::config::resolve;

    #[test]
    fn cpu_scale_shrinks_the_model_and_scales_the_schedule() {
        let text = include_str!("../../../configs/reproduce/post-adam-1e-3-warmup.toml");
        let paper = resolve("t", text, &[]).unwrap();
        let spec = ScaleSpec::of(Scale::Cpu);
        let both = |paper: &TrainConfig, spec: &ScaleSpec, upe| {
            let mut o = spec.size_overrides();
            o.extend(schedule_overrides(paper, upe, spec.epochs));
            o
        };
        let cfg = resolve("t", text, &both(&paper, &spec, 111)).unwrap();
        assert_eq!((cfg.model.d_model, cfg.model.ffn_dim, cfg.model.encoder_layers), (128, 512, 6));
        assert_eq!(cfg.schedule, Schedule::InverseSqrt { warmup: 135 });
        assert_eq!(cfg.train.lr, 1e-3);
        assert_eq!(cfg.train.max_epochs, 5);

        let text = include_str!("../../../configs/reproduce/pre-adam-5e-4-nowarmup.toml");
        let paper = resolve("t", text, &[]).unwrap();
        let cfg = resolve("t", text, &both(&paper, &spec, 111)).unwrap();
        assert_eq!(cfg.schedule, Schedule::StepDecay { warmup: 0, epochs: vec![3], gamma: 0.1 });

        let paper_scale = ScaleSpec::of(Scale::Paper);
        let cfg = resolve("t", text, &both(&paper, &paper_scale, 1100)).unwrap();
        assert_eq!((cfg.model.d_model, cfg.schedule.clone()), (512, paper.schedule));
    }
}
