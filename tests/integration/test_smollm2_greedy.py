#!/usr/bin/env python3
"""Greedy generation on the real demo model equals transformers'.

tools/ref/smollm2_greedy.py ran Hugging Face transformers on the same GGUF
(SmolLM2-135M-Instruct Q4_1, dequantized to fp32) for three GSM8K prompts and
recorded the prompt ids and 48 greedy tokens. Here `ballast generate --json`
must tokenize each prompt to the same ids and produce the same tokens for at
least the first 32 (or all of them, if transformers stopped at EOS sooner),
at w4 (the GGUF's own Q4_1 blocks, exact) and at fp16 (dequantized).

usage: test_smollm2_greedy.py BALLAST_BINARY REFERENCE_JSON
The model path comes from $BALLAST_SMOLLM2_GGUF (scripts/fetch-model.sh).
"""
import json
import os
import subprocess
import sys

MIN_MATCH = 32


def main():
    ballast, ref_path = sys.argv[1], sys.argv[2]
    gguf = os.environ.get("BALLAST_SMOLLM2_GGUF", "")
    if not os.path.isfile(gguf):
        print(f"BALLAST_SMOLLM2_GGUF={gguf!r} is not a file: run scripts/fetch-model.sh")
        return 1
    ref = json.load(open(ref_path))
    failures = 0
    for precision in ("auto", "fp16"):
        for i, case in enumerate(ref["cases"]):
            want = case["output_ids"]
            cmd = [ballast, "generate", "--model", gguf, "--prompt", case["prompt"],
                   "--precision", precision, "--max-tokens", str(len(want)), "--json"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                print(f"case {i} {precision}: exit {out.returncode}: {out.stderr.strip()}")
                failures += 1
                continue
            got = json.loads(out.stdout)
            if got["prompt_ids"] != case["prompt_ids"]:
                print(f"case {i} {precision}: prompt tokenized differently")
                failures += 1
                continue
            n = 0
            while n < min(len(got["ids"]), len(want)) and got["ids"][n] == want[n]:
                n += 1
            need = min(MIN_MATCH, len(want))
            ok = n >= need
            print(f"case {i} {precision:4s}: {n}/{len(want)} tokens match transformers "
                  f"({got['decode_tok_s']:.1f} tok/s) {'ok' if ok else 'FAIL'}")
            if not ok:
                print(f"  want {want}\n  got  {got['ids']}")
                failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
