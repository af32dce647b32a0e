//! `prepare` end to end on small generated text: counts, exact round trip, errors that leave
//! nothing behind.

use std::path::{Path, PathBuf};

use preln_data::{prepare, Dataset, PrepareSpec};

const DE: [&str; 8] = [
    "ein Hund läuft",
    "zwei Katzen schlafen",
    "der Mann liest",
    "eine Frau singt",
    "Kinder spielen draußen",
    "ein Hund",
    "die Katze",
    "der Ball",
];
const EN: [&str; 8] = [
    "a dog runs",
    "two cats sleep",
    "the man reads",
    "a woman sings",
    "children play outside",
    "a dog",
    "the cat",
    "the ball",
];

fn write_split(dir: &Path, prefix: &str, n: usize, extra: &[(&str, &str)]) -> PathBuf {
    let mut de: Vec<String> = (0..n).map(|i| format!("{} {}", DE[i % 8], DE[(i * 3) % 8])).collect();
    let mut en: Vec<String> = (0..n).map(|i| format!("{} {}", EN[i % 8], EN[(i * 3) % 8])).collect();
    for (d, e) in extra {
        de.push(d.to_string());
        en.push(e.to_string());
    }
    std::fs::write(dir.join(format!("{prefix}.de")), de.join("\n") + "\n").unwrap();
    std::fs::write(dir.join(format!("{prefix}.en")), en.join("\n") + "\n").unwrap();
    dir.join(prefix)
}

fn spec(dir: &Path, out: &Path) -> PrepareSpec {
    PrepareSpec {
        source_lang: "de".into(),
        target_lang: "en".into(),
        splits: vec![
            (
                "train".into(),
                write_split(
                    dir,
                    "train",
                    200,
                    &[("", "empty source"), ("lang lang lang lang lang lang lang lang lang lang lang lang", "long")],
                ),
            ),
            ("valid".into(), write_split(dir, "val", 20, &[])),
            ("test".into(), write_split(dir, "test", 10, &[])),
        ],
        vocab_size: 120,
        max_len: 30,
        out: out.into(),
        force: false,
    }
}

#[test]
fn prepares_and_reads_back() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("data");
    let manifest = prepare(&spec(d.path(), &out), |_| {}).unwrap();
    let train = manifest.split("train").unwrap();
    assert_eq!((train.lines, train.pairs, train.skipped_empty, train.skipped_too_long), (202, 200, 1, 1));
    assert_eq!(train.skipped_lines_sample, vec![201, 202]);
    assert!(manifest.vocab_size <= 120);

    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.split_names(), vec!["train", "valid", "test"]);
    let valid = ds.split("valid").unwrap();
    assert_eq!(valid.len(), 20);
    // Decoding gives back the exact text.
    let ids: Vec<u32> = valid[3].0.iter().map(|&i| i as u32).collect();
    assert_eq!(ds.tokenizer.decode(&ids).unwrap(), format!("{} {}", DE[3], DE[1]));
    assert!(valid.iter().flat_map(|(s, t)| s.iter().chain(t)).all(|&i| i >= 4));
    let e = ds.split("nope").err().unwrap().to_string();
    assert!(e.contains("no split `nope`") && e.contains("train, valid, test"), "{e}");
}

#[test]
fn existing_folder_needs_force_and_corruption_is_caught() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("data");
    let mut s = spec(d.path(), &out);
    prepare(&s, |_| {}).unwrap();
    let e = prepare(&s, |_| {}).unwrap_err().to_string();
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    s.force = true;
    prepare(&s, |_| {}).unwrap();

    let file = out.join("valid.de.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let e = Dataset::open(&out).unwrap().split("valid").err().unwrap().to_string();
    assert!(e.contains("valid.de.bin") && e.contains("checksum"), "{e}");
}

#[test]
fn bad_input_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("data");
    let mut s = spec(d.path(), &out);
    std::fs::write(d.path().join("val.en"), "only one line\n").unwrap();
    let e = prepare(&s, |_| {}).unwrap_err().to_string();
    assert!(e.contains("val.de has 20 lines") && e.contains("val.en has 1"), "{e}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("data"))
        .collect();
    assert!(leftovers.is_empty());

    s.splits[1].1 = d.path().join("missing");
    let e = prepare(&s, |_| {}).unwrap_err().to_string();
    assert!(e.contains("missing.de"), "{e}");
    assert!(Dataset::open(&out).err().unwrap().to_string().contains("not a prepared data folder"));
}
