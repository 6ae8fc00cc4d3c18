"""CLIP-style image-text contrastive pretraining (CLIP's InfoNCE or SigLIP's sigmoid loss).

accelerate launch recipes/clip.py                                        # demo: tiny CLIP, embedded pairs, CPU
accelerate launch recipes/clip.py --config recipes/configs/clip/vit-b-32.yaml --train_data 'shards/{00000..00099}.tar'
accelerate launch recipes/clip.py --model open_clip:ViT-B-32 --train_data pairs.csv --image_column filepath
python recipes/clip.py --help                                            # every option
"""

from pathlib import Path

from fmkit.cli import run_recipe

if __name__ == "__main__":
    run_recipe("clip", Path(__file__).parent / "configs")
