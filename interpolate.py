"""`python interpolate.py ...` is `sepconv interpolate ...` (sepconv_jax.commands.interpolate)."""

import sys

from sepconv_jax.commands.interpolate import main

if __name__ == "__main__":
  sys.exit(main(prog="interpolate.py"))
