"""The golden hashes: the same seed gives the same bytes on every CPU. A short seeded run of each seed model,
in this process with the settings train.py uses by default (tests/conftest.py), must give the params
SHA-256 written in benchmarks/results/golden_bits.json, whatever CPU, vendor, instruction set or core
count runs the suite; the JSON lists every machine the hashes were checked on
(`python benchmarks/golden_bits.py --record` adds one)."""

import json

import pytest
from conftest import ROOT

from benchmarks.golden_bits import GOLDEN, MODELS, seeded_run_sha256, with_machine
from vaejax.devices import PORTABLE_CPU_XLA_FLAGS, cpu_bits_in_force, cpu_lacks_fma, host_cpu

GOLDEN_RECORD = json.loads(GOLDEN.read_text())
# every measurement of benchmarks/portable_bits.py, one per machine it ran on
MEASURED = {path.name: json.loads(path.read_text())
            for path in (ROOT / "benchmarks" / "results").glob("portable_bits*.json")}


@pytest.mark.parametrize("model", MODELS)
def test_a_seeded_run_gives_the_golden_bytes_on_this_cpu(model):
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("the golden bytes are XLA:CPU's; a GPU repeats its own (tests/test_gpu.py)")
    if cpu_lacks_fma():
        pytest.skip("this CPU has no FMA: train.py runs it in the machine mode (no portable kernels run here)")
    assert cpu_bits_in_force() == "portable", "the suite runs with train.py's default settings"
    cpu = host_cpu()
    assert seeded_run_sha256(model) == GOLDEN_RECORD["sha256"][model], (
        f"{cpu['model']} ({cpu['vendor']}; {' '.join(cpu['instruction_sets'])}; {cpu['cores']} cores) gives other "
        f"bytes for the seeded {model} run than every machine listed in {GOLDEN.name}: the bits are not portable here")


def test_the_golden_hashes_were_checked_on_cpus_of_other_vendors_instruction_sets_and_core_counts():
    machines = GOLDEN_RECORD["machines"]
    for machine in machines:
        assert set(machine["models"]) <= set(MODELS)
    native = [machine for machine in machines if machine["how"] == "native" and set(machine["models"]) == set(MODELS)]
    assert len({machine["cpu_vendor"] for machine in native}) >= 2
    assert len({tuple(machine["instruction_sets"]) for machine in native}) >= 2
    assert {1, 2} <= {machine["cores"] for machine in native}
    assert any(machine["how"].startswith("qemu-x86_64 -cpu") for machine in machines)


def test_the_portable_bits_measurements_are_of_these_settings_and_of_these_hashes():
    """benchmarks/portable_bits.py measured XLA:CPU's own settings to give other bytes on other CPUs or core
    counts (so the golden test can fail) and train.py's portable ones to agree, on the golden hashes."""
    assert len({measured["provenance"]["machine"]["cpu"]["vendor"] for measured in MEASURED.values()}) >= 2
    default_hashes = {model: set() for model in MODELS}
    for name, measured in MEASURED.items():
        portable = measured["configs"]["portable"]
        assert portable["settings"]["XLA_FLAGS"].split() == list(PORTABLE_CPU_XLA_FLAGS), name
        assert all(count == 1 for count in portable["distinct_hashes"].values()), name  # where it finished
        for row in portable["environments"].values():
            for model, digest in row.get("sha256", {}).items():
                assert digest == GOLDEN_RECORD["sha256"][model], (name, model)
        for row in measured["configs"].get("default", {"environments": {}})["environments"].values():
            for model, digest in row.get("sha256", {}).items():
                default_hashes[model].add(digest)
    assert all(len(digests) > 1 for digests in default_hashes.values())


def test_a_cpu_without_fma_was_measured_to_hang_in_portable_mode_and_train_pys_choice_to_run():
    """README's CPUs-without-FMA paragraph: under qemu's SandyBridge the portable settings never finished, and
    train.py's own choice (the machine mode there) did; everywhere else train.py's choice gave the golden bytes."""
    measured = MEASURED["portable_bits-no_fma.json"]["configs"]
    as_train_py = measured["train_py"]["environments"]
    no_fma = [environment for environment, row in as_train_py.items() if row.get("cpu_lacks_fma")]
    assert no_fma == ["SandyBridge-1"]
    for environment, row in as_train_py.items():
        if environment in no_fma:
            assert "timed out" in measured["portable"]["environments"][environment]["error"]
            xla_own = measured["default"]["environments"][environment]
            assert row["cpu_bits"] == "machine" and row["sha256"] == xla_own["sha256"]
        else:
            assert row["cpu_bits"] == "portable" and row["sha256"] == {"dense_ae": GOLDEN_RECORD["sha256"]["dense_ae"]}


def ablation_hashes(name: str, config: str) -> set[tuple]:
    """The (model, hash) pairs a configuration of one portable_bits.py measurement gave at any core count."""
    rows = MEASURED[name]["configs"][config]["environments"].values()
    return {(model, digest) for row in rows for model, digest in row.get("sha256", {}).items()}


def test_which_part_of_the_portable_settings_two_cpus_of_other_vendors_and_vector_widths_need():
    """README's ablation: an AVX2 AMD EPYC and an AVX-512 Intel Xeon agree with every portable part, disagree
    without the platform-dependent math off or without Eigen's own contraction kernel, and agree without the
    AVX cap (each is one hash per model there)."""
    amd, intel = "portable_bits-amd_epyc.json", "portable_bits-xeon_avx512.json"
    assert "avx512f" in MEASURED[intel]["provenance"]["machine"]["cpu"]["instruction_sets"]
    assert "avx512f" not in MEASURED[amd]["provenance"]["machine"]["cpu"]["instruction_sets"]
    for config, agree in [("portable", True), ("portable-minus-max_isa_avx", True),
                          ("portable-minus-platform_dependent_math", False),
                          ("portable-minus-eigen_default_contraction", False)]:
        assert (ablation_hashes(amd, config) == ablation_hashes(intel, config)) == agree, config
    assert len(ablation_hashes(intel, "portable-minus-max_isa_avx")) == 2  # conv_vae's and dense_ae's, no more


def test_a_machine_is_listed_once_with_every_model_checked_on_it():
    def entry(models, date):
        return {"cpu_model": "X", "cpu_vendor": "V", "cores": 2, "how": "native", "models": models, "date": date}

    other = entry(["dense_ae"], "1") | {"cores": 1}
    machines, news = with_machine([other, entry(["conv_vae", "dense_ae"], "1")], entry(["dense_ae"], "2"))
    assert news == "already listed with these models" and machines[1]["date"] == "1"
    machines, news = with_machine([other, entry(["conv_vae"], "1")], entry(["dense_ae"], "2"))
    assert news == "listed" and machines == [other, entry(["conv_vae", "dense_ae"], "2")]


def test_one_model_name_of_two_cpu_generations_is_listed_twice():
    """A virtual machine may call a Zen 4 without AVX-512 and a Zen 5 with it both "AMD EPYC": both are listed."""
    zen4 = {"cpu_model": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "instruction_sets": ["avx", "avx2", "fma"],
            "cores": 2, "how": "native", "models": ["conv_vae", "dense_ae"]}
    zen5 = zen4 | {"instruction_sets": ["avx", "avx2", "fma", "avx512f"], "cpu_generation": "family 26 model 2"}
    machines, news = with_machine([zen4], zen5)
    assert news == "listed" and machines == [zen4, zen5]
    later_zen4 = zen4 | {"cpu_generation": "family 25 model 17"}  # an earlier record without the generation
    assert with_machine([zen4], later_zen4)[1] == "already listed with these models"
    assert with_machine([zen5], zen5 | {"cpu_generation": "family 26 model 68"})[1] == "listed"


def test_readmes_default_run_was_made_again_on_another_cpu_with_the_same_bytes():
    """benchmarks/default_run.py's record: README's run's params hash, as README quotes it, and the machines
    where `python train.py --latent_dim 2` gave those bytes and every epoch's metrics in figures/mnist/."""
    from benchmarks.default_run import REFERENCE

    record = json.loads(REFERENCE.read_text())
    readme = (ROOT / "README.md").read_text()
    assert f"params sha256 {record['params_sha256'][:8]}..." in readme
    assert record["machines"] and all(machine["cpu_bits"] == "portable" for machine in record["machines"])
    assert len((ROOT / "figures/mnist/metrics.jsonl").read_text().splitlines()) == record["epochs"] == 20
