#!/usr/bin/env python3
"""CTranslate2 side of `preln bench translate --vs-ctranslate2` and of the export tests.

Reads a JSON spec on stdin:
  {"model": DIR, "sources": [[piece, ...], ...], "beam": k, "lenpen": x,
   "max_decoding_length": n, "threads": t, "compute_type": "float32" | "int8" | ...,
   "batch_size": b, "warmup": true}
loads `ctranslate2.Translator(DIR)` on the CPU with one translation worker of `threads` threads,
translates every source (EOS is appended by the model's config), and prints one JSON line: the
output pieces of each sentence (without EOS), whether it ended with EOS, its score, and the
seconds `translate_batch` took (model loading and an optional warm-up batch excluded).

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
        max_decoding_length=spec["max_decoding_length"],
        min_decoding_length=0,
        max_batch_size=spec.get("batch_size", 64),
        return_end_token=True,
        return_scores=True,
    )
    sources = spec["sources"]
    if spec.get("warmup") and sources:
        translator.translate_batch(sources[: options["max_batch_size"]], **options)
    start = time.perf_counter()
    results = translator.translate_batch(sources, **options)
    seconds = time.perf_counter() - start
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
