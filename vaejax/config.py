"""Every training option in one place: its default, and its validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass

from vaejax import validation
from vaejax.data import IMAGE_PIXELS, IMAGE_SIDE, MAX_EXAMPLES
from vaejax.errors import VaejaxError
from vaejax.files import is_number, is_whole_number
from vaejax.validation import INT32_MAX
from vaejax.validation import require as _require

MODELS = ("conv_vae", "conv_cvae", "dense_ae", "mlp_vae")
SCHEDULES = ("constant", "iwae")
OBJECTIVES = ("elbo", "iwae", "dreg")  # vaejax.steps.LossSpec
BINARIZATIONS = ("none", "dynamic")
LOOPS = ("auto", "step", "scan")
CPU_BITS = ("portable", "machine")  # vaejax.devices.use_deterministic_kernels
DATASET_NAME = re.compile(r"[a-z][a-z0-9_]*(/[a-z0-9_.]+)?(:[0-9.*]+)?")  # TFDS's name[/config][:version]
MAX_TRAIN_IMAGES = MAX_EXAMPLES
MAX_TEST_IMAGES_SHOWN = 100  # the reconstruction figure; drawing grows with it
MAX_TRAIN_SAMPLES = 5000  # the largest k of the papers; memory bounds it further (vaejax.training)

# The seeds' settings: seed 000 (TF1 conv VAE) and seed 003 (Keras dense AE, Keras' default batch).
MODEL_DEFAULTS = {
    "conv_vae": {"epochs": 20, "batch_size": 128, "learning_rate": 5e-4},
    "conv_cvae": {"epochs": 20, "batch_size": 128, "learning_rate": 5e-4},
    "dense_ae": {"epochs": 10, "batch_size": 32, "learning_rate": 1e-3},
    # Burda et al. 2016: batch 20, Adam at 1e-3 (decayed by --schedule iwae over 3,280 epochs).
    "mlp_vae": {"epochs": 3280, "batch_size": 20, "learning_rate": 1e-3},
}

# Options that change the trained bits; a resumed run must agree on all of them. `epochs` is left
# out on purpose: resuming with a larger --epochs continues the same run.
RESULT_FIELDS = (
    "model", "dataset", "data_dir", "latent_dim", "inputs_decoder", "batch_size",
    "learning_rate", "seed", "limit", "loop", "binarize", "micro_batches", "objective", "train_samples", "schedule",
    "beta",
)
# Options added after runs were made: they enter a run's identity only when set, so those runs
# (whose config.json lacks them) still resume and keep their hash.
LATER_FIELDS = {"objective": "elbo", "train_samples": 1, "schedule": "constant", "beta": 1.0}


@dataclass(frozen=True)
class Config:
    """A training run's options. `None` for epochs/batch_size/learning_rate means the model's default."""

    model: str = "conv_vae"
    dataset: str = "mnist"
    data_dir: str | None = None
    latent_dim: int = 2
    inputs_decoder: int = 49
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int = 0
    limit: int | None = None
    workdir: str | None = None
    resume: bool = False
    overwrite: bool = False
    test_image_number: int = 5
    plot_latent: bool | None = None
    deterministic: bool = True  # GPU: deterministic XLA kernels (vaejax.devices)
    cpu_bits: str = "portable"  # XLA:CPU: the same bytes on every CPU with FMA, or "machine" (vaejax.devices.CPU_BITS)
    loop: str = "auto"
    tensorboard: bool = True
    binarize: str = "none"
    micro_batches: int | None = None  # None: auto (measured per backend and model)
    objective: str = "elbo"  # vaejax.steps.LossSpec
    train_samples: int = 1
    schedule: str = "constant"
    beta: float = 1.0  # the ELBO's KL weight (vaejax.steps.LossSpec); 1: the seeds' loss

    def resolved(self) -> Config:
        """Fill model defaults and the default work directory, then validate."""
        _require(self.model in MODELS, f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        defaults = MODEL_DEFAULTS[self.model]
        filled = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        dataset = normalize_dataset_name(self.dataset)
        config = dataclasses.replace(self, dataset=dataset, **filled)
        if config.plot_latent is None:
            config = dataclasses.replace(config, plot_latent=config.latent_dim == 2)
        if config.workdir is None:
            name = f"{config.model}-{dataset}-z{config.latent_dim}-s{config.seed}"
            config = dataclasses.replace(config, workdir=f"runs/{name}")
        config.validate()
        return config

    def validate(self) -> None:
        """Raise VaejaxError naming the first invalid option; every bound is stated in README's flag table."""
        from vaejax.models import build_model  # which models are VAEs, as the models themselves say

        _require(DATASET_NAME.fullmatch(self.dataset) is not None,
                 f"--dataset must be mnist or a TFDS name such as fashion_mnist, got {self.dataset!r}")
        if self.data_dir is not None:
            validation.existing_folder("--data_dir", self.data_dir)
        validation.whole_number("--latent_dim", self.latent_dim, 1, IMAGE_PIXELS, "a code no longer than the image")
        root = math.isqrt(self.inputs_decoder) if self.inputs_decoder >= 1 else 0
        _require(
            root * root == self.inputs_decoder and 1 <= root <= IMAGE_SIDE,
            f"--inputs_decoder must be a perfect square from 1 to {IMAGE_PIXELS} (a square no larger than the "
            f"image, e.g. 49), got {self.inputs_decoder}",
        )
        validation.whole_number("--epochs", self.epochs, 1, INT32_MAX, "the state counts epochs in int32")
        validation.whole_number("--batch_size", self.batch_size, 1, MAX_TRAIN_IMAGES, "no dataset holds more images")
        validation.positive_finite("--learning_rate", self.learning_rate)
        validation.seed("--seed", self.seed)
        if self.limit is not None:
            validation.whole_number("--limit", self.limit, 1, MAX_TRAIN_IMAGES, "no dataset holds more images")
        validation.output_folder("--workdir", self.workdir)
        validation.whole_number("--test_image_number", self.test_image_number, 1, MAX_TEST_IMAGES_SHOWN,
                                "one figure column each")
        _require(not (self.resume and self.overwrite), "--resume and --overwrite exclude each other")
        _require(self.cpu_bits in CPU_BITS, f"--cpu_bits must be one of {', '.join(CPU_BITS)}, got {self.cpu_bits!r}")
        _require(self.loop in LOOPS, f"--loop must be one of {', '.join(LOOPS)}, got {self.loop!r}")
        _require(
            self.micro_batches is None or 1 <= self.micro_batches <= self.batch_size,
            f"--micro_batches must be auto or 1 to --batch_size ({self.batch_size}), got {self.micro_batches}",
        )
        _require(
            self.binarize in BINARIZATIONS,
            f"--binarize must be one of {', '.join(BINARIZATIONS)}, got {self.binarize!r}",
        )
        _require(self.objective in OBJECTIVES,
                 f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        validation.whole_number("--train_samples", self.train_samples, 1, MAX_TRAIN_SAMPLES,
                                "draws decoded per image each step")
        variational = [name for name in MODELS if build_model(name, 1).variational]
        _require(self.model in variational or (self.objective == "elbo" and self.train_samples == 1),
                 f"--objective {self.objective} --train_samples {self.train_samples} needs a VAE "
                 f"({', '.join(variational)}); {self.model} has no posterior to sample")
        validation.positive_finite("--beta", self.beta)
        _require(self.beta == 1.0 or (self.model in variational and self.objective == "elbo"),
                 f"--beta {self.beta} weighs the KL of a VAE's ELBO: it needs --objective elbo and a VAE "
                 f"({', '.join(variational)}), not {self.model} with --objective {self.objective}")
        _require(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    @property
    def binarized(self) -> bool:
        """Trained on dynamically binarized pixels, so evaluated on the test set's one fixed binarization."""
        return self.binarize == "dynamic"

    def check_dataset(self, train_images: int) -> None:
        """The bounds that follow from the data: a batch and a limit no larger than the training set."""
        limit = self.limit if self.limit is not None else train_images
        _require(limit <= train_images, f"--limit {limit} is more than the {train_images} training images")
        _require(self.batch_size <= limit,
                 f"--batch_size {self.batch_size} is larger than the {limit} training images")

    def result_dict(self) -> dict:
        """The options that determine the trained parameters."""
        return {name: getattr(self, name) for name in RESULT_FIELDS
                if LATER_FIELDS.get(name, object()) != getattr(self, name)}

    def result_hash(self) -> str:
        """A short stable hash of `result_dict`, stored in checkpoints and metrics."""
        text = json.dumps(self.result_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def check_option_types(record: dict) -> None:
    """Raise VaejaxError naming the first option in `record` (a saved config.json, say) whose value is not
    of its field's type: a whole number is an int (not a bool), a number an int or a float, a flag a bool,
    a text a string without NUL. Unknown names are left to `Config(**record)`; the values to `validate`."""
    hints = typing.get_type_hints(Config)
    for name, value in record.items():
        if name in hints and not any(_has_type(value, kind) for kind in typing.get_args(hints[name]) or (hints[name],)):
            kinds = " or ".join(_TYPE_NAMES[kind] for kind in typing.get_args(hints[name]) or (hints[name],))
            raise VaejaxError(f"{name} must be {kinds}, got {type(value).__name__} {str(value)[:40]}")


_TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "a text", type(None): "null"}


def _has_type(value, kind: type) -> bool:
    if kind is float:
        return is_number(value)
    if kind is int:
        return is_whole_number(value)
    if kind is str:
        return isinstance(value, str) and "\0" not in value
    return isinstance(value, kind)


def normalize_dataset_name(name: str) -> str:
    """Accept the seed's spelling (`fashion-mnist`) for the TFDS one (`fashion_mnist`)."""
    return name.strip().lower().replace("-", "_")


