"""Save a randomly initialised Llama (Llama-3-8B attention shape: 32 query heads and 8 KV heads of
128; 8 layers of width 4096, MLP 8192; 256k positions) to a folder, for ``subq hf bench``.

Random weights time the same kernels as trained ones (HiP's cost does not depend on the values); no
download is needed.

    python benchmarks/make_random_llama.py random_llama
    subq hf bench --model random_llama --lengths 32768,131072
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="where to save the model")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=8192,
        num_hidden_layers=args.layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=262144,
        rope_theta=1e6,
    )
    torch.manual_seed(args.seed)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(args.folder)
    print(f"saved a random {args.layers}-layer Llama to {args.folder}")


if __name__ == "__main__":
    main()
