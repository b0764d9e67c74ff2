"""Train a seed autoencoder: `python train.py --latent_dim 2` (see --help)."""

import sys

from vaejax.cli import main

if __name__ == "__main__":
    sys.exit(main())
