#!/usr/bin/env python3
"""Make two tiny random-weight Qwen3 checkpoints and their reference logits.

Usage: python3 tools/ref/make_tiny_qwen3.py --out tests/data

Creates, under OUT:
  tiny-qwen3/                  untied lm_head, bfloat16, 2 shards
                               (model-0000{1,2}-of-00002.safetensors +
                               model.safetensors.index.json), config.json
  tiny-qwen3-tied/             tie_word_embeddings=True, float16,
                               single model.safetensors, config.json
  tiny-qwen3.ref.safetensors       reference logits for tiny-qwen3
  tiny-qwen3-tied.ref.safetensors  reference logits for tiny-qwen3-tied

Each .ref.safetensors holds, for i in 0..2 (sequence lengths 1, 9, 23):
  "seq{i}.ids"    int32   [L]         token ids (fixed seed)
  "seq{i}.logits" float32 [L, vocab]  logits at every position of ONE forward
                                      pass over the whole sequence (positions
                                      0..L-1, no KV cache), computed in fp32
                                      from the stored bf16/fp16 weights.

Independence from ballast: the checkpoints are written by Hugging Face
transformers' own save_pretrained, and the logits come from transformers'
Qwen3ForCausalLM (eager attention) after reloading the saved files and
upcasting to float32. Nothing here reads or shares code with the engine.

Architecture (Qwen3Config): vocab 2048, hidden 128, intermediate 384, 3 layers,
4 query heads, 2 kv heads, head_dim 64 (deliberately != hidden/heads = 32, so
q_proj is [256, 128]), rope_theta 1e6, rms_norm_eps 1e-6,
max_position_embeddings 4096. All RMSNorm weights (input/post-attention
layernorms, q_norm, k_norm, final norm) are random around 1, so an engine
that skips a norm or uses (1 + w) gets different logits.

config.json note: transformers 5 writes rope_theta inside "rope_parameters"
and the dtype as "dtype". Real Qwen3 checkpoints (written by transformers 4)
carry top-level "rope_theta" and "torch_dtype"; we add those legacy keys too,
with the same values, so the folder looks like both kinds of real file.
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

SEED = 1234
SEQ_LENS = (1, 9, 23)
INIT_RANGE = 0.08     # std of linear/embedding weights: gives logits a spread of several units
NORM_STD = 0.2        # RMSNorm weights ~ N(1, 0.2^2)


def tiny_config(tied):
    return Qwen3Config(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        max_position_embeddings=4096,
        initializer_range=INIT_RANGE,
        hidden_act="silu",
        attention_bias=False,
        use_sliding_window=False,
    )


def build_model(tied, seed):
    """Random Qwen3 model; norm weights randomised around 1."""
    torch.manual_seed(seed)
    config = tiny_config(tied)
    config._attn_implementation = "eager"
    model = Qwen3ForCausalLM(config).float().eval()
    with torch.no_grad():
        # transformers' _init_weights gives normal(0, initializer_range) for
        # Linear/Embedding and ones for RMSNorm; re-draw everything explicitly
        # so the result does not depend on init details of this version.
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_STD * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(INIT_RANGE * torch.randn(p.shape, generator=gen))
        if tied:
            model.tie_weights()
    return model


def patch_config_json(folder, dtype_name):
    """Add the legacy top-level keys real Qwen3 config.json files carry."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rope = cfg.get("rope_parameters") or {}
    cfg["rope_theta"] = rope.get("rope_theta", 1e6)
    cfg["torch_dtype"] = dtype_name
    cfg.setdefault("dtype", dtype_name)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def fixed_sequences(vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen, dtype=torch.int64) for n in SEQ_LENS]


@torch.no_grad()
def reference_logits(folder, seqs):
    """Reload the saved checkpoint, upcast to fp32, full forward per sequence."""
    model = Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model = model.float().eval()
    out = {}
    for i, ids in enumerate(seqs):
        logits = model(input_ids=ids[None, :], use_cache=False).logits[0].float()
        out[f"seq{i}.ids"] = ids.to(torch.int32).contiguous()
        out[f"seq{i}.logits"] = logits.contiguous()
    return out


def make_one(out_dir, name, tied, dtype, seed, shard_size):
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):  # stale shards from an earlier run would confuse loaders
        if f.endswith(".safetensors") or f.endswith(".json"):
            os.remove(os.path.join(folder, f))
    model = build_model(tied, seed).to(dtype)
    kwargs = {"safe_serialization": True}
    if shard_size is not None:
        kwargs["max_shard_size"] = shard_size
    model.save_pretrained(folder, **kwargs)
    patch_config_json(folder, {torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype])

    seqs = fixed_sequences(model.config.vocab_size, seed + 1)
    ref = reference_logits(folder, seqs)
    ref_path = os.path.join(out_dir, name + ".ref.safetensors")
    # One metadata key only: safetensors writes metadata keys in hash order,
    # so several keys would make the file bytes differ from run to run.
    save_file(ref, ref_path, metadata={
        "source": f"{name}: transformers Qwen3ForCausalLM, eager attention, fp32 compute of stored "
                  + str(dtype).replace("torch.", "") + " weights",
    })
    return folder, ref_path, ref


def summarize(folder, ref_path, ref):
    files = sorted(os.listdir(folder))
    print(f"{folder}:")
    for f in files:
        print(f"  {f:45s} {os.path.getsize(os.path.join(folder, f)):>10,d} B")
    print(f"{ref_path}: {os.path.getsize(ref_path):,d} B")
    for i in range(len(SEQ_LENS)):
        lg = ref[f"seq{i}.logits"]
        spread = (lg.max(-1).values - lg.min(-1).values)
        print(f"  seq{i}: L={lg.shape[0]:2d} logits std={lg.std().item():.3f} "
              f"max-min per pos: min {spread.min().item():.2f} max {spread.max().item():.2f} "
              f"argmax[-1]={lg[-1].argmax().item()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (tests/data)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # bitwise-stable CPU reductions run to run

    # bf16 model is ~2.5 MB; 1.5 MB shards give exactly two files.
    r1 = make_one(args.out, "tiny-qwen3", tied=False, dtype=torch.bfloat16, seed=SEED,
                  shard_size="1500KB")
    r2 = make_one(args.out, "tiny-qwen3-tied", tied=True, dtype=torch.float16, seed=SEED + 100,
                  shard_size=None)

    shards = [f for f in os.listdir(r1[0]) if f.endswith(".safetensors")]
    assert len(shards) == 2, f"expected 2 shards, got {shards}"
    assert os.path.exists(os.path.join(r1[0], "model.safetensors.index.json"))
    assert os.listdir(r2[0]).count("model.safetensors") == 1
    for r in (r1, r2):
        summarize(*r)


if __name__ == "__main__":
    main()
