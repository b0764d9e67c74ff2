"""Every flag of every command over its whole range: a value is accepted only when it is valid, and
anything else ends in exit code 2 and one line on stderr, never a traceback (issue: flags were
checked one example at a time). Then a few runs at the extremes that pass."""

import contextlib
import dataclasses
import io
import math
import os
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaejax import cli, evaluate, explore, generate, plot, validation
from vaejax.config import Config
from vaejax.data import Dataset
from vaejax.errors import VaejaxError
from vaejax.keys import root_key
from vaejax.reporting import Reporter
from vaejax.training import train

PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text a shell can pass in argv: anything but NUL (and lone surrogates, which are not text).
ARGV_TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)


def integers_as_text():
    """Whole numbers across every range that matters (small, the 32/64-bit edges, far beyond),
    and text that is almost a number."""
    edges = [2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]
    numbers = st.one_of(st.integers(-3, 12), st.sampled_from(edges + [-edge for edge in edges]),
                        st.integers(-2**80, 2**80))
    odd = st.sampled_from(["", " ", "nan", "inf", "1e3", "0x10", "1.5", "-", "\u0663", "9" * 5000])
    return st.one_of(numbers.map(str), odd, ARGV_TEXT)


def floats_as_text():
    odd = st.sampled_from(["nan", "-nan", "inf", "-inf", "1e400", "1e-400", "-0.0", "", "1,5"])
    return st.one_of(st.floats().map(repr), odd, ARGV_TEXT)


def choice_of(*valid: str):
    return st.one_of(st.sampled_from(valid), ARGV_TEXT)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """A missing path, a file, a folder, a path under a file, and one too long for the system."""
    root = tmp_path_factory.mktemp("paths")
    (root / "a_file").write_text("not a folder")
    (root / "a_folder").mkdir()
    return {"missing": str(root / "missing" / "deeper"), "file": str(root / "a_file"),
            "folder": str(root / "a_folder"), "under_a_file": str(root / "a_file" / "child"),
            "too_long": str(root / ("x" * 300)), "empty": "", "non_ascii": str(root / "d\u00e9j\u00e0 \u2603")}


def path_values(paths):
    return st.one_of(st.sampled_from(sorted(paths.values())), ARGV_TEXT)


@st.composite
def argument_vectors(draw, flags: dict, switches: tuple[str, ...] = ()):
    """Some of `flags` (name -> value strategy) with drawn values, and some `switches`, in any order."""
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), unique=True, max_size=len(flags)))
    argv = [token for name in chosen for token in (name, draw(flags[name]))]
    argv += draw(st.lists(st.sampled_from(switches), unique=True)) if switches else []
    return argv


def outcome(command, argv: list[str]):
    """(exit code, stderr, the options handed to the work) of `command` with its work replaced."""
    accepted = []
    # the work replaced, and the settings the suite's own (conftest put them in place: nothing changes)
    checked = dataclasses.replace(command, run=lambda options: accepted.append(options) or 0,
                                  kernel_settings=lambda options: {})
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = checked.main(argv)
    return code, stderr.getvalue(), accepted


def assert_accepted_or_one_line(command, argv):
    code, stderr, accepted = outcome(command, argv)
    if code == 0:
        assert stderr == "" and len(accepted) == 1, (argv, stderr)
        return accepted[0]
    assert code == 2, (argv, code, stderr)
    assert stderr.startswith(f"{command.prog}: error: ") and stderr.count("\n") == 1 and stderr.endswith("\n"), (
        argv, stderr)
    assert "Traceback" not in stderr
    return None


def is_usable_folder(path: Path, may_be_missing: bool) -> bool:
    return (may_be_missing and not path.exists()) or path.is_dir()


def assert_seed(seed: int):
    assert 0 <= seed < 2**64


def train_flags(paths) -> dict:
    """Every valued flag of train.py, with the values its property test draws."""
    return {
        "--model": choice_of("conv_vae", "conv_cvae", "dense_ae", "mlp_vae"),
        "--dataset": choice_of("mnist", "fashion-mnist", "kmnist", "emnist/letters"),
        "--data_dir": path_values(paths), "--workdir": path_values(paths),
        "--latent_dim": integers_as_text(), "--epochs": integers_as_text(), "--batch_size": integers_as_text(),
        "--learning_rate": floats_as_text(), "--seed": integers_as_text(), "--inputs_decoder": integers_as_text(),
        "--test_image_number": integers_as_text(), "--limit": integers_as_text(),
        "--micro_batches": st.one_of(st.just("auto"), integers_as_text()),
        "--cpu_bits": choice_of("portable", "machine"),
        "--loop": choice_of("auto", "step", "scan"), "--binarize": choice_of("none", "dynamic"),
        "--objective": choice_of("elbo", "iwae", "dreg"), "--train_samples": integers_as_text(),
        "--schedule": choice_of("constant", "iwae"), "--beta": floats_as_text(),
        "--coordinator_address": st.one_of(st.sampled_from(["10.0.0.1:1234", "host:0", "host:65536", ":80"]),
                                           ARGV_TEXT),
        "--num_processes": integers_as_text(), "--process_id": integers_as_text(),
    }


TRAIN_SWITCHES = ("--resume", "--overwrite", "--plot_latent", "--no-plot_latent", "--tensorboard",
                  "--no-tensorboard", "--nondeterministic", "--deterministic", "--distributed")


@PROPERTY
@given(data=st.data())
def test_train_py_accepts_only_valid_flags(paths, data):
    flags, switches = train_flags(paths), TRAIN_SWITCHES
    options = assert_accepted_or_one_line(cli.COMMAND, data.draw(argument_vectors(flags, switches)))
    if options is None:
        return
    config, launch = options
    assert 1 <= config.latent_dim <= 784 and 1 <= config.epochs < 2**31 and 1 <= config.batch_size <= 2**24
    assert math.isfinite(config.learning_rate) and config.learning_rate > 0
    assert_seed(config.seed)
    assert math.isqrt(config.inputs_decoder) ** 2 == config.inputs_decoder and 1 <= config.inputs_decoder <= 784
    assert 1 <= config.test_image_number <= 100 and (config.limit is None or 1 <= config.limit <= 2**24)
    assert config.micro_batches is None or 1 <= config.micro_batches <= config.batch_size
    assert config.data_dir is None or Path(config.data_dir).is_dir()
    assert is_usable_folder(Path(config.workdir), may_be_missing=True)
    assert not (config.resume and config.overwrite)
    assert 1 <= config.train_samples <= 5000
    assert math.isfinite(config.beta) and config.beta > 0
    assert config.beta == 1.0 or (config.model != "dense_ae" and config.objective == "elbo")
    assert config.model != "dense_ae" or (config.objective, config.train_samples) == ("elbo", 1)
    if launch.process_id is not None:
        assert launch.distributed and 0 <= launch.process_id < (launch.num_processes or 2**31)


@PROPERTY
@given(data=st.data())
def test_evaluate_accepts_only_valid_flags(paths, data):
    flags = {"--workdir": path_values(paths), "--iw_samples": integers_as_text(), "--limit": integers_as_text(),
             "--samples": integers_as_text(), "--classifier_dir": path_values(paths),
             "--batch_size": integers_as_text(), "--seed": integers_as_text(),
             "--samplers": choice_of("prior", "gmm:50", "gmm:x", "gmm:-1")}
    argv = data.draw(argument_vectors(flags, ("--no-sample_quality",)))
    if "--workdir" not in argv and data.draw(st.booleans()):
        argv += ["--workdir", paths["folder"]]
    options = assert_accepted_or_one_line(evaluate.COMMAND, argv)
    if options is None:
        return
    assert options.workdir.is_dir() and 1 <= options.iw_samples < 2**31 and options.samples >= 2
    assert options.limit is None or 1 <= options.limit <= 2**24
    assert 1 <= options.batch_size <= 2**24
    assert options.classifier_dir is None or is_usable_folder(options.classifier_dir, may_be_missing=True)
    assert_seed(options.seed)


@PROPERTY
@given(data=st.data())
def test_generate_accepts_only_valid_flags(paths, data):
    flags = {"--workdir": path_values(paths), "--count": integers_as_text(), "--out": path_values(paths),
             "--seed": integers_as_text(), "--sampler": choice_of("auto", "prior", "gmm:10", "gmm:0", "gmm:1001")}
    argv = data.draw(argument_vectors(flags, ("--labels",)))
    options = assert_accepted_or_one_line(generate.COMMAND, argv)
    if options is None:
        return
    assert options.workdir.is_dir() and 1 <= options.count < 2**32
    assert options.sampler in ("auto", "prior") or 1 <= int(options.sampler.split(":")[1]) <= 1000
    assert options.count * 784 * 9 <= validation.host_memory_bytes()
    assert is_usable_folder(options.output_folder, may_be_missing=True)
    assert_seed(options.seed)


@PROPERTY
@given(data=st.data())
def test_explore_accepts_only_valid_flags(paths, data):
    flags = {"--workdir": path_values(paths), "--host": choice_of("127.0.0.1", "::1", "localhost"),
             "--port": integers_as_text()}
    options = assert_accepted_or_one_line(explore.COMMAND, data.draw(argument_vectors(flags)))
    if options is not None:
        assert options.workdir.is_dir() and 0 <= options.port <= 65535 and options.host.strip()


@PROPERTY
@given(argv=st.one_of(st.lists(ARGV_TEXT, max_size=3), st.tuples(st.just("--workdir"), ARGV_TEXT).map(list)))
def test_plot_accepts_only_valid_flags(paths, argv):
    workdir = assert_accepted_or_one_line(plot.COMMAND, argv)
    assert workdir is None or workdir.is_dir()


@pytest.mark.parametrize("kind", ["missing", "file", "under_a_file", "too_long"])
def test_path_messages_say_what_is_wrong(paths, kind):
    expected = {"missing": "does not exist", "file": "is a file, not a folder",
                "under_a_file": "does not exist", "too_long": "File name too long"}[kind]
    with pytest.raises(VaejaxError, match=expected):
        validation.existing_folder("--workdir", paths[kind])


def test_an_unreadable_folder_is_named_so(paths, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # the suite may run as root, who reads all
    with pytest.raises(VaejaxError, match="--data_dir .* is not readable"):
        validation.existing_folder("--data_dir", paths["folder"])
    with pytest.raises(VaejaxError, match="--out .* is not writable"):
        validation.output_folder("--out", paths["folder"])


def test_seeds_past_32_bits_give_their_own_keys_and_small_seeds_keep_jax_s():
    data = {seed: tuple(np.asarray(jax.random.key_data(root_key(seed))).tolist())
            for seed in (0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**64 - 1)}
    assert len(set(data.values())) == len(data)  # jax.random.key alone gives key(2**32) == key(0)
    for seed in (0, 1, 2**32 - 1):
        assert data[seed] == tuple(np.asarray(jax.random.key_data(jax.random.key(seed))).tolist())


@pytest.fixture(scope="module")
def tiny_mnist(small_mnist):
    return Dataset("mnist", small_mnist.train_images[:64], small_mnist.train_labels[:64],
                   small_mnist.test_images[:100], small_mnist.test_labels[:100], small_mnist.class_names)


def parsed_config(argv: list[str]) -> Config:
    code, stderr, accepted = outcome(cli.COMMAND, argv)
    assert code == 0, stderr
    return accepted[0][0]


def test_extremes_that_pass_validation_train(tmp_path, tiny_mnist):
    """The largest code, the widest reconstruction figure, the largest seed, one-image batches."""
    started = time.perf_counter()
    config = parsed_config(["--model", "dense_ae", "--latent_dim", "784", "--test_image_number", "100",
                            "--seed", str(2**64 - 1), "--epochs", "1", "--batch_size", "1", "--limit", "8",
                            "--workdir", str(tmp_path / "extreme"), "--no-tensorboard"])
    reporter = Reporter(config, log=lambda line: None)  # draws the figures, from the tiny test set
    try:
        train(config, tiny_mnist, log=lambda line: None, observer=reporter)
    finally:
        reporter.close()
    assert (tmp_path / "extreme" / "figures" / "reconstructions.png").is_file()
    assert time.perf_counter() - started < 120  # drawing 100 test images is bounded (10,000 hung)


def test_seed_2_to_the_32_no_longer_starts_from_seed_0s_parameters():
    import optax

    from vaejax.keys import seed_keys
    from vaejax.models import build_model
    from vaejax.steps import init_state

    model = build_model("dense_ae", 2)
    states = [init_state(model, optax.adam(1e-3), seed_keys(seed), 1) for seed in (0, 2**32)]
    leaves = [jax.tree.leaves(state.params) for state in states]
    assert any(not np.array_equal(a, b) for a, b in zip(*leaves, strict=True))


def test_a_batch_the_memory_cannot_hold_is_refused_before_training(tmp_path, tiny_mnist, monkeypatch, capsys):
    import vaejax.training

    monkeypatch.setattr(vaejax.training, "device_memory_bytes", lambda: 2**20)
    config = parsed_config(["--batch_size", "64", "--workdir", str(tmp_path / "run")])
    with pytest.raises(VaejaxError, match=r"--batch_size 64 needs .* GiB for a training step's activations"):
        train(config, tiny_mnist, log=lambda line: None)
    assert not (tmp_path / "run").exists()


def test_importance_samples_beyond_memory_are_refused(paths):
    from vaejax.devices import device_memory_bytes
    from vaejax.models import build_model

    options = evaluate.EvaluateOptions(Path(paths["folder"]), iw_samples=2**31 - 1)
    options.validate()  # within the type's range; the memory is what refuses it
    with pytest.raises(VaejaxError, match=r"--iw_samples 2147483647 needs .* GiB for the log weights"):
        options.check_memory(build_model("conv_vae", 2), device_memory_bytes())
    evaluate.EvaluateOptions(Path(paths["folder"]), iw_samples=5000).check_memory(
        build_model("conv_vae", 50), device_memory_bytes())  # the papers' k fits
