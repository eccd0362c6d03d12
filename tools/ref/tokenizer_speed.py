#!/usr/bin/env python3
"""Single-thread encode throughput: ballast's tokenizer next to HF tokenizers.

Both encode the same strings: the committed tokenizer corpus
(tests/data/tokenizer/vectors.bin.gz, 17,434 strings), repeated --repeat
times. ballast's figure is `ballast tokenize --stats` (time inside tok_encode
only, one thread); HF's is time inside Tokenizer.encode per string and inside
encode_batch with RAYON_NUM_THREADS=1 (one thread, less Python overhead), with
add_special_tokens=False and the same special-token parsing.

usage: tokenizer_speed.py BALLAST_BINARY [--tokenizer tokenizer.json] [--repeat N]
Needs: tokenizers (PyPI).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from test_tokenize_cli import read_vectors  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ballast")
    ap.add_argument("--tokenizer", default=os.path.join(
        ROOT, "..", "shared", "models", "qwen3-tokenizer", "tokenizer.json"))
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    from tokenizers import Tokenizer
    texts = [t.decode() for f, t, _, _ in
             read_vectors(os.path.join(ROOT, "tests", "data", "tokenizer", "vectors.bin.gz"))
             if f & 1] * a.repeat
    nbytes = sum(len(t.encode()) for t in texts)

    lines = "".join(json.dumps(t) + "\n" for t in texts).encode()
    out = subprocess.run([a.ballast, "tokenize", "--tokenizer", a.tokenizer, "--stats"],
                         input=lines, capture_output=True, check=True)
    m = re.search(r"([\d.]+) MB/s", out.stderr.decode())
    ballast_mbs = float(m.group(1))

    tok = Tokenizer.from_file(a.tokenizer)
    t0 = time.perf_counter()
    for t in texts:
        tok.encode(t, add_special_tokens=False)
    hf_single = nbytes / (time.perf_counter() - t0) / 1e6
    t0 = time.perf_counter()
    tok.encode_batch(texts, add_special_tokens=False)
    hf_batch = nbytes / (time.perf_counter() - t0) / 1e6

    print(f"corpus: {len(texts)} strings, {nbytes / 1e6:.2f} MB ({a.repeat}x the test corpus)")
    print(f"ballast tok_encode, 1 thread:           {ballast_mbs:8.2f} MB/s")
    print(f"HF tokenizers encode(), 1 thread:       {hf_single:8.2f} MB/s")
    print(f"HF tokenizers encode_batch(), 1 thread: {hf_batch:8.2f} MB/s")


if __name__ == "__main__":
    main()
