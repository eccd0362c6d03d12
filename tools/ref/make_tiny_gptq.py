#!/usr/bin/env python3
"""Make GPTQ-format copies of tests/data/tiny-qwen3 and their reference logits.

Usage: python3 tools/ref/make_tiny_gptq.py --out tests/data
       (needs OUT/tiny-qwen3 from make_tiny_qwen3.py)

Creates, under OUT, one folder per variant plus OUT/<variant>.ref.safetensors:
  tiny-qwen3-gptq-w4-g32-asym-actorder-v1   4 bit, group 32, asym, desc_act, format gptq (v1)
  tiny-qwen3-gptq-w2-g32-sym-v1             2 bit, group 32, sym,  format gptq (v1)
  tiny-qwen3-gptq-w4-gall-sym-v2            4 bit, group_size -1 (one group), sym, format gptq_v2
  tiny-qwen3-gptq-w2-g64-asym-v2            2 bit, group 64, asym, format gptq_v2

Each folder: config.json (the tiny-qwen3 config plus "quantization_config"),
quantize_config.json (same fields), and one model.safetensors holding
  model.embed_tokens.weight, all *norm.weight, lm_head.weight   float16
  <linear>.qweight  int32 [in*bits/32, out]
  <linear>.qzeros   int32 [groups, out*bits/32]
  <linear>.scales   float16 [groups, out]
  <linear>.g_idx    int32 [in]
for every q/k/v/o_proj and gate/up/down_proj (no <linear>.weight).

The .ref.safetensors has the same layout as tiny-qwen3.ref.safetensors
("seq{i}.ids" int32 [L], "seq{i}.logits" float32 [L, vocab], same three id
sequences): logits of a float32 transformers Qwen3ForCausalLM (eager) loaded
with the numpy-dequantized linears and the fp16 non-linear weights upcast.

The checkpoint format (written from the GPTQ / AutoGPTQ / GPTQModel
conventions, see shared/design/FORMATS.md):
  * Linear weight W is [out, in]; GPTQ works on its transpose, [in, out].
  * q[k, n] in 0..2^bits-1 for input feature k, output feature n.
  * qweight word r of column n holds q[r*(32/bits) + j, n] at bit bits*j
    (element 0 in the low bits). qzeros packs zero[g, n] along n the same way.
  * g_idx[k] = group of input feature k. Without desc_act that is k // gs.
    With desc_act (act-order) the quantizer visits input features in a
    permuted order perm and the i-th visited feature gets group i // gs, so
    g_idx[perm[i]] = i // gs; qweight rows stay in the original k order.
    (Here perm is a fixed random permutation: there is no calibration
    Hessian, and a random one makes groups maximally non-contiguous.)
  * v1 ("gptq") stores zero - 1 in qzeros; "gptq_v2" stores zero.
    Dequantize: w[k, n] = scales[g, n] * (q[k, n] - zero[g, n]), g = g_idx[k].
  * group_size -1 means one group over all `in` rows: groups = 1, g_idx = 0.

Quantizer: round-to-nearest (no GPTQ error feedback, which does not change the
format), following the reference GPTQ quantizer's range rules per group and
output column:
  asym: lo = min(min(w), 0), hi = max(max(w), 0), scale = (hi - lo) / maxq,
        zero = round(-lo / scale)   (so 0.0 is exactly representable)
  sym:  a = max|w|, scale = 2a / maxq, zero = 2^(bits-1)
  q = clamp(round(w / scale) + zero, 0, maxq), maxq = 2^bits - 1.
Scales are rounded to fp16 before q is computed, so the stored scales are the
ones q was made with. In v1 a zero of 0 cannot be stored (zero - 1 would
underflow), so v1 asym clamps zero to >= 1 (our random data never needs it).

Independence from ballast: packing and dequantizing are plain numpy written
here from the format description; reference logits come from transformers'
Qwen3 implementation. A self-check unpacks every qweight/qzeros again with
independent per-bit-field code and asserts the integers round-trip.
"""

import argparse
import json
import os

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file as torch_save_file

SEED = 4321
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

VARIANTS = [
    # name,                                      bits, group_size, sym,   desc_act, checkpoint_format
    ("tiny-qwen3-gptq-w4-g32-asym-actorder-v1", 4, 32, False, True, "gptq"),
    ("tiny-qwen3-gptq-w2-g32-sym-v1", 2, 32, True, False, "gptq"),
    ("tiny-qwen3-gptq-w4-gall-sym-v2", 4, -1, True, False, "gptq_v2"),
    ("tiny-qwen3-gptq-w2-g64-asym-v2", 2, 64, False, False, "gptq_v2"),
]


# ----------------------------------------------------------------- packing

def pack_rows(q, bits):
    """Pack uint values q [R, C] along axis 0: out[r, c] holds q[r*per + j, c] at bit bits*j."""
    per = 32 // bits
    assert q.shape[0] % per == 0
    q = q.astype(np.uint32).reshape(q.shape[0] // per, per, q.shape[1])
    words = np.zeros((q.shape[0], q.shape[2]), dtype=np.uint32)
    for j in range(per):
        words |= q[:, j, :] << np.uint32(bits * j)
    return words.view(np.int32)


def pack_cols(z, bits):
    """Pack uint values z [R, C] along axis 1: out[r, c] holds z[r, c*per + j] at bit bits*j."""
    return np.ascontiguousarray(pack_rows(np.ascontiguousarray(z.T), bits).T)


def unpack_rows(words, bits):
    """Inverse of pack_rows: int32 [R/per, C] -> int64 [R, C]."""
    w = words.view(np.uint32).astype(np.uint64)
    per = 32 // bits
    shifts = (bits * np.arange(per, dtype=np.uint64))[None, :, None]
    q = (w[:, None, :] >> shifts) & np.uint64((1 << bits) - 1)
    return q.reshape(w.shape[0] * per, w.shape[1]).astype(np.int64)


def unpack_cols(words, bits):
    return np.ascontiguousarray(unpack_rows(np.ascontiguousarray(words.T), bits).T)


def dequantize_gptq(qweight, qzeros, scales, g_idx, bits, checkpoint_format):
    """Plain dequantize of one GPTQ linear -> float32 [in, out] (transpose of nn.Linear.weight)."""
    q = unpack_rows(qweight, bits)                       # [in, out]
    z = unpack_cols(qzeros, bits)                        # [groups, out]
    if checkpoint_format == "gptq":
        z = z + 1                                        # v1 stores zero - 1
    else:
        assert checkpoint_format == "gptq_v2"
    g = g_idx.astype(np.int64)
    s = scales.astype(np.float32)
    return s[g, :] * (q - z[g, :]).astype(np.float32)


# ----------------------------------------------------------- quantization

def group_index(in_features, group_size, desc_act, rng):
    gs = in_features if group_size == -1 else group_size
    if desc_act:
        perm = rng.permutation(in_features)
        g_idx = np.empty(in_features, dtype=np.int32)
        g_idx[perm] = np.arange(in_features) // gs
    else:
        g_idx = (np.arange(in_features) // gs).astype(np.int32)
    return g_idx, in_features // gs


def quantize_linear(weight_out_in, bits, group_size, sym, desc_act, fmt, rng):
    """RTN-quantize one nn.Linear weight [out, in]; return checkpoint tensors and integer q."""
    w = weight_out_in.T.astype(np.float32)               # [in, out]
    n_in, n_out = w.shape
    maxq = (1 << bits) - 1
    g_idx, groups = group_index(n_in, group_size, desc_act, rng)

    scales = np.zeros((groups, n_out), dtype=np.float16)
    zeros = np.zeros((groups, n_out), dtype=np.int64)
    q = np.zeros((n_in, n_out), dtype=np.int64)
    for g in range(groups):
        rows = np.nonzero(g_idx == g)[0]
        wg = w[rows, :]
        if sym:
            a = np.abs(wg).max(0)
            a = np.where(a == 0, 1.0, a)
            s = (2 * a / maxq).astype(np.float16)
            z = np.full(n_out, 1 << (bits - 1), dtype=np.int64)
        else:
            lo = np.minimum(wg.min(0), 0.0)
            hi = np.maximum(wg.max(0), 0.0)
            same = (hi - lo) == 0
            lo, hi = np.where(same, -1.0, lo), np.where(same, 1.0, hi)
            s = ((hi - lo) / maxq).astype(np.float16)
            z = np.round(-lo / s.astype(np.float32)).astype(np.int64)
            z = np.clip(z, 1 if fmt == "gptq" else 0, maxq)
        scales[g] = s
        zeros[g] = z
        q[rows, :] = np.clip(np.round(wg / s.astype(np.float32)[None, :]) + z[None, :], 0, maxq)

    stored_zeros = zeros - 1 if fmt == "gptq" else zeros
    assert stored_zeros.min() >= 0 and stored_zeros.max() <= maxq
    tensors = {
        "qweight": pack_rows(q, bits),
        "qzeros": pack_cols(stored_zeros, bits),
        "scales": scales,
        "g_idx": g_idx,
    }
    return tensors, q, zeros


def self_check_packing(tensors, q, zeros, bits, fmt, sym):
    """Read our own packing back with independent bit-field code; integers must round-trip."""
    qw = tensors["qweight"].view(np.uint32)
    per = 32 // bits
    mask = (1 << bits) - 1
    n_in, n_out = q.shape
    assert tensors["qweight"].shape == (n_in * bits // 32, n_out) and tensors["qweight"].dtype == np.int32
    for k in range(n_in):                  # explicit element-by-element read
        word = qw[k // per, :]
        got = (word >> np.uint32(bits * (k % per))) & np.uint32(mask)
        assert np.array_equal(got.astype(np.int64), q[k]), f"qweight row {k} does not round-trip"
    qz = tensors["qzeros"].view(np.uint32)
    assert qz.shape == (zeros.shape[0], n_out * bits // 32) and tensors["qzeros"].dtype == np.int32
    for n in range(n_out):
        got = (qz[:, n // per] >> np.uint32(bits * (n % per))) & np.uint32(mask)
        want = zeros[:, n] - (1 if fmt == "gptq" else 0)
        assert np.array_equal(got.astype(np.int64), want), f"qzeros column {n} does not round-trip"
    if sym:  # every field holds the same value; e.g. 2-bit v1 -> 0x55555555, 4-bit v2 -> 0x88888888
        field = (1 << (bits - 1)) - (1 if fmt == "gptq" else 0)
        word = sum(field << (bits * j) for j in range(per))
        assert (qz == np.uint32(word)).all(), f"sym qzeros not all {word:#010x}"
    assert np.array_equal(unpack_rows(tensors["qweight"], bits), q)


# ------------------------------------------------------------------ model

def read_checkpoint(folder):
    """All tensors of a HF folder as torch tensors (any number of shards)."""
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as st:
                for k in st.keys():
                    out[k] = st.get_tensor(k)
    return out


def reference_logits(config_dict, dense_fp32, seqs):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    config = Qwen3Config(**cfg)
    config._attn_implementation = "eager"
    model = Qwen3ForCausalLM(config).float().eval()
    missing, unexpected = model.load_state_dict(dense_fp32, strict=False)
    assert not unexpected and all(m == "lm_head.weight" and config.tie_word_embeddings for m in missing), \
        (missing, unexpected)
    out = {}
    with torch.no_grad():
        for i, ids in enumerate(seqs):
            out[f"seq{i}.ids"] = ids.to(torch.int32).contiguous()
            out[f"seq{i}.logits"] = model(input_ids=ids[None].long(), use_cache=False).logits[0].float().contiguous()
    return out


def make_variant(out_dir, src_cfg, src, seqs, name, bits, group_size, sym, desc_act, fmt, seed):
    rng = np.random.default_rng(seed)
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):
        if f.endswith(".safetensors") or f.endswith(".json"):
            os.remove(os.path.join(folder, f))

    qcfg = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": sym,
            "desc_act": desc_act, "checkpoint_format": fmt, "lm_head": False}
    ckpt, dense, rel_err = {}, {}, []
    for key in sorted(src):
        t = src[key]
        base = key[: -len(".weight")]
        if any(base.endswith(l) for l in LINEARS):
            w = t.float().numpy()
            tensors, q, zeros = quantize_linear(w, bits, group_size, sym, desc_act, fmt, rng)
            self_check_packing(tensors, q, zeros, bits, fmt, sym)
            for suffix, v in tensors.items():
                ckpt[f"{base}.{suffix}"] = v
            wd = dequantize_gptq(tensors["qweight"], tensors["qzeros"], tensors["scales"],
                                 tensors["g_idx"], bits, fmt)
            dense[key] = torch.from_numpy(np.ascontiguousarray(wd.T))   # back to [out, in]
            rel_err.append(np.linalg.norm(wd.T - w) / np.linalg.norm(w))
        else:
            h = t.to(torch.float16)
            ckpt[key] = h.numpy()
            dense[key] = h.float()
    np_save_file(ckpt, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})

    cfg = dict(src_cfg)
    cfg["quantization_config"] = qcfg
    cfg["torch_dtype"] = cfg["dtype"] = "float16"
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(folder, "quantize_config.json"), "w") as f:
        json.dump(qcfg, f, indent=2, sort_keys=True)
        f.write("\n")

    ref = reference_logits(cfg, dense, seqs)
    ref_path = os.path.join(out_dir, name + ".ref.safetensors")
    torch_save_file(ref, ref_path, metadata={  # one key: several would be written in hash order
        "source": f"{name}: numpy GPTQ dequantize -> fp32 transformers Qwen3ForCausalLM, eager attention"})
    return folder, ref_path, ref, float(np.mean(rel_err))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (tests/data)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    src_dir = os.path.join(args.out, "tiny-qwen3")
    with open(os.path.join(src_dir, "config.json")) as f:
        src_cfg = json.load(f)
    src = read_checkpoint(src_dir)
    # Same three id sequences as tiny-qwen3.ref.safetensors, read from there.
    with safe_open(os.path.join(args.out, "tiny-qwen3.ref.safetensors"), "pt") as st:
        seqs = [st.get_tensor(f"seq{i}.ids") for i in range(3)]
        base_logits = [st.get_tensor(f"seq{i}.logits") for i in range(3)]

    for vi, (name, bits, gs, sym, act, fmt) in enumerate(VARIANTS):
        folder, ref_path, ref, err = make_variant(args.out, src_cfg, src, seqs, name, bits, gs, sym,
                                                  act, fmt, SEED + vi)
        lg = torch.cat([ref[f"seq{i}.logits"] for i in range(3)])
        bl = torch.cat(base_logits)
        agree = (lg.argmax(-1) == bl.argmax(-1)).float().mean().item()
        spread = (lg.max(-1).values - lg.min(-1).values)
        print(f"{name}: model.safetensors {os.path.getsize(os.path.join(folder, 'model.safetensors')):,d} B, "
              f"ref {os.path.getsize(ref_path):,d} B")
        print(f"  weight rel. error {err:.3f}; logits max-min per pos {spread.min():.2f}..{spread.max():.2f}; "
              f"max |logit - unquantized| {(lg - bl).abs().max():.2f}; argmax agrees with unquantized {agree:.0%}")


if __name__ == "__main__":
    main()
