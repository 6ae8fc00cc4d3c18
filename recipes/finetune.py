"""Downstream adaptation of a pretrained model, with the gain over training from scratch beside it.

accelerate launch recipes/finetune.py                          # the MLM demo's model on the embedded docstring task
accelerate launch recipes/finetune.py --adapter lora           # also: linear (frozen backbone), full (default)
accelerate launch recipes/finetune.py --label_fractions [0.01,0.1,1.0]   # the label-efficiency curve
accelerate launch recipes/finetune.py --model_name_or_path bert-base-uncased --dataset_name glue \
    --dataset_config sst2 --text_column sentence --validation_split validation --test_split validation
python recipes/finetune.py --help                              # every option
"""

from pathlib import Path

from fmkit.cli import run_recipe

if __name__ == "__main__":
    run_recipe("finetune", Path(__file__).parent / "configs")
