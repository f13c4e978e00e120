"""`python -m realsynth` (and `torchrun -m realsynth`) runs the command-line tool."""

from realsynth.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
