#!/usr/bin/env python3
"""CTranslate2 side of `preln bench translate --vs-ctranslate2` and of the export tests.

Reads a JSON spec on stdin:
  {"model": DIR, "sources": [[piece, ...], ...], "limits": [n, ...], "beam": k, "lenpen": x,
   "threads": t, "compute_type": "float32" | "int8" | ..., "batch_size": b, "warmup": true}
loads `ctranslate2.Translator(DIR)` on the CPU with one translation worker of `threads` threads,
translates the sources in consecutive batches of `batch_size` (EOS is appended by the model's
config), each with `max_decoding_length` the largest `limits` entry of its sentences (tokens
before EOS; preln's own limit, which counts the EOS it forces, less one), and prints one JSON
line: the output pieces of each sentence (without EOS), whether it ended with EOS, its score,
and the seconds `translate_batch` took (model loading and an optional warm-up batch excluded).

Search options match preln's fairseq-style beam search: hypotheses are ranked by
log-probability / (tokens + EOS)^lenpen (`return_end_token=True` counts the EOS in the length)
and the search ends when `beam` hypotheses have finished.
"""

import json
import sys
import time

import ctranslate2


def main():
    spec = json.load(sys.stdin)
    translator = ctranslate2.Translator(
        spec["model"],
        device="cpu",
        compute_type=spec.get("compute_type", "default"),
        inter_threads=1,
        intra_threads=spec.get("threads", 0),
    )
    options = dict(
        beam_size=spec["beam"],
        length_penalty=spec.get("lenpen", 1.0),
        min_decoding_length=0,
        return_end_token=True,
        return_scores=True,
    )
    sources, limits, size = spec["sources"], spec["limits"], spec.get("batch_size", 64)
    batches = [(sources[i : i + size], max(limits[i : i + size])) for i in range(0, len(sources), size)]
    if spec.get("warmup") and batches:
        translator.translate_batch(batches[0][0], max_decoding_length=batches[0][1], **options)
    results, seconds = [], 0.0
    for batch, limit in batches:
        start = time.perf_counter()
        results += translator.translate_batch(batch, max_decoding_length=limit, max_batch_size=size, **options)
        seconds += time.perf_counter() - start
    outputs, ended, scores = [], [], []
    for r in results:
        hyp = r.hypotheses[0]
        done = bool(hyp) and hyp[-1] == "</s>"
        outputs.append(hyp[:-1] if done else hyp)
        ended.append(done)
        scores.append(r.scores[0])
    print(json.dumps({"outputs": outputs, "ended": ended, "scores": scores, "seconds": seconds,
                      "version": ctranslate2.__version__}))


if __name__ == "__main__":
    main()
