//! `preln info`: what this build runs on, and which path each fast operation takes here.

use anyhow::Result;
use preln_model::checkpoint::count;
use preln_model::{NormPlacement, Seq2Seq, Seq2SeqConfig};
use tch::nn::VarStore;
use tch::Device;

pub fn run() -> Result<()> {
    println!("preln {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch threads: {}", tch::get_num_threads());
    println!("CUDA available: {} ({} devices)", tch::Cuda::is_available(), tch::Cuda::device_count());
    for line in preln_ops::caps::report() {
        println!("{line}");
    }
    for name in Seq2SeqConfig::PRESETS {
        for placement in NormPlacement::ALL {
            let Some(cfg) = Seq2SeqConfig::preset(name, placement) else { continue };
            let vs = VarStore::new(Device::Cpu);
            Seq2Seq::new(&vs.root(), &cfg)?;
            println!(
                "preset {name:8} {placement}: {}+{} layers, d {}, FFN {}, {} heads, vocab {}: {} parameters",
                cfg.encoder_layers,
                cfg.decoder_layers,
                cfg.d_model,
                cfg.ffn_dim,
                cfg.heads,
                cfg.vocab_size,
                count(&vs)
            );
        }
    }
    Ok(())
}
