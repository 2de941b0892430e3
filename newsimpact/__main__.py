"""``python -m newsimpact COMMAND [overrides]``: the console command, for launchers that take a module
(``torchrun -m newsimpact score ...``, ``accelerate launch -m newsimpact train ...``)."""

from newsimpact.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
