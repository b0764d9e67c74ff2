"""`python -m vaejax.plot --workdir DIR`: redraw every figure of a finished run, without training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaejax import validation
from vaejax.command import Command, OneLineParser


def redraw(workdir: Path) -> Path:
    """Draw the last epoch's figures from params.msgpack and metrics.jsonl; return the figure folder.
    Holds the work directory's lock meanwhile, so a run training there is not drawn over."""

    from vaejax import checkpoint
    from vaejax.data import load_dataset
    from vaejax.figures import RunFigures
    from vaejax.files import WorkdirLock

    with WorkdirLock(workdir):
        config, model, params, history = checkpoint.load_finished_run(workdir)
        figures = RunFigures.for_run(config, model, load_dataset(config.dataset, config.data_dir))
        figures.write_epoch(history[-1]["epoch"], params, history)
        figures.close()
    return figures.folder


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=COMMAND_NAME, description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--workdir", required=True, help="the work directory of a finished run")
    return parser


def options_from_flags(flags: argparse.Namespace) -> Path:
    return validation.existing_folder("--workdir", flags.workdir)


def run(workdir: Path) -> int:
    print(f"redrew the figures in {redraw(workdir)}")
    return 0


COMMAND_NAME = "python -m vaejax.plot"
COMMAND = Command(COMMAND_NAME, build_parser, options_from_flags, run)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    sys.exit(main())
