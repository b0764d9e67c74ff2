"""Figures, summary, progress and TensorBoard logs of a run."""

import dataclasses
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from vaejax import inference, plot
from vaejax.config import Config
from vaejax.figures import RunFigures, plot_latent_with_grid, project_2d
from vaejax.reporting import EpochProgress, Reporter
from vaejax.training import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def trained_run(tmp_path, dataset, name, **changes):
    config = dataclasses.replace(
        Config(model="dense_ae", epochs=2, batch_size=64, workdir=str(tmp_path / name)), **changes).resolved()
    lines = []
    reporter = Reporter(config, log=lines.append)
    try:
        result = train(config, dataset, log=lines.append, observer=reporter)
    finally:
        reporter.close()
    return result, reporter, lines


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory, mnist):
    """conv_vae on the first 256 training images; the whole test set, as `python -m vaejax.plot` reads it."""
    return trained_run(tmp_path_factory.mktemp("conv"), mnist, "run", model="conv_vae", epochs=2,
                       batch_size=128, test_image_number=6, limit=256)


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, small_mnist):
    return trained_run(tmp_path_factory.mktemp("dense"), small_mnist, "run", epochs=4)


def test_every_figure_is_written_per_epoch_with_a_latest_copy(conv_run):
    result, _, _ = conv_run
    folder = result.workdir / "figures"
    expected_sizes = {
        "reconstructions": (960, 340), "samples": (500, 540), "latent": (1500, 660),
        "latent_normal_grid": (1500, 660),
    }
    for name, size in expected_sizes.items():
        for suffix in ("_e001", "_e002", ""):
            assert png_size(folder / f"{name}{suffix}.png") == size
        assert (folder / f"{name}.png").read_bytes() == (folder / f"{name}_e002.png").read_bytes()
    assert png_size(folder / "learning_curves.png") == (1500, 400)


def test_redraw_reproduces_the_figures_bit_for_bit(conv_run, tmp_path):
    result, _, _ = conv_run
    folder = result.workdir / "figures"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    for path in folder.iterdir():
        if "_e001" not in path.name:
            path.unlink()
    config_path = result.workdir / "config.json"
    saved = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(saved | {"workdir": "runs/made-elsewhere"}))  # e.g. a relative path
    assert plot.main(["--workdir", str(result.workdir)]) == 0
    after = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert after == before


def test_redraw_of_an_unfinished_run_is_one_clear_error(tmp_path, capsys):
    assert plot.main(["--workdir", str(tmp_path)]) == 2
    assert "config.json: unreadable" in capsys.readouterr().err


def test_plain_autoencoder_draws_no_samples_and_says_so(dense_run):
    result, _, lines = dense_run
    folder = result.workdir / "figures"
    assert not list(folder.glob("samples*")) and not list(folder.glob("latent_normal_grid*"))
    assert sum("not generative: no prior samples" in line for line in lines) == 1
    assert png_size(folder / "learning_curves.png") == (500, 400)


def test_decoded_grid_varies_across_the_latent_space(dense_run):
    result, reporter, _ = dense_run
    means = reporter.figures.test_means(result.params, result.dataset.test_images, result.dataset.test_labels)
    xs, ys = (inference.code_span(means[:, axis]) for axis in (0, 1))
    grid = reporter.figures.decode_grid(result.params, xs, ys)
    tiles = grid.reshape(14, 28, 14, 28).transpose(0, 2, 1, 3).reshape(196, -1)
    assert grid.shape == (14 * 28, 14 * 28)
    distances = np.abs(tiles - tiles.mean(axis=0)).mean(axis=1)
    assert distances.mean() > 0.02  # mean absolute pixel difference from the average tile
    assert np.abs(tiles[0] - tiles[-1]).mean() > 0.05  # opposite corners decode to different images


def test_a_dead_relu_unit_still_gets_a_grid():
    span = inference.code_span(np.zeros(100))
    assert span[0] == -0.5 and span[-1] == 0.5 and len(span) == 14


def test_scatter_uses_every_label_with_its_class_name(small_mnist):
    rng = np.random.default_rng(0)
    labels = small_mnist.test_labels
    means = rng.normal(size=(len(labels), 2))
    values = inference.SEED_GRID_VALUES
    grid = np.zeros((len(values) * 28, len(values) * 28))
    fig = plot_latent_with_grid(means, labels, small_mnist.class_names, values, values, grid)
    scatter_axis, grid_axis = fig.axes
    assert [text.get_text() for text in scatter_axis.get_legend().get_texts()] == list(small_mnist.class_names)
    assert sum(len(collection.get_offsets()) for collection in scatter_axis.collections) == len(labels)
    assert all(len(collection.get_offsets()) > 0 for collection in scatter_axis.collections)
    assert scatter_axis.get_xlim() == grid_axis.get_xlim() and scatter_axis.get_ylim() == grid_axis.get_ylim()
    assert grid_axis.get_xlabel() == "z1"


def test_high_dimensional_latents_are_projected_on_principal_components():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(500, 5)) * np.array([5.0, 3.0, 0.1, 0.1, 0.1])
    coords, title = project_2d(means)
    assert coords.shape == (500, 2) and "first two principal components" in title
    np.testing.assert_allclose(np.var(coords, axis=0), [25.0, 9.0], rtol=0.2)


def test_latent_dim_3_run_draws_a_projected_scatter(tmp_path, small_mnist):
    result, _, _ = trained_run(tmp_path, small_mnist, "d3", epochs=1, latent_dim=3, plot_latent=True)
    assert png_size(result.workdir / "figures" / "latent.png") == (800, 660)


def test_model_summary_is_printed_and_saved(dense_run):
    result, _, lines = dense_run
    summary = (result.workdir / "model_summary.txt").read_text()
    assert "encoder/Dense_0 (Dense)" in summary and "(None, 784)" in summary
    assert "Total params: 51,154" in summary and "Total params: 51,154" in "\n".join(lines)


def test_tensorboard_holds_step_and_epoch_scalars_and_images(dense_run):
    from tensorboardX.proto import event_pb2

    result, _, _ = dense_run
    (events_file,) = (result.workdir / "tensorboard").glob("events.out.tfevents.*")
    data, offset, tags = events_file.read_bytes(), 0, {}
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append((event.step, value))
    assert [step for step, _ in tags["step/train_loss"]] == list(range(1, 4 * 8 + 1))
    assert [step for step, _ in tags["epoch/test_loss"]] == [1, 2, 3, 4]
    np.testing.assert_allclose(tags["epoch/test_loss"][-1][1].simple_value, result.history[-1]["test"]["loss"],
                               rtol=1e-6)
    assert tags["reconstructions"][0][1].image.height == 56


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal():
    class State:  # the bar reads only the running sums of the state
        sums = {"loss": np.float32(300.0), "count": np.float32(2.0)}

    for stream, shown in ((io.StringIO(), False), (FakeTerminal(), True)):
        progress = EpochProgress(epochs=3, stream=stream)
        progress.start_epoch(2, steps=10, steps_done=0)
        for _ in range(10):
            progress.step(State())
        progress.close()
        output = stream.getvalue()
        assert ("epoch 2/3" in output and "loss=150.00" in output) is shown
        assert (output == "") is not shown


def test_run_figures_can_be_built_without_training(small_mnist, tmp_path):
    import jax

    from vaejax.models import build_model, init_params

    model = build_model("conv_vae", 2)
    drawer = RunFigures(tmp_path, model, small_mnist, 2, 3, False, jax.random.key(0))
    images = drawer.write_epoch(7, init_params(model, jax.random.key(1)), [
        {"epoch": 7, "train": {"loss": 1.0, "bce": 1.0, "kl": 0.0}, "test": {"loss": 1.0, "bce": 1.0, "kl": 0.0}}])
    assert images.reconstructions.shape == (56, 84) and images.samples.shape == (224, 224)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "learning_curves.png", "reconstructions.png", "reconstructions_e007.png", "samples.png", "samples_e007.png"]
