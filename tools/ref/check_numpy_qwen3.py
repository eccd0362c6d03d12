#!/usr/bin/env python3
"""Cross-check a Qwen3 reference file with a second, plain-numpy forward pass.

Usage: python3 tools/ref/check_numpy_qwen3.py --out tests/data
       (checks every tests/data/<name>.ref.safetensors that has a folder
        tests/data/<name>/ with a Qwen3 config.json; writes nothing)

Why: the .ref.safetensors logits come from transformers. This script
recomputes them from the checkpoint files with ~60 lines of numpy written
straight from the Qwen3 description in shared/design/FORMATS.md (RMSNorm
without 1+w, per-head q_norm/k_norm before RoPE, rotate_half RoPE, GQA,
causal softmax attention, SiLU MLP), so a mistake in how the references were
produced (or a transformers quirk) would show up as a mismatch. GPTQ folders
are dequantized with the same numpy code as make_tiny_gptq.py uses.
It shares no code with ballast.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file as np_load_file
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def load_tensors(folder):
    """All tensors of a checkpoint folder as float32 numpy (bf16 handled via torch)."""
    import torch
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                out[k] = t.float().numpy() if t.is_floating_point() else t.numpy()
    return out


def dense_weights(folder, cfg):
    t = load_tensors(folder)
    qc = cfg.get("quantization_config")
    if qc:
        from make_tiny_gptq import dequantize_gptq
        for k in [k for k in t if k.endswith(".qweight")]:
            base = k[: -len(".qweight")]
            w = dequantize_gptq(t.pop(base + ".qweight"), t.pop(base + ".qzeros"),
                                t.pop(base + ".scales").astype(np.float16), t.pop(base + ".g_idx"),
                                qc["bits"], qc["checkpoint_format"])
            t[base + ".weight"] = w.T.astype(np.float32)  # dequant gives [in, out]
    if "lm_head.weight" not in t:
        t["lm_head.weight"] = t["model.embed_tokens.weight"]
    return t


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, theta):
    # x: [L, heads, d]; rotate_half pairs dim j with j + d/2
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None].astype(np.float64) * inv[None, :]          # [L, d/2]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return (x * cos + rot * sin).astype(np.float32)


def forward(t, cfg, ids):
    H, nh, nkv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    L = len(ids)
    pos = np.arange(L)
    x = t["model.embed_tokens.weight"][ids].astype(np.float32)
    mask = np.triu(np.full((L, L), -np.inf, dtype=np.float32), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, t[p + "input_layernorm.weight"], eps)
        q = (h @ t[p + "self_attn.q_proj.weight"].T).reshape(L, nh, hd)
        k = (h @ t[p + "self_attn.k_proj.weight"].T).reshape(L, nkv, hd)
        v = (h @ t[p + "self_attn.v_proj.weight"].T).reshape(L, nkv, hd)
        q = rope(rms_norm(q, t[p + "self_attn.q_norm.weight"], eps), pos, theta)
        k = rope(rms_norm(k, t[p + "self_attn.k_norm.weight"], eps), pos, theta)
        rep = nh // nkv
        att = np.empty((L, nh, hd), dtype=np.float32)
        for hh in range(nh):
            kv = hh // rep
            s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att[:, hh, :] = s @ v[:, kv, :]
        x = x + att.reshape(L, nh * hd) @ t[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, t[p + "post_attention_layernorm.weight"], eps)
        g = h @ t[p + "mlp.gate_proj.weight"].T
        u = h @ t[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ t[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, t["model.norm.weight"], eps)
    return x @ t["lm_head.weight"].T


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="data directory (tests/data)")
    args = ap.parse_args()
    worst_all = 0.0
    for ref_path in sorted(glob.glob(os.path.join(args.out, "*.ref.safetensors"))):
        folder = ref_path[: -len(".ref.safetensors")]
        cfg_path = os.path.join(folder, "config.json")
        if not os.path.exists(cfg_path):
            continue
        cfg = json.load(open(cfg_path))
        if cfg.get("model_type") != "qwen3":
            continue
        t = dense_weights(folder, cfg)
        ref = np_load_file(ref_path)
        worst = 0.0
        i = 0
        while f"seq{i}.ids" in ref:
            got = forward(t, cfg, ref[f"seq{i}.ids"].astype(np.int64))
            want = ref[f"seq{i}.logits"]
            assert (got.argmax(-1) == want.argmax(-1)).all(), f"{ref_path} seq{i}: argmax differs"
            worst = max(worst, float(np.abs(got - want).max()))
            i += 1
        print(f"{os.path.basename(ref_path):50s} {i} seqs, max |numpy - ref| = {worst:.2e}")
        worst_all = max(worst_all, worst)
    assert worst_all < 1e-3, f"numpy forward disagrees with references: {worst_all}"
    print("OK")


if __name__ == "__main__":
    main()
