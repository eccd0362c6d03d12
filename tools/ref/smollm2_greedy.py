#!/usr/bin/env python3
"""Greedy-decode reference for the demo model SmolLM2-135M-Instruct (GGUF Q4_1).

Usage: python3 tools/ref/smollm2_greedy.py --out tests/data \
           [--gguf .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
           [--questions /work/shared/datasets/gsm8k_test.jsonl]
The GGUF path may also come from $SMOLLM2_GGUF (CI); --gguf wins.

Creates, under OUT:
  smollm2_greedy.json           prompts, prompt token ids, 48 greedy output ids
                                and their text, for the first 3 GSM8K questions
  smollm2_logits.ref.safetensors  "p{i}.logits" float32 [vocab]: logits at the
                                last prompt position of prompt i (for
                                diagnosing a first-token mismatch)

JSON layout:
  {"generator": "tools/ref/smollm2_greedy.py", "transformers_version": ...,
   "torch_version": ..., "gguf_file": basename, "gguf_sha256": ...,
   "max_new_tokens": 48, "dtype": "float32",
   "model_config": {...what transformers read from the GGUF...},
   "cases": [{"prompt": rendered_text, "prompt_ids": [...],
              "output_ids": [...], "output_text": ...,
              "top1_top2_gap": [48 floats]}, ...]}
output_ids are only the new tokens (prompt excluded); output_text is their
decode with skip_special_tokens=False. Decoding stops early only if eos is hit.
top1_top2_gap[t] is the logit margin of the greedy choice at new token t (4
decimals): a mismatch at a step with a gap of ~1e-3 or less is a near-tie, not
necessarily a bug.

Independence from ballast: transformers reads the GGUF itself (its own GGUF
parser and dequantizer turn the Q4_1/Q8_0 blocks into float32 weights, and it
rebuilds the tokenizer and chat template from the GGUF metadata); the forward
pass is transformers' LlamaForCausalLM in float32 with eager attention.
transformers un-does llama.cpp's q/k row permutation on load; that is part of
the reference. Nothing here shares code with ballast.
"""

import argparse
import hashlib
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

MAX_NEW_TOKENS = 48
N_QUESTIONS = 3
DEFAULT_GGUF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                            ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def first_questions(path, n):
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["question"])
            if len(out) == n:
                break
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (tests/data)")
    ap.add_argument("--gguf", default=os.environ.get("SMOLLM2_GGUF", DEFAULT_GGUF))
    ap.add_argument("--questions", default="/work/shared/datasets/gsm8k_test.jsonl")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    gguf = os.path.abspath(args.gguf)
    dirname, basename = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(dirname, gguf_file=basename)
    model = AutoModelForCausalLM.from_pretrained(dirname, gguf_file=basename, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    # (.float() is refused: transformers flags a GGUF-loaded model as quantized,
    # although its weights are already dequantized to the requested dtype.)
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights not float32"
    cfg = model.config
    embed = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings().weight
    tied = embed.data_ptr() == lm_head.data_ptr() or torch.equal(embed, lm_head)

    cases, last_logits = [], {}
    for i, q in enumerate(first_questions(args.questions, N_QUESTIONS)):
        text = tok.apply_chat_template([{"role": "user", "content": q}],
                                       add_generation_prompt=True, tokenize=False)
        # The GGUF says add_bos_token = False and the template has no BOS, so
        # the ids are exactly the tokenization of the rendered text.
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == tok(text)["input_ids"], "tokenizer adds special tokens; decide which ids are the reference"
        x = torch.tensor([ids])
        with torch.no_grad():
            last_logits[f"p{i}.logits"] = model(input_ids=x, use_cache=False).logits[0, -1].float().contiguous()
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=MAX_NEW_TOKENS, repetition_penalty=1.0,
                                 temperature=None, top_p=None, top_k=None,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                                 return_dict_in_generate=True, output_logits=True)
        out_ids = gen.sequences[0, len(ids):].tolist()
        # Margin of the greedy choice at each step: where top1 - top2 is tiny, an
        # engine with different (still correct) rounding may legitimately diverge.
        top2 = torch.stack([lg[0].float().topk(2).values for lg in gen.logits])
        gaps = (top2[:, 0] - top2[:, 1]).tolist()
        # Greedy means the first new token is the argmax of the separately computed logits.
        assert out_ids[0] == int(last_logits[f"p{i}.logits"].argmax()), "generate() was not greedy"
        cases.append({"prompt": text, "prompt_ids": ids, "output_ids": out_ids,
                      "output_text": tok.decode(out_ids, skip_special_tokens=False),
                      "top1_top2_gap": [round(g, 4) for g in gaps]})

    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": getattr(cfg, "rope_theta", None)}
    result = {
        "generator": "tools/ref/smollm2_greedy.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "gguf_file": basename,
        "gguf_sha256": sha256_of(gguf),
        "dtype": "float32",
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": tok.eos_token_id,
        "model_config": {
            "model_type": cfg.model_type,
            "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
            "vocab_size": cfg.vocab_size,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_parameters": rope,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "lm_head_equals_embed_tokens": bool(tied),
        },
        "cases": cases,
    }
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "smollm2_greedy.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    st_path = os.path.join(args.out, "smollm2_logits.ref.safetensors")
    save_file(last_logits, st_path, metadata={
        "source": f"transformers {transformers.__version__} LlamaForCausalLM fp32 from {basename}: "
                  "logits at the last prompt position of smollm2_greedy.json cases[i]"})

    print(f"{json_path}: {os.path.getsize(json_path):,d} B; {st_path}: {os.path.getsize(st_path):,d} B")
    print(f"config as loaded: {json.dumps(result['model_config'])}")
    for i, c in enumerate(cases):
        lg = last_logits[f"p{i}.logits"]
        print(f"case {i}: {len(c['prompt_ids'])} prompt ids, {len(c['output_ids'])} new; "
              f"last-pos logits max {lg.max():.2f} min {lg.min():.2f}; "
              f"smallest top1-top2 gap {min(c['top1_top2_gap']):.4f} at step "
              f"{c['top1_top2_gap'].index(min(c['top1_top2_gap']))}; output: {c['output_text']!r}")


if __name__ == "__main__":
    main()
