"""``newsimpact train | evaluate | export | card | score | impact-labels | signals [overrides]``.

Each command is the Hydra entry point of the same name (``python -m training.train`` ... in a checkout),
taking the same overrides; ``newsimpact COMMAND --help`` shows its config groups and defaults. Runs write
under the working directory (``run_dir=runs/<name>``, ``output_dir=...``) wherever the package is installed.
Several processes: ``torchrun --nproc_per_node=N -m newsimpact score ...`` (or ``torchrun --no-python
newsimpact score ...``), ``accelerate launch --num_processes N -m newsimpact train ...``.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "train": ("training.train", "LoRA-fine-tune a model from configs (train.yaml, experiment=...)"),
    "evaluate": ("training.evaluate", "metrics and plots of an exported model on a labelled split"),
    "export": ("training.export", "a training run -> a self-describing model folder (merged|adapter|onnx)"),
    "card": ("inference.card", "print the news card of a few texts (the packaged model, no training)"),
    "score": ("inference.score", "batch-score news archives (default: the packaged model 'card')"),
    "impact-labels": ("training.impact_labels", "label articles with market impact from prices"),
    "signals": ("inference.signals", "scored articles -> per-ticker session signals, evaluation, report"),
}


def usage() -> str:
    from newsimpact import __version__

    width = max(len(name) for name in COMMANDS)
    lines = [
        f"newsimpact {__version__}: financial-news sentiment and market-impact models",
        "",
        "usage: newsimpact COMMAND [key=value ...]     (Hydra overrides; COMMAND --help for its config groups)",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()),
        "",
        "e.g.  newsimpact card \"Acme beats estimates and raises guidance\"   |   newsimpact score input='news/*.jsonl.gz' output_dir=OUT",
        "      newsimpact train experiment=tfns_minilm   |   newsimpact score model_dir=DIR input=... output_dir=OUT",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        try:
            print(usage())
        except BrokenPipeError:  # `newsimpact --help | head`: the reader left, which is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if args[0] in ("-V", "--version"):
        from newsimpact import __version__

        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"newsimpact: unknown command '{name}'; use one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    # Hydra reads the overrides from sys.argv; the program name shows in its --help.
    sys.argv = [f"newsimpact {name}", *rest]
    module.main()
    return 0
