//! Data-parallel `preln train` on 127.0.0.1 (c10d, Gloo): two ranks, started by `--nproc 2` or
//! by torchrun (one agent, or two as two machines would), train exactly as one process with twice the update_freq; a rank killed or hung
//! ends the group with an error that names it, and the group resumes exactly; ranks that
//! disagree on the config are refused before training; BERT pre-training and the training
//! benchmark take the same launcher.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, tiny_data, tiny_mlm_data, tiny_train_args};
use preln_train::metrics::{Metrics, Record};
use tch::Tensor;

/// Relative difference allowed between the two ways of training (fp32 rounding; the runs
/// measured here were bit-identical).
const TOL: f64 = 1e-6;

fn preln_cmd(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_preln"));
    cmd.args(args).arg("--threads").arg("1");
    cmd
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().expect("preln runs");
    assert_ok(&out, what);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The records of a run without what depends on timing, as JSON values.
fn records(run: &Path) -> Vec<serde_json::Value> {
    Metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r: &Record| {
            let mut v = serde_json::to_value(r).unwrap();
            for k in ["tokens_per_s", "allreduce_ms", "wall_s"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

/// The largest relative difference between two JSON values of the same shape; panics where
/// their shapes or non-numbers differ.
fn max_rel_diff(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> f64 {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() / x.abs().max(1.0)
        }
        (V::Array(x), V::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).map(|(x, y)| max_rel_diff(x, y, at)).fold(0.0, f64::max)
        }
        (V::Object(x), V::Object(y)) if x.len() == y.len() => {
            x.iter().map(|(k, v)| max_rel_diff(v, &y[k], &format!("{at}.{k}"))).fold(0.0, f64::max)
        }
        _ => {
            assert_eq!(a, b, "at {at}");
            0.0
        }
    }
}

/// Asserts that two runs logged the same records (to [`TOL`]); returns the largest difference.
fn same_records(a: &Path, b: &Path) -> f64 {
    let (ra, rb) = (records(a), records(b));
    assert_eq!(ra.len(), rb.len(), "{} vs {}: different numbers of records", a.display(), b.display());
    assert!(ra.iter().any(|r| r["kind"] == "diag"), "the runs should log diag records (hidden-state norms)");
    let worst = ra
        .iter()
        .zip(&rb)
        .enumerate()
        .map(|(i, (x, y))| max_rel_diff(x, y, &format!("record {i}")))
        .fold(0.0, f64::max);
    assert!(worst <= TOL, "{} vs {}: records differ by {worst:e} (relative)", a.display(), b.display());
    worst
}

/// The largest absolute difference between the tensors of two checkpoints (model and optimizer).
fn checkpoint_diff(a: &Path, b: &Path) -> f64 {
    let read = |p: &Path| Tensor::read_safetensors(p.join("checkpoints/last.safetensors")).unwrap();
    let (ta, tb) = (read(a), read(b));
    assert_eq!(ta.len(), tb.len());
    let tb: std::collections::HashMap<_, _> = tb.into_iter().collect();
    ta.iter().map(|(k, t)| (t - &tb[k]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

fn torchrun() -> PathBuf {
    let venv = option_env!("PRELN_TORCH_VENV").expect("built by scripts/setup.sh, which sets PRELN_TORCH_VENV");
    PathBuf::from(venv).join("bin/torchrun")
}

#[test]
fn two_ranks_train_exactly_as_one_process_with_twice_the_update_freq() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 60);
    let args = |out: &str, f: &str| {
        let sets = [format!("train.update_freq={f}"), "train.diag_every=1".into()];
        tiny_train_args(&data, &tmp.path().join(out), &sets.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // 9 batches an epoch, so the last update of each epoch has one batch: rank 1 computes
    // nothing there and contributes zeros (its gradients undefined).
    run(preln_cmd(&args("one-f2", "2")), "one process, update_freq 2");
    run(preln_cmd(&args("one-f4", "4")), "one process, update_freq 4");
    let mut tr = Command::new(torchrun());
    tr.args(["--nproc-per-node", "2", "--no-python", env!("CARGO_BIN_EXE_preln")]).args(args("torchrun-f1", "1"));
    tr.args(["--threads", "1"]).env("OMP_NUM_THREADS", "1");
    run(tr, "torchrun --nproc-per-node 2, update_freq 1");
    // Two "machines": two torchrun agents on 127.0.0.1 (static rendezvous, node 0's agent
    // hosts the store), one rank each, both with LOCAL_RANK 0.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let nodes: Vec<Child> = (0..2)
        .map(|node| {
            let mut tr = Command::new(torchrun());
            tr.args(["--nnodes", "2", "--node-rank", &node.to_string(), "--nproc-per-node", "1"]);
            tr.args(["--master-addr", "127.0.0.1", "--master-port", &port, "--no-python", env!("CARGO_BIN_EXE_preln")]);
            tr.args(args("two-nodes-f1", "1")).args(["--threads", "1"]).stderr(Stdio::piped());
            tr.spawn().expect("torchrun runs")
        })
        .collect();
    for (node, child) in nodes.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "node {node}:\n{}", stderr(&out));
    }
    let mut nproc = preln_cmd(&args("nproc-f2", "2"));
    nproc.args(["--nproc", "2"]);
    let err = stderr(&run(nproc, "--nproc 2, update_freq 2"));
    assert!(err.contains("all 2 ranks hold identical parameters after update 6"), "{err}");

    // Two ranks of one batch each sum the same two gradients as one process of two: the same
    // numbers to the bit (tolerance 1e-6).
    let one = tmp.path().join("one-f2");
    for dp in ["torchrun-f1", "two-nodes-f1"] {
        let dp = tmp.path().join(dp);
        let (worst, params) = (same_records(&one, &dp), checkpoint_diff(&one, &dp));
        eprintln!(
            "{}, 2 ranks x 1 batch vs 1 process x 2: records differ by {worst:e}, tensors by {params:e}",
            dp.display()
        );
        assert!(params <= TOL, "the final parameters and optimizer state differ by {params}");
    }
    // Two ranks of two batches add (g0+g1)+(g2+g3), one process ((g0+g1)+g2)+g3: fp32 rounding,
    // which Adam's m/sqrt(v) can blow up to a fraction of lr (1e-3) where a gradient is ~0.
    let (one, dp) = (tmp.path().join("one-f4"), tmp.path().join("nproc-f2"));
    let (worst, params) = (same_records(&one, &dp), checkpoint_diff(&one, &dp));
    eprintln!("--nproc, 2 ranks x 2 batches vs 1 process x 4: records differ by {worst:e}, tensors by {params:e}");
    assert!(params <= 1e-3, "the final parameters and optimizer state differ by {params}");
    for run in [tmp.path().join("torchrun-f1"), dp] {
        let train = Metrics::read(&run.join("metrics.jsonl")).unwrap();
        assert!(
            train.iter().all(|r| !matches!(r, Record::Train(t) if t.allreduce_ms.is_none())),
            "allreduce_ms logged"
        );
        assert!(run.join("run.json").exists() && run.join("tokenizer.json").exists(), "rank 0 records the run");
    }
}

/// The pid of rank `rank` of the run writing to `out` (its environment says `RANK=rank`).
fn rank_pid(out: &Path, rank: usize) -> Option<i32> {
    let want = format!("RANK={rank}");
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<i32>().ok()).find(
        |pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&*out.to_string_lossy())
                && environ.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
        },
    )
}

/// Waits until the run in `out` has logged update `step`.
fn wait_for_step(out: &Path, step: u64, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        let done = Metrics::read(&out.join("metrics.jsonl")).is_ok_and(|r| r.iter().any(|r| r.step() >= step));
        if done {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before update {step}");
        assert!(t0.elapsed() < Duration::from_secs(120), "no update {step} after 2 minutes");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `--nproc 2` on the tiny task for 60 epochs (180 updates), saving every 5.
fn long_run(data: &Path, out: &Path, timeout_s: u64) -> Child {
    let sets = ["train.max_epochs=60", "train.save_every=5", "train.diag_every=0"];
    let mut cmd = preln_cmd(&tiny_train_args(data, out, &sets));
    cmd.args(["--nproc", "2", "--dist-timeout", &timeout_s.to_string()]).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.spawn().expect("preln runs")
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling a process this test started (through the launcher).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn a_killed_rank_ends_the_group_naming_it_and_the_group_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 60);
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));
    let mut child = long_run(&data, &killed, 30);
    wait_for_step(&killed, 12, &mut child);
    let t0 = Instant::now();
    signal(rank_pid(&killed, 1).expect("rank 1 is running"), libc::SIGKILL);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    eprintln!("stopped {:.1} s after the kill:\n{err}", t0.elapsed().as_secs_f64());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "the group took {:?} to stop", t0.elapsed());
    assert!(err.contains("rank 1 of 2 was killed by SIGKILL first"), "{err}");
    assert!(err.contains("rank 0 of 2 failed in"), "rank 0 says where it failed:\n{err}");
    let kept = preln_train::state::read_state(&preln_train::trainer::last_checkpoint(&killed)).unwrap();
    assert!(kept.step >= 10 && !kept.done, "{kept:?}");

    let mut resume = preln_cmd(&["train".into(), "--out".into(), killed.display().to_string(), "--resume".into()]);
    resume.args(["--nproc", "2"]);
    run(resume, "--resume --nproc 2");
    run(
        preln_cmd(&tiny_train_args(
            &data,
            &whole,
            &["train.max_epochs=60", "train.save_every=5", "train.diag_every=0", "train.update_freq=2"],
        )),
        "one process, uninterrupted",
    );
    let ra = records(&whole);
    let rb = records(&killed);
    assert_eq!(ra.len(), rb.len());
    let worst = ra.iter().zip(&rb).map(|(x, y)| max_rel_diff(x, y, "record")).fold(0.0, f64::max);
    eprintln!(
        "resumed group vs one uninterrupted process: records differ by {worst:e} (resumed at update {})",
        kept.step
    );
    assert!(worst <= TOL, "{worst}");
}

#[test]
fn a_hung_rank_is_named_by_the_others_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 60);
    let out_dir = tmp.path().join("hung");
    // 10 s: long enough that ranks slowed by a busy machine do not time out before the stop.
    let mut child = long_run(&data, &out_dir, 10);
    wait_for_step(&out_dir, 12, &mut child);
    let t0 = Instant::now();
    signal(rank_pid(&out_dir, 1).expect("rank 1 is running"), libc::SIGSTOP);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rank 0 of 2 failed in") && err.contains("(waited 1"), "{err}");
    // The timeout, the heartbeat check (2.5 s) and the launcher's grace (10 s) for the stopped rank.
    assert!(t0.elapsed() < Duration::from_secs(60), "the group took {:?} to stop", t0.elapsed());
    // Stopped between collectives, rank 1 did not reach rank 0's; stopped inside one, its
    // heartbeat stops.
    let named = err.contains("rank 1 did not get there") || err.contains("the heartbeat of rank(s) 1 stopped");
    assert!(named, "names rank 1:\n{err}");
}

#[test]
fn ranks_that_resolve_different_configs_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(tmp.path(), 60);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = tmp.path().join("differ");
    let ranks: Vec<Child> = (0..2)
        .map(|rank| {
            let lr = format!("train.lr={}", if rank == 0 { "1e-3" } else { "2e-3" });
            let mut cmd = preln_cmd(&tiny_train_args(&data, &out, &[lr.as_str()]));
            cmd.envs([("RANK", rank.to_string()), ("WORLD_SIZE", "2".into()), ("MASTER_ADDR", "127.0.0.1".into())])
                .env("MASTER_PORT", port.to_string())
                .stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "rank {rank}: {err}");
        assert!(
            err.contains("the check of the resolved config and the training batches: rank(s) 1 differ from rank 0"),
            "rank {rank}: {err}"
        );
    }
    let m = Metrics::read(&out.join("metrics.jsonl")).unwrap_or_default();
    assert!(m.is_empty(), "nothing trained: {m:?}");
}

#[test]
fn pretraining_and_the_benchmark_take_the_same_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let mlm = tiny_mlm_data(tmp.path());
    let pretrain = |out: &str, f: &str| {
        let mut args: Vec<String> = ["pretrain", "--config", "bert-cpu", "--data"].map(String::from).to_vec();
        args.extend([mlm.display().to_string(), "--out".into(), tmp.path().join(out).display().to_string()]);
        for s in [
            "model.d_model=32",
            "model.ffn_dim=64",
            "model.heads=2",
            "model.layers=2",
            "model.max_positions=32",
            "train.max_tokens=256",
            "train.max_updates=8",
            "schedule.total_steps=8",
            "train.valid_every=4",
            "train.diag_every=2",
            "train.device=\"cpu\"",
            &format!("train.update_freq={f}"),
        ] {
            args.extend(["--set".into(), s.to_string()]);
        }
        preln_cmd(&args)
    };
    run(pretrain("one", "2"), "pretrain, one process, update_freq 2");
    let mut two = pretrain("two", "1");
    two.args(["--nproc", "2"]);
    run(two, "pretrain --nproc 2");
    let worst = same_records(&tmp.path().join("one"), &tmp.path().join("two"));
    eprintln!("pretrain, 2 ranks x 1 batch vs 1 process x 2: records differ by {worst:e}");

    let args = ["bench", "train", "--config", "tiny", "--steps", "2", "--warmup", "1", "--rounds", "1"];
    let mut bench = Command::new(env!("CARGO_BIN_EXE_preln"));
    bench.args(args).args(["--precisions", "fp32", "--nproc", "2"]);
    let out = run(bench, "bench train --nproc 2");
    let (text, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(err.contains("2 ranks of 1 thread(s), each with the whole batch"), "{err}");
    assert!(text.contains("target tokens/s, all-reduce"), "{text}");
}
