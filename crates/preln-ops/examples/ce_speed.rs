//! Times the fused label-smoothed cross-entropy (`preln_ops::smoothed_ce`) against libtorch's
//! log_softmax / gather / sum formula on the IWSLT14 benchmark's logits [2048, 10000].
//! `cargo run --release -p preln-ops --example ce_speed [threads]`

#[path = "common/timing.rs"]
mod timing;

use tch::{Device, Kind, Tensor};

fn main() {
    let threads = std::env::args().nth(1).map_or(2, |s| s.parse().expect("threads"));
    tch::set_num_threads(threads);
    // As the CLI does: step buffers stay mapped, so timings leave out page faults.
    preln_ops::keep_freed_memory();
    let target = Tensor::randint(10000, [2048], (Kind::Int64, Device::Cpu));
    for kind in [Kind::Float, Kind::BFloat16] {
        let x = Tensor::randn([2048, 10000], (Kind::Float, Device::Cpu)).to_kind(kind).set_requires_grad(true);
        let fused = timing::median_time(&|| {
            let (loss, _) = preln_ops::smoothed_ce(&x, &target, 0.1, 1).unwrap();
            loss.backward();
            preln_ops::clear_grad(&x).expect("live tensor");
        });
        let fwd = timing::median_time(&|| {
            let _ = tch::no_grad(|| preln_ops::smoothed_ce(&x, &target, 0.1, 1).unwrap());
        });
        let reference = timing::median_time(&|| {
            let lp = x.log_softmax(-1, Kind::Float);
            let nll = -lp.gather(1, &target.unsqueeze(1), false).sum(Kind::Float);
            let smooth = -lp.sum(Kind::Float);
            (nll * 0.9 + smooth * (0.1 / 9999.0)).backward();
            preln_ops::clear_grad(&x).expect("live tensor");
        });
        println!(
            "{kind:?}: fused fwd {:.1} ms, fwd+bwd {:.1} ms; libtorch ops fwd+bwd {:.1} ms",
            fwd * 1e3,
            fused * 1e3,
            reference * 1e3
        );
    }
}
