//! TensorBoard event files (`RUN/tb/events.out.tfevents.*`), the same numbers as `metrics.jsonl`:
//! every record becomes scalars at its update (`train/loss`, `valid/bleu`,
//! `grad_norm/encoder.layers.3`, `hidden_sq_norm/decoder/6`, ...) and the resolved config is a
//! text summary at update 0.
//!
//! The format, written here without a protobuf library: a file of records, each
//! `u64 length | u32 masked CRC32C(length) | data | u32 masked CRC32C(data)`, little-endian;
//! `data` is a serialized `tensorflow.Event` { wall_time = 1 (double), step = 2 (int64),
//! file_version = 3 (string) | summary = 5 (Summary) }, Summary { value = 1 (repeated Value) },
//! Value { tag = 1, simple_value = 2 (float), tensor = 8 (TensorProto), metadata = 9 }.
//! TensorBoard's own reader loads these files in the tests (`tests/tensorboard.rs`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::metrics::Record;

/// The folder of a run's event files.
pub const TB_DIR: &str = "tb";
/// Our event files end with this, so that only they are ever replaced.
const SUFFIX: &str = ".preln";

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TFRecord's masked CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
}

/// Protobuf wire format: the few field kinds an Event needs.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }

    fn int(&mut self, field: u32, v: u64) -> &mut Self {
        self.key(field, 0);
        self.varint(v);
        self
    }

    fn double(&mut self, field: u32, v: f64) -> &mut Self {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    fn message(&mut self, field: u32, m: &Pb) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

/// One run's event file.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Starts a new event file in `dir`, after removing our earlier ones there (a resumed run
    /// writes its history again from `metrics.jsonl`, so no step appears twice).
    pub fn create(dir: &Path) -> std::io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("events.out.tfevents.") && name.ends_with(SUFFIX) {
                std::fs::remove_file(&p)?;
            }
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let path = dir.join(format!("events.out.tfevents.{}.{}{SUFFIX}", now.as_secs(), std::process::id()));
        let file = File::create(&path)?;
        let mut w = EventWriter { path, file };
        let mut version = Pb::default();
        version.double(1, wall_time()).bytes(3, b"brain.Event:2");
        w.record(&version.0)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = Vec::with_capacity(data.len() + 16);
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc(&len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&out)
    }

    fn event(&mut self, step: u64, summary: &Pb) -> std::io::Result<()> {
        let mut e = Pb::default();
        e.double(1, wall_time()).int(2, step).message(5, summary);
        self.record(&e.0)
    }

    /// Scalars at one step, in one event.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> std::io::Result<()> {
        let mut summary = Pb::default();
        for (tag, v) in values {
            let mut value = Pb::default();
            value.bytes(1, tag.as_bytes()).float(2, *v as f32);
            summary.message(1, &value);
        }
        self.event(step, &summary)
    }

    /// A text summary (TensorBoard's text plugin: a string tensor of shape [1]).
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> std::io::Result<()> {
        let mut dim = Pb::default();
        dim.int(1, 1);
        let mut shape = Pb::default();
        shape.message(2, &dim);
        let mut tensor = Pb::default();
        tensor.int(1, 7).message(2, &shape).bytes(8, text.as_bytes()); // DT_STRING
        let mut plugin = Pb::default();
        plugin.bytes(1, b"text");
        let mut metadata = Pb::default();
        metadata.message(1, &plugin);
        let mut value = Pb::default();
        value.bytes(1, tag.as_bytes()).message(8, &tensor).message(9, &metadata);
        let mut summary = Pb::default();
        summary.message(1, &value);
        self.event(step, &summary)
    }

    /// The scalars of a metrics record.
    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        let values = scalars(record);
        if values.is_empty() {
            return Ok(());
        }
        self.scalars(record.step(), &values)?;
        self.file.flush()
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The scalars a record shows in TensorBoard, by tag (non-finite values are left out, as
/// `metrics.jsonl` writes them as null).
pub fn scalars(record: &Record) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = match record {
        Record::Train(r) => {
            let mut v = vec![
                ("train/loss".to_string(), r.loss),
                ("train/nll".into(), r.nll),
                ("train/lr".into(), r.lr),
                ("train/grad_norm".into(), r.grad_norm),
                ("train/tokens_per_s".into(), r.tokens_per_s),
            ];
            v.extend(r.allreduce_ms.map(|ms| ("train/allreduce_ms".into(), ms)));
            v
        }
        Record::Valid(r) => {
            let mut v = vec![
                ("valid/loss".to_string(), r.loss),
                ("valid/nll".into(), r.nll),
                ("valid/ppl".into(), r.ppl),
                ("valid/train_loss".into(), r.train_loss),
            ];
            v.extend(r.extra.iter().filter_map(|(k, x)| x.map(|x| (format!("valid/{k}"), x))));
            v
        }
        Record::Diag(r) => {
            let mut v: Vec<(String, f64)> =
                r.grad_norm_groups.iter().map(|(g, x)| (format!("grad_norm/{g}"), *x)).collect();
            for (stack, layers) in r.hidden_sq_norm_over_d.iter().flatten() {
                v.extend(layers.iter().enumerate().map(|(l, x)| (format!("hidden_sq_norm/{stack}/{l}"), *x)));
            }
            v
        }
        Record::Diverged(_) | Record::Interrupted(_) => Vec::new(),
    };
    v.retain(|(_, x)| x.is_finite());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_of_the_standard_check_string() {
        // The CRC-32C check value (RFC 3720, B.4): "123456789" -> 0xE3069283.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn varints_and_keys_follow_the_protobuf_encoding() {
        let mut p = Pb::default();
        p.int(2, 300);
        // Field 2, wire type 0 -> 0x10; 300 -> 0xAC 0x02.
        assert_eq!(p.0, [0x10, 0xAC, 0x02]);
        let mut p = Pb::default();
        p.float(2, 1.0);
        assert_eq!(p.0, [0x15, 0, 0, 0x80, 0x3F]);
    }

    #[test]
    fn a_new_file_replaces_only_our_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("events.out.tfevents.1.other");
        std::fs::write(&theirs, b"x").unwrap();
        let first = EventWriter::create(dir.path()).unwrap().path().to_path_buf();
        std::thread::sleep(std::time::Duration::from_millis(10));
        let second = EventWriter::create(dir.path()).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(theirs.exists());
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&second.path().to_path_buf()) && (first == second.path() || !first.exists()));
    }
}
