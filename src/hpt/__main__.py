"""`python -m hpt` (and `torchrun -m hpt ...`) runs the command line."""

from hpt.cli import main

if __name__ == "__main__":
    main()
