//! The data-parallel collectives of the trainer, by two ranks (threads) on 127.0.0.1: gradients
//! summed with undefined ones handled as one process would, rank 0's tensors broadcast, ranks
//! that differ found and named.

use std::time::Duration;

use preln_ops::dist::Rendezvous;
use preln_train::dist::DataParallel;
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `body(rank's group)` on two ranks (threads) of one group; returns what each returned.
fn two_ranks<R: Send + 'static>(body: fn(DataParallel) -> R) -> Vec<R> {
    let port = free_port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let r = Rendezvous {
                    addr: "127.0.0.1".into(),
                    port,
                    rank,
                    local_rank: rank,
                    world: 2,
                    server: rank == 0,
                    timeout: Duration::from_secs(60),
                    host: "127.0.0.1".into(),
                };
                body(DataParallel::join(&r, Device::Cpu, None).expect("joins"))
            })
        })
        .collect();
    ranks.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

fn param(values: &[f32]) -> Tensor {
    Tensor::from_slice(values).set_requires_grad(true)
}

/// Gives `p` the gradient `g` through backward, as training does.
fn backward(p: &Tensor, g: &[f32]) {
    (p * Tensor::from_slice(g)).sum(Kind::Float).backward();
}

fn grad(p: &Tensor) -> Option<Vec<f32>> {
    let g = p.grad();
    g.defined().then(|| Vec::<f32>::try_from(&g).unwrap())
}

#[test]
fn gradients_are_summed_and_one_no_rank_has_stays_undefined() {
    let got = two_ranks(|g| {
        let (a, b, c) = (param(&[1.0, 2.0]), param(&[0.0; 3]), param(&[5.0]));
        let rank = g.rank() as f32;
        backward(&a, &[1.0 + rank, 10.0 * (1.0 + rank)]);
        // b: only rank 1 computed batches that reach it; c: no rank did.
        if g.rank() == 1 {
            backward(&b, &[1.0, 2.0, 3.0]);
        }
        let params: Vec<(String, Tensor)> =
            [("a", &a), ("b", &b), ("c", &c)].into_iter().map(|(n, t)| (n.to_string(), t.shallow_clone())).collect();
        let extra = g.reduce_gradients(&params, &[0.5 + rank, 7.0], "the test's all-reduce").unwrap();
        (grad(&a), grad(&b), grad(&c), extra)
    });
    for (a, b, c, extra) in got {
        assert_eq!(a, Some(vec![3.0, 30.0]));
        assert_eq!(b, Some(vec![1.0, 2.0, 3.0]), "a gradient only rank 1 has becomes defined on rank 0");
        assert_eq!(c, None, "no rank had a gradient for c: the optimizer must skip it, as in one process");
        assert_eq!(extra, vec![2.0, 14.0]);
    }
}

#[test]
fn rank_zeros_tensors_are_broadcast_and_ranks_that_differ_are_named() {
    let got = two_ranks(|g| {
        let rank = g.rank() as f64;
        let ts = [
            Tensor::ones([4], (Kind::Float, Device::Cpu)) * (rank + 1.0),
            Tensor::zeros([2, 3], (Kind::Double, Device::Cpu)) + rank,
        ];
        g.broadcast_tensors(&ts, "the test's broadcast").unwrap();
        let same = g.check_same(b"the same config", "the check of the config");
        let differ = g.check_same(if g.rank() == 0 { b"lr 1e-3" } else { b"lr 2e-3" }, "the check of the config");
        (Vec::<f32>::try_from(&ts[0]).unwrap(), Vec::<f64>::try_from(ts[1].reshape([-1])).unwrap(), same, differ)
    });
    for (a, b, same, differ) in got {
        assert_eq!(a, vec![1.0; 4]);
        assert_eq!(b, vec![0.0; 6]);
        assert!(same.is_ok());
        let e = differ.unwrap_err().to_string();
        assert!(e.contains("the check of the config: rank(s) 1 differ from rank 0"), "{e}");
    }
}
