#!/usr/bin/env python3
"""Reads a folder of TensorBoard event files with TensorBoard's own reader (EventAccumulator) and
prints what it found as JSON: {"scalars": {tag: [[step, value], ...]}, "texts": {tag: [[step,
text], ...]}}. Used by crates/preln-cli/tests/tensorboard.rs to check preln's event files.

  $PRELN_TORCH_VENV/bin/python tools/read_tensorboard.py RUN/tb
"""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}
    texts = {
        t: [[e.step, b"".join(e.tensor_proto.string_val).decode("utf-8")] for e in acc.Tensors(t)]
        for t in tags["tensors"]
    }
    json.dump({"scalars": scalars, "texts": texts}, sys.stdout)


if __name__ == "__main__":
    main()
