"""Every device decision of a run, made once: the backend and its deterministic kernels, which
process writes, data-parallel shardings and placement, the loop, micro-batches and donation, and
what the run's bits depend on. The training loop asks a `DevicePlan` instead of calling
`jax.default_backend()`, `jax.process_index()` or `jax.device_count()` itself.

The measured numbers behind the automatic choices are in benchmarks/results/loop_choice.json.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jaxlib
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vaejax.config import CPU_BITS  # --cpu_bits: the same bytes on every CPU with FMA, or this CPU's fastest kernels
from vaejax.errors import VaejaxError
from vaejax.validation import host_memory_bytes

# XLA:GPU's fastest reductions (atomics, autotuned split-K) may add in another order each run; this
# flag keeps only deterministic kernels. XLA reads it when the backend starts, so it must be in
# XLA_FLAGS before the first computation. XLA:CPU and XLA:TPU kernels are deterministic already.
DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"

# XLA:CPU repeats its bits on one machine, but by default they depend on the CPU: YNNPACK picks its
# reduction kernels per instruction set and splits them by thread count, LLVM's fast exp/log/tanh and
# its code for the host's widest vectors (FMA or not) round differently, and Eigen's custom contraction
# kernel dispatches per CPU and thread count. These settings, measured one by one in
# benchmarks/results/portable_bits*.json (each is needed there but the AVX cap, a margin that costs nothing
# measured: cpu_kernels-xeon_avx512.json), make the bits the same on every x86-64 CPU
# with FMA at any core count (one without runs in the machine mode: `cpu_lacks_fma`). Each reaches only
# XLA:CPU; GPU and TPU programs are compiled as before.
PORTABLE_CPU_XLA_FLAGS = (
    "--xla_cpu_enable_platform_dependent_math=false",  # exp, log, tanh computed alike on every CPU
    "--xla_cpu_max_isa=AVX",  # XLA's own code at most AVX: no FMA contraction, no wider vectors
    "--xla_cpu_experimental_ynn_fusion_type=-reduce",  # reductions in XLA's code, not YNNPACK's per-CPU kernels
)
PORTABLE_CPU_ENVIRONMENT = {"TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL": "false"}  # Eigen's own contraction
# `--cpu_bits machine`, the fastest measured (benchmarks/results/cpu_kernels-rounds.json: conv_vae's step 0.8x
# XLA's defaults): convolutions in Eigen, threaded, whose sums are split by the core count, so not portable.
MACHINE_CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


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
_machine_for_want_of_fma = False  # portable bits were asked for, and this CPU's lack of FMA gave machine ones
_added_flags: set[str] = set()  # the XLA flags this process added (a later call may take them out again)
_added_variables: set[str] = set()  # likewise the environment variables


def flag_name(flag: str) -> str:
    return flag.partition("=")[0]


def use_deterministic_kernels(enabled: bool = True, cpu_bits: str | None = "portable") -> None:
    """Set XLA_FLAGS (and the environment) for reproducible bits before JAX's backend starts: with
    `enabled` XLA:GPU's deterministic kernels (off: XLA's fastest, which may not repeat); with
    `cpu_bits="portable"` the XLA:CPU settings that give the same bytes on every CPU with FMA ("machine": the
    fastest measured, convolutions in Eigen, whose bytes only this kind of CPU at this core count repeats;
    None: XLA:CPU's own settings, the benchmarks' baseline). On an x86-64 CPU without FMA, portable is
    machine: there is no portable kernel to run (`cpu_lacks_fma`). A setting the user made themselves (in
    XLA_FLAGS, for the same option, or in the environment) is kept. Takes effect only if no JAX backend
    has started yet in this process."""
    global _flags_set_late, _machine_for_want_of_fma
    if cpu_bits is not None and cpu_bits not in CPU_BITS:
        raise ValueError(f"cpu_bits must be one of {CPU_BITS} or None, got {cpu_bits!r}")
    before, variables_before = os.environ.get("XLA_FLAGS", ""), set(_added_variables)
    flags = [flag for flag in before.split() if flag not in _added_flags]
    _added_flags.clear()
    users = {flag_name(flag) for flag in flags}
    _machine_for_want_of_fma = cpu_bits == "portable" and cpu_lacks_fma()
    if _machine_for_want_of_fma:
        cpu_bits = "machine"  # the run's log says why (DevicePlan.describe)
    cpu_flags = {"portable": PORTABLE_CPU_XLA_FLAGS, "machine": MACHINE_CPU_XLA_FLAGS, None: ()}[cpu_bits]
    wanted = [DETERMINISTIC_XLA_FLAG] * enabled + list(cpu_flags)
    for flag in wanted:
        if flag_name(flag) not in users:
            flags.append(flag)
            _added_flags.add(flag)
    os.environ["XLA_FLAGS"] = " ".join(flags)
    for name, value in PORTABLE_CPU_ENVIRONMENT.items():
        if cpu_bits == "portable" and name not in os.environ:
            os.environ[name] = value
            _added_variables.add(name)
        elif cpu_bits != "portable" and name in _added_variables:
            del os.environ[name]
            _added_variables.discard(name)
    changed = os.environ["XLA_FLAGS"] != before or _added_variables != variables_before
    if changed and backend_started():
        _flags_set_late = True
        print("warning: a JAX backend had already started; XLA_FLAGS changes take effect in a new process",
              file=sys.stderr)


def deterministic_kernels_on() -> bool:
    """Whether the running backend computes bitwise repeatably (the flag reaches only XLA:GPU)."""
    if jax.default_backend() != "gpu":
        return True
    return not _flags_set_late and DETERMINISTIC_XLA_FLAG in os.environ.get("XLA_FLAGS", "").split()


def cpu_bits_in_force() -> str:
    """"portable" when every portable XLA:CPU setting was in force when the backend started, else "machine"."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    portable = (not _flags_set_late and all(flag in flags for flag in PORTABLE_CPU_XLA_FLAGS)
                and all(os.environ.get(name) == value for name, value in PORTABLE_CPU_ENVIRONMENT.items()))
    return "portable" if portable else "machine"


CPUINFO = Path("/proc/cpuinfo")  # the kernel's view of the CPU (Linux)
# The vector and matrix extensions that change which kernels XLA:CPU (and PyTorch) run; every amx_* flag is added.
CPU_INSTRUCTION_SETS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16")


def host_cpu() -> dict:
    """The first processor's model, vendor and instruction sets from /proc/cpuinfo; the cores this process may use."""
    fields = {}
    for line in CPUINFO.read_text().splitlines() if CPUINFO.is_file() else []:
        name, colon, value = line.partition(":")
        if not colon:  # a blank line ends the first processor's block
            break
        fields.setdefault(name.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    # A virtual machine's model name can be as vague as "AMD EPYC": family and model number say which generation.
    generation = (f"family {fields['cpu family']} model {fields['model']}"
                  if "cpu family" in fields and "model" in fields else None)
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "vendor": fields.get("vendor_id"), "generation": generation, "architecture": platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
            "instruction_sets": [flag for flag in CPU_INSTRUCTION_SETS if flag in flags]
                                + sorted(flag for flag in flags if flag.startswith("amx"))}


def cpu_lacks_fma() -> bool:
    """Whether this is an x86-64 CPU without FMA3 (Intel Sandy/Ivy Bridge and older, AMD Bulldozer, Jaguar and
    older). With platform-
    dependent math off, YNNPACK (jaxlib 0.10.2) has only FMA kernels for a dot: without FMA it finds none and
    hangs ("No dot kernel found", benchmarks/results/portable_bits-no_fma.json). Asked of the CPU itself (CPUID,
    through NumPy's dispatcher): under an emulator /proc/cpuinfo names the host's CPU."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        features = {}
    if "FMA3" in features:
        return not features["FMA3"]
    if CPUINFO.is_file():  # a NumPy without its dispatcher's table: the kernel's view
        return "fma" not in host_cpu()["instruction_sets"]
    return False  # nothing to ask: every x86-64 CPU made since 2015 has FMA


# The entries of a run's environment that name the CPU: its bits depend on them only off the portable mode.
CPU_ENTRIES = ("cpu_model", "cpu_vendor", "cpu_generation", "cpu_instruction_sets", "cpu_cores")


def bits_differ(before: dict, now: dict) -> list[str]:
    """The environment entries whose change would change a run's bits (a resume is warned of these):
    every changed entry, except the CPU's on a GPU or TPU, or when both parts ran in portable mode."""
    # A part recorded before the CPU's generation was is not taken to differ in it.
    changed = sorted(name for name in now if before.get(name) != now[name]
                     and not (name == "cpu_generation" and name not in before))
    cpu_irrelevant = now.get("backend") != "cpu" or before.get("cpu_bits") == now.get("cpu_bits") == "portable"
    return [name for name in changed if not (cpu_irrelevant and name in CPU_ENTRIES)]


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
    cpu_bits: str  # "portable" or "machine" (see use_deterministic_kernels)
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
        cpu = host_cpu()
        return {
            "backend": self.backend, "device_kind": self.device_kind, "device_count": self.device_count,
            "process_count": self.process_count, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "deterministic_kernels": self.deterministic_kernels,
            "cpu_bits": self.cpu_bits, **{name: os.environ.get(name) for name in PORTABLE_CPU_ENVIRONMENT},
            "cpu_model": cpu["model"], "cpu_vendor": cpu["vendor"], "cpu_generation": cpu["generation"],
            "cpu_instruction_sets": " ".join(cpu["instruction_sets"]), "cpu_cores": cpu["cores"],
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
        if self.backend == "cpu" and self.cpu_bits == "machine":
            why = ("this CPU has no FMA, without which XLA:CPU has no portable kernels" if _machine_for_want_of_fma else
                   "--cpu_bits machine, or XLA_FLAGS overriding a portable setting")
            lines.append(f"warning: this run's bits are this CPU's ({why}): another CPU model or core count gives "
                         "other bits for the same seed")
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
        deterministic_kernels=deterministic_kernels_on(), cpu_bits=cpu_bits_in_force(),
        batch_sharding=batch_sharding, replicated=replicated,
    )
