#!/usr/bin/env python3
"""`ballast tokenize` end to end against Hugging Face's ids.

The expected ids are the committed vectors that tools/ref/make_tokenizer_vectors.py
recorded from HF `tokenizers` (Qwen3's tokenizer.json) and transformers
(SmolLM2's GGUF). Each corpus string goes to `ballast tokenize` as one JSON
line; every output line must be the recorded ids. Then the ids go back
through --decode and must give the text wherever HF's decode did. Finally,
bad lines (invalid JSON, invalid UTF-8, ids out of range) must each produce
an error line naming their line while the lines around them still succeed.

usage: test_tokenize_cli.py BALLAST_BINARY VECTORS_BIN_GZ QWEN3_TOKENIZER_JSON
SmolLM2 is checked too when $BALLAST_SMOLLM2_GGUF names the demo model.
"""
import gzip
import json
import os
import struct
import subprocess
import sys


def read_vectors(path):
    """Records of (flags, text bytes, qwen ids, smollm ids or None)."""
    data = gzip.open(path).read()
    assert data.startswith(b"BLTOKV1\n"), "not a BLTOKV1 file"
    off = 8

    def u32():
        nonlocal off
        (v,) = struct.unpack_from("<I", data, off)
        off += 4
        return v

    def ids():
        nonlocal off
        n = u32()
        v = list(struct.unpack_from(f"<{n}i", data, off))
        off += 4 * n
        return v

    recs = []
    for _ in range(u32()):
        flags = data[off]
        off += 1
        tlen = u32()
        text = data[off:off + tlen]
        off += tlen
        qwen = ids()
        smol = ids() if flags & 4 else None
        recs.append((flags, text, qwen, smol))
    return recs


def run(ballast, tok, lines, *flags):
    out = subprocess.run([ballast, "tokenize", "--tokenizer", tok, *flags],
                         input="".join(l + "\n" for l in lines).encode(),
                         capture_output=True, timeout=600)
    # split on "\n" only: str.splitlines would also split at U+2028, U+0085
    # and friends, which the printed JSON strings may carry raw
    return out.returncode, out.stdout.decode().split("\n")[:-1], out.stderr.decode()


def check_model(ballast, tok, name, cases):
    """cases: (text str, parse_special, expected ids, decode must equal text)."""
    fails = 0
    for special in (True, False):
        sub = [c for c in cases if c[1] == special]
        if not sub:
            continue
        flags = [] if special else ["--no-special"]
        rc, out, err = run(ballast, tok, [json.dumps(c[0]) for c in sub], *flags)
        if rc != 0 or len(out) != len(sub):
            print(f"{name}: exit {rc}, {len(out)} lines for {len(sub)}: {err.strip()}")
            return 1
        for i, (c, line) in enumerate(zip(sub, out)):
            got = json.loads(line).get("ids")
            if got != c[2]:
                fails += 1
                if fails <= 5:
                    print(f"{name}: string {i} {c[0][:60]!r}: got {got[:20] if got else line}, want {c[2][:20]}")
    rc, out, err = run(ballast, tok, [json.dumps(c[2]) for c in cases], "--decode")
    if rc != 0 or len(out) != len(cases):
        print(f"{name} decode: exit {rc}, {len(out)} lines for {len(cases)}: {err.strip()}")
        return fails + 1
    bad_dec = sum(1 for c, line in zip(cases, out) if c[3] and json.loads(line) != c[0])
    if bad_dec:
        print(f"{name}: {bad_dec} decodes differ from the text")
    print(f"{name}: {len(cases)} strings, {fails} id mismatches, "
          f"{sum(1 for c in cases if c[3])} round trips checked, {bad_dec} failed")
    return fails + bad_dec


def check_errors(ballast, tok):
    good = json.dumps("hello")
    lines = [good, "not json", good, json.dumps(["a"]), "\"\xff\"", good]
    proc = subprocess.run([ballast, "tokenize", "--tokenizer", tok],
                          input=b"\n".join(l.encode("latin-1") if "\xff" in l else l.encode()
                                           for l in lines) + b"\n",
                          capture_output=True, timeout=60)
    out = proc.stdout.decode().split("\n")[:-1]
    ok = (proc.returncode == 1 and len(out) == 6
          and all("ids" in json.loads(out[i]) for i in (0, 2, 5))
          and all(json.loads(out[i]).get("error", "").startswith(f"line {i + 1}:") for i in (1, 3, 4)))
    rc, dout, _ = run(ballast, tok, ["[1,2]", "[-1]", "[1e12]", "{}", "[3]"], "--decode")
    ok = ok and rc == 1 and len(dout) == 5 and all(
        json.loads(dout[i]).get("error", "").startswith(f"line {i + 1}:") for i in (1, 2, 3))
    if not ok:
        print("error lines wrong:", out, dout)
    return 0 if ok else 1


def main():
    ballast, vectors, qwen_json = sys.argv[1:4]
    recs = read_vectors(vectors)
    qwen = [(t.decode(), bool(f & 1), q, bool(f & 2)) for f, t, q, _ in recs]
    fails = check_model(ballast, qwen_json, "qwen3", qwen)
    gguf = os.environ.get("BALLAST_SMOLLM2_GGUF", "")
    if os.path.isfile(gguf):
        smol = [(t.decode(), bool(f & 1), s, bool(f & 8)) for f, t, _, s in recs if s is not None]
        fails += check_model(ballast, gguf, "smollm2", smol)
    else:
        print("BALLAST_SMOLLM2_GGUF not set: SmolLM2 skipped")
    fails += check_errors(ballast, qwen_json)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
