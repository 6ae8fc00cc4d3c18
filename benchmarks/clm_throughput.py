"""Causal-LM training throughput: fmkit's loop (recipes/clm.py) against transformers.Trainer, side by side.

Both sides train the same GPT-2 config (all dropouts 0) on the same text (the embedded corpus), tokenized by
the same byte-level BPE tokenizer into packed blocks of `seq_len` input tokens, with the same batch size,
thread count, fp32, fused AdamW (same LR, weight decay and betas), linear schedule and gradient clipping.
Each side runs in its own process; the first `warmup_steps` steps and all setup are excluded, and tokens/s =
batch x seq_len x steps / seconds of the timed steps, counting input tokens on both sides (HF's shifted loss
has seq_len - 1 targets per block, fmkit's seq_len, since its blocks read one token further).

    python benchmarks/clm_throughput.py --n_embd 256 --n_layer 4 --n_head 4 --seq_len 256 --batch_size 8
    python benchmarks/clm_throughput.py --compile     # torch.compile (inductor) on both sides
    python benchmarks/clm_throughput.py --help
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (  # benchmarks/ is on sys.path when a script in it runs
    MEDIAN_STEP_COLUMNS,
    RATE_COLUMNS,
    add_run_arguments,
    compare_with_trainer,
    hf_blocks,
    hf_train,
    hf_training_arguments,
    read_spec,
)

# GPT-style optimizer settings, as in recipes/configs/clm/demo.yaml; both sides use them.
WEIGHT_DECAY = 0.1
ADAM_BETAS = (0.9, 0.95)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--vocab_size", type=int, default=8192, help="tokenizer target (rounded up to 64)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (inductor) on both sides")
    parser.add_argument("--activation", default=None,
                        help="set GPT-2's activation_function on both sides (default: each side's own default: HF "
                             "keeps gelu_new, fmkit builds the same function as the fused gelu_pytorch_tanh)")
    add_run_arguments(parser, seq_len=256, batch_size=8)
    return parser.parse_args(argv)


def model_config(args: argparse.Namespace, tokenizer_dir: Path) -> dict[str, float]:
    """The GPT2Config fields both sides use (the rest are GPT-2's defaults on both)."""
    from transformers import AutoTokenizer

    from fmkit.data.tokenizer import round_up

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {
        "vocab_size": round_up(len(tokenizer)),
        "n_embd": args.n_embd,
        "n_layer": args.n_layer,
        "n_head": args.n_head,
        "n_positions": args.seq_len,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **({"activation_function": args.activation} if args.activation else {}),
    }


def fmkit_options(args: argparse.Namespace) -> list[str]:
    return [
        "--weight_decay", str(WEIGHT_DECAY), "--adam_beta1", str(ADAM_BETAS[0]), "--adam_beta2", str(ADAM_BETAS[1]),
        "--cpu_threads", str(args.threads), "--torch_compile", str(args.compile).lower(),
    ]  # fmt: skip


def hf_worker(spec_path: Path) -> None:
    """run_clm.py's recipe: tokenize, group_texts with labels = input_ids, default_data_collator, Trainer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, default_data_collator

    spec = read_spec(spec_path)
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    blocks = hf_blocks(spec["train_file"], lambda examples: tokenizer(examples["text"]), spec["seq_len"])
    # The model shifts labels itself, so they are the inputs (run_clm.py copies them in group_texts).
    blocks = blocks.map(lambda examples: {"labels": examples["input_ids"]}, batched=True)
    model = AutoModelForCausalLM.from_config(GPT2Config(**spec["model_config"]), attn_implementation="sdpa")
    assert isinstance(model, GPT2LMHeadModel) and model.config._attn_implementation == "sdpa"
    training_args = hf_training_arguments(
        spec,
        weight_decay=WEIGHT_DECAY,
        adam_beta1=ADAM_BETAS[0],
        adam_beta2=ADAM_BETAS[1],
        torch_compile=spec["compile"],
    )
    hf_train(spec, model=model, args=training_args, train_dataset=blocks, data_collator=default_data_collator)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.hf_worker is not None:
        hf_worker(args.hf_worker)
        return
    from fmkit.tasks.clm import CLM_SPECIALS

    compiled = "-compile" if args.compile else ""
    activation = f"-{args.activation}" if args.activation else ""
    label = args.label or f"d{args.n_embd}-L{args.n_layer}-T{args.seq_len}-B{args.batch_size}{compiled}{activation}"
    tokenizer = ("bpe", args.vocab_size, CLM_SPECIALS)
    compare_with_trainer(__file__, "clm", args, tokenizer, model_config, label, fmkit_options(args),
                         {**RATE_COLUMNS, **MEDIAN_STEP_COLUMNS})  # fmt: skip

if __name__ == "__main__":
    main()
