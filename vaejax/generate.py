"""`python -m vaejax.generate --workdir DIR`: new images from a trained VAE's prior.

Writes N images decoded from z ~ N(0, I) as IDX (readable by any MNIST loader), NPZ and a PNG
sheet; a conditional model (`conv_cvae`) also writes their labels (`--labels`). Also draws latent
interpolation strips between pairs of test digits. Seeded: the same command writes the same bytes.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vaejax.batching import map_batches
from vaejax.data import IMAGE_SIDE, NUM_CLASSES, write_idx
from vaejax.errors import VaejaxError
from vaejax.models import AutoEncoder, decode, encode, images_to_float

DECODE_BATCH = 1000
SHEET_SIDE = 10  # the PNG sheet shows the first 10 x 10 images
INTERPOLATION_STEPS = 10
INTERPOLATION_PAIRS = 8


def balanced_labels(count: int) -> np.ndarray:
    """0, 1, ..., 9, 0, 1, ...: every class equally often (up to one)."""
    return (np.arange(count) % NUM_CLASSES).astype(np.uint8)


def prior_samples(model: AutoEncoder, params, key: jax.Array, count: int, labels: np.ndarray | None = None
                  ) -> np.ndarray:
    """`count` images decoded from z ~ N(0, I) as pixel probabilities (count, 784), in batches.

    A conditional model needs `labels` (count,); z is drawn the same way with or without them.
    """
    if not model.variational:
        raise VaejaxError("a plain autoencoder has no prior to sample from; generate with a VAE (conv_vae, conv_cvae)")
    if model.conditional and labels is None:
        raise VaejaxError("a conditional model needs labels to generate")
    latent_dim = model.encoder.latent_dim
    to_pixels = jax.jit(lambda params, z, labels: jax.nn.sigmoid(decode(model, params, z, labels)))
    z = np.asarray(jax.random.normal(key, (count, latent_dim)))
    labels = np.zeros(count, np.int32) if labels is None else np.asarray(labels, np.int32)
    return map_batches(lambda z, labels: to_pixels(params, z, labels), (z, labels), DECODE_BATCH)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Probabilities (N, 784) -> uint8 images (N, 28, 28), rounded as MNIST's grey levels are."""
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


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
                  strips: np.ndarray, class_names) -> list[Path]:
    """The IDX files, the NPZ, the sheet and the interpolation strips; returns the paths written."""
    from vaejax.checkpoint import atomic_write
    from vaejax.figures import plot_interpolations, plot_sample_sheet, save_figure

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "generated-images-idx3-ubyte"]
    atomic_write(written[0], write_idx(images))
    arrays = {"images": images, "probabilities": pixels.astype(np.float32)}
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


def build_parser() -> argparse.ArgumentParser:
    from vaejax.cli import OneLineParser

    parser = OneLineParser(prog="python -m vaejax.generate", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--workdir", required=True, help="work directory of a finished VAE run")
    parser.add_argument("--count", type=int, default=10000, help="images to generate (default: 10000)")
    parser.add_argument("--out", default=None, help="output folder (default: <workdir>/generated)")
    parser.add_argument("--labels", action="store_true",
                        help="conv_cvae: generate every class equally often and write the labels too")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default: 0)")
    return parser


def generate(workdir: Path, count: int, out: Path, with_labels: bool, seed: int) -> list[Path]:
    from vaejax.checkpoint import load_finished_run
    from vaejax.data import load_dataset

    if count < 1:
        raise VaejaxError(f"--count must be at least 1, got {count}")
    config, model, params, _ = load_finished_run(workdir)
    if with_labels and not model.conditional:
        raise VaejaxError(f"--labels needs a class-conditional model (conv_cvae); {workdir} holds {config.model}")
    if model.conditional and not with_labels:
        raise VaejaxError(f"{config.model} generates a chosen class: pass --labels")
    labels = balanced_labels(count) if with_labels else None
    sample_key, _ = jax.random.split(jax.random.key(seed))
    pixels = prior_samples(model, params, sample_key, count, labels)
    dataset = load_dataset(config.dataset, config.data_dir)
    pair_images = dataset.test_images[:2 * INTERPOLATION_PAIRS]
    strips = interpolations(model, params, pair_images, dataset.test_labels[:2 * INTERPOLATION_PAIRS])
    return write_outputs(out, to_uint8(pixels), labels, pixels, strips, dataset.class_names)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir)
    out = Path(args.out) if args.out else workdir / "generated"
    try:
        written = generate(workdir, args.count, out, args.labels, args.seed)
    except VaejaxError as error:
        print(f"vaejax.generate: error: {error}", file=sys.stderr)
        return error.exit_code
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
