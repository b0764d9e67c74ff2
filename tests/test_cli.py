import dataclasses
import json
import os
import sys

import jax
import pytest
from conftest import ROOT, run_cli

from vaejax.cli import Launch, build_parser, main
from vaejax.config import Config


def option_actions():
    return [action for action in build_parser()._actions if action.option_strings and action.dest != "help"]


def test_every_config_field_is_one_documented_flag_with_config_s_default():
    """Flags come from Config: a field without a flag, a flag without help, or a default written twice fails."""
    actions = option_actions()
    launch_fields = {field.name for field in dataclasses.fields(Launch)}
    by_dest = {}
    for action in actions:
        assert action.help and action.help.strip(), f"{action.option_strings} has no help"
        by_dest.setdefault(action.dest, []).append(action)
    config_fields = {field.name: field for field in dataclasses.fields(Config)}
    assert set(by_dest) == set(config_fields) | launch_fields  # no flag outside Config and Launch
    parsed = vars(build_parser().parse_args([]))
    for name, field in config_fields.items():
        assert parsed[name] == field.default, f"--{name}'s default is not Config's"
    text = " ".join(build_parser().format_help().split())
    for action in actions:
        for flag in action.option_strings:
            assert flag in text
    assert "conv_vae 20, conv_cvae 20, dense_ae 10" in text  # per-model defaults from the seeds


def test_the_property_test_draws_every_flag_of_train_py():
    from test_flag_ranges import TRAIN_SWITCHES, train_flags

    drawn = set(train_flags({"folder": "/tmp"})) | set(TRAIN_SWITCHES)
    assert drawn == {flag for action in option_actions() for flag in action.option_strings}


@pytest.mark.parametrize(("args", "message"), [
    (["--latent_dim", "0"], "--latent_dim must be from 1 to 784 (a code no longer than the image), got 0"),
    (["--inputs_decoder", "50"], "--inputs_decoder must be a perfect square"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--epochs", "0"], "--epochs must be from 1 to 2147483647"),
    (["--learning_rate", "nan"], "--learning_rate must be a positive finite number"),
    (["--learning_rate", "-1"], "--learning_rate must be a positive finite number"),
    (["--learning_rate", "inf"], "--learning_rate must be a positive finite number"),
    (["--batch_size", "0"], "--batch_size must be from 1 to 16777216 (no dataset holds more images), got 0"),
    (["--latent_dim", "two"], "argument --latent_dim: invalid int value: 'two'"),
    (["--batch_size", "100000"], "--batch_size 100000 is larger than the 60000 training images"),
    (["--dataset", "no_such_set"], "dataset 'no_such_set'"),  # unknown to TFDS, or TFDS missing
    (["--data_dir", "/no/such/folder"], "--data_dir /no/such/folder does not exist"),
    (["--loop", "fast"], "--loop must be one of auto, step, scan, got 'fast'"),
    (["--limit", "0"], "--limit must be from 1 to"),
    (["--binarize", "static"], "--binarize must be one of none, dynamic, got 'static'"),
    (["--micro_batches", "some"], "argument --micro_batches: invalid micro_batches value: 'some'"),
    (["--micro_batches", "0"], "--micro_batches must be auto or 1 to --batch_size (128), got 0"),
    (["--micro_batches", "200"], "--micro_batches must be auto or 1 to --batch_size (128), got 200"),
])
def test_invalid_values_end_in_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    assert main([*args, "--workdir", str(tmp_path / "run")]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_quick_run_writes_the_work_directory(tmp_path):
    result = run_cli("--latent_dim", "2", "--epochs", "1", "--limit", "2048", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"backend {jax.default_backend()}" in result.stdout and "epoch   1/1" in result.stdout
    workdir = tmp_path / "runs" / "conv_vae-mnist-z2-s0"
    assert json.loads((workdir / "config.json").read_text())["limit"] == 2048
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1
    for name in ("checkpoint.msgpack", "params.msgpack"):
        assert (workdir / name).stat().st_size > 13_000_000  # 3.35M float32 parameters
    for name in ("reconstructions.png", "samples.png", "latent.png"):
        assert (workdir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deterministic_and_portable_kernels_are_asked_for_by_default_and_can_be_declined(monkeypatch):
    from vaejax import devices

    portable = " ".join(devices.PORTABLE_CPU_XLA_FLAGS)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.delenv("TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL", raising=False)
    monkeypatch.setattr(devices, "_added_flags", set())
    monkeypatch.setattr(devices, "_added_variables", set())
    monkeypatch.setattr(devices, "_flags_set_late", False)  # this process's backend started long ago
    monkeypatch.setattr(devices, "cpu_lacks_fma", lambda: False)  # what every CPU with FMA gets
    devices.use_deterministic_kernels()
    devices.use_deterministic_kernels()  # once only
    assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=1 --xla_gpu_deterministic_ops=true "
                                       + portable)
    assert os.environ["TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL"] == "false"
    devices.use_deterministic_kernels(False, "machine")
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1 " + " ".join(
        devices.MACHINE_CPU_XLA_FLAGS)
    assert "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL" not in os.environ
    # what the user set stays theirs, and the run then says it is not portable
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
    devices.use_deterministic_kernels()
    assert os.environ["XLA_FLAGS"].split().count("--xla_cpu_max_isa=AVX2") == 1
    assert "--xla_cpu_max_isa=AVX" not in os.environ["XLA_FLAGS"].split()
    assert devices.cpu_bits_in_force() == "machine"
    assert build_parser().parse_args([]).deterministic and build_parser().parse_args([]).cpu_bits == "portable"
    assert not build_parser().parse_args(["--nondeterministic"]).deterministic


def test_a_cpu_without_fma_runs_in_the_machine_mode_and_the_run_says_why(monkeypatch):
    """jaxlib 0.10.2's portable kernels hang on a CPU without FMA (benchmarks/results/portable_bits-no_fma.json):
    train.py's default must then run, with this CPU's bits, and say so."""
    from vaejax import devices

    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.delenv("TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL", raising=False)
    monkeypatch.setattr(devices, "_added_flags", set())
    monkeypatch.setattr(devices, "_added_variables", set())
    monkeypatch.setattr(devices, "_flags_set_late", False)
    monkeypatch.setattr(devices, "cpu_lacks_fma", lambda: True)
    devices.use_deterministic_kernels()
    assert os.environ["XLA_FLAGS"].split() == [devices.DETERMINISTIC_XLA_FLAG, *devices.MACHINE_CPU_XLA_FLAGS]
    assert "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL" not in os.environ
    assert devices.cpu_bits_in_force() == "machine"
    plan = dataclasses.replace(devices.plan_devices("conv_vae", 128), backend="cpu", cpu_bits="machine")
    assert any(line.startswith("warning:") and "no FMA" in line for line in plan.describe(128))
    devices.use_deterministic_kernels(True, "machine")  # asked for: the log must not blame the CPU
    assert not any("no FMA" in line for line in plan.describe(128))
    assert any(line.startswith("warning:") and "--cpu_bits machine" in line for line in plan.describe(128))


def test_fma_is_asked_of_the_cpu_itself_and_only_matters_on_x86_64(monkeypatch, tmp_path):
    from numpy._core._multiarray_umath import __cpu_features__

    from vaejax import devices

    monkeypatch.setattr(devices.platform, "machine", lambda: "x86_64")
    monkeypatch.setitem(__cpu_features__, "FMA3", False)  # what NumPy's CPUID says under qemu -cpu SandyBridge
    assert devices.cpu_lacks_fma()
    monkeypatch.setitem(__cpu_features__, "FMA3", True)
    assert not devices.cpu_lacks_fma()
    monkeypatch.setitem(__cpu_features__, "FMA3", False)
    monkeypatch.setattr(devices.platform, "machine", lambda: "aarch64")
    assert not devices.cpu_lacks_fma()
    monkeypatch.setattr(devices.platform, "machine", lambda: "x86_64")  # NumPy cannot say, nor /proc/cpuinfo
    monkeypatch.delitem(__cpu_features__, "FMA3")
    monkeypatch.setattr(devices, "CPUINFO", tmp_path / "absent")
    assert not devices.cpu_lacks_fma()  # unknown: assumed present, as on every x86-64 CPU since 2015


@pytest.mark.parametrize("module, argv, settings", [
    ("cli", [], {"enabled": True, "cpu_bits": "portable"}),
    ("cli", ["--nondeterministic", "--cpu_bits", "machine"], {"enabled": False, "cpu_bits": "machine"}),
    ("evaluate", ["--workdir", "{run}"], {}),
    ("generate", ["--workdir", "{run}"], {}),
    ("plot", ["--workdir", "{run}"], {}),
    ("explore", ["--workdir", "{run}"], {}),
])
def test_every_command_puts_its_kernel_settings_in_place_before_its_work(monkeypatch, tmp_path, module, argv, settings):
    """The settings decide the bits, and JAX's backend reads them once: each command sets them from its
    options before its work starts (train.py from --nondeterministic and --cpu_bits; the others, the defaults)."""
    import importlib

    from vaejax import devices

    events = []
    monkeypatch.setattr(devices, "use_deterministic_kernels", lambda **given: events.append(("settings", given)))
    command = importlib.import_module(f"vaejax.{module}").COMMAND
    recording = dataclasses.replace(command, run=lambda options: events.append(("work", None)) or 0)
    assert recording.main([arg.format(run=tmp_path) for arg in argv]) == 0
    assert events == [("settings", settings), ("work", None)]


def test_the_run_records_what_its_bits_depend_on(tmp_path):
    result = run_cli("--model", "dense_ae", "--epochs", "1", "--limit", "256", "--no-tensorboard",
                     "--workdir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    environment = json.loads((tmp_path / "run" / "config.json").read_text())["environment"]
    assert environment["backend"] == jax.default_backend() and environment["jax"] == jax.__version__
    assert environment["loop"] == "scan" and environment["micro_batches"] == 1  # dense_ae's measured choice
    assert "--xla_gpu_deterministic_ops=true" in environment["xla_flags"] and environment["deterministic_kernels"]
    assert {"device_kind", "jaxlib", "device_count", "process_count"} <= environment.keys()
    from vaejax.devices import PORTABLE_CPU_XLA_FLAGS, cpu_lacks_fma, host_cpu

    cpu = host_cpu()
    if not cpu_lacks_fma():  # without FMA the run is in the machine mode (test_a_cpu_without_fma_runs_...)
        assert set(PORTABLE_CPU_XLA_FLAGS) <= set(environment["xla_flags"].split())
        assert environment["cpu_bits"] == "portable"
        assert environment["TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL"] == "false"
    assert (environment["cpu_model"], environment["cpu_vendor"], environment["cpu_cores"]) == (
        cpu["model"], cpu["vendor"], cpu["cores"])
    assert environment["cpu_instruction_sets"].split() == cpu["instruction_sets"]


def test_machine_local_cpu_bits_are_recorded_and_warned_of_once(tmp_path):
    import subprocess

    from vaejax.devices import MACHINE_CPU_XLA_FLAGS

    own = {name: value for name, value in os.environ.items() if name != "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL"}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--model", "dense_ae", "--epochs", "1", "--limit",
                             "64", "--no-tensorboard", "--cpu_bits", "machine", "--workdir", str(tmp_path / "run")],
                            env=own | {"XLA_FLAGS": ""}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    environment = json.loads((tmp_path / "run" / "config.json").read_text())["environment"]
    assert environment["cpu_bits"] == "machine" and "--xla_cpu_max_isa=AVX" not in environment["xla_flags"]
    assert environment["xla_flags"].split() == ["--xla_gpu_deterministic_ops=true", *MACHINE_CPU_XLA_FLAGS]
    assert environment["TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL"] is None
    assert (result.stdout + result.stderr).count("this run's bits are this CPU's") == 1


def test_the_python_floor_is_the_pinned_jax_s():
    """pyproject's requires-python and ruff's target are what the installed JAX requires, so a user on an
    older Python is told so by pip, not by a resolver error about jax."""
    import importlib.metadata
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = importlib.metadata.metadata("jax")["Requires-Python"]
    assert project["project"]["requires-python"] == floor
    assert project["tool"]["ruff"]["target-version"] == "py" + floor.removeprefix(">=").replace(".", "")
