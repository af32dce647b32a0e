#!/usr/bin/env python3
"""Summarizes a libtorch operator trace (Chrome trace JSON, as written by
`PRELN_PROFILE=trace.json preln bench train ...`): self time per operator, largest first.

Usage: tools/profile_summary.py trace.json [rows]
"""

import collections
import json
import sys


def main():
    path = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    with open(path) as f:
        text = f.read().strip()
    if text.endswith(","):
        text = text[:-1] + "]"
    if not text.endswith("]"):
        text += "]"
    events = [e for e in json.loads(text) if e.get("ph") == "X"]
    # Self time: an event's duration minus that of events nested directly inside it (same thread).
    by_tid = collections.defaultdict(list)
    for e in events:
        by_tid[e.get("tid")].append(e)
    self_us = collections.Counter()
    calls = collections.Counter()
    for evs in by_tid.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in evs:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                self_us[stack[-1]["name"]] -= e["dur"]
            self_us[e["name"]] += e["dur"]
            calls[e["name"]] += 1
            stack.append(e)
    total = sum(self_us.values())
    print(f"{'operator':60s} {'self ms':>10s} {'%':>6s} {'calls':>7s}")
    for name, us in self_us.most_common(rows):
        print(f"{name[:60]:60s} {us / 1000:10.1f} {100 * us / total:6.1f} {calls[name]:7d}")
    print(f"{'total':60s} {total / 1000:10.1f}")


if __name__ == "__main__":
    main()
