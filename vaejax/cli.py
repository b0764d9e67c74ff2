"""`python train.py`: flags -> Config -> training -> figures. User errors end in one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from vaejax import devices, validation  # devices imports JAX, which reads XLA_FLAGS only when its backend starts
from vaejax.command import Command, OneLineParser
from vaejax.config import MODEL_DEFAULTS, MODELS, Config
from vaejax.devices import DETERMINISTIC_XLA_FLAG


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
        help="step: one compiled call per step; scan: one lax.scan per epoch; auto (default): scan on GPU and "
             "TPU, on CPU the fastest measured")
    add("--micro_batches", type=micro_batches, default=Config.micro_batches,
        help="compute each batch's gradient as the sum over N parts of it, differentiated side by side "
             "(XLA:CPU then runs the convolutions on several cores; same function, other bits); auto "
             "(default): the fastest measured for this model on this backend, 1 with several devices")
    add("--objective", default=Config.objective,
        help="the training loss, for VAEs: elbo (default): BCE over --train_samples draws plus the analytic KL; "
             "iwae: Burda et al.'s importance-weighted bound with --train_samples draws; dreg: the same bound with "
             "Tucker et al.'s doubly reparameterised encoder gradient")
    add("--train_samples", type=int, default=Config.train_samples,
        help="latent draws per image each step (default: %(default)s; the IWAE paper: 5 or 50)")
    add("--beta", type=float, default=Config.beta,
        help="weight of the KL term in a VAE's training ELBO, Higgins et al.'s beta-VAE (default: %(default)s, "
             "the seeds' loss; --objective elbo only); the evaluation reports the true ELBO (beta 1) either way")
    add("--schedule", default=Config.schedule,
        help="constant (default): Adam at --learning_rate; iwae: Burda et al.'s 3^i epochs at "
             "--learning_rate * 10^(-i/7), i = 0..7 (3,280 epochs in all), Adam epsilon 1e-4")
    add("--tensorboard", action=argparse.BooleanOptionalAction, default=Config.tensorboard,
        help="TensorBoard event files (per-step and per-epoch scalars, images) in <workdir>/tensorboard "
             "(default: on)")
    add("--nondeterministic", dest="deterministic", action="store_false", default=Config.deterministic,
        help=f"GPU: allow XLA's nondeterministic kernels (by default XLA_FLAGS gets {DETERMINISTIC_XLA_FLAG} "
             "before JAX starts, so the same seed gives the same bits); CPU and TPU are deterministic anyway")
    add("--cpu_bits", default=Config.cpu_bits,
        help="XLA:CPU: portable (default): the same seed gives the same bytes on every x86-64 CPU with FMA at any "
             "core count (a CPU without FMA runs in the machine mode; "
             f"XLA_FLAGS gets {' '.join(devices.PORTABLE_CPU_XLA_FLAGS)} and "
             f"{' '.join(f'{name}={value}' for name, value in devices.PORTABLE_CPU_ENVIRONMENT.items())}); "
             f"machine: the fastest measured ({' '.join(devices.MACHINE_CPU_XLA_FLAGS)}: convolutions in Eigen, "
             "threaded), whose bytes repeat only on the same CPU model and core count")
    add("--deterministic", dest="deterministic", action="store_true",
        help="changes nothing: deterministic GPU kernels are the default (accepted for older scripts)")
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


@dataclass(frozen=True)
class Launch:
    """How this process joins the others (`--distributed` and the three flags that may go with it)."""

    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def validate(self) -> None:
        given = [f"--{name}" for name in ("coordinator_address", "num_processes", "process_id")
                 if getattr(self, name) is not None]
        validation.require(self.distributed or not given, f"{', '.join(given)} needs --distributed")
        if self.coordinator_address is not None:
            host, _, port = self.coordinator_address.rpartition(":")
            port_ok = port.isascii() and port.isdigit() and 1 <= int(port) <= validation.PORT_MAX
            validation.require(host.strip() != "" and port_ok,
                               f"--coordinator_address must be host:port (port 1 to {validation.PORT_MAX}), "
                               f"got {self.coordinator_address!r}")
        if self.num_processes is not None:
            validation.whole_number("--num_processes", self.num_processes, 1, validation.INT32_MAX)
        if self.process_id is not None:
            most = (self.num_processes or validation.INT32_MAX + 1) - 1
            validation.whole_number("--process_id", self.process_id, 0, most, "below --num_processes")


LAUNCH_FLAGS = tuple(field.name for field in dataclasses.fields(Launch))


def options_from_flags(flags: argparse.Namespace) -> tuple[Config, Launch]:
    """The run's Config and this process's Launch, both validated."""
    options = vars(flags)
    launch = Launch(**{name: options.pop(name) for name in LAUNCH_FLAGS})
    launch.validate()
    return Config(**options).resolved(), launch


def start(options: tuple[Config, Launch]) -> int:
    config, launch = options
    if launch.distributed:
        devices.initialize_distributed(launch.coordinator_address, launch.num_processes, launch.process_id)
    return run(config)


def kernel_settings(options: tuple[Config, Launch]) -> dict:
    """--nondeterministic and --cpu_bits, for vaejax.devices.use_deterministic_kernels (set by Command.main)."""
    config, _ = options
    return {"enabled": config.deterministic, "cpu_bits": config.cpu_bits}


COMMAND = Command("train.py", build_parser, options_from_flags, start,
                  interrupted="aborted; the last checkpoint is untouched", kernel_settings=kernel_settings)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


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
