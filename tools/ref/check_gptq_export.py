#!/usr/bin/env python3
"""Check that `ballast quantize` writes GPTQ checkpoints other readers agree on.

Quantizes tests/data/tiny-qwen3 with ballast at several settings, then reads
each output folder with the plain numpy GPTQ dequantizer of make_tiny_gptq.py
(written from the GPTQ format description, not from ballast), computes
transformers' fp32 logits on the dequantized weights, and runs ballast's
parity test binary on the folder against those logits.

usage: check_gptq_export.py BUILD_DIR     (needs torch, transformers, safetensors)
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_gptq import dequantize_gptq, reference_logits  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")


def dense_from_gptq(folder):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    q = cfg["quantization_config"]
    t = load_file(os.path.join(folder, "model.safetensors"))
    dense = {}
    for name in t:
        if name.endswith(".qweight"):
            p = name[: -len(".qweight")]
            w = dequantize_gptq(t[p + ".qweight"], t[p + ".qzeros"], t[p + ".scales"],
                                t[p + ".g_idx"], q["bits"], q["checkpoint_format"])
            dense[p + ".weight"] = torch.from_numpy(np.ascontiguousarray(w.T))
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            dense[name] = torch.from_numpy(t[name].astype(np.float32))
    return cfg, dense


def main():
    build = sys.argv[1]
    ballast = os.path.join(build, "tools", "ballast")
    parity = os.path.join(build, "tests", "unit", "model", "test_parity")
    ids = load_file(os.path.join(DATA, "tiny-qwen3.ref.safetensors"))
    seqs = [torch.from_numpy(ids[f"seq{i}.ids"]) for i in range(3)]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for bits, gs, sym in [(4, 32, False), (4, 128, True), (2, 64, False), (2, 32, True)]:
            name = f"q{bits}-g{gs}-{'sym' if sym else 'asym'}"
            out = os.path.join(tmp, name)
            cmd = [ballast, "quantize", "--in", os.path.join(DATA, "tiny-qwen3"), "--out", out,
                   "--bits", str(bits), "--group-size", str(gs), "--method", "rtn"] + (["--sym"] if sym else [])
            subprocess.run(cmd, check=True)
            cfg, dense = dense_from_gptq(out)
            save_file(reference_logits(cfg, dense, seqs), out + ".ref.safetensors")
            r = subprocess.run([parity, tmp, name], capture_output=True, text=True)
            print(r.stderr.strip().splitlines()[-1], "<-", name)
            failures += r.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
