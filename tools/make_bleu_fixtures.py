#!/usr/bin/env python3
"""BLEU reference values from sacrebleu (PyPI) for crates/preln-eval/tests/bleu_sacrebleu.rs.

Writes crates/preln-eval/tests/fixtures/bleu_cases.json: for each case the hypotheses, the
reference streams, the options and sacrebleu's corpus_score result (or the error it raises).

  $PRELN_TORCH_VENV/bin/python tools/make_bleu_fixtures.py
"""

import json
import os
import subprocess
import sys
import tempfile

import sacrebleu
from sacrebleu.metrics import BLEU

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "preln-eval", "tests", "fixtures")

REFS = [
    "A man in a blue shirt is standing on a ladder cleaning windows.",
    "Two young girls are playing in the sand at the beach.",
    "A group of people stand in front of an igloo.",
    "A boy in a red jersey is trying to catch a baseball, while another boy watches.",
    "Several men in hard hats are operating a giant pulley system.",
    "A little girl climbing into a wooden playhouse.",
    "Three people sit in a cave.",
    "A black dog and a spotted dog are fighting.",
    "A woman with a large purse is walking by a gate.",
    "The dog is running through the grass, holding a stick in its mouth.",
]
# What a mediocre system might say: substitutions, drops, reorderings, a repeat.
HYPS = [
    "A man in a blue shirt stands on a ladder and cleans windows.",
    "Two little girls play in the sand on the beach.",
    "A group of people are standing in front of an igloo.",
    "A boy in a red shirt tries to catch a ball while another boy is watching.",
    "Several men with helmets operate a big pulley system.",
    "A small girl climbs into a wooden play house.",
    "Three people are sitting in a cave cave.",
    "A black dog and a spotted dog fight.",
    "A woman with a big bag walks past a gate.",
    "The dog runs through the grass with a stick in his mouth.",
]

UNICODE_REFS = [
    "„Das ist gut“, sagte er… und ging.",
    "Der Preis beträgt 1.234,50 € — oder $1,234.50!",
    "L'homme a dit : « Bonjour ! »",
    "東京は日本の首都です。",
    "Tom &amp; Jerry &quot;laufen&quot; (schnell) -- 3-4 Mal/Tag.",
    "e-mail: test@example.com; 100% sicher?",
]
UNICODE_HYPS = [
    "„Das ist gut“ sagte er … und ging.",
    "Der Preis ist 1.234,50 € - oder $1,234.50 !",
    "L'homme dit: «Bonjour!»",
    "東京 は 日本 の 首都 です 。",
    "Tom & Jerry \"laufen\" (schnell) - 3-4 mal / Tag.",
    "E-Mail: test@example.com ; 100 % sicher ?",
]


def case(name, hyps, refs, tokenize="13a", lowercase=False):
    entry = {"name": name, "hyps": hyps, "refs": refs, "tokenize": tokenize, "lowercase": lowercase}
    try:
        b = BLEU(tokenize=tokenize, lowercase=lowercase).corpus_score(hyps, refs)
        entry["expected"] = {
            "score": b.score, "precisions": b.precisions, "bp": b.bp, "ratio": b.ratio,
            "sys_len": b.sys_len, "ref_len": b.ref_len, "counts": b.counts, "totals": b.totals,
            "line": str(b).split(" = ", 1)[1],
        }
    except Exception as e:  # sacrebleu refuses some inputs; so must we
        entry["error"] = str(e)
    return entry


def cli_case(name, hyps, refs):
    """What the sacrebleu command line says (it refuses streams of different lengths, where the
    Python API silently scores the common prefix)."""
    with tempfile.TemporaryDirectory() as d:
        ref_path = os.path.join(d, "ref.txt")
        with open(ref_path, "w", encoding="utf-8") as f:
            f.write("\n".join(refs[0]) + "\n")
        p = subprocess.run([sys.executable, "-m", "sacrebleu", ref_path, "-b"], input="\n".join(hyps) + "\n",
                           capture_output=True, text=True)
    entry = {"name": name, "hyps": hyps, "refs": refs, "tokenize": "13a", "lowercase": False}
    if p.returncode != 0:
        entry["error"] = p.stderr.strip()
    else:
        entry["expected_score"] = float(p.stdout.strip())
    return entry


def main():
    os.makedirs(OUT, exist_ok=True)
    alt = [h.replace("A ", "One ", 1) for h in HYPS]
    cases = [
        case("system", HYPS, [REFS]),
        case("system_two_refs", HYPS, [REFS, alt]),
        case("system_lowercase", [h.upper() for h in HYPS], [REFS], lowercase=True),
        case("system_tok_none", HYPS, [REFS], tokenize="none"),
        case("system_intl", HYPS, [REFS], tokenize="intl"),
        case("identical", REFS, [REFS]),
        case("all_empty_hyps", [""] * len(REFS), [REFS]),
        case("some_empty_hyps", HYPS[:5] + [""] * 5, [REFS]),
        case("no_matches", ["xyz qrs"] * 3, [REFS[:3]]),
        case("short_hyps", [" ".join(r.split()[:3]) for r in REFS], [REFS]),
        case("unicode_13a", UNICODE_HYPS, [UNICODE_REFS]),
        case("unicode_intl", UNICODE_HYPS, [UNICODE_REFS], tokenize="intl"),
        case("trailing_whitespace", [h + "  \t" for h in HYPS], [REFS]),
        cli_case("corpus_shorter_than_refs", HYPS[:7], [REFS]),
    ]
    with open(os.path.join(OUT, "bleu_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"sacrebleu": sacrebleu.__version__, "cases": cases}, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
