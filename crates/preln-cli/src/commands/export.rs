//! `preln export ctranslate2`: a trained translation run -> a CTranslate2 model directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use preln_model::ctranslate2::{Ct2Model, Quantization};
use preln_train::translation::TrainedModel;
use tch::Device;

use crate::cli::ExportCt2Args;

/// The files of the directory besides CTranslate2's own: the run's tokenizer, and where the
/// model came from.
const TOKENIZER: &str = "tokenizer.json";
const PROVENANCE: &str = "preln_export.json";

pub fn ctranslate2(args: ExportCt2Args) -> Result<()> {
    let run = TrainedModel::load(&args.run.checkpoint, &args.run.which, Device::Cpu)?;
    let quant: Quantization = args.quantization.into();
    let model = write_ct2(&run, &args.run.checkpoint, quant, args.max_positions, &args.out)?;
    let cfg = run.model.config();
    let bytes = std::fs::metadata(args.out.join("model.bin"))?.len();
    eprintln!(
        "wrote {}: {} {}+{} layers (pre_norm = {}), {} variables and {} aliases, model.bin {:.1} MB, {}",
        args.out.display(),
        cfg.placement.title(),
        cfg.encoder_layers,
        cfg.decoder_layers,
        cfg.placement == preln_model::NormPlacement::Pre,
        model.variables.len(),
        model.aliases.len(),
        bytes as f64 / 1e6,
        quant.name()
    );
    Ok(())
}

/// Writes `run` as a CTranslate2 model directory `out`, which must not exist: all of it appears
/// at once (written beside it, then renamed), or nothing does.
pub fn write_ct2(
    run: &TrainedModel,
    run_dir: &Path,
    quant: Quantization,
    max_positions: i64,
    out: &Path,
) -> Result<Ct2Model> {
    if out.exists() {
        bail!("{}: already exists; give a new directory to --out", out.display());
    }
    let cfg = run.model.config();
    if run.bpe.vocab_size() as i64 != cfg.vocab_size {
        bail!(
            "{}: the run's tokenizer has {} tokens but its model {} (`model.vocab_size`)",
            run.checkpoint.display(),
            run.bpe.vocab_size(),
            cfg.vocab_size
        );
    }
    let ids: Vec<u32> = (0..cfg.vocab_size as u32).collect();
    let vocab = run.bpe.pieces(&ids);
    let model = Ct2Model::from_seq2seq(cfg, &run.variables(), &vocab, quant, max_positions)
        .with_context(|| format!("{}", run.checkpoint.display()))?;
    let tmp = sibling_tmp(out);
    let written = write_dir(&tmp, &model, &vocab, run, run_dir, quant, max_positions).and_then(|()| {
        std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written.map(|()| model)
}

fn sibling_tmp(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    out.with_file_name(name)
}

fn write_dir(
    dir: &Path,
    model: &Ct2Model,
    vocab: &[String],
    run: &TrainedModel,
    run_dir: &Path,
    quant: Quantization,
    max_positions: i64,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let put = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    put("model.bin", &model.model_bin())?;
    put("config.json", (serde_json::to_string_pretty(&model.config)? + "\n").as_bytes())?;
    put("shared_vocabulary.json", (serde_json::to_string_pretty(vocab)? + "\n").as_bytes())?;
    run.bpe.save(&dir.join(TOKENIZER)).with_context(|| format!("writing {}", dir.join(TOKENIZER).display()))?;
    let provenance = serde_json::json!({
        "run": run_dir,
        "checkpoint": run.checkpoint,
        "placement": run.model.config().placement.name(),
        "quantization": quant.name(),
        "max_positions": max_positions,
        "preln": env!("CARGO_PKG_VERSION"),
    });
    put(PROVENANCE, (serde_json::to_string_pretty(&provenance)? + "\n").as_bytes())
}
