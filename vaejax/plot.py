"""`python -m vaejax.plot --workdir DIR`: redraw every figure of a finished run, without training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaejax.errors import VaejaxError


def redraw(workdir: Path) -> Path:
    """Draw the last epoch's figures from params.msgpack and metrics.jsonl; return the figure folder."""

    from vaejax import checkpoint
    from vaejax.data import load_dataset
    from vaejax.figures import RunFigures

    config, model, params, history = checkpoint.load_finished_run(workdir)
    figures = RunFigures.for_run(config, model, load_dataset(config.dataset, config.data_dir))
    figures.write_epoch(history[-1]["epoch"], params, history)
    figures.close()
    return figures.folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaejax.plot", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--workdir", required=True, help="the work directory of a finished run")
    args = parser.parse_args(argv)
    try:
        folder = redraw(Path(args.workdir))
    except VaejaxError as error:
        print(f"vaejax.plot: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"redrew the figures in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
