//! The warmup study: the grid of runs in `configs/reproduce/`, scaled to the chosen scale, each
//! trained by a `preln train` child process in its own folder. A finished or diverged run is a
//! result and is skipped; an interrupted one is resumed from its last checkpoint.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use preln_data::Pairs;
use preln_train::config::{resolve, TrainConfig};
use preln_train::metrics::{valid_records, Metrics, Record};
use preln_train::rundir::last_checkpoint;
use preln_train::state::read_state;
use preln_train::translation::updates_per_epoch;

use crate::scale::{schedule_overrides, ScaleSpec};

/// The paper-scale configs of the grid, compiled in (the files in `configs/reproduce/`), in the
/// order they are trained: the runs behind the paper's main claims first.
pub const GRID: &[(&str, &str)] = &[
    ("post-adam-1e-3-nowarmup", include_str!("../../../configs/reproduce/post-adam-1e-3-nowarmup.toml")),
    ("post-adam-1e-3-warmup", include_str!("../../../configs/reproduce/post-adam-1e-3-warmup.toml")),
    ("pre-adam-5e-4-nowarmup", include_str!("../../../configs/reproduce/pre-adam-5e-4-nowarmup.toml")),
    ("post-adam-5e-4-warmup", include_str!("../../../configs/reproduce/post-adam-5e-4-warmup.toml")),
    ("post-adam-5e-4-nowarmup", include_str!("../../../configs/reproduce/post-adam-5e-4-nowarmup.toml")),
    ("pre-adam-1e-3-nowarmup", include_str!("../../../configs/reproduce/pre-adam-1e-3-nowarmup.toml")),
    ("post-radam-5e-4-nowarmup", include_str!("../../../configs/reproduce/post-radam-5e-4-nowarmup.toml")),
    ("pre-radam-5e-4-nowarmup", include_str!("../../../configs/reproduce/pre-radam-5e-4-nowarmup.toml")),
    ("post-sgd-5e-3-warmup", include_str!("../../../configs/reproduce/post-sgd-5e-3-warmup.toml")),
    ("post-sgd-5e-3-nowarmup", include_str!("../../../configs/reproduce/post-sgd-5e-3-nowarmup.toml")),
    ("post-adam-5e-4-warmup500", include_str!("../../../configs/reproduce/post-adam-5e-4-warmup500.toml")),
    ("post-adam-1e-3-warmup500", include_str!("../../../configs/reproduce/post-adam-1e-3-warmup500.toml")),
    (
        "post-adam-1e-4-constant-nowarmup",
        include_str!("../../../configs/reproduce/post-adam-1e-4-constant-nowarmup.toml"),
    ),
    ("post-sgd-1e-3-warmup", include_str!("../../../configs/reproduce/post-sgd-1e-3-warmup.toml")),
    ("post-sgd-1e-3-nowarmup", include_str!("../../../configs/reproduce/post-sgd-1e-3-nowarmup.toml")),
];

/// One run of the grid, as it will be trained.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub name: String,
    /// The config file's first comment line.
    pub description: String,
    /// The config after scaling: what is trained.
    pub config: TrainConfig,
    pub updates_per_epoch: u64,
    pub dir: PathBuf,
}

/// Where a run stands on disk.
#[derive(Clone, Debug, PartialEq)]
pub enum RunStatus {
    NotStarted,
    Partial { step: u64, epoch: u64 },
    Complete,
    Diverged { step: u64 },
}

/// The grid at this scale on the training pairs `train`, with the user's `--set` overrides
/// applied last (to every run).
pub fn plan(spec: &ScaleSpec, train: &Pairs, out: &Path, only: &[String], user: &[String]) -> Result<Vec<PlannedRun>> {
    for o in only {
        if !GRID.iter().any(|(n, _)| n == o) {
            bail!(
                "--only: no run `{o}` in the grid (runs: {})",
                GRID.iter().map(|g| g.0).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut runs = Vec::new();
    for (name, text) in GRID.iter().filter(|(n, _)| only.is_empty() || only.iter().any(|o| o == n)) {
        let source = format!("configs/reproduce/{name}.toml");
        let paper = resolve(&source, text, &[])?;
        let mut overrides = spec.size_overrides();
        overrides.extend(user.iter().cloned());
        let sized = resolve(&source, text, &overrides).with_context(|| format!("sizing {source}"))?;
        let upe = updates_per_epoch(train, &sized);
        let mut overrides = spec.size_overrides();
        overrides.extend(schedule_overrides(&paper, upe, sized.train.max_epochs));
        overrides.extend(user.iter().cloned());
        let config = resolve(&source, text, &overrides).with_context(|| format!("scaling {source}"))?;
        let description = text.lines().next().unwrap_or("").trim_start_matches('#').trim().to_string();
        runs.push(PlannedRun {
            name: name.to_string(),
            description,
            config,
            updates_per_epoch: upe,
            dir: out.join(name),
        });
    }
    Ok(runs)
}

/// Where a run stands. Quiet about a torn last metrics line: the report warns of it once
/// ([`read_metrics`]).
pub fn status(dir: &Path) -> Result<RunStatus> {
    let metrics = dir.join("metrics.jsonl");
    if metrics.exists() {
        if let Some(step) = Metrics::read(&metrics)?.iter().find_map(|r| match r {
            Record::Diverged(d) => Some(d.step),
            _ => None,
        }) {
            return Ok(RunStatus::Diverged { step });
        }
    }
    let last = last_checkpoint(dir);
    if !last.exists() {
        return Ok(RunStatus::NotStarted);
    }
    let s = read_state(&last)?;
    Ok(if s.done { RunStatus::Complete } else { RunStatus::Partial { step: s.step, epoch: s.epoch } })
}

/// Where a reproduction's progress lines go (the CLI prints them on stderr).
pub type Say<'a> = &'a (dyn Fn(&str) + Sync);

/// The `preln` processes that train the runs: which executable, how many runs at once, the
/// data-parallel ranks of each run (`preln train --nproc`) and the libtorch threads of each rank.
#[derive(Clone, Debug)]
pub struct Pool {
    pub exe: PathBuf,
    pub jobs: usize,
    pub nproc: usize,
    pub threads: usize,
}

/// The file a run's requested config is kept in, to tell a changed grid from a resumable run.
const REQUESTED: &str = "reproduce.toml";

/// One training run as the runner sees it: a `preln` subcommand (`train`, `pretrain`) with a
/// config in a folder.
pub struct Job {
    pub name: String,
    pub dir: PathBuf,
    pub command: &'static str,
    /// The config as its type writes it.
    pub toml: String,
    /// Parses a config file of this kind and writes it back the same way (None if it does not
    /// parse): configs are compared through it, so that a field added since, with its default,
    /// does not make an old run a different one.
    pub normalize: fn(&str) -> Option<String>,
}

/// A `preln train` run of `config` in `dir`.
pub fn train_job(name: &str, dir: &Path, config: &TrainConfig) -> Job {
    Job {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        command: "train",
        toml: config.to_toml(),
        normalize: |t| resolve("", t, &[]).ok().map(|c| c.to_toml()),
    }
}

impl PlannedRun {
    pub fn job(&self) -> Job {
        train_job(&self.name, &self.dir, &self.config)
    }
}

/// Refuses to mix a run folder with a different config (another scale, or edited configs).
fn check_config(run: &Job) -> Result<()> {
    let path = run.dir.join(REQUESTED);
    if path.exists() {
        let had = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if (run.normalize)(&had).as_deref() != Some(run.toml.as_str()) {
            bail!(
                "{}: this run was started with a different config (another --scale or --data, or edited configs); \
                 remove the folder or choose another --out",
                run.dir.display()
            );
        }
    } else {
        std::fs::create_dir_all(&run.dir).with_context(|| format!("creating {}", run.dir.display()))?;
        preln_model::checkpoint::write_file_atomic(&path, run.toml.as_bytes())?;
    }
    Ok(())
}

/// Holds the process id of the `preln train` child while it trains the run.
const PID_FILE: &str = "training.pid";

/// The live `preln train` process training the run in `dir`, if any (a stale file is ignored).
fn training_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("train") && cmdline.contains(dir.file_name()?.to_str()?)).then_some(pid)
}

/// How one run ended in this invocation.
#[derive(Clone, Debug)]
pub enum Outcome {
    Done,
    Diverged,
    Failed(String),
}

/// Trains (or resumes) every run that is not complete, `jobs` at a time, each child process
/// with `threads` libtorch threads. Returns the runs that failed (not the diverged ones: a
/// divergence is a result).
pub fn run_all(runs: &[Job], data: &Path, pool: &Pool, say: Say) -> Result<Vec<(String, String)>> {
    let (jobs, threads) = (pool.jobs, pool.threads);
    for run in runs {
        check_config(run)?;
        if let Some(pid) = training_pid(&run.dir) {
            bail!(
                "{}: process {pid} is still training this run (an earlier `preln reproduce` that was stopped?); \
                 wait for it or stop it, then rerun",
                run.dir.display()
            );
        }
    }
    let todo: Vec<&Job> = runs
        .iter()
        .filter(|r| matches!(status(&r.dir), Ok(RunStatus::NotStarted) | Ok(RunStatus::Partial { .. }) | Err(_)))
        .collect();
    let done = runs.len() - todo.len();
    if done > 0 {
        say(&format!("reproduce: {done} of {} runs already finished (kept)", runs.len()));
    }
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    let ranks = match pool.nproc {
        1 => String::new(),
        n => format!(" in each of {n} data-parallel ranks"),
    };
    say(&format!(
        "reproduce: training {} runs, {} at a time with {} thread{}{ranks}; logs in RUN/train.log",
        todo.len(),
        jobs,
        threads,
        if threads == 1 { "" } else { "s" }
    ));
    let failures = Mutex::new(Vec::new());
    let total = todo.len();
    in_parallel(&todo, jobs, |i, run| match train_one(run, data, pool, i + 1, total, say) {
        Ok(Outcome::Failed(msg)) => failures.lock().expect("lock").push((run.name.clone(), msg)),
        Err(e) => failures.lock().expect("lock").push((run.name.clone(), format!("{e:#}"))),
        Ok(_) => {}
    });
    if let Some(sig) = preln_train::interrupt::requested() {
        bail!(
            "stopped by {}: the runs in progress saved their last update; run the same command again to continue",
            preln_train::interrupt::signal_name(sig)
        );
    }
    Ok(failures.into_inner().expect("lock"))
}

/// Calls `f` with every item and its index, `jobs` items at a time in queue order, each on a
/// thread of its own; after a SIGINT or SIGTERM no further item is started.
pub fn in_parallel<T: Sync>(items: &[T], jobs: usize, f: impl Fn(usize, &T) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(items.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                if preln_train::interrupt::requested().is_some() {
                    break;
                }
                f(i, item);
            });
        }
    });
}

/// Waits for a child `preln`, passing on a SIGINT or SIGTERM this process receives (a Ctrl-C in
/// a terminal reaches the children anyway; a `kill` of this process alone does not), so that the
/// child saves its last update and stops.
pub fn wait_forwarding_signals(child: &mut std::process::Child) -> std::io::Result<std::process::ExitStatus> {
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if let (Some(sig), false) = (preln_train::interrupt::requested(), forwarded) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
            forwarded = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn train_one(run: &Job, data: &Path, pool: &Pool, k: usize, total: usize, say: Say) -> Result<Outcome> {
    let st = status(&run.dir)?;
    let mut cmd = Command::new(&pool.exe);
    cmd.arg("--threads").arg(pool.threads.to_string()).arg(run.command).arg("--out").arg(&run.dir);
    if pool.nproc > 1 {
        cmd.arg("--nproc").arg(pool.nproc.to_string());
    }
    let how = match st {
        RunStatus::Partial { step, epoch } => {
            cmd.arg("--resume");
            format!("resuming at update {step} (epoch {epoch})")
        }
        _ => {
            // A run killed before its first checkpoint starts again from scratch.
            let _ = std::fs::remove_dir_all(run.dir.join("checkpoints"));
            cmd.arg("--config").arg(run.dir.join(REQUESTED)).arg("--data").arg(data);
            "starting".to_string()
        }
    };
    let log_path = run.dir.join("train.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    say(&format!("[{k}/{total}] {}: {how}", run.name));
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting preln {} for {}", run.command, run.name))?;
    let pid_file = run.dir.join(PID_FILE);
    std::fs::write(&pid_file, child.id().to_string()).with_context(|| format!("writing {}", pid_file.display()))?;
    let status_code = wait_forwarding_signals(&mut child)
        .with_context(|| format!("waiting for preln {} of {}", run.command, run.name))?;
    let _ = std::fs::remove_file(&pid_file);
    let secs = t.elapsed().as_secs_f64();
    let summary = last_valid(&run.dir).unwrap_or_default();
    match status(&run.dir)? {
        RunStatus::Complete => {
            say(&format!("[{k}/{total}] {}: finished in {secs:.0} s{summary}", run.name));
            Ok(Outcome::Done)
        }
        RunStatus::Diverged { step } => {
            say(&format!("[{k}/{total}] {}: diverged at update {step} after {secs:.0} s (kept as a result)", run.name));
            Ok(Outcome::Diverged)
        }
        _ => {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            let msg = format!("preln {} exited with {status_code}: {last} (see {})", run.command, log_path.display());
            say(&format!("[{k}/{total}] {}: {msg}", run.name));
            Ok(Outcome::Failed(msg))
        }
    }
}

/// The records of a run's `metrics.jsonl`, warning of a torn last line (its writer was killed).
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    let file = Metrics::read_checked(path)?;
    if let Some(line) = file.torn_last_line {
        eprintln!("warning: {}:{line}: the last line is cut short (its writer was killed); skipped", path.display());
    }
    Ok(file.records)
}

/// ", epoch E: valid loss L, BLEU B" from a run's last validation line.
fn last_valid(dir: &Path) -> Option<String> {
    let lines = Metrics::read(&dir.join("metrics.jsonl")).ok()?;
    let v = valid_records(&lines).last()?;
    Some(format!(
        ", epoch {}: valid loss {:.3}{}",
        v.epoch,
        v.loss,
        v.metric("bleu").map(|b| format!(", BLEU {b:.2}")).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_past_a_torn_last_metrics_line() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let metrics = d.join("metrics.jsonl");
        let diverged = Record::Diverged(preln_train::metrics::DivergedRecord {
            step: 7,
            epoch: 1,
            loss: f64::NAN,
            grad_norm: f64::NAN,
            largest_grad: "embed_tokens.weight".into(),
            largest_grad_norm: f64::INFINITY,
        });
        let line = serde_json::to_string(&diverged).unwrap();
        std::fs::write(&metrics, format!("{line}\n{}", &line[..line.len() / 2])).unwrap();
        assert_eq!(status(d).unwrap(), RunStatus::Diverged { step: 7 });
        std::fs::write(&metrics, &line[..line.len() / 2]).unwrap();
        assert_eq!(status(d).unwrap(), RunStatus::NotStarted);
    }

    #[test]
    fn every_grid_config_is_valid_and_named_by_its_contents() {
        for (name, text) in GRID {
            let cfg = resolve(name, text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            let placement = cfg.model.placement.to_string().to_lowercase();
            assert!(name.starts_with(placement.split('-').next().unwrap()), "{name} vs {placement}");
            assert!(name.contains(cfg.optimizer.name()), "{name}");
            assert_eq!(name.ends_with("nowarmup"), cfg.schedule.warmup() <= 1, "{name}");
            assert!(text.starts_with("# "), "{name}: first line describes the run");
        }
    }
}
