"""Measure a saved model without training it: probes and random-init baseline, CLIP zero-shot, LM perplexity.

python recipes/evaluate.py runs/pretext-rotation              # linear probe, kNN, few-shot vs a random backbone
python recipes/evaluate.py runs/clip-demo                     # zero-shot vs chance, and the image tower's probes
python recipes/evaluate.py runs/mlm-demo                      # held-out loss, perplexity, accuracy vs unigram
python recipes/evaluate.py MODEL --probe_train_images data/train --probe_test_images data/test
python recipes/evaluate.py --help                             # every option (one process: no accelerate launch)
"""

import sys

from fmkit.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
