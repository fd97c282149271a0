"""`python train.py ...` is `sepconv train ...` (sepconv_jax.commands.train)."""

import sys

from sepconv_jax.commands.train import main

if __name__ == "__main__":
  sys.exit(main(prog="train.py"))
