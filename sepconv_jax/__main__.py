"""`python -m sepconv_jax ...` is the `sepconv` command (`sepconv_jax.commands`)."""

import sys

from sepconv_jax.commands import main

if __name__ == "__main__":
  sys.exit(main())
