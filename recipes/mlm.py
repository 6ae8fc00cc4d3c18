"""Masked-language-model pretraining (BERT / RoBERTa / ModernBERT style).

accelerate launch recipes/mlm.py                                  # demo: tiny BERT, embedded corpus, CPU
accelerate launch recipes/mlm.py --config recipes/configs/mlm/bert-base.yaml --train_files 'data/*.jsonl'
python recipes/mlm.py --help                                      # every option
"""

from pathlib import Path

from fmkit.cli import run_recipe

if __name__ == "__main__":
    run_recipe("mlm", Path(__file__).parent / "configs")
