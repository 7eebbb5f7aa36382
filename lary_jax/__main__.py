"""`python -m lary_jax COMMAND ...`: the `lary` command line."""

from lary_jax import main

if __name__ == "__main__":
  main.run_cli()
