//! The training configuration: TOML with `deny_unknown_fields`, named presets shipped in
//! `configs/`, and `--set key=value` overrides applied before validation.

use std::path::Path;

use preln_model::Seq2SeqConfig;
use serde::{Deserialize, Serialize};

pub use crate::device::Precision;

use crate::optim::OptimizerConfig;
use crate::schedule::Schedule;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The model; `vocab_size` and `pad_id` are taken from the data folder.
    pub model: Seq2SeqConfig,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub train: TrainSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Peak learning rate (`lr_max` of the schedule).
    pub lr: f64,
    /// Padded tokens per batch (the larger side), fairseq's `--max-tokens`.
    pub max_tokens: usize,
    /// Batches whose gradients are accumulated into one update.
    pub update_freq: usize,
    pub max_epochs: u64,
    /// Stop after this many updates (0: no limit).
    pub max_updates: u64,
    pub label_smoothing: f64,
    /// Clip the total gradient norm to this value (0: no clipping).
    pub clip_norm: f64,
    /// Seeds initialization, data order and dropout.
    pub seed: u64,
    /// Write a `train` metrics line every this many updates.
    pub log_every: u64,
    /// Write per-layer gradient and hidden-state norms every this many updates (0: never).
    pub diag_every: u64,
    /// Validate (and save) every this many updates too, besides every epoch end (0: epoch ends only).
    pub valid_every: u64,
    /// Save the `last` checkpoint every this many updates, besides every epoch end (0: epoch ends only).
    pub save_every: u64,
    /// Also write TensorBoard event files (`RUN/tb/`) with the numbers of `metrics.jsonl`.
    pub tensorboard: bool,
    /// The data split used for validation.
    pub valid_split: String,
    /// `auto`, `cpu` or `cuda`.
    #[serde(deserialize_with = "train_device")]
    pub device: crate::device::DeviceChoice,
    /// `fp32`, or `bf16`: forward and loss under bfloat16 autocast (matrix products and attention
    /// in bf16; fp32 master weights, optimizer state, loss and LayerNorm statistics).
    pub precision: Precision,
    /// Validation BLEU every epoch with this beam size (0: off; 1: greedy).
    pub valid_bleu_beam: usize,
    /// Length penalty of that search.
    pub valid_bleu_lenpen: f64,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            lr: 5e-4,
            max_tokens: 4096,
            update_freq: 1,
            max_epochs: 20,
            max_updates: 0,
            label_smoothing: 0.1,
            clip_norm: 0.0,
            seed: 1,
            log_every: 10,
            diag_every: 100,
            save_every: 500,
            tensorboard: true,
            valid_every: 0,
            valid_split: "valid".into(),
            valid_bleu_beam: 0,
            valid_bleu_lenpen: 1.2,
            device: crate::device::DeviceChoice::Auto,
            precision: Precision::Fp32,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: Seq2SeqConfig::default(),
            optimizer: OptimizerConfig::default(),
            schedule: Schedule::default(),
            train: TrainSection::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: {message}")]
    Parse { source_name: String, message: String },
    #[error("--set {0}: expected key=value")]
    BadOverride(String),
    #[error("--set {key}: {message}")]
    Override { key: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("unknown preset `{0}` (known: {known})", known = PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", "))]
    UnknownPreset(String),
}

/// Presets shipped in `configs/`, compiled in so the binary finds them from anywhere.
pub const PRESETS: &[(&str, &str)] = &[
    ("iwslt14", include_str!("../../../configs/iwslt14.toml")),
    ("cpu", include_str!("../../../configs/cpu.toml")),
    ("tiny", include_str!("../../../configs/tiny.toml")),
];

/// The TOML text of `name_or_path`: a preset name or a file.
pub fn config_text(name_or_path: &str) -> Result<(String, String), ConfigError> {
    if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name_or_path) {
        return Ok((format!("preset `{name_or_path}`"), text.to_string()));
    }
    let path = Path::new(name_or_path);
    if !path.exists() && !name_or_path.contains(['/', '.']) {
        return Err(ConfigError::UnknownPreset(name_or_path.into()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Parse { source_name: path.display().to_string(), message: e.to_string() })?;
    Ok((path.display().to_string(), text))
}

/// Parses TOML, applies `key=value` overrides (dotted keys, TOML values; bare words are
/// strings), and validates.
pub fn resolve(source_name: &str, text: &str, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
    let cfg: TrainConfig = parse_with_overrides(source_name, text, overrides)?;
    cfg.validate()?;
    Ok(cfg)
}

/// TOML text plus `key=value` overrides, deserialized into any config type (not validated).
pub fn parse_with_overrides<C: serde::de::DeserializeOwned>(
    source_name: &str,
    text: &str,
    overrides: &[String],
) -> Result<C, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse { source_name: source_name.into(), message };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    for o in overrides {
        let (key, raw) = o.split_once('=').ok_or_else(|| ConfigError::BadOverride(o.clone()))?;
        let key = key.trim();
        let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => t.remove("v").expect("parsed key"),
            Err(_) => toml::Value::String(raw.trim().to_string()),
        };
        set_path(&mut table, key, value).map_err(|message| ConfigError::Override { key: key.into(), message })?;
    }
    toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| parse_err(e.message().to_string()))
}

/// `train.device`, with an error that names the key.
fn train_device<'de, D: serde::Deserializer<'de>>(d: D) -> Result<crate::device::DeviceChoice, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| serde::de::Error::custom(format!("train.device must be auto, cpu or cuda, got `{s}`")))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty()).ok_or("empty key")?;
    let mut t = table;
    for p in parts {
        let entry = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.validate().map_err(|e| ConfigError::Invalid(format!("model: {e}")))?;
        self.optimizer.validate().map_err(ConfigError::Invalid)?;
        self.schedule.validate().map_err(ConfigError::Invalid)?;
        self.train.validate()
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

impl TrainSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let inv = ConfigError::Invalid;
        let t = self;
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(inv(format!("train.lr must be > 0, got {}", t.lr)));
        }
        if t.max_tokens < 2 || t.update_freq < 1 || t.max_epochs < 1 || t.log_every < 1 {
            return Err(inv("train.max_tokens >= 2, train.update_freq >= 1, train.max_epochs >= 1 and train.log_every >= 1 are required".into()));
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return Err(inv(format!("train.label_smoothing must lie in [0, 1), got {}", t.label_smoothing)));
        }
        if !(t.clip_norm >= 0.0) {
            return Err(inv(format!("train.clip_norm must be >= 0, got {}", t.clip_norm)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use preln_model::NormPlacement;

    #[test]
    fn presets_parse_and_validate() {
        for (name, text) in PRESETS {
            resolve(name, text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let paper = resolve("iwslt14", PRESETS[0].1, &[]).unwrap();
        assert_eq!((paper.model.d_model, paper.model.ffn_dim, paper.model.heads), (512, 1024, 4));
        assert_eq!(paper.schedule, Schedule::InverseSqrt { warmup: 4000 });
    }

    #[test]
    fn unknown_key_is_named() {
        let e = resolve("x.toml", "[train]\nlr = 1e-3\nmax_tokenz = 5\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("x.toml") && e.contains("max_tokenz"), "{e}");
        let e = resolve("x.toml", "[modle]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("modle"), "{e}");
        let e = resolve("x.toml", "", &["train.lrr=1".into()]).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
    }

    #[test]
    fn overrides_apply_with_types() {
        let cfg = resolve(
            "t",
            "",
            &[
                "model.placement=post".into(),
                "train.lr=1e-3".into(),
                "schedule={kind=\"step_decay\", epochs=[8]}".into(),
                "optimizer={kind=\"sgd\", momentum=0.9}".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.model.placement, NormPlacement::Post);
        assert_eq!(cfg.train.lr, 1e-3);
        assert_eq!(cfg.schedule, Schedule::StepDecay { warmup: 0, epochs: vec![8], gamma: 0.1 });
        assert_eq!(cfg.optimizer, OptimizerConfig::Sgd { momentum: 0.9, weight_decay: 0.0 });
        assert!(matches!(resolve("t", "", &["nonsense".into()]), Err(ConfigError::BadOverride(_))));
    }

    #[test]
    fn invalid_values_are_explained() {
        let e = resolve("t", "", &["train.label_smoothing=1.5".into()]).unwrap_err().to_string();
        assert!(e.contains("label_smoothing"), "{e}");
        let e = resolve("t", "", &["model.heads=3".into()]).unwrap_err().to_string();
        assert!(e.contains("heads"), "{e}");
        assert!(config_text("nosuchpreset").unwrap_err().to_string().contains("unknown preset"));
    }

    #[test]
    fn resolved_config_round_trips() {
        let cfg = resolve("cpu", PRESETS[1].1, &[]).unwrap();
        assert_eq!(resolve("again", &cfg.to_toml(), &[]).unwrap(), cfg);
    }
}
