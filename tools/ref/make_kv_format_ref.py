#!/usr/bin/env python3
"""Reference vectors for the KV cache encodings (kvcache/kv_format.h).

E4M3: PyTorch's torch.float8_e4m3fn conversion (round to nearest even,
saturating to +-448 in the PyTorch versions this was made with) decodes all
256 codes and encodes a fixed set of fp32 inputs: every code's value, every
midpoint between neighbours (ties) and the floats just either side of it,
log-uniform random magnitudes from 2^-12 to 600, and specials.
E2M1: PyTorch cannot convert to float4_e2m1fn_x2, so a brute-force nearest
search over the 8 magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to the even
code, magnitudes past 6 saturating to 6, is the reference (a different
algorithm from the C threshold chain).

Writes tests/data/kv_format/e4m3.txt and e2m1.txt, one "input_bits code"
pair per line in hex ("dec" lines: code value_bits). Deterministic:
re-running reproduces the files byte for byte.
    python3 tools/ref/make_kv_format_ref.py
"""
import os
import struct

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "kv_format")


def bits(f):
    return struct.unpack("<I", struct.pack("<f", float(f)))[0]


def f32(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def neighbours(x):
    x = np.float32(x)
    return [np.nextafter(x, np.float32(-np.inf)), x, np.nextafter(x, np.float32(np.inf))]


def e4m3_inputs(rng):
    codes = torch.arange(0, 256, dtype=torch.int32).to(torch.uint8)
    vals = codes.view(torch.float8_e4m3fn).float().numpy()
    pos = sorted(v for v in vals[:127] if np.isfinite(v))  # 0x00..0x7E
    xs = []
    for v in pos:
        xs += neighbours(v) + neighbours(-v)
    for a, b in zip(pos, pos[1:]):
        m = np.float32((np.float64(a) + np.float64(b)) / 2)  # exact: few mantissa bits
        xs += neighbours(m) + neighbours(-m)
    mag = np.exp2(rng.uniform(-12, np.log2(600), 2000)).astype(np.float32)
    sign = np.where(rng.random(2000) < 0.5, -1, 1).astype(np.float32)
    xs += list(mag * sign)
    xs += [0.0, -0.0, 448, 449, 463.9, 464, 465, 1e30, np.inf, -np.inf, 1e-30, -1e-45, 2.0**-126]
    return [np.float32(x) for x in xs], vals


def e2m1_ref(x):
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    a = min(abs(float(x)), 6.0)  # saturating: past 6 (inf too) is 6
    best = min(range(8), key=lambda c: (abs(a - grid[c]), c & 1))  # ties: even code
    return best | (8 if np.signbit(x) else 0)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20250604)
    xs, vals = e4m3_inputs(rng)
    t = torch.tensor(np.array(xs, dtype=np.float32)).to(torch.float8_e4m3fn)
    codes = t.view(torch.uint8).tolist()
    with open(os.path.join(OUT, "e4m3.txt"), "w") as f:
        f.write("# torch %s float8_e4m3fn: 'dec code value_bits' then 'enc input_bits code'\n"
                % torch.__version__.split("+")[0])
        for c in range(256):
            f.write("dec %02x %08x\n" % (c, bits(vals[c]) if np.isfinite(vals[c]) else 0x7FC00000))
        for x, c in zip(xs, codes):
            f.write("enc %08x %02x\n" % (bits(x), c))
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    ys = []
    for v in grid:
        ys += neighbours(v) + neighbours(-v)
    for a, b in zip(grid, grid[1:]):
        ys += neighbours((a + b) / 2) + neighbours(-(a + b) / 2)
    ys += list(rng.uniform(-8, 8, 500).astype(np.float32))
    ys += [np.float32(v) for v in (7.0, 100.0, -1e30, np.inf, -np.inf, 0.0, -0.0)]
    with open(os.path.join(OUT, "e2m1.txt"), "w") as f:
        f.write("# brute-force nearest, ties to even code: 'enc input_bits code'\n")
        for y in ys:
            f.write("enc %08x %x\n" % (bits(y), e2m1_ref(y)))


if __name__ == "__main__":
    main()
