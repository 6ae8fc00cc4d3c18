"""MLM training throughput: fmkit's loop (recipes/mlm.py) against transformers.Trainer, side by side.

Both sides train the same BertConfig on the same text (the embedded corpus), tokenized by the same
WordPiece tokenizer into packed blocks of `seq_len` tokens (no padding), with the same batch size, thread
count, AdamW (fused) and gradient clipping. Each side runs in its own process; the first `warmup_steps`
steps and all setup (tokenization, model build) are excluded, and tokens/s = batch x seq_len x steps /
seconds of the timed steps.

    python benchmarks/mlm_throughput.py --hidden_size 256 --num_layers 4 --heads 4 --intermediate 1024
    python benchmarks/mlm_throughput.py --help
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (  # benchmarks/ is on sys.path when a script in it runs
    add_run_arguments,
    compare_with_trainer,
    hf_blocks,
    hf_train,
    hf_training_arguments,
    read_spec,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--vocab_size", type=int, default=30522, help="tokenizer target (fmkit rounds up to 64)")
    add_run_arguments(parser, seq_len=128, batch_size=32)
    return parser.parse_args(argv)


def model_config(args: argparse.Namespace, tokenizer_dir: Path) -> dict[str, int]:
    """The BertConfig fields both sides use (the rest are BERT's defaults on both)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.heads,
        "intermediate_size": args.intermediate,
        "max_position_embeddings": max(512, args.seq_len),
        "pad_token_id": tokenizer.pad_token_id,
    }


def hf_worker(spec_path: Path) -> None:
    """run_mlm.py's recipe: tokenize, group_texts, DataCollatorForLanguageModeling, Trainer."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, DataCollatorForLanguageModeling

    spec = read_spec(spec_path)
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])

    def tokenize(examples: dict) -> dict:
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    blocks = hf_blocks(spec["train_file"], tokenize, spec["seq_len"])
    model = AutoModelForMaskedLM.from_config(BertConfig(**spec["model_config"]), attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    training_args = hf_training_arguments(spec, weight_decay=0.01)
    hf_train(spec, model=model, args=training_args, train_dataset=blocks, data_collator=collator)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.hf_worker is not None:
        hf_worker(args.hf_worker)
        return
    from fmkit.data.tokenizer import BERT_SPECIALS

    label = args.label or f"h{args.hidden_size}-L{args.num_layers}-T{args.seq_len}-B{args.batch_size}"
    tokenizer = ("wordpiece", args.vocab_size, BERT_SPECIALS)
    # Both sides train a BERT, whatever architecture the demo preset picks.
    compare_with_trainer(
        __file__, "mlm", args, tokenizer, model_config, label, ["--weight_decay", "0.01", "--model_type", "bert"]
    )


if __name__ == "__main__":
    main()
