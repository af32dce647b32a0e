//! `preln reproduce`: the command line to a [`preln_repro::ReproduceSpec`], one call, the files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use preln_repro::{Pool, ReproduceSpec, ScaleSpec};

use crate::cli::ReproduceArgs;

pub fn run(args: ReproduceArgs, threads: Option<i32>) -> Result<()> {
    let name = ScaleSpec::of(args.scale).name;
    let cores = threads
        .map(|t| t.max(1) as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let nproc = args.nproc.max(1);
    let jobs = args.jobs.unwrap_or(cores / nproc).max(1);
    let spec = ReproduceSpec {
        what: args.what,
        scale: args.scale,
        out: args.out.unwrap_or_else(|| PathBuf::from(format!("runs/reproduce-{name}"))),
        data: args.data,
        glue: args.glue,
        only: args.only,
        placements: args.placements,
        overrides: args.overrides,
        report_only: args.report_only,
        pool: Pool { exe: own_executable()?, jobs, nproc, threads: (cores / (jobs * nproc)).max(1) },
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let outcome = preln_repro::run(&spec, &|line| eprintln!("{line}"))?;
    for f in &outcome.files {
        println!("{}", f.display());
    }
    if !outcome.failures.is_empty() {
        let list: Vec<String> = outcome.failures.iter().map(|(n, m)| format!("{n}: {m}")).collect();
        bail!("{} run(s) failed (rerun the same command to retry them):\n{}", list.len(), list.join("\n"));
    }
    Ok(())
}

/// This very executable for the children. On Linux `/proc/self/exe`, which keeps naming this
/// binary even after a rebuild replaced the file, so one reproduction never mixes two builds;
/// elsewhere the path it was started from.
fn own_executable() -> Result<PathBuf> {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe().context("locating the preln executable")
}
