"""`python train.py`: flags -> Config -> training -> figures. User errors end in one line, exit 2."""

from __future__ import annotations

import argparse
import sys

from vaejax import devices  # imports JAX, which reads XLA_FLAGS only when its backend starts
from vaejax.config import MODEL_DEFAULTS, MODELS, Config
from vaejax.devices import DETERMINISTIC_XLA_FLAG
from vaejax.errors import VaejaxError


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
    """The flags of `train.py`; every default is Config's own (shown with %(default)s)."""
    parser = OneLineParser(
        prog="train.py",
        description="Train the seed autoencoders (conv_vae: seed 000, dense_ae: seed 003) with JAX.",
    )
    add = parser.add_argument
    add("--model", default=Config.model,
        help=f"architecture: {', '.join(MODELS)} (default: %(default)s; conv_cvae: conv_vae conditioned on the class)")
    add("--dataset", default=Config.dataset,
        help="mnist (bundled, the default), or a 28x28 grayscale TFDS name such as fashion_mnist or kmnist")
    add("--data_dir", default=Config.data_dir,
        help="folder with the four IDX files (gzip or raw), e.g. /usr/share/datasets/fashion-mnist")
    add("--latent_dim", type=int, default=Config.latent_dim, help="size of the latent code (default: %(default)s)")
    add("--epochs", type=int, default=Config.epochs, help=f"epochs to train (default: {defaults_text('epochs')})")
    add("--batch_size", type=int, default=Config.batch_size,
        help=f"batch size (default: {defaults_text('batch_size')})")
    add("--learning_rate", type=float, default=Config.learning_rate,
        help=f"Adam learning rate (default: {defaults_text('learning_rate')})")
    add("--seed", type=int, default=Config.seed,
        help="the one seed every random key derives from (default: %(default)s)")
    add("--workdir", default=Config.workdir,
        help="output folder (default: runs/<model>-<dataset>-z<latent>-s<seed>)")
    add("--resume", action="store_true",
        help="continue the run in --workdir from its last checkpoint (or start it if there is none)")
    add("--overwrite", action="store_true", help="replace a run already in --workdir")
    add("--inputs_decoder", type=int, default=Config.inputs_decoder,
        help="conv_vae: width of the decoder's dense layers, a perfect square reshaped to side x side "
             "(default: %(default)s)")
    add("--test_image_number", type=int, default=Config.test_image_number,
        help="test images shown in the reconstruction figure (default: %(default)s)")
    add("--plot_latent", action=argparse.BooleanOptionalAction, default=Config.plot_latent,
        help="draw the latent scatter and grid (default: on when latent_dim is 2)")
    add("--limit", type=int, default=Config.limit, help="use only the first N training images (quick runs)")
    add("--binarize", default=Config.binarize,
        help="none (default): train on grey levels; dynamic: each step draws binary pixels with probability "
             "equal to the intensity, and the test set is binarized once (for NLLs comparable with papers)")
    add("--loop", default=Config.loop,
        help="step: one compiled call per step; scan: one lax.scan per epoch; unrolled: the same scan with 8 "
             "steps per loop iteration; auto (default): scan on GPU and TPU, on CPU the fastest measured")
    add("--micro_batches", type=micro_batches, default=Config.micro_batches,
        help="compute each batch's gradient as the sum over N parts of it, differentiated side by side "
             "(XLA:CPU then runs the convolutions on several cores; same function, other bits); auto "
             "(default): the fastest measured for this model on this backend, 1 with several devices")
    add("--tensorboard", action=argparse.BooleanOptionalAction, default=Config.tensorboard,
        help="TensorBoard event files (per-step and per-epoch scalars, images) in <workdir>/tensorboard "
             "(default: on)")
    add("--nondeterministic", dest="deterministic", action="store_false", default=Config.deterministic,
        help=f"GPU: allow XLA's nondeterministic kernels (by default XLA_FLAGS gets {DETERMINISTIC_XLA_FLAG} "
             "before JAX starts, so the same seed gives the same bits); CPU and TPU are deterministic anyway")
    add("--deterministic", dest="deterministic", action="store_true",
        help="the default (kept for older scripts): deterministic GPU kernels")
    distributed = parser.add_argument_group(
        "several hosts", "jax.distributed: start the same command on every host; process 0 writes the work directory")
    distributed.add_argument("--distributed", action="store_true",
                             help="call jax.distributed.initialize() first (on TPU pods and SLURM/Open MPI "
                                  "clusters it finds its peers alone; elsewhere give the three flags below)")
    distributed.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    distributed.add_argument("--num_processes", type=int, default=None, help="number of processes")
    distributed.add_argument("--process_id", type=int, default=None, help="this process's index, 0 to N-1")
    return parser


def time_split(seconds: dict[str, float]) -> str:
    """Where a run's time went: the training thread's phases, then the background work it overlapped."""
    thread = ("setup", "train", "evaluate", "epoch_end", "wait")
    background = sorted(set(seconds) - set(thread))
    return ("time: " + ", ".join(f"{name} {seconds.get(name, 0.0):.1f}s" for name in thread)
            + "; in the background: " + ", ".join(f"{name} {seconds[name]:.1f}s" for name in background))


LAUNCH_FLAGS = ("distributed", "coordinator_address", "num_processes", "process_id")


def main(argv: list[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    launch = {name: options.pop(name) for name in LAUNCH_FLAGS}
    try:
        config = Config(**options).resolved()
        devices.use_deterministic_kernels(config.deterministic)
        if launch.pop("distributed"):
            devices.initialize_distributed(**launch)
        return run(config)
    except VaejaxError as error:
        kind = "error: " if error.exit_code == 2 else ""  # an interrupt is no error
        print(f"train.py: {kind}{error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print("train.py: aborted; the last checkpoint is untouched", file=sys.stderr)
        return 130


def run(config: Config) -> int:
    import jax

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
    print(time_split(result.seconds))
    return 0
