#!/usr/bin/env bash
# Builds what the GPU check (scripts/gpu_check.sh) needs on a GPU machine that has torch 2.11.0
# but no Rust toolchain: the `preln` binary and the model's golden / structure / incremental test
# binaries (debug info stripped), and a prepared Multi30k folder for a short training run.
#
#   scripts/gpu_bundle.sh [MULTI30K_RAW_DIR] [BUNDLE]
#
# MULTI30K_RAW_DIR: train/val/test_2016_flickr .de/.en (default ../shared/data/multi30k);
# BUNDLE: output folder (default gpu-bundle, ignored by git). Run scripts/setup.sh first.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
raw=$(cd "${1:-../shared/data/multi30k}" && pwd)
bundle=${2:-gpu-bundle}
mkdir -p "$bundle/bin"

cargo build --release --workspace --quiet
strip_to() { objcopy --strip-debug "$1" "$2"; }
strip_to target/release/preln "$bundle/bin/preln"
# The test binaries of preln-model, by name (golden, structure, incremental).
cargo test --release -p preln-model --tests --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do strip_to "$exe" "$bundle/bin/test-$name"; done
# The test binaries read their golden files from the path they were built at.
echo "$root" > "$bundle/BUILD_ROOT"

if [ ! -f "$bundle/m30k/manifest.json" ]; then
  target/release/preln prepare -s de -t en --trainpref "$raw/train" --validpref "$raw/val" \
    --testpref "$raw/test_2016_flickr" --vocab-size 8000 --out "$bundle/m30k"
fi
cp "$raw/test_2016_flickr.de" "$raw/test_2016_flickr.en" "$bundle/"
du -sh "$bundle"
