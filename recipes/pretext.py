"""Vision pretext-task pretraining: the backbone it leaves behind is what you transfer downstream.

accelerate launch recipes/pretext.py                       # rotation on the embedded images, CPU, minutes
accelerate launch recipes/pretext.py --task jigsaw         # also: context, colorization, superres, inpainting, mim
accelerate launch recipes/pretext.py --task mim --config recipes/configs/pretext/vit-b16-mae.yaml --train_images data/
python recipes/pretext.py --task jigsaw --help             # every option of that task
"""

from pathlib import Path

from fmkit.cli import run_recipe

if __name__ == "__main__":
    run_recipe("pretext", Path(__file__).parent / "configs")
