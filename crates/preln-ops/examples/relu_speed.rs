//! Times `preln_ops::relu` against libtorch's ReLU, forward and backward, on the FFN activations
//! of the benchmark batch ([2048, 1024]).
//! `cargo run --release -p preln-ops --example relu_speed [threads]`

#[path = "common/timing.rs"]
mod timing;

use tch::{Device, Kind, Tensor};

fn main() {
    let threads = std::env::args().nth(1).map_or(2, |s| s.parse().expect("threads"));
    tch::set_num_threads(threads);
    preln_ops::keep_freed_memory();
    for kind in [Kind::Float, Kind::BFloat16] {
        let x = Tensor::randn([2048, 1024], (kind, Device::Cpu)).set_requires_grad(true);
        let g = Tensor::randn([2048, 1024], (kind, Device::Cpu));
        let time = |f: &dyn Fn(&Tensor) -> Tensor| {
            timing::median_time(&|| {
                (f(&x) * &g).sum(Kind::Float).backward();
                preln_ops::clear_grad(&x);
            })
        };
        let ours = time(&|x| preln_ops::relu(x));
        let theirs = time(&|x| x.relu());
        println!(
            "{kind:?}: preln {:.2} ms, libtorch {:.2} ms (forward + backward, with a product and sum around it)",
            ours * 1e3,
            theirs * 1e3
        );
        let xd = x.detach();
        let f1 = timing::median_time(&|| {
            let _ = tch::no_grad(|| preln_ops::relu(&xd));
        });
        let f2 = timing::median_time(&|| {
            let _ = xd.relu();
        });
        println!("  forward only: preln {:.2} ms, libtorch {:.2} ms", f1 * 1e3, f2 * 1e3);
    }
}
