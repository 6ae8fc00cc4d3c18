"""Autoregressive language-model pretraining (GPT-2 / Llama style).

accelerate launch recipes/clm.py                                  # demo: tiny GPT-2, embedded corpus, CPU
accelerate launch recipes/clm.py --config recipes/configs/clm/gpt2-124m.yaml --train_shards shards/
python recipes/clm.py --help                                      # every option
"""

from pathlib import Path

from fmkit.cli import run_recipe

if __name__ == "__main__":
    run_recipe("clm", Path(__file__).parent / "configs")
