#!/usr/bin/env python3
"""Reference vectors for model/tokenizer.c (tests/unit/model/test_tokenizer.c).

Builds a deterministic corpus from public data and programmatic generators
(GSM8K and MATH-500 questions and answers, glibc locale strings, Python
standard-library source lines, generated Unicode/emoji/whitespace/digit
strings, added tokens embedded in text), encodes it with Hugging Face
`tokenizers` (Qwen3's tokenizer.json) and with transformers' tokenizer for
the SmolLM2 GGUF, and writes:

  tests/data/tokenizer/vectors.bin.gz      corpus + expected ids (both models)
  tests/data/tokenizer/smollm2_vocab.bin.gz the GGUF tokenizer arrays

vectors.bin.gz (all integers little-endian):
  "BLTOKV1\\n", u32 n_records, then per record:
  u8 flags (1 parse_special, 2 HF Qwen3 decode(ids) == text, 4 SmolLM2 ids
  present, 8 HF SmolLM2 decode(ids) == text),
  u32 text_len, text bytes, u32 n, i32 ids[n] (Qwen3),
  [flags & 4] u32 n, i32 ids[n] (SmolLM2)
smollm2_vocab.bin.gz:
  "BLTOKS1\\n", u32 len + pre, i32 bos, i32 eos, u32 n_tokens,
  per token u32 len + bytes + i32 type, u32 n_merges, per merge u32 len + bytes

SmolLM2 expected ids follow the original SmolLM2 tokenizer.json
(pre_tokenizer = Sequence[Digits(individual_digits), ByteLevel(use_regex)]),
which is also what llama.cpp does for pre="smollm". transformers' GGUF
loader drops the Digits step; the script reports how often that differs.

Part of the corpus comes from files of the Debian machine this ran on (glibc
locale sources, the Python 3 standard library), so a run elsewhere may make a
different corpus; the committed vectors are the reference, and the test only
needs them. Needs: tokenizers, transformers, gguf, torch (for transformers'
GGUF loader), ../shared/ and the demo GGUF in .cache/models/.

Usage: make_tokenizer_vectors.py [--bench]   (--bench: time HF encode)
"""
import argparse
import glob
import gzip
import json
import os
import random
import re
import struct
import sys
import time
import unicodedata

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.path.join(ROOT, "..", "shared")
QWEN_JSON = os.path.join(SHARED, "models", "qwen3-tokenizer", "tokenizer.json")
GGUF_DIR = os.path.join(ROOT, ".cache", "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT_DIR = os.path.join(ROOT, "tests", "data", "tokenizer")

QWEN_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
              "<|box_end|>", "<|vision_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
              "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
SMOL_ADDED = ["<repo_name>", "<file_sep>", "<filename>", "<gh_stars>", "<jupyter_code>",
              "<empty_output>"]
NEAR_MISS = ["<|im_start", "im_end|>", "<think", "</think", "<|", "|>", "<<|im_end|>>",
             "<|im_start|im_end|>", "< think>", "<THINK>"]


def jsonl(name):
    with open(os.path.join(SHARED, "datasets", name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def dataset_strings():
    out = []
    for name in ("gsm8k_test.jsonl", "math500.jsonl"):
        for rec in jsonl(name):
            for field in ("question", "answer"):
                text = rec[field]
                out.append(text)
                if field == "answer":
                    out.extend(line for line in text.split("\n") if line)
    return out


def locale_strings():
    """Names of languages, countries, days and months from glibc's locale
    sources (<Uxxxx> decoded): public multilingual text."""
    out = []
    for path in sorted(glob.glob("/usr/share/i18n/locales/*_*")):
        with open(path, encoding="utf-8", errors="replace") as f:
            src = f.read().replace("/\n", "")
        fields = []
        for line in src.splitlines():
            m = re.match(r"^\s*(lang_name|country_name|day|abday|mon|abmon|alt_mon|"
                         r"ab_alt_mon|yesstr|nostr|currency_symbol|lang_ab|name_mr|name_ms|"
                         r"name_miss|name_mrs)\s+(.*)$", line)
            if not m:
                continue
            vals = re.findall(r'"([^"]*)"', m.group(2))
            vals = [re.sub(r"<U([0-9A-Fa-f]{4,6})>", lambda u: chr(int(u.group(1), 16)), v)
                    for v in vals]
            fields.append(" ".join(vals))
        if fields:
            out.append(", ".join(fields))
            out.extend(fields[:3])
    return out


def code_strings(rng):
    """Chunks of Python standard-library source and C headers."""
    out = []
    files = sorted(glob.glob("/usr/lib/python3*/[a-z]*.py"))[:60]
    files += sorted(glob.glob("/usr/include/[a-z]*.h"))[:20]
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        for _ in range(15):
            i = rng.randrange(len(lines))
            out.append("\n".join(lines[i:i + rng.randint(1, 25)]))
    return out


SCRIPT_RANGES = [(0x41, 0x7A), (0xC0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F),
                 (0x5D0, 0x5EA), (0x620, 0x64A), (0x900, 0x97F), (0xE01, 0xE3A), (0x10A0, 0x10FF),
                 (0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
                 (0x2200, 0x22FF), (0x2190, 0x21FF), (0x300, 0x36F), (0x1100, 0x11FF),
                 (0xFF01, 0xFF5E), (0x2070, 0x209C), (0x2150, 0x218B), (0x1D400, 0x1D7FF)]
EMOJI = [0x1F600, 0x1F64F, 0x1F300, 0x1F5FF, 0x1F680, 0x1F6FF, 0x1F900, 0x1F9FF]
SPACES = [" ", " ", " ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u0085", "\u2028",
          "\u2029", "\x0b", "\x0c", "\u2009", "\u200b", "\u1680", "\u202f", "\u180e",
          "\u205f", "\x1c"]


def rand_script(rng, n):
    lo, hi = rng.choice(SCRIPT_RANGES)
    return "".join(chr(rng.randint(lo, hi)) for _ in range(n))


def rand_emoji(rng):
    k = rng.randrange(6)
    if k == 0:
        base = chr(rng.randint(0x1F466, 0x1F469))
        return base + chr(rng.randint(0x1F3FB, 0x1F3FF))
    if k == 1:
        return "\u200d".join(chr(rng.randint(0x1F466, 0x1F469)) for _ in range(rng.randint(2, 4)))
    if k == 2:
        return chr(0x1F1E6 + rng.randrange(26)) + chr(0x1F1E6 + rng.randrange(26))
    if k == 3:
        return rng.choice("0123456789#*") + "\ufe0f\u20e3"
    lo = rng.choice(EMOJI[0::2])
    return chr(rng.randint(lo, lo + 0x4F)) + ("\ufe0f" if k == 4 else "")


def generated_strings(rng, words):
    out = []
    for _ in range(600):  # scripts, mixed with words and spaces
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice([rand_script(rng, rng.randint(1, 12)), rng.choice(words),
                                     rand_emoji(rng), str(rng.randint(0, 10**6))]))
            parts.append(rng.choice(SPACES[:6]))
        out.append("".join(parts))
    for _ in range(400):  # emoji runs
        out.append("".join(rand_emoji(rng) + rng.choice(["", "", " ", rng.choice(words)])
                           for _ in range(rng.randint(1, 10))))
    for _ in range(500):  # whitespace runs
        parts = []
        for _ in range(rng.randint(1, 6)):
            ws = "".join(rng.choice(SPACES) for _ in range(rng.randint(1, 40)))
            if rng.random() < 0.3:
                ws = rng.choice(SPACES[:6]) * rng.randint(2, 300)
            parts.append(ws)
            parts.append(rng.choice([rng.choice(words), str(rng.randint(0, 999)), "",
                                     rand_script(rng, 3), "'s", "!!", "$x$"]))
        out.append("".join(parts))
    suffixes = ["'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'VE", "'m", "'M", "'ll",
                "'LL", "'d", "'D", "'\u017f", "\u2019s", "'x", "''", "'"]
    for _ in range(300):  # contractions
        w = rng.choice(words)
        out.append(rng.choice(["", " ", "'"]) + w + rng.choice(suffixes) +
                   rng.choice(["", " ", " " + rng.choice(words), "s", "'s"]))
    for _ in range(400):  # digits
        n = rng.choice([str(rng.randint(0, 10**rng.randint(1, 30))), f"{rng.random()*1e4:.6f}",
                        "{:,}".format(rng.randint(0, 10**9)), "\u0661\u0662\u0663",
                        "\u00bd\u2153", "\uff11\uff12", "\u2460\u2461"])
        out.append(rng.choice(["", " ", "  ", "\n", "x", "$", "-", "a  ", "\t"]) + n +
                   rng.choice(["", " ", "%", "th", "  ", "\n\n", ".5"]))
    for _ in range(300):  # arbitrary code points from the BMP and astral planes
        cps = []
        while len(cps) < rng.randint(1, 20):
            cp = rng.randint(1, 0x2FFFF)
            if not 0xD800 <= cp < 0xE000:
                cps.append(cp)
        out.append("".join(map(chr, cps)))
    out.append("".join(chr(c) for c in range(1, 256)))
    out.extend(chr(c) for c in range(0, 256))
    out.append("")
    return out


def nfd_strings(strings, rng):
    out = []
    for s in rng.sample(strings, 400):
        d = unicodedata.normalize("NFD", s)
        if d != s:
            out.append(d)
    out.extend(["e\u0301", "A\u030a", "\u212b", "\u1100\u1161\u11a8", "\u0915\u093c",
                "\u09c7\u09be", "o\u0308\u0301", "\uf900", "\u0344"])
    return out


def special_strings(rng, texts, added):
    out = []
    for _ in range(800):
        t = rng.choice(texts)[:300]
        for _ in range(rng.randint(1, 4)):
            i = rng.randint(0, len(t))
            tok = rng.choice(added + NEAR_MISS)
            pad = rng.choice(["", "", " ", "\n", "  "])
            t = t[:i] + pad + tok + pad[::-1] + t[i:]
        out.append(t)
    for q in rng.sample(texts, 300):
        out.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                   + q + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    out.extend(added)
    out.append("".join(added))
    return out


def build_corpus():
    rng = random.Random(20240611)
    data = dataset_strings()
    words = sorted({w for s in data[:3000] for w in re.findall(r"[A-Za-z]+", s)})
    loc = locale_strings()
    corpus = data + loc + code_strings(rng) + generated_strings(rng, words)
    corpus += nfd_strings(loc + data[:2000], rng)
    corpus += special_strings(rng, data, QWEN_ADDED + SMOL_ADDED)
    long_doc = "\n\n".join(rng.sample(data, 60))
    corpus += [long_doc, " " * 5000 + "x", "\n" * 3000, "9" * 4000, "\u4e2d" * 3000,
               "ab" * 3000, "!" * 2000 + " a"]
    seen, uniq = set(), []
    for s in corpus:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq


def load_refs():
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import AutoTokenizer
    qwen = Tokenizer.from_file(QWEN_JSON)
    qwen_nosp = Tokenizer.from_file(QWEN_JSON)
    qwen_nosp.encode_special_tokens = True
    smol_tf = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME).backend_tokenizer
    smol = Tokenizer.from_str(smol_tf.to_str())
    smol.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return qwen, qwen_nosp, smol, smol_tf


def write_gz(name, data):
    """Reproducible gzip: no name or time in the header."""
    with open(os.path.join(OUT_DIR, name), "wb") as raw:
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(data)


def write_vectors(corpus, qwen, qwen_nosp, smol, smol_tf):
    recs, ndiff, examples = [], 0, []
    for s in corpus:
        q = qwen.encode(s, add_special_tokens=False).ids
        sm = smol.encode(s, add_special_tokens=False).ids
        flags = 1 | 4 | (2 if qwen.decode(q, skip_special_tokens=False) == s else 0)
        flags |= 8 if smol.decode(sm, skip_special_tokens=False) == s else 0
        recs.append((flags, s, q, sm))
        tf = smol_tf.encode(s, add_special_tokens=False).ids
        if tf != recs[-1][3]:
            ndiff += 1
            if len(examples) < 5:
                examples.append(s[:60])
    for s in [s for s in corpus if "<" in s][:400]:  # added tokens not parsed
        q = qwen_nosp.encode(s, add_special_tokens=False).ids
        recs.append((2 if qwen_nosp.decode(q, skip_special_tokens=False) == s else 0, s, q, None))
    buf = [b"BLTOKV1\n", struct.pack("<I", len(recs))]
    for flags, s, q, sm in recs:
        b = s.encode("utf-8")
        buf.append(struct.pack("<BI", flags, len(b)) + b)
        buf.append(struct.pack("<I%di" % len(q), len(q), *q))
        if sm is not None:
            buf.append(struct.pack("<I%di" % len(sm), len(sm), *sm))
    write_gz("vectors.bin.gz", b"".join(buf))
    print(f"{len(recs)} records ({len(corpus)} strings, "
          f"{sum(len(s.encode()) for s in corpus)} bytes)")
    print(f"SmolLM2: transformers' GGUF tokenizer differs from the original on {ndiff} strings,"
          f" e.g. {examples}")


def write_smol_vocab():
    import gguf
    r = gguf.GGUFReader(os.path.join(GGUF_DIR, GGUF_NAME))

    def arr(key):
        f = r.fields[key]
        return [f.parts[i] for i in f.data]
    pre = bytes(arr("tokenizer.ggml.pre")[0])
    bos = int(arr("tokenizer.ggml.bos_token_id")[0][0])
    eos = int(arr("tokenizer.ggml.eos_token_id")[0][0])
    toks = [bytes(p) for p in arr("tokenizer.ggml.tokens")]
    types = [int(p[0]) for p in arr("tokenizer.ggml.token_type")]
    merges = [bytes(p) for p in arr("tokenizer.ggml.merges")]
    buf = [b"BLTOKS1\n", struct.pack("<I", len(pre)), pre, struct.pack("<iiI", bos, eos, len(toks))]
    for t, ty in zip(toks, types):
        buf.append(struct.pack("<I", len(t)) + t + struct.pack("<i", ty))
    buf.append(struct.pack("<I", len(merges)))
    for m in merges:
        buf.append(struct.pack("<I", len(m)) + m)
    write_gz("smollm2_vocab.bin.gz", b"".join(buf))
    print(f"SmolLM2 vocab: {len(toks)} tokens, {len(merges)} merges, pre={pre.decode()}")


def bench(corpus, qwen, smol):
    """Single-thread HF encode speed (TOKENIZERS_PARALLELISM=false), best of 3, CPU time."""
    nbytes = sum(len(s.encode()) for s in corpus)
    doc = "\n".join(corpus)
    for name, tok in (("qwen3", qwen), ("smollm2", smol)):
        best = {"per string": 1e9, "encode_batch": 1e9, "one document": 1e9}
        for _ in range(3):
            t0 = time.process_time()
            for s in corpus:
                tok.encode(s, add_special_tokens=False)
            t1 = time.process_time()
            tok.encode_batch(corpus, add_special_tokens=False)
            t2 = time.process_time()
            tok.encode(doc, add_special_tokens=False)
            t3 = time.process_time()
            for k, dt in zip(best, (t1 - t0, t2 - t1, t3 - t2)):
                best[k] = min(best[k], dt)
        print(f"HF {name} ({nbytes} bytes): " + ", ".join(
            f"{k} {(len(doc.encode()) if k == 'one document' else nbytes) / v / 1e6:.2f} MB/s"
            for k, v in best.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true")
    args = ap.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    corpus = build_corpus()
    qwen, qwen_nosp, smol, smol_tf = load_refs()
    if args.bench:
        bench(corpus, qwen, smol)
        return
    os.makedirs(OUT_DIR, exist_ok=True)
    write_vectors(corpus, qwen, qwen_nosp, smol, smol_tf)
    write_smol_vocab()


if __name__ == "__main__":
    sys.exit(main())
