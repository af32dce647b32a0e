//! Times `preln_ops::linear` (oneDNN) against libtorch's `linear` (MKL) for the shapes of the
//! paper's IWSLT14 model: forward, input gradient and weight gradient of one layer.
//! `cargo run --release -p preln-ops --example linear_speed [threads]`

#[path = "common/timing.rs"]
mod timing;

use tch::{Device, Kind, Tensor};

fn main() {
    let threads = std::env::args().nth(1).map_or(2, |s| s.parse().expect("threads"));
    tch::set_num_threads(threads);
    let opts = (Kind::Float, Device::Cpu);
    for (m, k, n) in [(2048, 512, 1536), (2048, 512, 512), (2048, 512, 1024), (2048, 1024, 512), (2048, 512, 10000)] {
        let x = Tensor::randn([m, k], opts).set_requires_grad(true);
        let w = Tensor::randn([n, k], opts).set_requires_grad(true);
        let g = Tensor::randn([m, n], opts);
        let mut row = format!("{m}x{k} @ {k}x{n}:");
        for dnnl in [false, true] {
            preln_ops::set_dnnl_linear(dnnl);
            let fwd = timing::median_time(&|| {
                let _ = tch::no_grad(|| preln_ops::linear(&x, &w, None));
            });
            let both = timing::median_time(&|| {
                let y = preln_ops::linear(&x, &w, None);
                (&y * &g).sum(Kind::Float).backward();
                preln_ops::clear_grad(&x);
                preln_ops::clear_grad(&w);
            });
            let gf = 2.0 * (m * k * n) as f64 / 1e9;
            row += &format!(
                "  {}: fwd {:.0} GFLOP/s, fwd+bwd {:.0} GFLOP/s",
                if dnnl { "oneDNN" } else { "libtorch" },
                gf / fwd,
                3.0 * gf / both
            );
        }
        println!("{row}");
    }
}
