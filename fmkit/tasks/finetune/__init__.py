"""Downstream adaptation: fine-tune, linear-probe or LoRA-adapt a pretrained model on a labelled task."""
