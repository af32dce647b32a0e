//! Nothing lost: the fault matrix of issue 15. Kills at chosen writes (the `PRELN_FAULT` hook of
//! `preln_model::fsio`), an injected full disk, signals, two processes on one run folder,
//! hand-edited data folders, configs no machine can hold, and links planted in a run folder.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, fails, ok, preln, prepare, tiny_data};
use serde_json::Value;

/// `preln train` of the tiny preset on `data` into `run`, with `extra` arguments.
fn train_args(data: &Path, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["train", "--config", "tiny", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap()]
            .map(String::from)
            .to_vec();
    a.extend(["--set", "train.device=\"cpu\"", "--set", "train.valid_bleu_beam=0"].map(String::from));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_with(env: &[(&str, &str)], args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_preln")).args(args).envs(env.iter().copied()).output().expect("preln runs")
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every line of a metrics file, each of which must be JSON.
fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("metrics.jsonl:{}: {e}: {l}", i + 1)))
        .collect()
}

/// The training position stored inside a checkpoint (its safetensors metadata).
fn checkpoint_state(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_str(header["__metadata__"]["preln.train_state"].as_str().unwrap()).unwrap()
}

fn last(run: &Path) -> PathBuf {
    run.join("checkpoints/last.safetensors")
}

fn killed(out: &Output) -> bool {
    out.status.signal() == Some(9)
}

/// Waits until `run` has logged at least `lines` metrics lines.
fn wait_for_lines(run: &Path, lines: usize, child: &mut std::process::Child) {
    let started = Instant::now();
    loop {
        let n = std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
        if n >= lines {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before logging {lines} lines");
        assert!(started.elapsed() < Duration::from_secs(120), "no progress in {}", run.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_preln")).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

/// A long run: many epochs, no save until the end, a metrics line per update.
const LONG: [&str; 6] = ["--set", "train.max_epochs=200", "--set", "train.save_every=0", "--set", "train.diag_every=0"];

#[test]
fn data_out_never_deletes_a_users_folder() {
    let d = tempfile::tempdir().unwrap();
    let mine = d.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("thesis.tex"), "three years of work").unwrap();
    let empty_source = d.path().join("src");
    std::fs::create_dir(&empty_source).unwrap();
    // Refused before anything is fetched, naming --force; the folder keeps its file.
    let e = fails(&["data", "multi30k", "--from", empty_source.to_str().unwrap(), "--out", mine.to_str().unwrap()]);
    assert!(e.contains("already exists and holds 1 entry (thesis.tex)") && e.contains("--force"), "{e}");
    let out = Command::new(env!("CARGO_BIN_EXE_preln"))
        .args(["data", "multi30k", "--from", empty_source.to_str().unwrap(), "--out", "."])
        .current_dir(&mine)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"), "--out . is refused too");
    assert_eq!(std::fs::read_to_string(mine.join("thesis.tex")).unwrap(), "three years of work");
    // prepare --force into it writes our files beside the user's and replaces only ours.
    tiny_data(d.path(), 60);
    for _ in 0..2 {
        assert_ok(&prepare(d.path(), "train", Some("valid"), 60, &mine, &["--force"]), "prepare --force");
    }
    assert_eq!(std::fs::read_to_string(mine.join("thesis.tex")).unwrap(), "three years of work");
    let run = d.path().join("run");
    ok(&strs(&train_args(&mine, &run, &["--set", "train.max_updates=1"])));
    let siblings: Vec<String> =
        std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(siblings.iter().all(|n| !n.contains(".tmp")), "staging folders are gone: {siblings:?}");
}

#[test]
fn a_busy_run_folder_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    let mut first = spawn(&train_args(&data, &run, &LONG));
    wait_for_lines(&run, 2, &mut first);
    let resume = ["train", "--resume", "--out", run.to_str().unwrap()];
    let e = fails(&resume);
    assert!(e.contains(&format!("in use by process {}", first.id())), "{e}");
    let e = fails(&strs(&train_args(&data, &run, &[])));
    assert!(e.contains(&format!("in use by process {}", first.id())), "{e}");
    // The holder dies without a word: its lock goes with it.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(metrics(&run).len() >= 2, "the holder's metrics are intact");
    let pid = std::fs::read_to_string(run.join("run.lock")).unwrap();
    assert_eq!(pid.trim(), first.id().to_string(), "the lock file still names the dead holder");
    // The lock is taken over: the next command gets past it (to "no checkpoint" or a resume).
    let out = preln(&["train", "--resume", "--out", run.to_str().unwrap(), "--set", "train.max_updates=1"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!e.contains("in use") && (out.status.success() || e.contains("no checkpoint")), "{e}");
}

#[test]
fn a_torn_metrics_line_is_skipped_by_readers_and_dropped_on_resume() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    let args = train_args(&data, &run, &["--set", "train.save_every=2", "--set", "train.diag_every=0"]);
    let out = run_with(&[("PRELN_FAULT", "metrics.jsonl:kill@5")], &args);
    assert!(killed(&out), "the fault hook kills inside the 5th metrics write");
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(!text.ends_with('\n') && text.lines().count() == 5, "a torn 5th line: {text:?}");
    // Resuming drops it; the whole file is JSON again and reads as one run.
    let stderr = ok(&["train", "--resume", "--out", run.to_str().unwrap()]);
    assert!(stderr.contains("resuming at update 4"), "{stderr}");
    let steps: Vec<u64> =
        metrics(&run).iter().filter(|v| v["kind"] == "train").map(|v| v["step"].as_u64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 1) && steps[0] == 1, "{steps:?}");
}

#[test]
fn the_best_checkpoint_survives_a_kill_while_it_is_published() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    let args = train_args(&data, &run, &["--set", "train.max_epochs=3"]);
    let out = run_with(&[("PRELN_FAULT", "best.safetensors:kill@1")], &args);
    assert!(killed(&out));
    let best = run.join("checkpoints/best.safetensors");
    assert!(!best.exists(), "killed before the first best was published");
    let recorded = checkpoint_state(&last(&run));
    assert_eq!(recorded["best_step"], recorded["step"]);
    let stderr = ok(&["train", "--resume", "--out", run.to_str().unwrap()]);
    assert!(stderr.contains("repaired") && stderr.contains("best.safetensors"), "{stderr}");
    let final_state = checkpoint_state(&last(&run));
    assert_eq!(checkpoint_state(&best)["step"], final_state["best_step"], "best holds the best update");
    let mut child = Command::new(env!("CARGO_BIN_EXE_preln"))
        .args(["translate", "--checkpoint", run.to_str().unwrap(), "--device", "cpu", "--beam", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"der Hund 3 l\xc3\xa4uft nach Hause\n").unwrap();
    assert!(child.wait_with_output().unwrap().status.success(), "translate reads the best checkpoint");
}

#[test]
fn ctrl_c_saves_the_update_in_progress_logs_it_and_resume_continues() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    let mut child = spawn(&train_args(&data, &run, &LONG));
    wait_for_lines(&run, 3, &mut child);
    signal(child.id(), "-INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let lines = metrics(&run);
    let stop = lines.last().unwrap();
    assert_eq!((stop["kind"].as_str(), stop["signal"].as_str()), (Some("interrupted"), Some("SIGINT")), "{stop}");
    let step = stop["step"].as_u64().unwrap();
    assert!(step >= 3 && stderr.contains(&format!("update {step} is saved")), "{stderr}");
    assert_eq!(checkpoint_state(&last(&run))["step"].as_u64(), Some(step), "the update in progress was saved");
    let stderr =
        ok(&["train", "--resume", "--out", run.to_str().unwrap(), "--set", &format!("train.max_updates={}", step + 2)]);
    assert!(stderr.contains(&format!("resuming at update {step}")), "{stderr}");
    assert_eq!(checkpoint_state(&last(&run))["step"].as_u64(), Some(step + 2));
}

#[test]
fn a_second_ctrl_c_ends_the_process_at_once() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    // Updates and saves of a model this size take long enough for two signals to meet one.
    let big = ["--set", "model.d_model=512", "--set", "model.ffn_dim=2048", "--set", "model.heads=8"];
    let mut child = spawn(&train_args(&data, &run, &[&LONG[..], &big[..]].concat()));
    wait_for_lines(&run, 1, &mut child);
    signal(child.id(), "-INT");
    std::thread::sleep(Duration::from_millis(30));
    signal(child.id(), "-INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(metrics(&run).iter().all(|v| v["kind"] != "interrupted"), "it did not wait to save");
}

#[test]
fn commands_that_do_not_train_stop_at_the_first_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let reference = d.path().join("ref.en");
    std::fs::write(&reference, "a b c\n").unwrap();
    // `bleu` waits for its stdin, which stays open: only the signal can end it.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_preln"));
    cmd.args(["bleu", "--ref", reference.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // A shell starts background jobs with SIGINT ignored, and children inherit that; a command
    // that keeps the default must keep an inherited SIG_IGN too. The test asks for the default.
    // SAFETY: signal() is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(child.id(), "-INT");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "preln bleu ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(child.wait().unwrap().signal(), Some(2), "ended by SIGINT, as without a handler");
}

#[test]
fn sigterm_to_reproduce_reaches_its_training_child_which_saves() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("rep");
    let name = "pre-adam-5e-4-nowarmup";
    let mut args: Vec<String> = ["reproduce", "warmup", "--out", out.to_str().unwrap(), "--only", name, "--jobs", "1"]
        .map(String::from)
        .to_vec();
    for kv in
        ["model.d_model=16", "model.ffn_dim=32", "model.heads=2", "model.encoder_layers=2", "model.decoder_layers=2"]
    {
        args.extend(["--set".to_string(), kv.to_string()]);
    }
    for kv in ["train.max_epochs=50", "train.save_every=0", "train.log_every=1", "train.valid_bleu_beam=0"] {
        args.extend(["--set".to_string(), kv.to_string()]);
    }
    let mut parent = spawn(&args);
    let run = out.join(name);
    wait_for_lines(&run, 3, &mut parent);
    signal(parent.id(), "-TERM");
    let result = parent.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    let stop = metrics(&run).last().cloned().unwrap();
    assert_eq!(stop["kind"], "interrupted", "the child saved and said so: {stop}");
    let step = stop["step"].as_u64().unwrap();
    assert_eq!(checkpoint_state(&last(&run))["step"].as_u64(), Some(step));
}

#[test]
fn crafted_data_and_oversized_models_get_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let manifest_path = data.join("manifest.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    let train = |run: &str, extra: &[&str]| fails(&strs(&train_args(&data, &d.path().join(run), extra)));
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut m: Value = serde_json::from_str(&original).unwrap();
        f(&mut m);
        std::fs::write(&manifest_path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    };
    // An edited vocabulary size: the manifest's own checksum catches it.
    edit(&|m| m["vocab_size"] = 10.into());
    let e = train("r1", &[]);
    assert!(e.contains("manifest.json") && e.contains("manifest_sha256"), "{e}");
    // Without that checksum (an older folder), the tokenizer contradicts it: 10, then 1e13.
    for vocab in [10u64, 10_000_000_000_000] {
        edit(&|m| {
            m["vocab_size"] = vocab.into();
            m.as_object_mut().unwrap().remove("manifest_sha256");
        });
        let e = train("r2", &[]);
        assert!(e.contains(&format!("`vocab_size` is {vocab} but tokenizer.json has 60 entries")), "{e}");
    }
    // An out-of-range id with its checksum updated.
    let bin = data.join("train.de.bin");
    let original_bin = std::fs::read(&bin).unwrap();
    let mut bytes = original_bin.clone();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&5000u32.to_le_bytes());
    std::fs::write(&bin, &bytes).unwrap();
    edit(&|m| {
        m["sha256"]["train.de.bin"] = preln_data::prepare::sha256_hex(&bytes).into();
        m.as_object_mut().unwrap().remove("manifest_sha256");
    });
    let e = train("r3", &[]);
    assert!(e.contains("train.de.bin") && e.contains("token id 5000, outside the vocabulary of 60"), "{e}");
    std::fs::write(&manifest_path, &original).unwrap();
    std::fs::write(&bin, &original_bin).unwrap();
    // Models no machine here can hold: refused before allocating, saying what they need.
    for (key, value, expect) in [
        ("model.d_model", "2000000", "too large to train here"),
        ("model.encoder_layers", "8000", "too large to train here"),
        ("model.encoder_layers", "100000", "must be at most 10000"),
    ] {
        let set = format!("{key}={value}");
        let e = train("r4", &["--set", &set, "--set", "model.ffn_dim=100000"]);
        assert!(e.contains(expect), "{set}: {e}");
        assert!(!d.path().join("r4").exists(), "nothing is written for a refused model");
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_keeps_the_previous_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    let args = train_args(&data, &run, &["--set", "train.save_every=2", "--set", "train.max_updates=6"]);
    let out = run_with(&[("PRELN_FAULT", "last.safetensors:enospc@2")], &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("last.safetensors") && stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(stderr.matches("os error 28").count(), 1, "the OS error is printed once: {stderr}");
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(checkpoint_state(&last(&run))["step"], 2, "the first save is intact");
    ok(&["train", "--resume", "--out", run.to_str().unwrap()]);
    assert_eq!(checkpoint_state(&last(&run))["step"], 6);
}

#[test]
fn last_json_is_rederived_from_the_checkpoint_on_resume() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    let args = train_args(&data, &run, &["--set", "train.save_every=2", "--set", "train.max_updates=4"]);
    // The second save (the final one) is killed between the checkpoint and its JSON copy.
    let out = run_with(&[("PRELN_FAULT", "last.json:kill@2")], &args);
    assert!(killed(&out));
    let json = |run: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/last.json")).unwrap()).unwrap()
    };
    assert_eq!((json(&run)["step"].as_u64(), checkpoint_state(&last(&run))["step"].as_u64()), (Some(2), Some(4)));
    ok(&["train", "--resume", "--out", run.to_str().unwrap()]);
    assert_eq!(json(&run), checkpoint_state(&last(&run)));
    assert_eq!(json(&run)["done"], true);
}

#[test]
fn train_loss_after_a_resume_averages_the_whole_epoch() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let extra = ["--set", "train.max_epochs=1", "--set", "train.save_every=2"];
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&strs(&train_args(&data, &a, &extra)));
    let out = run_with(&[("PRELN_FAULT", "last.json:kill@2")], &train_args(&data, &b, &extra));
    assert!(killed(&out), "killed after the save of update 4");
    ok(&["train", "--resume", "--out", b.to_str().unwrap()]);
    let valid = |run: &Path| metrics(run).into_iter().find(|v| v["kind"] == "valid").unwrap();
    assert_eq!(valid(&b)["train_loss"], valid(&a)["train_loss"], "the epoch's loss, not the resumed part's");
}

#[test]
fn resume_refuses_other_data_a_swapped_tokenizer_and_another_optimizer() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let other_dir = d.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = tiny_data(&other_dir, 50);
    let run = d.path().join("run");
    ok(&strs(&train_args(&data, &run, &["--set", "train.max_updates=2"])));
    let run_s = run.to_str().unwrap();
    let e = fails(&[
        "train",
        "--resume",
        "--out",
        run_s,
        "--data",
        other.to_str().unwrap(),
        "--set",
        "train.max_updates=3",
    ]);
    assert!(e.contains("not the data this run trained on"), "{e}");
    let tok = run.join("tokenizer.json");
    let saved = std::fs::read(&tok).unwrap();
    std::fs::copy(other.join("tokenizer.json"), &tok).unwrap();
    let mut t = Command::new(env!("CARGO_BIN_EXE_preln"))
        .args(["translate", "--checkpoint", run_s, "--device", "cpu"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&t.stderr).to_string();
    assert!(!t.status.success() && e.contains("tokenizer.json: changed since the run started"), "{e}");
    let e = fails(&["train", "--resume", "--out", run_s, "--set", "train.max_updates=3"]);
    assert!(e.contains("changed since the run started"), "{e}");
    std::fs::write(&tok, &saved).unwrap();
    let e = fails(&[
        "train",
        "--resume",
        "--out",
        run_s,
        "--set",
        "optimizer.kind=\"radam\"",
        "--set",
        "train.max_updates=3",
    ]);
    assert!(e.contains("holds adam's optimizer state") && e.contains("radam"), "{e}");
    t = preln(&["train", "--resume", "--out", run_s, "--set", "train.max_updates=3"]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
}

#[test]
fn writes_replace_links_planted_in_a_run_folder_instead_of_following_them() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path(), 60);
    let run = d.path().join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    let victims: Vec<PathBuf> = (0..4).map(|i| d.path().join(format!("victim{i}"))).collect();
    let planted = ["tokenizer.json", "run.json", "checkpoints/last.safetensors.tmp", "config.toml"];
    for (v, name) in victims.iter().zip(planted) {
        std::fs::write(v, "precious").unwrap();
        std::os::unix::fs::symlink(v, run.join(name)).unwrap();
    }
    ok(&strs(&train_args(&data, &run, &["--set", "train.max_updates=2"])));
    for (v, name) in victims.iter().zip(planted) {
        assert_eq!(std::fs::read_to_string(v).unwrap(), "precious", "{name} was followed");
    }
    for name in ["tokenizer.json", "run.json", "config.toml"] {
        assert!(!std::fs::symlink_metadata(run.join(name)).unwrap().file_type().is_symlink(), "{name}");
    }
}

#[test]
fn small_things_empty_validation_bad_search_options_and_errors_said_once() {
    let d = tempfile::tempdir().unwrap();
    tiny_data(d.path(), 60);
    std::fs::write(d.path().join("empty.de"), "\n\n").unwrap();
    std::fs::write(d.path().join("empty.en"), "\n\n").unwrap();
    let data = d.path().join("data2");
    assert_ok(&prepare(d.path(), "train", Some("empty"), 60, &data, &[]), "prepare with an empty validation split");
    let e = fails(&strs(&train_args(&data, &d.path().join("run"), &[])));
    assert!(e.contains("validation split `valid` is empty"), "{e}");
    for (flag, value, expect) in
        [("--max-len-a", "1e18", "--max-len-a must lie in"), ("--lenpen", "NaN", "--lenpen must be a finite number")]
    {
        let e = fails(&["translate", "--checkpoint", d.path().to_str().unwrap(), flag, value]);
        assert!(e.contains(expect), "{e}");
    }
    let e = fails(&["prepare", "-s", "de", "-t", "en", "--trainpref", "/nonexistent/x", "--out", "/tmp/never"]);
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
}
