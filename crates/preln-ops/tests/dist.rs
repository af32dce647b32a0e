//! c10d through the shim: Gloo groups of our ranks, and of our rank with a Python
//! `torch.distributed` rank (tools/dist_rank.py), all-reduce and broadcast alike; which proves
//! that we speak c10d's own rendezvous and wire protocol.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use preln_ops::dist::{ProcessGroup, Rendezvous};
use tch::{Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rendezvous(port: u16, rank: usize, world: usize) -> Rendezvous {
    Rendezvous {
        addr: "127.0.0.1".into(),
        port,
        rank,
        local_rank: rank,
        world,
        server: rank == 0,
        timeout: Duration::from_secs(60),
        host: "127.0.0.1".into(),
    }
}

/// `rank + 1 + arange(n) / 8`, what each rank contributes to the sum.
fn contribution(rank: usize, n: i64) -> Tensor {
    Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) / 8.0 + (rank + 1) as f64
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t).unwrap()
}

#[test]
fn this_build_has_the_gloo_backend() {
    assert!(
        preln_ops::dist::available(),
        "built without Gloo's headers (Debian: apt-get install libgloo-dev, then rebuild); the tests below need them"
    );
}

#[test]
fn two_of_our_ranks_all_reduce_broadcast_and_share_notes_in_the_store() {
    let port = free_port();
    let n = 1000;
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let g = ProcessGroup::join(&rendezvous(port, rank, 2)).expect("joins");
                assert_eq!((g.rank(), g.world()), (rank, 2));
                let t = contribution(rank, n);
                g.all_reduce_sum(&t).unwrap();
                let b = if rank == 1 { Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) } else { t.zeros_like() };
                g.broadcast(&b, 1).unwrap();
                g.store_set(&format!("note/{rank}"), &format!("rank {rank} was here")).unwrap();
                g.all_reduce_sum(&Tensor::zeros([1], (Kind::Float, tch::Device::Cpu))).unwrap();
                let other = 1 - rank;
                assert_eq!(g.store_get(&format!("note/{other}")).unwrap(), Some(format!("rank {other} was here")));
                assert_eq!(g.store_get("note/absent").unwrap(), None);
                (values(&t), values(&b))
            })
        })
        .collect();
    let expected: Vec<f32> = values(&(contribution(0, n) + contribution(1, n)));
    for r in ranks {
        let (sum, bcast) = r.join().unwrap();
        assert_eq!(sum, expected);
        assert_eq!(bcast, (0..n).map(|i| i as f32).collect::<Vec<_>>());
    }
}

#[test]
fn a_python_torch_distributed_rank_joins_our_group() {
    let venv = option_env!("PRELN_TORCH_VENV").expect("built by scripts/setup.sh, which sets PRELN_TORCH_VENV");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/dist_rank.py");
    let (port, n) = (free_port(), 37);
    let python = Command::new(format!("{venv}/bin/python"))
        .arg(script)
        .arg(n.to_string())
        .envs([("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")])
        .env("MASTER_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the project's Python environment");
    let g = ProcessGroup::join(&rendezvous(port, 0, 2)).expect("our rank joins");
    let t = contribution(0, n);
    g.all_reduce_sum(&t).unwrap();
    let b = Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 3.0;
    g.broadcast(&b, 0).unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "tools/dist_rank.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs_sum: Vec<f32> = serde_json::from_value(theirs["all_reduce"].clone()).unwrap();
    let theirs_b: Vec<f32> = serde_json::from_value(theirs["broadcast"].clone()).unwrap();
    let expected = values(&(contribution(0, n) + contribution(1, n)));
    assert_eq!(values(&t), expected, "our rank's sum");
    assert_eq!(theirs_sum, expected, "the Python rank's sum");
    assert_eq!(theirs_b, values(&b), "the Python rank received our broadcast");
}

#[test]
fn a_missing_rank_ends_the_rendezvous_with_an_error() {
    let mut r = rendezvous(free_port(), 0, 2);
    r.timeout = Duration::from_secs(2);
    let t0 = std::time::Instant::now();
    let err = ProcessGroup::join(&r).err().expect("no second rank: an error, not a hang");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(err.0.contains("1/2"), "the message should say how many ranks came: {}", err.0);
}
