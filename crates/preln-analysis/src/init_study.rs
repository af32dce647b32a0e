//! `analyze init`: Figure 3 (per-layer FFN gradient norms) and Lemma 2 (hidden-state norms)
//! at initialization, for each placement, over several seeds.

use preln_data::Batch;
use preln_model::{NormPlacement, Result, Seq2SeqConfig};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::probe::{probe, Probe};
use crate::stats::Stat;

/// What to measure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitStudy {
    /// The model; its `placement` is replaced by each of `placements`.
    pub model: Seq2SeqConfig,
    pub placements: Vec<NormPlacement>,
    pub seeds: Vec<u64>,
    pub label_smoothing: f64,
    /// Where the batches came from, for the report.
    pub data: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitReport {
    pub study: InitStudy,
    pub target_tokens: i64,
    pub results: Vec<PlacementInit>,
}

/// One placement, aggregated over seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlacementInit {
    pub placement: NormPlacement,
    pub loss: Stat,
    /// Every parameter's gradient norm.
    pub params: Vec<ParamStat>,
    /// FFN W1 (`fc1.weight`) and W2 (`fc2.weight`) gradient norms per layer (Figure 3a/b).
    pub encoder_ffn: Vec<FfnLayer>,
    pub decoder_ffn: Vec<FfnLayer>,
    /// W2 gradient norm of the last layer over that of the first (mean over seeds); `None`
    /// where the first is zero (ReZero at initialization: every branch gradient is 0).
    pub encoder_w2_last_over_first: Option<f64>,
    pub decoder_w2_last_over_first: Option<f64>,
    pub encoder_hidden: HiddenReport,
    pub decoder_hidden: HiddenReport,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParamStat {
    pub path: String,
    pub grad_norm: Stat,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FfnLayer {
    /// 1-based layer number.
    pub layer: usize,
    pub w1: Stat,
    pub w2: Stat,
}

/// `E ||x||^2 / d` per layer next to the bounds of Lemma 2.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HiddenReport {
    /// The embedded input `x_1`.
    pub input: Stat,
    pub layers: Vec<HiddenLayer>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HiddenLayer {
    /// 1-based: the value after `layer` layers.
    pub layer: usize,
    pub sq_norm_over_d: Stat,
    /// Lemma 2 for this placement: Post-LN 3/2 (both bounds); Pre-LN `1 + l/2` and `1 + 3l/2`,
    /// which assume `E ||x_1||^2 = d`.
    pub lemma2_lower: Option<f64>,
    pub lemma2_upper: Option<f64>,
}

/// Lemma 2's bounds on `E ||x||^2 / d` after `l` layers.
/// The lemma is proved for Post-LN and Pre-LN; the other placements have no such bound.
pub fn lemma2_bounds(placement: NormPlacement, l: usize) -> Option<(f64, f64)> {
    match placement {
        NormPlacement::Post => Some((1.5, 1.5)),
        NormPlacement::Pre => Some((1.0 + l as f64 / 2.0, 1.0 + 1.5 * l as f64)),
        NormPlacement::Sandwich
        | NormPlacement::Peri
        | NormPlacement::DeepNorm
        | NormPlacement::Admin
        | NormPlacement::ReZero
        | NormPlacement::B2t
        | NormPlacement::Mix => None,
    }
}

fn stat_of(probes: &[Probe], f: impl Fn(&Probe) -> f64) -> Stat {
    Stat::of(&probes.iter().map(f).collect::<Vec<_>>())
}

fn norm_of(p: &Probe, path: &str) -> f64 {
    p.grad_norms.iter().find(|(n, _)| n == path).map(|(_, v)| *v).unwrap_or_else(|| panic!("no parameter {path}"))
}

fn ffn_layers(probes: &[Probe], stack: &str, layers: i64) -> Vec<FfnLayer> {
    (0..layers as usize)
        .map(|i| FfnLayer {
            layer: i + 1,
            w1: stat_of(probes, |p| norm_of(p, &format!("{stack}.layers.{i}.ffn.fc1.weight"))),
            w2: stat_of(probes, |p| norm_of(p, &format!("{stack}.layers.{i}.ffn.fc2.weight"))),
        })
        .collect()
}

fn hidden(
    probes: &[Probe],
    placement: NormPlacement,
    pick: impl Fn(&Probe) -> &crate::probe::HiddenNorms,
) -> HiddenReport {
    let layers = pick(&probes[0]).layers.len();
    HiddenReport {
        input: stat_of(probes, |p| pick(p).input),
        layers: (0..layers)
            .map(|i| {
                let bounds = lemma2_bounds(placement, i + 1);
                let (lemma2_lower, lemma2_upper) = (bounds.map(|b| b.0), bounds.map(|b| b.1));
                HiddenLayer {
                    layer: i + 1,
                    sq_norm_over_d: stat_of(probes, |p| pick(p).layers[i]),
                    lemma2_lower,
                    lemma2_upper,
                }
            })
            .collect(),
    }
}

fn last_over_first(layers: &[FfnLayer]) -> Option<f64> {
    let (first, last) = (layers.first()?.w2.mean, layers.last()?.w2.mean);
    (first > 0.0).then(|| last / first)
}

/// A last/first ratio for people: two decimals, or why there is none.
pub fn ratio_text(r: Option<f64>) -> String {
    r.map_or_else(|| "none (the first layer's gradient is 0)".into(), |r| format!("{r:.2}"))
}

/// Aggregates the probes of one placement.
pub fn summarize(cfg: &Seq2SeqConfig, placement: NormPlacement, probes: &[Probe]) -> PlacementInit {
    let params = probes[0]
        .grad_norms
        .iter()
        .enumerate()
        .map(|(i, (path, _))| ParamStat { path: path.clone(), grad_norm: stat_of(probes, |p| p.grad_norms[i].1) })
        .collect();
    let encoder_ffn = ffn_layers(probes, "encoder", cfg.encoder_layers);
    let decoder_ffn = ffn_layers(probes, "decoder", cfg.decoder_layers);
    PlacementInit {
        placement,
        loss: stat_of(probes, |p| p.loss),
        params,
        encoder_w2_last_over_first: last_over_first(&encoder_ffn),
        decoder_w2_last_over_first: last_over_first(&decoder_ffn),
        encoder_ffn,
        decoder_ffn,
        encoder_hidden: hidden(probes, placement, |p| &p.encoder),
        decoder_hidden: hidden(probes, placement, |p| &p.decoder),
    }
}

/// Runs every placement and seed; `progress` hears one line per probe.
pub fn run(study: &InitStudy, batches: &[Batch], device: Device, mut progress: impl FnMut(&str)) -> Result<InitReport> {
    let mut results = Vec::new();
    for &placement in &study.placements {
        let cfg = Seq2SeqConfig { placement, ..study.model.clone() };
        let mut probes = Vec::new();
        for (k, &seed) in study.seeds.iter().enumerate() {
            let t = std::time::Instant::now();
            let p = probe(&cfg, batches, seed, study.label_smoothing, device)?;
            progress(&format!(
                "{placement} seed {seed} ({}/{}): loss {:.3}, {:.1} s",
                k + 1,
                study.seeds.len(),
                p.loss,
                t.elapsed().as_secs_f64()
            ));
            probes.push(p);
        }
        results.push(summarize(&cfg, placement, &probes));
    }
    Ok(InitReport { study: study.clone(), target_tokens: batches.iter().map(|b| b.target_tokens).sum(), results })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lemma2_bounds_grow_linearly_for_pre_ln() {
        assert_eq!(lemma2_bounds(NormPlacement::Pre, 2), Some((2.0, 4.0)));
        assert_eq!(lemma2_bounds(NormPlacement::Pre, 6), Some((4.0, 10.0)));
        assert_eq!(lemma2_bounds(NormPlacement::Post, 6), Some((1.5, 1.5)));
        assert_eq!(lemma2_bounds(NormPlacement::Sandwich, 6), None);
    }
}
