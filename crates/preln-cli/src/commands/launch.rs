//! `--nproc N`: starts N ranks of this very command on this machine with the variables torchrun
//! sets (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...), then watches them. The first
//! rank that fails ends the others, and the error names it; a rank that hangs is ended by the
//! others' timeout.
//!
//! The ranks run in their own process group, so Ctrl-C reaches this process alone, which passes
//! it on once (the ranks finish the update, rank 0 saves, all stop); they die with it
//! (`PR_SET_PDEATHSIG`) if it is killed, or ended by a second Ctrl-C.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long stopped ranks get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// This process's arguments without `--nproc N` / `--nproc=N`.
fn rank_args() -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--nproc") => {
                args.next();
            }
            Some(s) if s.starts_with("--nproc=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// What became of a rank.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by {}", signal_name(s)),
        _ => "ended".into(),
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        s => preln_train::interrupt::signal_name(s),
    }
}

fn send(child: &Child, sig: i32) {
    // SAFETY: signalling a child we started and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Whether this process should start `nproc` ranks of itself: more than one asked for, and not
/// already a rank of a launcher (`WORLD_SIZE` unset).
pub fn starts_ranks(nproc: usize) -> bool {
    nproc > 1 && std::env::var_os("WORLD_SIZE").is_none()
}

/// Starts `nproc` ranks of this command and waits for them; `threads`: the `--threads` given
/// (without it, each rank gets its share of the cores through `OMP_NUM_THREADS`, unless set).
pub fn run(nproc: usize, threads: Option<i32>) -> Result<()> {
    if nproc < 1 {
        bail!("--nproc must be at least 1, got {nproc}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("--nproc: finding a free port on 127.0.0.1 for the rendezvous")?
        .port();
    let exe = std::env::current_exe().context("locating the preln executable")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let omp = (threads.is_none() && std::env::var_os("OMP_NUM_THREADS").is_none())
        .then(|| (cores / nproc).max(1).to_string());
    eprintln!(
        "starting {nproc} ranks on 127.0.0.1:{port}{}",
        omp.as_ref().map(|n| format!(", {n} thread(s) each")).unwrap_or_default()
    );
    let mut ranks: Vec<Option<Child>> = Vec::new();
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(rank_args())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("GROUP_RANK", "0")
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        if let Some(n) = &omp {
            cmd.env("OMP_NUM_THREADS", n);
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => ranks.push(Some(child)),
            Err(e) => {
                ranks.iter().flatten().for_each(|c| send(c, libc::SIGKILL));
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    let failure = watch(&mut ranks)?;
    match (failure, preln_train::interrupt::requested()) {
        (None, _) => Ok(()),
        (Some(_), Some(sig)) => bail!(
            "the {nproc} ranks stopped on {} (rank 0 saved the last update; continue with --resume)",
            preln_train::interrupt::signal_name(sig)
        ),
        (Some((rank, status)), None) => {
            bail!(
                "rank {rank} of {nproc} {} first (the messages above say why); the other ranks were stopped",
                describe(status)
            )
        }
    }
}

/// Waits for every rank; after the first failure, stops the others (SIGTERM, then SIGKILL
/// after [`GRACE`]). Returns the first failure. A signal this process receives is passed on to
/// the ranks, once.
fn watch(ranks: &mut [Option<Child>]) -> Result<Option<(usize, ExitStatus)>> {
    let mut failure: Option<(usize, ExitStatus)> = None;
    let mut stopping: Option<Instant> = None;
    let mut forwarded = false;
    while ranks.iter().any(Option::is_some) {
        if let (Some(sig), false) = (preln_train::interrupt::requested(), forwarded) {
            ranks.iter().flatten().for_each(|c| send(c, sig));
            forwarded = true;
        }
        for (rank, slot) in ranks.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Some(status) = child.try_wait().with_context(|| format!("waiting for rank {rank}"))? {
                *slot = None;
                if !status.success() && failure.is_none() {
                    failure = Some((rank, status));
                }
            }
        }
        if failure.is_some() {
            match stopping {
                None => {
                    ranks.iter().flatten().for_each(|c| send(c, libc::SIGTERM));
                    stopping = Some(Instant::now());
                }
                Some(t) if t.elapsed() > GRACE => ranks.iter().flatten().for_each(|c| send(c, libc::SIGKILL)),
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(failure)
}
