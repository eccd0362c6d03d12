#!/usr/bin/env python3
"""Test vectors for the GGUF and safetensors parsers (model/gguf.c,
model/safetensors.c), written with the reference Python packages so the C
code is checked against them rather than against itself.

  tests/data/gguf/vectors.gguf
      GGUF v3 written by gguf.GGUFWriter: one metadata key of every value type
      (arrays of ints, floats, strings and arrays of string arrays included),
      general.alignment = 64, and one tensor per type ballast reads (F32, F16,
      BF16, Q8_0, Q4_0, Q4_1). Each non-F32 tensor <name> has a companion F32
      tensor <name>.ref holding gguf.quants.dequantize(<name>): the C
      dequantizer must reproduce it.
  tests/data/safetensors/dtypes.safetensors
      every dtype (written by safetensors.torch), plus a scalar and an empty
      tensor and __metadata__.
  tests/data/safetensors/sharded/
      two shards and model.safetensors.index.json.

  --check-writer FILE
      checks that a file written by the C writer (st_writer_*, see
      tests/unit/model/test_safetensors.c, which writes the golden file when
      BALLAST_UPDATE_GOLDEN=1) loads in the python safetensors package with
      the expected names, dtypes, shapes and values.

Run from the repository root: python3 tools/ref/make_format_vectors.py
Needs numpy, gguf, torch, safetensors. Output is deterministic.
"""
import json
import os
import sys

import numpy as np

GGUF_DIR = "tests/data/gguf"
ST_DIR = "tests/data/safetensors"

# Metadata expected by tests/unit/model/test_gguf.c (keep the two in step).
NESTED = [["a", "bc"], ["", "déf", "g"]]
STRINGS = ["hello", "", "wörld", "<|im_end|>"]


def random_blocks(rng, qtype, n_blocks):
    """Raw quantized blocks with finite scales and random quants, so every
    nibble/byte position and sign is exercised (not only what quantize()
    happens to produce)."""
    import gguf
    _, bsize = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, bsize), dtype=np.uint8)
    d = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
    raw[:, 0:2] = d.view(np.uint8).reshape(n_blocks, 2)
    if qtype == gguf.GGMLQuantizationType.Q4_1:
        m = (rng.standard_normal(n_blocks) * 0.3).astype(np.float16)
        raw[:, 2:4] = m.view(np.uint8).reshape(n_blocks, 2)
    return raw


def make_gguf():
    import gguf
    from gguf import GGMLQuantizationType as Q
    rng = np.random.default_rng(1234)
    w = gguf.GGUFWriter(os.path.join(GGUF_DIR, "vectors.gguf"), "testarch")
    w.add_custom_alignment(64)
    V = gguf.GGUFValueType
    w.add_key_value("t.u8", 200, V.UINT8)
    w.add_key_value("t.i8", -100, V.INT8)
    w.add_key_value("t.u16", 60000, V.UINT16)
    w.add_key_value("t.i16", -30000, V.INT16)
    w.add_key_value("t.u32", 4000000000, V.UINT32)
    w.add_key_value("t.i32", -2000000000, V.INT32)
    w.add_key_value("t.f32", 0.15625, V.FLOAT32)
    w.add_key_value("t.bool", True, V.BOOL)
    w.add_key_value("t.str", "héllo gguf", V.STRING)
    w.add_key_value("t.u64", 1 << 40, V.UINT64)
    w.add_key_value("t.i64", -(1 << 40), V.INT64)
    w.add_key_value("t.f64", 2.5, V.FLOAT64)
    w.add_key_value("t.small_i32", 7, V.INT32)
    w.add_array("t.arr_i32", [-5, 0, 5, 1 << 30])
    w.add_key_value("t.arr_f32", [0.5, -1.25, 3.0], V.ARRAY, V.FLOAT32)
    w.add_array("t.arr_str", STRINGS)
    w.add_array("t.arr_nested", NESTED)

    # F32 with a known pattern; F16/BF16 with special values.
    f32 = (np.arange(3 * 5, dtype=np.float32) * 0.25 - 1.0).reshape(3, 5)
    w.add_tensor("f32", f32)
    specials = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 2.0**-24, 2.0**-14, np.inf, -np.inf,
                         np.nan, 0.1, -3.3e-5, 1000.5, 7.0, -7.0, 0.33], dtype=np.float32)
    f16 = specials.astype(np.float16).reshape(2, 8)
    w.add_tensor("f16", f16)
    w.add_tensor("f16.ref", f16.astype(np.float32))
    bf_src = np.concatenate([specials, [3.0e38, -1.0e-38, 1.0e-40, 12345.678]]).astype(np.float32)
    bf16 = gguf.quants.quantize(bf_src.reshape(4, 5), Q.BF16)
    w.add_tensor("bf16", bf16, raw_dtype=Q.BF16)
    w.add_tensor("bf16.ref", gguf.quants.dequantize(bf16, Q.BF16))

    # Quantized: (rows, row bytes) raw blocks; ne = {32*blocks_per_row, rows}.
    for name, qt, rows, bpr in (("q8_0", Q.Q8_0, 3, 2), ("q4_0", Q.Q4_0, 2, 3),
                                ("q4_1", Q.Q4_1, 2, 2)):
        raw = random_blocks(rng, qt, rows * bpr).reshape(rows, -1)
        w.add_tensor(name, raw, raw_dtype=qt)
        w.add_tensor(name + ".ref", gguf.quants.dequantize(raw, qt))
    # A quantized tensor from real data too (what llama.cpp would produce).
    x = rng.standard_normal((2, 64)).astype(np.float32)
    q = gguf.quants.quantize(x, Q.Q8_0)
    w.add_tensor("q8_0.quantized", q, raw_dtype=Q.Q8_0)
    w.add_tensor("q8_0.quantized.ref", gguf.quants.dequantize(q, Q.Q8_0))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_gguf():
    """Read the file back with gguf.GGUFReader as a sanity check."""
    import gguf
    r = gguf.GGUFReader(os.path.join(GGUF_DIR, "vectors.gguf"))
    names = [t.name for t in r.tensors]
    assert len(names) == len(set(names)) == 13, names
    f = r.fields["t.arr_str"]
    assert [bytes(f.parts[i]).decode() for i in f.data] == STRINGS


def make_safetensors():
    import torch
    from safetensors.torch import save_file
    floats = [-1.5, -0.5, 0.0, 0.25, 1.0, 2.5]
    ints = [-3, -1, 0, 1, 2, 100]
    t = {
        "t_f32": torch.tensor(floats, dtype=torch.float32).reshape(2, 3),
        "t_f16": torch.tensor(floats, dtype=torch.float16).reshape(2, 3),
        "t_bf16": torch.tensor(floats, dtype=torch.bfloat16).reshape(2, 3),
        "t_f64": torch.tensor(floats, dtype=torch.float64).reshape(2, 3),
        "t_i64": torch.tensor([-(1 << 40), -1, 0, 1, 2, 1 << 40], dtype=torch.int64).reshape(2, 3),
        "t_i32": torch.tensor(ints, dtype=torch.int32).reshape(2, 3),
        "t_i16": torch.tensor(ints, dtype=torch.int16).reshape(2, 3),
        "t_i8": torch.tensor(ints, dtype=torch.int8).reshape(2, 3),
        "t_u8": torch.tensor([0, 1, 2, 3, 254, 255], dtype=torch.uint8).reshape(2, 3),
        "t_bool": torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool).reshape(2, 3),
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        "empty": torch.zeros((0, 3), dtype=torch.float32),
        "t_3d": torch.arange(24, dtype=torch.int32).reshape(2, 3, 4),
    }
    save_file(t, os.path.join(ST_DIR, "dtypes.safetensors"),
              metadata={"format": "pt"})  # one key: Rust orders map keys randomly

    sd = os.path.join(ST_DIR, "sharded")
    os.makedirs(sd, exist_ok=True)
    shards = {
        "model-00001-of-00002.safetensors": {
            "model.embed.weight": torch.arange(8, dtype=torch.float16).reshape(4, 2),
            "model.layers.0.w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        },
        "model-00002-of-00002.safetensors": {
            "model.layers.1.w": torch.tensor([[5.0, 6.0], [7.0, 8.0]], dtype=torch.bfloat16),
            "lm_head.weight": torch.arange(8, dtype=torch.float32).reshape(2, 4) * -1,
        },
    }
    weight_map, total = {}, 0
    for fname, tensors in shards.items():
        save_file(tensors, os.path.join(sd, fname), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(sd, "model.safetensors.index.json"), "w") as fp:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  fp, indent=2)
        fp.write("\n")


def check_writer(path):
    """The C writer's output (see test_safetensors.c: writer_expected) must
    load in the reference package with these contents."""
    import torch
    from safetensors import safe_open
    want = {
        "b.weight": torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]).reshape(2, 3),
        "a.bias": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float16),
        "c.scalar": torch.tensor(7, dtype=torch.int32),
        'esc"aped\\name': torch.tensor([9, 8, 7], dtype=torch.int8),
        "e.empty": torch.zeros((0, 4), dtype=torch.uint8),
        "d.bf": torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16),
        "f.mask": torch.tensor([True, False, True]),
        "g.i64": torch.tensor([-1, 1 << 40], dtype=torch.int64),
        "h.f64": torch.tensor([0.1, -1e300], dtype=torch.float64),
        "i.i16": torch.tensor([-32768, 32767], dtype=torch.int16),
    }
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}, f.metadata()
        assert sorted(f.keys()) == sorted(want), sorted(f.keys())
        for k, v in want.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape, (k, got.dtype, got.shape)
            assert torch.equal(got, v), (k, got, v)
    with open(path, "rb") as fp:
        n = int.from_bytes(fp.read(8), "little")
        header = fp.read(n)
    assert (8 + n) % 8 == 0, "data region not 8-byte aligned"
    keys = list(json.loads(header))
    assert keys[0] == "__metadata__" and keys[1:] == sorted(keys[1:]), keys
    print(f"{path}: loads in safetensors {__import__('safetensors').__version__}, contents match")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check-writer":
        check_writer(sys.argv[2])
        return
    os.makedirs(GGUF_DIR, exist_ok=True)
    os.makedirs(ST_DIR, exist_ok=True)
    make_gguf()
    check_gguf()
    make_safetensors()
    golden = os.path.join(ST_DIR, "writer_golden.safetensors")
    if os.path.exists(golden):
        check_writer(golden)


if __name__ == "__main__":
    main()
