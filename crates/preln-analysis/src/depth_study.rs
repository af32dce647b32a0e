//! `analyze depth`: the gradient norm of the last FFN's W2 against depth (Theorem 1), with a
//! log-log least-squares slope per placement: near 0 for Post-LN, near -1/2 for Pre-LN.

use preln_data::Batch;
use preln_model::{NormPlacement, Result, Seq2SeqConfig};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::probe::probe;
use crate::stats::{LineFit, Stat};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DepthStudy {
    /// The model; placement and layer counts are replaced by the scan's.
    pub model: Seq2SeqConfig,
    pub placements: Vec<NormPlacement>,
    /// Encoder and decoder depth (equal), e.g. 6, 8, 10, 12, 14.
    pub depths: Vec<i64>,
    pub seeds: Vec<u64>,
    pub label_smoothing: f64,
    pub data: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DepthReport {
    pub study: DepthStudy,
    pub target_tokens: i64,
    pub rows: Vec<DepthRow>,
    pub fits: Vec<DepthFit>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DepthRow {
    pub placement: NormPlacement,
    pub layers: i64,
    /// `||dL/dW2||_F` of the last encoder layer's FFN, over seeds.
    pub encoder_last_w2: Stat,
    pub decoder_last_w2: Stat,
    /// Per-seed values, in seed order: (encoder, decoder).
    pub samples: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DepthFit {
    pub placement: NormPlacement,
    /// `encoder` or `decoder`.
    pub stack: String,
    /// Least squares of ln(norm) on ln(L) over every seed's point.
    pub fit: LineFit,
    /// What Theorem 1 predicts for the slope.
    /// `None` where Theorem 1 says nothing (placements other than Post-LN and Pre-LN).
    pub predicted_slope: Option<f64>,
}

pub fn predicted_slope(placement: NormPlacement) -> Option<f64> {
    match placement {
        NormPlacement::Post => Some(0.0),
        NormPlacement::Pre => Some(-0.5),
        NormPlacement::Sandwich
        | NormPlacement::Peri
        | NormPlacement::DeepNorm
        | NormPlacement::Admin
        | NormPlacement::ReZero
        | NormPlacement::B2t
        | NormPlacement::Mix => None,
    }
}

pub fn run(
    study: &DepthStudy,
    batches: &[Batch],
    device: Device,
    mut progress: impl FnMut(&str),
) -> Result<DepthReport> {
    let mut rows = Vec::new();
    for &placement in &study.placements {
        for &layers in &study.depths {
            let cfg =
                Seq2SeqConfig { placement, encoder_layers: layers, decoder_layers: layers, ..study.model.clone() };
            let last = layers - 1;
            let mut samples = Vec::new();
            for &seed in &study.seeds {
                let t = std::time::Instant::now();
                let p = probe(&cfg, batches, seed, study.label_smoothing, device)?;
                let get =
                    |path: String| p.grad_norms.iter().find(|(n, _)| *n == path).map(|(_, v)| *v).expect("W2 exists");
                let pair = (
                    get(format!("encoder.layers.{last}.ffn.fc2.weight")),
                    get(format!("decoder.layers.{last}.ffn.fc2.weight")),
                );
                progress(&format!(
                    "{placement} {layers}-{layers} seed {seed}: last W2 grad norm encoder {:.4}, decoder {:.4}, {:.1} s",
                    pair.0,
                    pair.1,
                    t.elapsed().as_secs_f64()
                ));
                samples.push(pair);
            }
            rows.push(DepthRow {
                placement,
                layers,
                encoder_last_w2: Stat::of(&samples.iter().map(|s| s.0).collect::<Vec<_>>()),
                decoder_last_w2: Stat::of(&samples.iter().map(|s| s.1).collect::<Vec<_>>()),
                samples,
            });
        }
    }
    let fits = fit_rows(&study.placements, &rows);
    Ok(DepthReport { study: study.clone(), target_tokens: batches.iter().map(|b| b.target_tokens).sum(), rows, fits })
}

/// One log-log fit per placement and stack, over every seed's point.
pub fn fit_rows(placements: &[NormPlacement], rows: &[DepthRow]) -> Vec<DepthFit> {
    let mut fits = Vec::new();
    for &placement in placements {
        for (stack, pick) in [("encoder", 0usize), ("decoder", 1)] {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.placement == placement)
                .flat_map(|r| r.samples.iter().map(move |s| (r.layers as f64, if pick == 0 { s.0 } else { s.1 })))
                .collect();
            if let Some(fit) = LineFit::fit_log_log(&points) {
                fits.push(DepthFit {
                    placement,
                    stack: stack.into(),
                    fit,
                    predicted_slope: predicted_slope(placement),
                });
            }
        }
    }
    fits
}
