"""`python -m vaejax.plot --workdir DIR`: redraw every figure of a finished run, without training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaejax.errors import VaejaxError


def redraw(workdir: Path) -> Path:
    """Draw the last epoch's figures from params.msgpack and metrics.jsonl; return the figure folder."""
    import jax

    from vaejax import checkpoint
    from vaejax.data import load_dataset
    from vaejax.figures import RunFigures
    from vaejax.models import build_model, init_params

    config = checkpoint.read_run_config(workdir)
    params_path = workdir / checkpoint.PARAMS_FILE
    if not params_path.is_file():
        raise VaejaxError(f"no {checkpoint.PARAMS_FILE} in {workdir}: the run has not finished")
    model = build_model(config.model, config.latent_dim, config.inputs_decoder)
    params = checkpoint.load_params(params_path, init_params(model, jax.random.key(0)))
    history = checkpoint.read_metrics(workdir)
    if not history:
        raise VaejaxError(f"{workdir / checkpoint.METRICS_FILE}: no epochs recorded")
    figures = RunFigures.for_run(config, model, load_dataset(config.dataset, config.data_dir))
    figures.write_epoch(history[-1]["epoch"], params, history)
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
