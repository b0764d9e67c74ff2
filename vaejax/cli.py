"""`python train.py`: flags -> Config -> training -> figures. User errors end in one line, exit 2."""

from __future__ import annotations

import argparse
import os
import sys

from vaejax.config import MODEL_DEFAULTS, MODELS, Config
from vaejax.errors import VaejaxError

DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def defaults_text(option: str) -> str:
    return ", ".join(f"{model} {values[option]}" for model, values in MODEL_DEFAULTS.items())


def micro_batches(text: str) -> int | None:
    """`--micro_batches`: a whole number, or auto (None)."""
    return None if text == "auto" else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="train.py",
        description="Train the seed autoencoders (conv_vae: seed 000, dense_ae: seed 003) with JAX.",
    )
    add = parser.add_argument
    add("--model", default="conv_vae",
        help=f"architecture: {', '.join(MODELS)} (default: conv_vae; conv_cvae: conv_vae conditioned on the class)")
    add("--dataset", default="mnist",
        help="mnist (bundled, the default), or a 28x28 grayscale TFDS name such as fashion_mnist or kmnist")
    add("--data_dir", default=None,
        help="folder with the four IDX files (gzip or raw), e.g. /usr/share/datasets/fashion-mnist")
    add("--latent_dim", type=int, default=2, help="size of the latent code (default: 2)")
    add("--epochs", type=int, default=None, help=f"epochs to train (default: {defaults_text('epochs')})")
    add("--batch_size", type=int, default=None, help=f"batch size (default: {defaults_text('batch_size')})")
    add("--learning_rate", type=float, default=None,
        help=f"Adam learning rate (default: {defaults_text('learning_rate')})")
    add("--seed", type=int, default=0, help="the one seed every random key derives from (default: 0)")
    add("--workdir", default=None, help="output folder (default: runs/<model>-<dataset>-z<latent>-s<seed>)")
    add("--resume", action="store_true",
        help="continue the run in --workdir from its last checkpoint (or start it if there is none)")
    add("--overwrite", action="store_true", help="replace a run already in --workdir")
    add("--inputs_decoder", type=int, default=49,
        help="conv_vae: width of the decoder's dense layers, a perfect square reshaped to side x side (default: 49)")
    add("--test_image_number", type=int, default=5, help="test images shown in the reconstruction figure (default: 5)")
    add("--plot_latent", action=argparse.BooleanOptionalAction, default=None,
        help="draw the latent scatter and grid (default: on when latent_dim is 2)")
    add("--limit", type=int, default=None, help="use only the first N training images (quick runs)")
    add("--binarize", default="none",
        help="none (default): train on grey levels; dynamic: each step draws binary pixels with probability "
             "equal to the intensity, and the test set is binarized once (for NLLs comparable with papers)")
    add("--loop", default="auto",
        help="step: one compiled call per step; scan: one lax.scan per epoch; unrolled: the same scan with 8 "
             "steps per loop iteration; auto (default): the fastest measured on this backend")
    add("--micro_batches", type=micro_batches, default=None,
        help="compute each batch's gradient as the sum over N parts of it, differentiated side by side "
             "(XLA:CPU then runs the convolutions on several cores; same function, other bits); auto "
             "(default): the fastest measured for this model on this backend, 1 with several devices")
    add("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
        help="TensorBoard event files (per-step and per-epoch scalars, images) in <workdir>/tensorboard (default: on)")
    add("--deterministic", action="store_true",
        help=f"GPU: set XLA_FLAGS={DETERMINISTIC_XLA_FLAG} before JAX starts (bitwise repeatable runs)")
    distributed = parser.add_argument_group(
        "several hosts", "jax.distributed: start the same command on every host; process 0 writes the work directory")
    distributed.add_argument("--distributed", action="store_true",
                             help="call jax.distributed.initialize() first (on TPU pods and SLURM/Open MPI "
                                  "clusters it finds its peers alone; elsewhere give the three flags below)")
    distributed.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    distributed.add_argument("--num_processes", type=int, default=None, help="number of processes")
    distributed.add_argument("--process_id", type=int, default=None, help="this process's index, 0 to N-1")
    return parser


LAUNCH_FLAGS = ("distributed", "coordinator_address", "num_processes", "process_id")


def initialize_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None
                           ) -> None:
    """Join the other processes through JAX's own distributed runtime (before any computation)."""
    import jax

    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VaejaxError(f"--distributed: {first_line}") from None


def enable_deterministic_ops() -> None:
    """Ask XLA for deterministic GPU kernels; only effective before JAX initialises its backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    if DETERMINISTIC_XLA_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_XLA_FLAG}".strip()
    if "jax" in sys.modules:
        print("warning: jax was imported before --deterministic took effect", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    launch = {name: options.pop(name) for name in LAUNCH_FLAGS}
    try:
        config = Config(**options).resolved()
        if config.deterministic:
            enable_deterministic_ops()
        if launch.pop("distributed"):
            initialize_distributed(**launch)
        return run(config)
    except VaejaxError as error:
        kind = "error: " if error.exit_code == 2 else ""  # an interrupt is no error
        print(f"train.py: {kind}{error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print("train.py: aborted; the last checkpoint is untouched", file=sys.stderr)
        return 130


def run(config: Config) -> int:
    import jax  # imported here so that --deterministic can set XLA_FLAGS first

    from vaejax.reporting import Reporter
    from vaejax.training import train

    print(f"JAX {jax.__version__} backend {jax.default_backend()}: {', '.join(map(str, jax.devices()))}")
    print(f"{config.model} on {config.dataset}, latent_dim {config.latent_dim}, batch {config.batch_size}, "
          f"lr {config.learning_rate}, {config.epochs} epochs, seed {config.seed} -> {config.workdir}")
    if jax.process_index() > 0:  # over several processes, process 0 writes files, figures and logs
        train(config)
        print(f"process {jax.process_index()} done; process 0 wrote {config.workdir}")
        return 0
    reporter = Reporter(config)
    try:
        result = train(config, observer=reporter)
    finally:
        reporter.close()
    print(f"wrote {result.workdir}/params.msgpack; figures in {result.workdir}/figures")
    return 0
