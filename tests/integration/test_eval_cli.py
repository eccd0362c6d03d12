#!/usr/bin/env python3
"""`ballast eval` end to end on the demo model: SmolLM2-135M-Instruct with a
w4 executor (the GGUF's own blocks: coherent enough to loop, where a w2 copy
rounded at load writes noise) and an fp16 planner, a few GSM8K prompts of the
committed set, greedy, under direct, rescue, plan, fp16 and auto, with a
small loop detector (window 64, 4-grams, 3 times) so loops happen within a
short budget; the test requires that some do and that rescue acts on them.

Checks that the per-request lines (--jsonl) obey the policies' rules and
that the printed table is what those lines add up to:
  - every (policy, prompt) ends exactly once;
  - direct and plan never commit or fall back (loops are only observed);
  - fp16 runs only in the planner pool and prices at exactly 1.00x;
  - plan and plan+rescue spend plan tokens, the others none;
  - a fallback or commit happens only after a loop, a commit has an answer;
  - accuracy, loop rate, commits and fallbacks in the table match the lines.

usage: test_eval_cli.py BALLAST_BINARY PROMPTS_JSONL
The model path comes from $BALLAST_SMOLLM2_GGUF (scripts/fetch-model.sh).
"""
import json
import os
import subprocess
import sys
import tempfile

POLICIES = ["direct", "rescue", "plan", "fp16", "auto"]
N = 3


def main():
    ballast, prompts = sys.argv[1], sys.argv[2]
    gguf = os.environ.get("BALLAST_SMOLLM2_GGUF", "")
    if not os.path.isfile(gguf):
        print(f"BALLAST_SMOLLM2_GGUF={gguf!r} is not a file: run scripts/fetch-model.sh")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = os.path.join(tmp, "eval.jsonl")
        cmd = [ballast, "eval", "--executor", gguf, "--planner", gguf, "--prompts", prompts,
               "--limit", str(N), "--policies", ",".join(POLICIES), "--max-tokens", "64",
               "--plan-tokens", "24", "--window", "64", "--ngram", "4", "--min-count", "3",
               "--concurrency", "3", "--calibrate-tokens", "8", "--temperature", "0",
               "--executor-precision", "w4", "--jsonl", jsonl]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=800)
        print(run.stdout)
        if run.returncode != 0:
            print(run.stderr)
            return 1
        lines = [json.loads(l) for l in open(jsonl)]
    fails = []

    def check(cond, what):
        if not cond:
            fails.append(what)

    check(len(lines) == N * len(POLICIES), f"{len(lines)} lines, want {N * len(POLICIES)}")
    for pol in POLICIES:
        mine = [l for l in lines if l["policy"] == pol]
        check(sorted(l["prompt"] for l in mine) == list(range(N)), f"{pol}: prompts")
        for l in mine:
            tag = f"{pol}/{l['prompt']}"
            check(l["finish"] in ("stop", "length", "loop_commit", "loop_fallback_done", "loop"),
                  f"{tag}: finish {l['finish']}")
            if l["ran"] in ("direct", "plan", "fp16"):
                check(l["finish"] not in ("loop_commit", "loop_fallback_done", "loop")
                      and not l["fell_back"], f"{tag}: {l['ran']} acted on a loop")
            if l["ran"] == "fp16":
                check(l["exec_tokens"] == 0 and l["fp16_tokens"] > 0, f"{tag}: fp16 pools")
                check(abs(l["speedup_b1"] - 1) < 1e-9, f"{tag}: fp16 speedup {l['speedup_b1']}")
            else:
                check(l["exec_tokens"] > 0 and l["fp16_tokens"] == 0, f"{tag}: executor ran")
            check((l["plan_tokens"] > 0) == l["ran"].startswith("plan"), f"{tag}: plan tokens")
            if l["fell_back"] or l["finish"] == "loop_commit":
                check(l["loop"] and l["loop_onset"] >= 0, f"{tag}: acted without a loop")
            if l["finish"] == "loop_commit":
                check(l["graded"] is not None and l["failure"] == "commitment", f"{tag}: commit")
            if l["fell_back"]:
                check(l["fallback_tokens"] > 0, f"{tag}: fallback tokens")
            check(l["exec_tokens"] <= 64 and l["reasoning_tokens"] <= 64, f"{tag}: budget")
    acted = [l for l in lines if l["fell_back"] or l["finish"] == "loop_commit"]
    check(sum(l["loop"] for l in lines) >= 3 and acted, "no loops, or rescue never acted")
    # the table adds the lines up
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 12 and cells[0] in POLICIES:
            rows[cells[0]] = cells
    check(sorted(rows) == sorted(POLICIES), f"table rows {sorted(rows)}")
    for pol, cells in rows.items():
        mine = [l for l in lines if l["policy"] == pol]
        acc = 100.0 * sum(l["correct"] for l in mine) / N
        loops = 100.0 * sum(l["loop"] for l in mine) / N
        commits = sum(l["finish"] == "loop_commit" for l in mine)
        fallbacks = sum(l["fell_back"] for l in mine)
        check(cells[2] == f"{acc:.1f}%", f"{pol}: accuracy {cells[2]} vs {acc:.1f}%")
        check(cells[3] == f"{loops:.1f}%", f"{pol}: loop rate {cells[3]} vs {loops:.1f}%")
        check(cells[4] == str(commits) and cells[5] == str(fallbacks), f"{pol}: counts")
    check(rows.get("fp16", [""] * 12)[9] == "1.00x", "fp16 prices at 1.00x at batch 1")
    for f in fails:
        print("FAIL:", f)
    print(f"{len(lines)} requests checked, {len(fails)} failures")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
