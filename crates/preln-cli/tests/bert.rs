//! BERT end to end with tiny models: prepare-mlm -> pretrain (with a resume) -> finetune.

mod common;

use std::process::{Command, Output};

fn preln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_preln")).args(args).output().expect("preln runs")
}

fn ok(args: &[&str]) -> String {
    let out = preln(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "preln {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).to_string() + &stderr
}

#[test]
fn prepare_pretrain_resume_and_finetune() {
    let d = tempfile::tempdir().unwrap();
    let p = |name: &str| d.path().join(name).to_str().unwrap().to_string();
    common::tiny_mlm_data(d.path());
    let e = String::from_utf8_lossy(&preln(&["prepare-mlm", "--train", &p("nothing"), "--out", &p("x")]).stderr)
        .to_string();
    assert!(e.contains("nothing") && e.contains("no such file"), "{e}");

    let tiny = [
        "--set",
        "model.d_model=32",
        "--set",
        "model.ffn_dim=64",
        "--set",
        "model.heads=2",
        "--set",
        "model.layers=2",
        "--set",
        "model.max_positions=32",
        "--set",
        "train.max_tokens=512",
        "--set",
        "train.max_updates=12",
        "--set",
        "schedule.total_steps=12",
        "--set",
        "train.valid_every=4",
        "--set",
        "train.save_every=2",
        "--set",
        "train.device=\"cpu\"",
    ];
    let (mlm, run) = (p("mlm"), p("run"));
    let mut args = vec!["pretrain", "--config", "bert-cpu", "--data", &mlm];
    args.extend(["--out", &run]);
    args.extend(tiny);
    let out = ok(&args);
    assert!(out.contains("update 4:") && out.contains("valid mlm accuracy"), "{out}");
    let metrics = std::fs::read_to_string(d.path().join("run/metrics.jsonl")).unwrap();
    let valid: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "valid")
        .collect();
    assert_eq!(valid.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![4, 8, 12]);
    // A finished run resumed with a larger update limit continues from its checkpoint.
    let out = ok(&[
        "pretrain",
        "--resume",
        "--out",
        &run,
        "--set",
        "train.max_updates=16",
        "--set",
        "schedule.total_steps=16",
    ]);
    assert!(out.contains("resuming at update 12"), "{out}");

    let glue = d.path().join("glue");
    std::fs::create_dir(&glue).unwrap();
    let mut tsv = String::from("\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n");
    for i in 0..40 {
        tsv.push_str(&format!(
            "{}\t{i}\t{i}\tthe cat sat on a mat\t{}\n",
            i % 2,
            if i % 2 == 1 { "a cat sat on the mat" } else { "the dog ran to a house" }
        ));
    }
    std::fs::write(glue.join("train.tsv"), &tsv).unwrap();
    std::fs::write(glue.join("dev.tsv"), &tsv).unwrap();
    let out = ok(&[
        "finetune",
        "--task",
        "mrpc",
        "--data",
        glue.to_str().unwrap(),
        "--checkpoint",
        &run,
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--set",
        "train.device=\"cpu\"",
    ]);
    assert!(out.contains("epoch 2: dev accuracy") && out.contains("95% interval over 2 seeds"), "{out}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("run/finetune-mrpc/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["per_seed"].as_array().unwrap().len(), 2);
    let acc = summary["epochs"][1]["accuracy"]["mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    // Half the examples are paraphrases: the majority baseline (label 0 on a tie) gets 0.5.
    assert!(out.contains("majority baseline (always label 0): dev accuracy 0.5000, F1 0.0000"), "{out}");
    assert_eq!(summary["majority"]["accuracy"].as_f64(), Some(0.5));
    // The same fine-tuning from a random initialization of the same shape.
    let glue_dir = glue.to_str().unwrap();
    let args = ["finetune", "--task", "mrpc", "--data", glue_dir, "--checkpoint", &run, "--init", "random"];
    let out =
        ok(&[&args[..], &["--seeds", "1", "--epochs", "1", "--batch-size", "8", "--set", "train.device=\"cpu\""]]
            .concat());
    assert!(out.contains("a random initialization of"), "{out}");
    let random: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("run/finetune-mrpc-random/summary.json")).unwrap())
            .unwrap();
    assert!(random["checkpoint"].is_null(), "{random}");

    // Figure 5 at a tiny size: three pre-training runs, fine-tuning on both tasks, the report.
    let rte = glue.join("RTE");
    let mrpc = glue.join("MRPC");
    std::fs::create_dir_all(&rte).unwrap();
    std::fs::create_dir_all(&mrpc).unwrap();
    let mut rte_tsv = String::from("sentence1\tsentence2\tlabel\tidx\n");
    for i in 0..30 {
        rte_tsv.push_str(&format!(
            "the cat sat on a mat\t{}\t{}\t{i}\n",
            if i % 2 == 0 { "a cat sat" } else { "the dog ran" },
            i % 2
        ));
    }
    for dir in [&rte] {
        std::fs::write(dir.join("train.tsv"), &rte_tsv).unwrap();
        std::fs::write(dir.join("dev.tsv"), &rte_tsv).unwrap();
    }
    std::fs::write(mrpc.join("train.tsv"), &tsv).unwrap();
    std::fs::write(mrpc.join("dev.tsv"), &tsv).unwrap();
    let rep = p("rep");
    let mut args = vec![
        "reproduce",
        "bert",
        "--data",
        &mlm,
        "--glue",
        glue.to_str().unwrap(),
        "--out",
        &rep,
        "--scale",
        "quick",
        "--jobs",
        "2",
    ];
    let tiny_bert = [
        "--set",
        "model.d_model=32",
        "--set",
        "model.ffn_dim=64",
        "--set",
        "model.heads=2",
        "--set",
        "model.layers=2",
        "--set",
        "model.max_positions=32",
        "--set",
        "train.max_tokens=512",
        "--set",
        "train.max_updates=8",
        "--set",
        "train.valid_every=4",
        "--set",
        "train.diag_every=4",
        "--set",
        "train.device=\"cpu\"",
    ];
    args.extend(tiny_bert);
    let out = ok(&args);
    for run in ["pre-3e-4-nowarmup", "post-1e-4-warmup", "post-3e-4-warmup"] {
        let dir = d.path().join("rep/bert").join(run);
        assert!(dir.join("checkpoints/last.json").exists(), "{run} did not pre-train:\n{out}");
        for task in ["mrpc", "rte"] {
            assert!(dir.join(format!("finetune-{task}/summary.json")).exists(), "{run} {task} not fine-tuned:\n{out}");
        }
    }
    for task in ["mrpc", "rte"] {
        let random = d.path().join(format!("rep/bert/random-init/finetune-{task}/summary.json"));
        assert!(random.exists(), "no fine-tuning from a random initialization on {task}:\n{out}");
    }
    let md = std::fs::read_to_string(d.path().join("rep/report.md")).unwrap();
    // The scale's lr: the paper's 3e-4 times 2e-3 / 3e-4.
    assert!(md.contains("Figure 5") && md.contains("| `post-3e-4-warmup` | Post-LN | 0.002 |"), "{md}");
    assert!(md.contains("the paper's 1e-4 and 3e-4 times 6.667"), "{md}");
    // Figure 5's claims, each with a verdict, and every layer's gradient norm at the last diag.
    for claim in [
        "| Pre-LN without warmup pre-trains BERT faster than Post-LN with warmup |",
        "| Post-LN BERT is unstable at Pre-LN's lr (0.002, with warmup) |",
        "| Pre-LN BERT fine-tunes to a better MRPC dev accuracy than Post-LN |",
        "| Pre-LN BERT fine-tunes to a better RTE dev accuracy than Post-LN |",
    ] {
        assert!(md.contains(claim), "{claim} missing: {md}");
    }
    assert!(md.contains("majority label 0.500, no pre-training "), "{md}");
    assert!(md.contains("| `encoder.layers.1` |") && md.contains("`post-3e-4-warmup` (update 8)"), "{md}");
    assert!(md.contains("| no pre-training | the same model, randomly initialized |"), "{md}");
    assert!(md.contains(" (unigram 0."), "the masked accuracy is shown beside the unigram baseline's: {md}");
    // Every validation of the three runs, loss / masked accuracy, beside the unigram baseline.
    assert!(
        md.contains("| update | `pre-3e-4-nowarmup` | `post-1e-4-warmup` | `post-3e-4-warmup` | unigram baseline |"),
        "{md}"
    );
    let at4 = md.lines().find(|l| l.starts_with("| 4 | ")).unwrap_or_else(|| panic!("no row for update 4: {md}"));
    assert_eq!(at4.matches('%').count(), 4, "loss / accuracy of three runs and the unigram baseline: {at4}");
    // MRPC's dev set is half paraphrases, RTE's half entailments: the majority label gets 0.5.
    assert!(
        md.contains(
            "| majority label | always the training set's most frequent label | - | - | - | - | - | - | 0.500 | 0.000 | 0.500 |"
        ),
        "{md}"
    );
    assert!(d.path().join("rep/fig5_bert.png").exists());
    let again = ok(&args);
    assert!(again.contains("3 of 3 runs already finished"), "{again}");
}
