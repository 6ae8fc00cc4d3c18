"""Contrastive vision self-supervision: the backbone it leaves behind is what you transfer downstream.

accelerate launch recipes/contrastive.py                     # SimCLR on Fashion-MNIST (or the embedded images), CPU
accelerate launch recipes/contrastive.py --method simclr --optimizer lars --learning_rate 0.3
python recipes/contrastive.py --method simclr --help         # every option of that method
"""

from pathlib import Path

from fmkit.cli import run_recipe

if __name__ == "__main__":
    run_recipe("contrastive", Path(__file__).parent / "configs")
