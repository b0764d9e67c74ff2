"""`python -m vaejax.generate --workdir DIR`: new images from a trained model's latent space.

Writes N images decoded from z drawn by a sampler (the prior N(0, I) of a VAE, or a Gaussian mixture
fitted to the training codes, which also serves a plain autoencoder) as IDX (readable by any MNIST
loader), NPZ and a PNG sheet; a conditional model (`conv_cvae`) also writes their labels
(`--labels`). Also draws latent interpolation strips between pairs of test digits. Seeded: the same
command writes the same bytes.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vaejax import validation
from vaejax.command import Command, OneLineParser
from vaejax.data import IMAGE_PIXELS, NUM_CLASSES, write_idx
from vaejax.errors import VaejaxError
from vaejax.inference import INTERPOLATION_STEPS, to_uint8
from vaejax.keys import command_keys
from vaejax.models import AutoEncoder, decode, encode, images_to_float
from vaejax.samplers import SamplerSpec, balanced_labels, fitted_sampler, parse_sampler, sampled_pixels

SHEET_SIDE = 10  # the PNG sheet shows the first 10 x 10 images
INTERPOLATION_PAIRS = 8
MAX_IDX_COUNT = 2**32 - 1
BYTES_PER_IMAGE = IMAGE_PIXELS * (4 + 1 + 4)  # float32 probabilities, uint8 image, and the NPZ's float32 copy
AUTO_SAMPLER = "auto"
PLAIN_AUTOENCODER_SAMPLER = "gmm:10"  # Ghosh et al. 2020's ex-post mixture: ten components


def resolve_sampler(text: str, model: AutoEncoder) -> SamplerSpec:
    """`--sampler`: `auto` is the prior for a VAE and a 10-component mixture for a plain autoencoder."""
    if text == AUTO_SAMPLER:
        text = "prior" if model.variational else PLAIN_AUTOENCODER_SAMPLER
    return parse_sampler(text)


def interpolations(model: AutoEncoder, params, images: np.ndarray, labels: np.ndarray,
                   steps: int = INTERPOLATION_STEPS) -> np.ndarray:
    """Decoded images along the straight line between the latent means of image pairs.

    `images` uint8 (2P, 28, 28) are taken as pairs (0, 1), (2, 3), ...; returns (P, steps, 784)
    probabilities. A conditional model blends the two one-hot labels along the same line.
    """
    means = encode(model, params, images_to_float(images), labels)[0]
    start, end = means[0::2], means[1::2]
    weights = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    path = (1 - weights) * start[:, None] + weights * end[:, None]  # (P, steps, d)
    pairs = path.shape[0]
    one_hot = jax.nn.one_hot(labels, NUM_CLASSES)
    blend = (1 - weights) * one_hot[0::2, None] + weights * one_hot[1::2, None]
    logits = decode(model, params, path.reshape(pairs * steps, -1), blend.reshape(pairs * steps, -1))
    return np.asarray(jax.nn.sigmoid(logits)).reshape(pairs, steps, -1)


def write_outputs(out: Path, images: np.ndarray, labels: np.ndarray | None, pixels: np.ndarray,
                  strips: np.ndarray, class_names, sampler: str) -> list[Path]:
    """The IDX files, the NPZ (which names the `sampler`), the sheet and the interpolation strips;
    returns the paths written."""
    from vaejax.figures import plot_interpolations, plot_sample_sheet, save_figure
    from vaejax.files import atomic_write, make_folder

    make_folder(out)
    written = [out / "generated-images-idx3-ubyte"]
    atomic_write(written[0], write_idx(images))
    arrays = {"images": images, "probabilities": pixels.astype(np.float32), "sampler": np.array(sampler)}
    if labels is not None:
        written.append(out / "generated-labels-idx1-ubyte")
        atomic_write(written[-1], write_idx(labels))
        arrays["labels"] = labels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    written.append(out / "generated.npz")
    atomic_write(written[-1], buffer.getvalue())
    shown = min(len(images), SHEET_SIDE * SHEET_SIDE)
    sheet_labels = None if labels is None else [class_names[label] for label in labels[:shown]]
    written.append(save_figure(plot_sample_sheet(pixels[:shown], sheet_labels), out / "generated.png"))
    written.append(save_figure(plot_interpolations(strips), out / "interpolations.png"))
    return written


@dataclass(frozen=True)
class GenerateOptions:
    """`python -m vaejax.generate`'s options and their bounds."""

    workdir: Path
    count: int = 10000
    out: Path | None = None  # None: <workdir>/generated
    labels: bool = False
    seed: int = 0
    sampler: str = AUTO_SAMPLER

    def validate(self) -> None:
        validation.existing_folder("--workdir", self.workdir)
        validation.whole_number("--count", self.count, 1, MAX_IDX_COUNT, "an IDX header holds the count in 32 bits")
        validation.memory_bound("--count", self.count, BYTES_PER_IMAGE, validation.host_memory_bytes(),
                                "the images and their pixel probabilities")
        validation.output_folder("--out", self.output_folder)
        validation.seed("--seed", self.seed)
        if self.sampler != AUTO_SAMPLER:
            parse_sampler(self.sampler)

    @property
    def output_folder(self) -> Path:
        return self.out if self.out is not None else self.workdir / "generated"


def build_parser() -> argparse.ArgumentParser:
    defaults = GenerateOptions(Path("."))
    parser = OneLineParser(prog=COMMAND_NAME, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--workdir", required=True, help="work directory of a finished run")
    parser.add_argument("--count", type=int, default=defaults.count, help="images to generate (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (default: <workdir>/generated)")
    parser.add_argument("--labels", action="store_true",
                        help="conv_cvae: generate every class equally often and write the labels too")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the latent draws (default: %(default)s)")
    parser.add_argument("--sampler", default=defaults.sampler,
                        help="where z comes from: prior (N(0, I), VAEs), gmm:K (a K-component full-covariance "
                             "Gaussian mixture fitted to the training images' codes, cached in <workdir>/samplers), "
                             f"or auto (default): prior for a VAE, {PLAIN_AUTOENCODER_SAMPLER} for a plain autoencoder")
    return parser


def options_from_flags(flags: argparse.Namespace) -> GenerateOptions:
    options = GenerateOptions(Path(flags.workdir), flags.count, Path(flags.out) if flags.out is not None else None,
                              flags.labels, flags.seed, flags.sampler)
    options.validate()
    return options


def generate(options: GenerateOptions, log: Callable[[str], None] = print) -> list[Path]:
    """Write the outputs of `options`, holding the work directory's lock (its sampler fits, and by default
    the outputs, are written there; a read-only one is read unlocked); returns the paths written."""
    from vaejax.files import WorkdirLock

    with WorkdirLock(options.workdir, required=False):
        return _generate(options, log)


def _generate(options: GenerateOptions, log: Callable[[str], None]) -> list[Path]:
    from vaejax.checkpoint import load_finished_run
    from vaejax.data import load_dataset

    workdir = options.workdir
    config, model, params, _ = load_finished_run(workdir)
    if options.labels and not model.conditional:
        raise VaejaxError(f"--labels needs a class-conditional model (conv_cvae); {workdir} holds {config.model}")
    if model.conditional and not options.labels:
        raise VaejaxError(f"{config.model} generates a chosen class: pass --labels")
    spec = resolve_sampler(options.sampler, model)
    dataset = load_dataset(config.dataset, config.data_dir)
    sampler = fitted_sampler(workdir, model, params, dataset, spec, binarize=config.binarized, log=log)
    log(f"sampler: {sampler.describe()}")
    labels = balanced_labels(options.count) if options.labels else None
    sample_key, _ = command_keys(options.seed)
    pixels = sampled_pixels(model, params, sampler, sample_key, options.count, labels)
    pair_images = dataset.test_images[:2 * INTERPOLATION_PAIRS]
    strips = interpolations(model, params, pair_images, dataset.test_labels[:2 * INTERPOLATION_PAIRS])
    return write_outputs(options.output_folder, to_uint8(pixels), labels, pixels, strips, dataset.class_names,
                         sampler.describe())


def run(options: GenerateOptions) -> int:
    for path in generate(options):
        print(f"wrote {path}")
    return 0


COMMAND_NAME = "python -m vaejax.generate"
COMMAND = Command(COMMAND_NAME, build_parser, options_from_flags, run)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    sys.exit(main())
