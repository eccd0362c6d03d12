#!/usr/bin/env python3
"""`ballast trace` end to end with the Qwen3 tokenizer.

Hand-built traces (an answer then a loop, a loop before any answer, no loop,
a loop after </think>, boxed answers only inside the loop, ids input, small
detector parameters, UTF-8 and escaping, --think-open, choice answers) go
through the real binary; every output line must equal what this script
computes on its own:
- token ids from Hugging Face `tokenizers` when installed, else from
  `ballast tokenize` (checked against HF by integration/tokenize-cli);
- each token's bytes from tokenizer.json's vocabulary (byte-level BPE), so
  the position where each character is released is known;
- the loop detector straight from its definition (every n-gram in the
  window counted at every token, O(n * t));
- \\boxed{} answers (and the few choice patterns used) by brace matching.
Bad lines (invalid JSON, ids out of range) must each give an error line
naming the line, the others still answered, and exit status 1; bad flags
exit 2.

usage: test_trace_cli.py BALLAST_BINARY QWEN3_TOKENIZER_JSON
"""
import json
import subprocess
import sys


def byte_decoder():
    """GPT-2's byte-level alphabet, reversed: symbol -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tok:
    def __init__(self, ballast, path):
        self.ballast, self.path = ballast, path
        j = json.load(open(path, encoding="utf-8"))
        dec = byte_decoder()
        self.bytes = {i: bytes(dec[ch] for ch in s) for s, i in j["model"]["vocab"].items()}
        for a in j["added_tokens"]:
            self.bytes[a["id"]] = a["content"].encode()
        self.vocab = max(self.bytes) + 1
        try:
            import tokenizers
            self.hf = tokenizers.Tokenizer.from_file(path)
        except ImportError:
            self.hf = None
            print("tokenizers not installed: ids from `ballast tokenize`")

    def encode(self, text):
        if self.hf:
            return self.hf.encode(text, add_special_tokens=False).ids
        out = subprocess.run([self.ballast, "tokenize", "--tokenizer", self.path],
                             input=(json.dumps(text) + "\n").encode(), capture_output=True,
                             check=True).stdout
        return json.loads(out)["ids"]

    def release(self, ids):
        """The text of ids and, per byte, the token that releases it: a
        character comes out with the token that completes it."""
        data = b"".join(self.bytes[i] for i in ids)
        owner = [k for k, i in enumerate(ids) for _ in self.bytes[i]]
        text = data.decode("utf-8")  # the traces here are whole UTF-8
        rel, off = [], 0
        for ch in text:
            n = len(ch.encode())
            rel += [owner[off + n - 1]] * n
            off += n
        return data, rel


def detect(ids, t, n, m):
    """(fire_at, onset) from the definition, or (None, None)."""
    for i in range(len(ids)):
        lo = max(0, i - t + 1)
        counts, first = {}, {}
        for s in range(lo, i - n + 2):
            g = tuple(ids[s:s + n])
            counts[g] = counts.get(g, 0) + 1
            first.setdefault(g, s)
        hits = [g for g, c in counts.items() if c >= m]
        if hits:
            assert len(hits) == 1, "two n-grams reached m at once"
            return i, first[hits[0]]
    return None, None


def boxes(data, rel):
    """Closed \\boxed{}s as (start, position, value), value stripped."""
    out = []
    start = data.find(b"\\boxed{")
    while start >= 0:
        depth, j = 1, start + 7
        while j < len(data) and depth:
            depth += {ord("{"): 1, ord("}"): -1}.get(data[j], 0)
            j += 1
        if depth == 0:
            value = data[start + 7:j - 1].strip().decode()
            if value:
                out.append((start, rel[j - 1], value))
        start = data.find(b"\\boxed{", start + 1)
    return out


def think_closed(data, think_open):
    opened, closed = think_open, False
    for k in range(len(data)):
        if data.startswith(b"<think>", k):
            opened, closed = True, False
        elif data.startswith(b"</think>", k) and opened:
            closed = True
    return closed


def expect(answers, fire, onset, closed):
    """The output line for answers [(start, position, value)]."""
    def latest(cands):
        return max(cands)[2] if cands else None
    if fire is None:
        answer, action = latest(answers), "none"
    else:
        answer = latest([a for a in answers if a[1] < onset])
        action = "commit" if answer is not None else "fallback"
    return {"loop": fire is not None, "fire_at": fire, "onset": onset, "answer": answer,
            "first_answer_at": min((a[1] for a in answers), default=None),
            "think_closed": closed, "action": action}


def run(ballast, tok, lines, *flags):
    p = subprocess.run([ballast, "trace", "--tokenizer", tok, *flags],
                       input="".join(l + "\n" for l in lines).encode(), capture_output=True,
                       timeout=300)
    return p.returncode, p.stdout.decode().split("\n")[:-1], p.stderr.decode()


LOOP_AFTER = ("<think>\nLet me compute 6*7. That is \\boxed{42}."
              + " Wait, let me double check the multiplication again." * 8)
MATH = [
    ("commit", LOOP_AFTER),
    ("fallback", "<think>\nHmm, I need to think." + " I am not sure what to do next here." * 8
     + " So \\boxed{5}."),
    ("no loop", "<think>\nTry \\boxed{3}. No wait, \\boxed{\\frac{1}{2}}.</think>\n\n"
     "The answer is \\boxed{4}."),
    ("loop after </think>", "<think>\nThe sum is \\boxed{10}.</think>\n\n"
     "So the final result is ten." + " I will say it again, the final result is ten." * 8),
    ("boxes only in the loop", "<think>\nLet me try."
     + " Maybe the value is \\boxed{7} but I should verify it." * 8),
    ("escaping", "<think>\u7b54\u6848\u662f \\boxed{\\text{\"caf\u00e9\"} \\\\ \U0001f600}, "
     "done.</think>"),
    ("unclosed", "\\boxed{\\frac{1}{2} and then \\boxed{9}."),
    ("no answer", "Nothing to see."),
]


def at_onset(t):
    """Ids whose loop begins at the token closing the box: the loop body
    ends with that "}" token, so the repetition reaches back to it. An
    answer complete at the onset itself is not before it."""
    close = t.encode("}")
    return (t.encode("<think>\nSo it is \\boxed{42") + close
            + (t.encode(" Wait, let me double check the value") + close) * 8)


def check_math(ballast, tok, t):
    fails = 0
    runs = []  # (name, input kind, ids, line)
    for name, text in MATH:
        ids = t.encode(text)
        runs.append((name, "text", ids, json.dumps({"text": text})))
        runs.append((name, "ids", ids, json.dumps({"ids": ids})))  # the same trace as ids
    ids = at_onset(t)
    runs.append(("answer at the onset", "ids", ids, json.dumps({"ids": ids})))
    rc, out, err = run(ballast, tok, [r[3] for r in runs])
    if rc != 0 or len(out) != len(runs):
        print(f"math: exit {rc}, {len(out)} lines for {len(runs)}: {err.strip()}")
        return 1
    by_name = {}
    for (name, kind, ids, _), line in zip(runs, out):
        data, rel = t.release(ids)
        fire, onset = detect(ids, 1024, 20, 4)
        want = expect(boxes(data, rel), fire, onset, think_closed(data, False))
        got = by_name[name] = json.loads(line)
        if got != want:
            fails += 1
            print(f"{name} ({kind}):\n  got  {got}\n  want {want}")
    design = {"commit": "commit", "fallback": "fallback", "no loop": "none",
              "loop after </think>": "commit", "boxes only in the loop": "fallback",
              "answer at the onset": "fallback"}
    for name, action in design.items():  # the traces test what they are meant to
        if by_name[name]["action"] != action:
            fails += 1
            print(f"{name}: action {by_name[name]['action']}, the case needs {action}")
    edge = by_name["answer at the onset"]
    if edge["onset"] != edge["first_answer_at"]:
        fails += 1
        print("answer at the onset: the case no longer puts the answer at the onset:", edge)
    if not by_name["loop after </think>"]["think_closed"] or by_name["escaping"]["answer"] != \
            "\\text{\"caf\u00e9\"} \\\\ \U0001f600":
        fails += 1
        print("think_closed or escaping wrong:", by_name)
    print(f"math: {len(runs)} traces, {fails} wrong")
    return fails


def check_small_window(ballast, tok, t):
    """--window 64 --ngram 4 --min-count 3; the period grows until three
    copies no longer fit in the window."""
    words = [f"item{k}" for k in range(40)]
    texts = ["\\boxed{1} " + " ".join(words[:p]) + (" " + " ".join(words[:p])) * 3 + " end"
             for p in (2, 4, 8, 12, 40)]
    rc, out, err = run(ballast, tok, [json.dumps({"text": x}) for x in texts],
                       "--window", "64", "--ngram", "4", "--min-count", "3")
    fails = 0 if rc == 0 and len(out) == len(texts) else 1
    for x, line in zip(texts, out):
        ids = t.encode(x)
        data, rel = t.release(ids)
        fire, onset = detect(ids, 64, 4, 3)
        want = expect(boxes(data, rel), fire, onset, False)
        if json.loads(line) != want:
            fails += 1
            print(f"small window {x[:40]!r}:\n  got  {line}\n  want {want}")
    loops = sum(json.loads(l).get("loop", False) for l in out)
    if not 0 < loops < len(texts):
        fails += 1
        print("small window: the cases should include traces with and without a loop")
    print(f"small window: {len(texts)} traces, {loops} loops, {fails} wrong")
    return fails


def check_flags(ballast, tok, t):
    """--think-open, and choice answers decided by the next character."""
    fails = 0
    text = "Reasoning.</think>\n\n\\boxed{3}"
    ids = t.encode(text)
    for flags, closed in (([], False), (["--think-open"], True)):
        rc, out, _ = run(ballast, tok, [json.dumps({"text": text})], *flags)
        got = json.loads(out[0]) if rc == 0 and out else {}
        if got.get("think_closed") != closed or got.get("answer") != "3":
            fails += 1
            print(f"think-open {flags}: {out}")
    for text, flags, answer, at_byte in (
            ("So **Answer:** C", ["--task", "choice"], "C", None),  # decided at the end
            ("Answer: E. Then answer is B", ["--task", "choice", "--labels", "ABCDE"], "B", 9),
            ("Answer: E. Then", ["--task", "choice", "--labels", "ABCDE"], "E", 9),
            ("Answer: E. Then", ["--task", "choice"], None, None),
            ("The answer is yes!", ["--task", "yesno"], "yes", 17),
            ("\\boxed{042}", ["--task", "integer"], "42", 10),
            ("\\boxed{1,000}", ["--task", "integer"], None, None),
            ("\\boxed{5}", ["--task", "none"], None, None)):
        ids = t.encode(text)
        _, rel = t.release(ids)
        rc, out, _ = run(ballast, tok, [json.dumps({"text": text})], *flags)
        got = json.loads(out[0]) if rc == 0 and out else {}
        at = None if answer is None else len(ids) - 1 if at_byte is None else rel[at_byte]
        if got.get("answer") != answer or got.get("first_answer_at") != at:
            fails += 1
            print(f"{text!r} {flags}: got {got}, want {answer} at {at}")
    bad_flags = (["--ngram", "30", "--window", "20"], ["--min-count", "1"], ["--task", "essay"],
                 ["--labels", "ABCD"], ["--task", "choice", "--labels", "abc"], ["--window", "x"],
                 ["--bogus"])
    for flags in bad_flags:
        rc, out, err = run(ballast, tok, [], *flags)
        if rc != 2 or out or not err.strip():
            fails += 1
            print(f"flags {flags}: exit {rc}, stderr {err.strip()!r}")
    print(f"flags: {fails} wrong")
    return fails


def check_errors(ballast, tok, t):
    good = json.dumps({"text": LOOP_AFTER})
    lines = [good, "not json", json.dumps({"ids": [1, t.vocab + 5]}), good,
             json.dumps({"ids": [1, -1]}), json.dumps({"ids": [1, "2"]}), "{}",
             json.dumps({"ids": [1], "text": "x"}), '{"text":"a"} trailing', good]
    rc, out, err = run(ballast, tok, lines)
    bad = (1, 2, 4, 5, 6, 7, 8)
    ok = rc == 1 and len(out) == len(lines)
    ok = ok and all(json.loads(out[i]).get("error", "").startswith(f"line {i + 1}:") for i in bad)
    ok = ok and all(json.loads(out[i]) == json.loads(out[0]) and json.loads(out[0])["loop"]
                    for i in (3, 9))
    print("errors: " + ("ok" if ok else f"wrong: exit {rc}: {out} {err}"))
    return 0 if ok else 1


def main():
    ballast, tok_path = sys.argv[1:3]
    t = Tok(ballast, tok_path)
    fails = check_math(ballast, tok_path, t)
    fails += check_small_window(ballast, tok_path, t)
    fails += check_flags(ballast, tok_path, t)
    fails += check_errors(ballast, tok_path, t)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
