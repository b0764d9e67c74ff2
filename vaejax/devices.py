"""Every device decision of a run, made once: the backend and its deterministic kernels, which
process writes, data-parallel shardings and placement, the loop, micro-batches and donation, and
what the run's bits depend on. The training loop asks a `DevicePlan` instead of calling
`jax.default_backend()`, `jax.process_index()` or `jax.device_count()` itself.

The measured numbers behind the automatic choices are in benchmarks/results/loop_choice.json.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

import jax
import jaxlib
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vaejax.errors import VaejaxError
from vaejax.validation import host_memory_bytes

# XLA:GPU's fastest reductions (atomics, autotuned split-K) may add in another order each run; this
# flag keeps only deterministic kernels. XLA reads it when the backend starts, so it must be in
# XLA_FLAGS before the first computation. XLA:CPU and XLA:TPU kernels are deterministic already.
DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"

# `--loop auto`: the epoch scan on accelerators (one dispatch per epoch; measured 2.6x faster for
# conv_vae on an H100, unmeasured on TPU); on XLA:CPU what benchmarks/loop_structure.py measured.
MEASURED_FASTER_LOOP = {("cpu", "conv_vae"): "step", ("cpu", "conv_cvae"): "step", ("cpu", "dense_ae"): "scan"}
ACCELERATOR_LOOP = "scan"
# `--micro_batches auto`: XLA:CPU runs one convolution on one core, two halves of a batch on two.
MEASURED_FASTER_MICRO_BATCHES = {("cpu", "conv_vae"): 2, ("cpu", "conv_cvae"): 2}


def choose_loop(loop: str, model_name: str, backend: str) -> str:
    """Resolve `--loop auto` to the loop measured faster for this model on this backend."""
    if loop != "auto":
        return loop
    if backend != "cpu":
        return ACCELERATOR_LOOP
    return MEASURED_FASTER_LOOP.get((backend, model_name), "step")


def choose_micro_batches(micro_batches: int | None, model_name: str, backend: str, devices: int) -> int:
    """Resolve `--micro_batches auto` (None): the count measured fastest on a single device; with
    several devices the batch is already split over them, so 1."""
    if micro_batches is not None:
        return micro_batches
    return 1 if devices > 1 else MEASURED_FASTER_MICRO_BATCHES.get((backend, model_name), 1)


def backend_started() -> bool:
    """Whether a JAX backend has started in this process (it read XLA_FLAGS then); JAX has no
    public way to ask, so an unknown answer counts as started."""
    try:
        from jax._src import xla_bridge

        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        return True


_flags_set_late = False  # XLA_FLAGS changed after the backend had read them


def use_deterministic_kernels(enabled: bool = True) -> None:
    """Add (or with `enabled=False` remove) the deterministic-kernel flag in XLA_FLAGS; it takes
    effect only if no JAX backend has started yet in this process."""
    global _flags_set_late
    before = os.environ.get("XLA_FLAGS", "")
    flags = [flag for flag in before.split() if flag != DETERMINISTIC_XLA_FLAG]
    if enabled:
        flags.append(DETERMINISTIC_XLA_FLAG)
    os.environ["XLA_FLAGS"] = " ".join(flags)
    if os.environ["XLA_FLAGS"] != before and backend_started():
        _flags_set_late = True
        print("warning: a JAX backend had already started; XLA_FLAGS changes take effect in a new process",
              file=sys.stderr)


def deterministic_kernels_on() -> bool:
    """Whether the running backend computes bitwise repeatably (the flag reaches only XLA:GPU)."""
    if jax.default_backend() != "gpu":
        return True
    return not _flags_set_late and DETERMINISTIC_XLA_FLAG in os.environ.get("XLA_FLAGS", "").split()


def initialize_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None
                           ) -> None:
    """Join the other processes through JAX's own distributed runtime (before any computation)."""
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VaejaxError(f"--distributed: {first_line}") from None


def device_memory_bytes() -> int:
    """Memory one device offers a computation: what an accelerator's allocator may use, or the
    host's physical memory on XLA:CPU (which reports no limit)."""
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else host_memory_bytes()


@dataclass(frozen=True)
class DevicePlan:
    """Where and how one run computes; built once by `plan_devices`."""

    backend: str
    device_kind: str
    device_count: int
    process_index: int
    process_count: int
    loop: str  # "step": one compiled call per step; "scan": one per epoch
    micro_batches: int  # parts of a batch computed side by side (steps.micro_batched)
    deterministic_kernels: bool
    batch_sharding: NamedSharding | None  # the batch split over the devices; None on one device
    replicated: NamedSharding | None

    @property
    def writes(self) -> bool:
        """Over several processes, process 0 alone writes the work directory, figures and logs."""
        return self.process_index == 0

    @property
    def donated(self) -> tuple[int, ...]:
        """Donate the train state (updated in place), except with micro-batches: XLA then copies the
        params for the parts still reading them and orders the parts after the copies (slower)."""
        return (0,) if self.micro_batches == 1 else ()

    @property
    def epoch_in_one_call(self) -> bool:
        """Training (and evaluation, all test batches) as one compiled loop per epoch."""
        return self.loop == "scan"

    def eval_sharding(self, eval_batch_size: int) -> NamedSharding | None:
        """Test batches are split over the devices too, when they divide evenly."""
        divides = self.batch_sharding is not None and eval_batch_size % self.device_count == 0
        return self.batch_sharding if divides else None

    def place(self, tree):
        """On the default device, or a copy on every device when several (data parallelism)."""
        if self.process_count == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree.map(self._place_global, tree)

    def _place_global(self, leaf):
        """A leaf as a global array over every process's devices: from host values (the same on
        every process), with PRNG keys placed as their raw data and wrapped again on the devices."""
        if isinstance(leaf, jax.Array) and leaf.sharding == self.replicated:
            return leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(leaf)), self.replicated)
            wrap = functools.partial(jax.random.wrap_key_data, impl=jax.random.key_impl(leaf))
            return jax.jit(wrap, out_shardings=self.replicated)(data)
        return jax.device_put(np.asarray(leaf), self.replicated)

    def to_host(self, tree):
        """Host (NumPy) copies, for the observer and the background writer: never a donated buffer."""
        return jax.device_get(tree)

    def bits_record(self) -> dict:
        """What a run's bits depend on beyond its flags: two runs agree bitwise only if these do."""
        return {
            "backend": self.backend, "device_kind": self.device_kind, "device_count": self.device_count,
            "process_count": self.process_count, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "deterministic_kernels": self.deterministic_kernels,
            "loop": self.loop, "micro_batches": self.micro_batches,
        }

    def describe(self, batch_size: int) -> list[str]:
        """The lines a run logs about its devices (only what differs from one plain device)."""
        lines = []
        if self.batch_sharding is not None:
            lines.append(f"data parallel: each batch of {batch_size} split over {self.device_count} devices"
                         + (f" in {self.process_count} processes" if self.process_count > 1 else ""))
        if self.micro_batches > 1:
            lines.append(f"each batch's gradient summed over {self.micro_batches} micro-batches differentiated "
                         "side by side")
        if not self.deterministic_kernels:
            lines.append(f"warning: nondeterministic GPU kernels: results will not repeat bitwise "
                         f"(XLA_FLAGS lacks {DETERMINISTIC_XLA_FLAG})")
        return lines


def plan_devices(model_name: str, batch_size: int, loop: str = "auto", micro_batches: int | None = None
                 ) -> DevicePlan:
    """The plan of a run on the devices JAX sees (every process's, over `jax.distributed`)."""
    backend, devices = jax.default_backend(), jax.devices()
    batch_sharding = replicated = None
    if len(devices) > 1:
        if batch_size % len(devices):
            raise VaejaxError(f"--batch_size {batch_size} does not divide evenly over {len(devices)} devices")
        mesh = Mesh(np.array(devices), ("data",))
        batch_sharding, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    parts = choose_micro_batches(micro_batches, model_name, backend, len(devices))
    if parts > 1 and batch_sharding is not None:
        raise VaejaxError(f"--micro_batches {parts} needs a single device; the batch is already "
                          f"split over {len(devices)} devices")
    return DevicePlan(
        backend=backend, device_kind=devices[0].device_kind, device_count=len(devices),
        process_index=jax.process_index(), process_count=jax.process_count(),
        loop=choose_loop(loop, model_name, backend), micro_batches=parts,
        deterministic_kernels=deterministic_kernels_on(),
        batch_sharding=batch_sharding, replicated=replicated,
    )
