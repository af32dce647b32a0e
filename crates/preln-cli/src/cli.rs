//! The command line, as clap-derive structs: one subcommand per verb.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use preln_train::device::DeviceChoice;

#[derive(Parser, Debug)]
#[command(
    name = "preln",
    version,
    about = "Post-LN vs Pre-LN Transformers: analysis, training and the reproduction of Xiong et al. (2020)"
)]
pub struct Cli {
    /// CPU threads for libtorch (default: libtorch's choice, one per physical core).
    #[arg(long, global = true)]
    pub threads: Option<i32>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show versions, devices and the model presets with their parameter counts.
    Info,
    /// Fetch a public data set (download, or copy from a local folder) and verify it.
    #[command(subcommand)]
    Data(DataCommand),
    /// Parallel text files -> a data folder: joint BPE, tokenized splits, manifest with checksums.
    Prepare(PrepareArgs),
    /// Plain text -> a masked-language-model data folder: BPE with <mask>, lines packed into
    /// segments, manifest with checksums.
    PrepareMlm(PrepareMlmArgs),
    /// Train a translation model on a prepared data folder.
    Train(TrainArgs),
    /// Pre-train BERT (masked language model) on a folder made by `prepare-mlm`.
    Pretrain(TrainArgs),
    /// Fine-tune a pre-trained BERT run on GLUE MRPC or RTE over several seeds: dev accuracy
    /// (and F1) per epoch, mean and 95% interval.
    Finetune(FinetuneArgs),
    /// Translate stdin (one sentence a line) with a trained run; detokenized text on stdout.
    Translate(TranslateArgs),
    /// Write a trained translation run in another engine's format (CTranslate2).
    #[command(subcommand)]
    Export(Export),
    /// Corpus BLEU of hypotheses on stdin against reference files, exactly as sacreBLEU 2.x.
    Bleu(BleuArgs),
    /// Gradient and hidden-state norms at initialization (Figure 3, Lemma 2, Theorem 1).
    #[command(subcommand)]
    Analyze(Analyze),
    /// Speed benchmarks, optionally side by side with a PyTorch reference.
    #[command(subcommand)]
    Bench(Bench),
    /// Rerun the paper's experiments (Figure 3, the warmup study of Figures 2 and 4) and write
    /// a report with plots: report.md and report.html in --out.
    Reproduce(ReproduceArgs),
}

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// `init`: Figure 3 and the depth scan; `warmup`: the grid of training runs; `all`: both;
    /// `bert`: Figure 5 (pre-training on a `prepare-mlm` folder given as --data, then GLUE
    /// fine-tuning from --glue); `stability`: the stability map of every norm placement over
    /// depth, peak lr and warmup.
    #[arg(default_value = "all")]
    pub what: preln_repro::What,
    /// A data folder made by `preln prepare` (e.g. Multi30k De-En). Without it: a built-in
    /// synthetic translation task generated on the spot.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder (default: runs/reproduce-SCALE). Finished runs in it are kept and skipped.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `quick`: small models, minutes; `cpu`: 6+6 layers of width 128, hours on a laptop;
    /// `paper`: the paper's model and run length.
    #[arg(long, default_value = "quick")]
    pub scale: preln_repro::Scale,
    /// Training runs (and `bert`'s fine-tunings) at the same time (default: one per CPU thread,
    /// each on one thread; with --nproc, one per --nproc threads).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Data-parallel ranks per training run (`preln train --nproc`). As with DDP or fairseq on
    /// N GPUs, each rank brings its own batches, so an update has N times the config's
    /// (`train.update_freq` N times larger in one process): a different run from --nproc 1.
    /// The runs of `bert`'s fine-tuning stay single-process.
    #[arg(long, default_value_t = 1)]
    pub nproc: usize,
    /// Only these runs of the grid (comma-separated names of configs/reproduce/*.toml, or of
    /// stability cells such as `post-L12-lr2e-3-w0`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Override a value in every run's config, after the scale (e.g. `train.device=cuda`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Write the report from what is already in --out, without running anything.
    #[arg(long)]
    pub report_only: bool,
    /// For `bert`: the GLUE folder holding MRPC/ and RTE/ (train.tsv, dev.tsv).
    #[arg(long)]
    pub glue: Option<PathBuf>,
    /// For `stability`: the placements of the map, comma-separated, or `all`.
    #[arg(long, default_value = "all", value_parser = preln_model::placement::parse_placements)]
    pub placements: std::vec::Vec<preln_model::NormPlacement>,
}

#[derive(Subcommand, Debug)]
pub enum Export {
    /// A CTranslate2 model directory (`ctranslate2.Translator(DIR)`): model.bin, config.json,
    /// shared_vocabulary.json, plus the run's tokenizer.json. Post-LN and Pre-LN runs only
    /// (LayerNorm or RMSNorm).
    Ctranslate2(ExportCt2Args),
}

#[derive(Args, Debug)]
pub struct ExportCt2Args {
    #[command(flatten)]
    pub run: RunArgs,
    /// The model directory to create (it must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    /// How linear and embedding weights are stored: `float32`, or `int8` (per-row scales, as
    /// CTranslate2's own converters quantize).
    #[arg(long, value_enum, default_value = "float32")]
    pub quantization: Ct2Quantization,
    /// Rows of the sinusoid position table: the longest input or output CTranslate2 can then
    /// handle (its own default input limit is 1024).
    #[arg(long, default_value_t = 1024)]
    pub max_positions: i64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Ct2Quantization {
    Float32,
    Int8,
}

impl From<Ct2Quantization> for preln_model::ctranslate2::Quantization {
    fn from(q: Ct2Quantization) -> Self {
        match q {
            Ct2Quantization::Float32 => preln_model::ctranslate2::Quantization::Float32,
            Ct2Quantization::Int8 => preln_model::ctranslate2::Quantization::Int8,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Full training steps (forward, loss, backward, Adam) of a config on a fixed batch.
    Train(BenchTrainArgs),
    /// Decoding speed of a trained run (beam and greedy), against tools/translate_ref.py.
    Translate(BenchTranslateArgs),
}

#[derive(Args, Debug)]
pub struct BenchTranslateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Source sentences, one a line (empty lines are skipped).
    #[arg(long)]
    pub input: PathBuf,
    /// Beam sizes to time, comma-separated (1 = greedy).
    #[arg(long, value_delimiter = ',', default_value = "5,1")]
    pub beams: Vec<usize>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Also decode with tools/translate_ref.py (plain PyTorch) and compare outputs and speed.
    #[arg(long)]
    pub vs_pytorch: bool,
    /// Also export the run to CTranslate2 (float32 and int8, in a temporary folder) and decode
    /// with it through tools/ct2_translate.py (the `ctranslate2` package): speed, identical
    /// outputs, BLEU.
    #[arg(long)]
    pub vs_ctranslate2: bool,
    /// Reference translations, one a line, aligned with --input: BLEU (sacreBLEU's 13a) of
    /// every system.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// CPU thread counts to time, comma-separated (default: the --threads in effect).
    #[arg(long, value_delimiter = ',')]
    pub thread_counts: Vec<i32>,
    /// Also write the table as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long)]
    pub python: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// A config file or preset (`iwslt14`: the paper's model; `cpu`).
    #[arg(long, default_value = "iwslt14")]
    pub config: String,
    /// Override a config value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Sentences in the batch.
    #[arg(long, default_value_t = 64)]
    pub sentences: usize,
    /// Tokens per sentence on each side (EOS/BOS included).
    #[arg(long, default_value_t = 32)]
    pub len: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 10_000)]
    pub vocab: i64,
    /// Timed steps per round.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Rounds; with --vs-pytorch the two sides alternate round by round.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Also time tools/bench_train.py (plain PyTorch) in the project's Python environment.
    #[arg(long)]
    pub vs_pytorch: bool,
    /// The Python interpreter for --vs-pytorch (default: the environment scripts/setup.sh made).
    #[arg(long)]
    pub python: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Precisions to time: `fp32`, and `bf16` (forward and loss under bfloat16 autocast, on both
    /// sides). Default: both, but on a CPU without fast bf16 (`preln info`) only fp32.
    #[arg(long, value_delimiter = ',')]
    pub precisions: Vec<preln_train::config::Precision>,
    /// Data-parallel: time N ranks on this machine, started as `preln train --nproc` starts them
    /// (without --threads, each gets its share of the cores). Each rank steps on its own copy
    /// of the batch and the gradients are all-reduced before the update; tokens/s counts all
    /// ranks' tokens. Compare with `--nproc 1 --threads N`.
    #[arg(long, default_value_t = 1)]
    pub nproc: usize,
    /// Internal: time one precision in this process and print JSON (each measurement runs in a
    /// fresh process, so that peak memory is its own).
    #[arg(long, hide = true)]
    pub worker: bool,
}

#[derive(Args, Debug)]
pub struct TranslateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Beam size (1 = greedy).
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Decode without the key/value cache (slow; for checking).
    #[arg(long)]
    pub no_cache: bool,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

/// The trained run that `translate` and `bench translate` decode with.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A run folder made by `preln train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which checkpoint of the run: `best` (lowest validation loss) or `last`.
    #[arg(long, default_value = "best")]
    pub which: String,
}

/// Search options shared by `translate` and `bench translate`.
#[derive(Args, Debug, Clone, Copy)]
pub struct SearchArgs {
    /// Length penalty: hypotheses are ranked by log-probability / length^lenpen.
    #[arg(long, default_value_t = 1.2)]
    pub lenpen: f64,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Output length limit: max_len_a * source tokens + max_len_b.
    #[arg(long, default_value_t = 1.2)]
    pub max_len_a: f64,
    #[arg(long, default_value_t = 10)]
    pub max_len_b: i64,
}

impl SearchArgs {
    /// The search of these options with `beam`, checked.
    pub fn config(&self, beam: usize, no_cache: bool) -> anyhow::Result<preln_eval::SearchConfig> {
        let cfg = preln_eval::SearchConfig {
            beam,
            lenpen: self.lenpen,
            max_len_a: self.max_len_a,
            max_len_b: self.max_len_b,
            specials: preln_data::Specials::DEFAULT,
            no_cache,
        };
        cfg.validate().map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
pub struct BleuArgs {
    /// Reference file, one segment a line; repeat for several references.
    #[arg(long = "ref", required = true)]
    pub refs: Vec<PathBuf>,
    /// Lowercase hypotheses and references first.
    #[arg(long, short = 'l')]
    pub lowercase: bool,
    /// Tokenizer: 13a (sacreBLEU's default), intl, none.
    #[arg(long, default_value = "13a")]
    pub tokenize: String,
    /// Print JSON with the score, precisions, BP, ratio and lengths.
    #[arg(long)]
    pub json: bool,
    /// Decimals of the score in the text form (sacreBLEU's default: 1).
    #[arg(long, short = 'w', default_value_t = 1)]
    pub width: usize,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML config file, or a preset shipped in configs/: `iwslt14` (the paper's model),
    /// `cpu` (6+6 layers, d 256), `tiny`. With --resume, the run's own config.toml is used.
    #[arg(long)]
    pub config: Option<String>,
    /// A data folder made by `preln prepare` (remembered in the run folder for --resume).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The run folder: config.toml, metrics.jsonl, checkpoints/{last,best}.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Override a config value, e.g. `--set train.lr=1e-3 --set model.placement=post`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Data-parallel on this machine: start N ranks of this command (c10d, Gloo), as
    /// `torchrun --no-python --nproc-per-node N preln train ...` would. Each rank brings
    /// train.update_freq batches to every update (as DDP and fairseq do per GPU), so N ranks
    /// train exactly as one process with N times train.update_freq. Without --threads each rank
    /// gets its share of the cores.
    #[arg(long, default_value_t = 1)]
    pub nproc: usize,
    /// Data-parallel: seconds a rank waits for the others (the rendezvous, every collective)
    /// before it stops with an error.
    #[arg(long, default_value_t = 600)]
    pub dist_timeout: u64,
    /// Data-parallel: the c10d backend. `auto`: NCCL for a model on CUDA where this build has
    /// it (`preln info`), else Gloo (CUDA tensors then pass through host memory).
    #[arg(long, value_enum, default_value = "auto")]
    pub dist_backend: DistBackend,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DistBackend {
    Auto,
    Gloo,
    Nccl,
}

impl From<DistBackend> for Option<preln_ops::dist::Backend> {
    fn from(b: DistBackend) -> Self {
        match b {
            DistBackend::Auto => None,
            DistBackend::Gloo => Some(preln_ops::dist::Backend::Gloo),
            DistBackend::Nccl => Some(preln_ops::dist::Backend::Nccl),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Multi30k task 1, raw text (train 29,000 / val 1,014 / test_2016_flickr 1,000 De-En pairs)
    /// from github.com/multi30k/dataset, checked against known SHA-256 sums.
    Multi30k(FetchArgs),
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Folder to write the text files into.
    #[arg(long)]
    pub out: PathBuf,
    /// Use a local copy (files plain or .gz) instead of downloading.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Download from this base URL instead of the data set's home (a mirror).
    #[arg(long)]
    pub base_url: Option<String>,
    /// Write into an existing non-empty --out folder, replacing only the files of the same
    /// names (nothing else there is touched).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// Source language suffix: files are PREFIX.SRC.
    #[arg(long, short = 's')]
    pub source_lang: String,
    /// Target language suffix: files are PREFIX.TGT.
    #[arg(long, short = 't')]
    pub target_lang: String,
    /// Prefix of the training files (the BPE is learned on them).
    #[arg(long)]
    pub trainpref: PathBuf,
    /// Prefix of the validation files.
    #[arg(long)]
    pub validpref: Option<PathBuf>,
    /// Prefixes of test files, comma-separated: splits `test`, `test1`, ...
    #[arg(long, value_delimiter = ',')]
    pub testpref: Vec<PathBuf>,
    /// Joint BPE vocabulary size, special tokens included (the paper: 10000).
    #[arg(long, default_value_t = 10_000)]
    pub vocab_size: usize,
    /// Drop (and count) training pairs with a side longer than this many BPE tokens.
    #[arg(long, default_value_t = 250)]
    pub max_len: usize,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Write into an existing non-empty output folder, replacing only our files there
    /// (nothing else is touched).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// `mrpc` or `rte`.
    #[arg(long)]
    pub task: preln_data::glue::GlueTask,
    /// The task's GLUE folder with train.tsv and dev.tsv (e.g. data/glue/MRPC).
    #[arg(long)]
    pub data: PathBuf,
    /// A run folder made by `preln pretrain`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which checkpoint of the run: `best` or `last`.
    #[arg(long, default_value = "best")]
    pub which: String,
    /// `pretrained`: start from the checkpoint; `random`: from a random initialization of the
    /// same shape (the baseline without pre-training; the run still gives the model config and
    /// the tokenizer).
    #[arg(long, value_enum, default_value = "pretrained")]
    pub init: FinetuneInit,
    /// Seeds 1..=N (the paper: 6).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[arg(long, default_value_t = 3)]
    pub epochs: u64,
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Fraction of the updates spent in linear warmup.
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,
    /// Output folder (default: CHECKPOINT/finetune-TASK).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override a fine-tuning config value (optimizer, schedule, train.*, batch_size, classifier_dropout).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum FinetuneInit {
    Pretrained,
    Random,
}

#[derive(Args, Debug)]
pub struct PrepareMlmArgs {
    /// Training text: files, or folders whose *.txt files are read in name order (the BPE is
    /// learned on them).
    #[arg(long, required = true, num_args = 1..)]
    pub train: Vec<PathBuf>,
    /// Held-out text for the validation MLM loss (files or folders).
    #[arg(long, num_args = 1..)]
    pub valid: Vec<PathBuf>,
    /// Test text (files or folders).
    #[arg(long, num_args = 1..)]
    pub test: Vec<PathBuf>,
    /// Hold out every N-th block of 20 lines of each training file as the validation split
    /// (in-domain held-out text), instead of --valid.
    #[arg(long, value_name = "N", conflicts_with = "valid")]
    pub hold_out: Option<usize>,
    /// BPE vocabulary size, special tokens included.
    #[arg(long, default_value_t = 16_000)]
    pub vocab_size: usize,
    /// Longest segment in tokens, <s> and </s> included.
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Write into an existing non-empty output folder, replacing only our files there
    /// (nothing else is touched).
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum Analyze {
    /// Per-parameter gradient norms and per-layer hidden norms of freshly initialized models,
    /// for each placement, over several seeds (Figure 3 and Lemma 2).
    Init(InitArgs),
    /// Gradient norm of the last FFN's W2 against depth, with log-log slopes (Theorem 1).
    Depth(DepthArgs),
    /// Rewrite the plots, CSV and Markdown of an output folder from its init.json / depth.json.
    Replot {
        /// The folder of an earlier `analyze init` or `analyze depth`.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Named model: `iwslt14` (the paper's: 6+6 layers, d 512, FFN 1024, 4 heads) or `cpu`
    /// (d 256). The flags below override its fields.
    #[arg(long, default_value = "iwslt14")]
    pub preset: String,
    /// Encoder and decoder layers.
    #[arg(long)]
    pub layers: Option<i64>,
    #[arg(long)]
    pub d_model: Option<i64>,
    #[arg(long)]
    pub ffn_dim: Option<i64>,
    #[arg(long)]
    pub heads: Option<i64>,
    /// Vocabulary size of the built-in batches.
    #[arg(long)]
    pub vocab: Option<i64>,
    /// Placements to compare, comma-separated, or `all`: post, pre, sandwich, peri, deepnorm,
    /// admin, rezero, b2t, mix.
    #[arg(long, default_value = "post,pre", value_parser = preln_model::placement::parse_placements)]
    pub placements: std::vec::Vec<preln_model::NormPlacement>,
    /// The norm in every slot: layernorm or rmsnorm.
    #[arg(long, default_value = "layernorm")]
    pub norm: preln_model::NormKind,
}

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Real sentence pairs instead of the built-in task: a folder made by `preln prepare`, or a
    /// file prefix PREFIX with PREFIX.SRC and PREFIX.TGT (then a BPE of `--vocab` entries is
    /// learned on them). The model's vocabulary becomes the data's.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With a prepared folder: the split to draw sentences from.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// With a file prefix: the two language suffixes, e.g. `de,en`.
    #[arg(long, value_delimiter = ',')]
    pub langs: Vec<String>,
    /// Number of random initializations (seeds 1..=N).
    #[arg(long, default_value_t = 10)]
    pub seeds: u64,
    /// Target tokens in the batch the gradients are taken on (the paper's batches: 4096).
    #[arg(long, default_value_t = 4096)]
    pub tokens: i64,
    /// Seed of the batch: the built-in task's sentences, or which real sentences are drawn.
    #[arg(long, default_value_t = 0)]
    pub batch_seed: u64,
    /// Label smoothing of the loss, as in training.
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

#[derive(Args, Debug)]
pub struct DepthArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Depths to scan (encoder = decoder).
    #[arg(long, value_delimiter = ',', default_value = "6,8,10,12,14")]
    pub depths: Vec<i64>,
}
