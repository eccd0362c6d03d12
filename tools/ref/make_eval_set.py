#!/usr/bin/env python3
"""Write the fixed prompt set of `ballast eval` (tests/data/eval/gsm8k-60.jsonl):
the first N problems of the GSM8K test split (MIT licence, Cobbe et al. 2021),
as {"id", "question", "ref"} with ref the number after "####".

usage: make_eval_set.py GSM8K_TEST.jsonl OUT.jsonl [N]
(GSM8K_TEST.jsonl: ../shared/datasets/gsm8k_test.jsonl)"""
import json
import sys


def main():
    src, out = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    with open(src, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as o:
        for i, line in enumerate(f):
            if i == n:
                break
            d = json.loads(line)
            ref = d["answer"].split("####")[-1].strip().replace(",", "")
            o.write(json.dumps({"id": f"gsm8k-test-{i}", "question": d["question"], "ref": ref},
                               ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
