//! Times the oneDNN linear (`preln_ops::dnnl_linear`, both entries: matmul and inner product)
//! against libtorch's `linear` (MKL) for the shapes of the paper's IWSLT14 model: forward, input gradient and weight gradient of one layer.
//! Prints the CPU and the paths first; where libtorch's oneDNN entry refuses the CPU, says so.
//! `cargo run --release -p preln-ops --example linear_speed [threads]`

#[path = "common/timing.rs"]
mod timing;

use preln_ops::DnnlEntry;
use tch::{Device, Kind, Tensor};

fn main() {
    let threads = std::env::args().nth(1).map_or(2, |s| s.parse().expect("threads"));
    tch::set_num_threads(threads);
    println!("{}", preln_ops::caps::summary());
    let opts = (Kind::Float, Device::Cpu);
    for (m, k, n) in [(2048, 512, 1536), (2048, 512, 512), (2048, 512, 1024), (2048, 1024, 512), (2048, 512, 10000)] {
        let x = Tensor::randn([m, k], opts).set_requires_grad(true);
        let w = Tensor::randn([n, k], opts).set_requires_grad(true);
        let g = Tensor::randn([m, n], opts);
        let mut row = format!("{m}x{k} @ {k}x{n}:");
        for entry in [None, Some(DnnlEntry::Matmul), Some(DnnlEntry::InnerProduct)] {
            let name = entry.map_or("libtorch", DnnlEntry::name);
            let linear = |x: &Tensor, w: &Tensor| match entry {
                Some(entry) => preln_ops::dnnl_linear(x, w, None, entry),
                None => Ok(x.linear(w, None::<&Tensor>)),
            };
            if let Err(e) = linear(&x, &w) {
                row += &format!("  {name}: not on this machine ({})", e.0.lines().next().unwrap_or(""));
                continue;
            }
            let fwd = timing::median_time(&|| {
                let _ = tch::no_grad(|| linear(&x, &w));
            });
            let both = timing::median_time(&|| {
                let y = linear(&x, &w).expect("probed above");
                (&y * &g).sum(Kind::Float).backward();
                preln_ops::clear_grad(&x).expect("live tensor");
                preln_ops::clear_grad(&w).expect("live tensor");
            });
            let gf = 2.0 * (m * k * n) as f64 / 1e9;
            row += &format!("  {name}: fwd {:.0} GFLOP/s, fwd+bwd {:.0} GFLOP/s", gf / fwd, 3.0 * gf / both);
        }
        println!("{row}");
    }
}
