"""Every measured number in README.md is read from the JSON its measuring command wrote (the marker syntax and
the checker: benchmarks/readme_numbers.py, which also rewrites README's numbers from their files)."""

import json
import re
import shutil

import pytest

from benchmarks.readme_numbers import MARKER, README, ROOT, lookup, problems, refreshed, value_of

# The files README's numbers must come from, one per kind of claim the README makes.
REQUIRED_SOURCES = {"figures/mnist/metrics.jsonl", "benchmarks/results/main_job-cpu.json",
                    "benchmarks/results/train_speed-cpu.json", "benchmarks/results/explore_latency.json",
                    "benchmarks/results/mutants.json", "benchmarks/results/sampler_table.json",
                    "benchmarks/results/iwae_table.json", "benchmarks/results/seed003_dense_ae.json",
                    "benchmarks/results/default_run.json"}


def markers() -> list[re.Match]:
    return list(MARKER.finditer(README.read_text()))


def test_every_readme_number_agrees_with_its_json():
    assert problems(README.read_text()) == []


def test_every_marker_names_an_existing_file_and_a_key_that_resolves():
    for marker in markers():
        path = ROOT / marker["path"]
        assert marker["path"].startswith(("benchmarks/results/", "figures/")), marker[0]
        assert path.suffix in (".json", ".jsonl") and path.is_file(), marker[0]
        value_of(marker, ROOT)


def test_the_checker_sees_a_number_changed_in_readme():
    readme = README.read_text()
    marker = next(marker for marker in markers() if marker["path"].endswith("metrics.jsonl"))
    start, end = marker.span("number")
    changed = marker["number"][:-1] + str((int(marker["number"][-1]) + 1) % 10)
    found = problems(readme[:start] + changed + readme[end:])
    assert len(found) == 1 and f"README says {changed}" in found[0]


def test_the_checker_sees_a_value_changed_in_a_json(tmp_path):
    readme = README.read_text()
    for relpath in {marker["path"] for marker in markers()}:
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relpath, tmp_path / relpath)
    marker = next(marker for marker in markers() if marker["path"] == "benchmarks/results/main_job-cpu.json"
                  and not marker["transforms"] and "*" not in marker["key"])
    record = json.loads((tmp_path / marker["path"]).read_text())
    *parents, last = marker["key"].split("/")
    container = lookup(record, "/".join(parents)) if parents else record
    container[int(last) if isinstance(container, list) else last] += 1
    (tmp_path / marker["path"]).write_text(json.dumps(record))
    found = problems(readme, tmp_path)
    assert len(found) >= 1 and all(marker["path"] in line for line in found)
    assert any(line.startswith(marker[0]) for line in found)


@pytest.mark.parametrize("readme, message", [
    ("<!--n:benchmarks/results/mutants.json#total--> of", "no number follows"),
    ("<!--n:benchmarks/results/mutants.json#nothing-->1", "KeyError"),
    ("<!--n:benchmarks/results/absent.json#total-->1", "FileNotFoundError"),
    ("<!--n:benchmarks/results/mutants.json#total|cube-->1", "unknown transform"),
    ("<!--n:benchmarks/results/mutants.json#mutants-->1", "not a number"),
    ("<!--n:benchmarks/results/mutants.json\n#total-->1", "do not parse"),
])
def test_a_broken_marker_is_reported(readme, message):
    assert any(message in line for line in problems(readme))


def test_rounding_is_to_readmes_decimals(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures/run.jsonl").write_text('{"loss": 144.93873596191406, "seconds": 60}\n{"seconds": 90}\n')
    good = ("<!--n:figures/run.jsonl#0/loss-->144.94 <!--n:figures/run.jsonl#0/loss-->145 "
            "<!--n:figures/run.jsonl#*/seconds|sum|/60-->2.5 <!--n:figures/run.jsonl#*/seconds|median-->75 "
            "<!--n:figures/run.jsonl#-1/seconds\\|over:0/seconds\\|x100-->150.0 "
            "<!--n:figures/run.jsonl#0/seconds|change:1/seconds-->-33.3")
    assert problems(good, tmp_path) == []
    for wrong in ("145.00", "144.93", "144.938", "-144.94", "14,494"):
        assert problems(f"<!--n:figures/run.jsonl#0/loss-->{wrong}", tmp_path) != [], wrong


def test_every_results_json_says_what_produced_it():
    for path in sorted((ROOT / "benchmarks/results").glob("*.json")):
        provenance = json.loads(path.read_text()).get("provenance")
        assert isinstance(provenance, dict), f"{path.name}: no provenance record"
        for field in ("command", "machine"):
            assert provenance.get(field), f"{path.name}: provenance has no {field}"


def test_readme_quotes_every_kind_of_measurement_from_its_file():
    assert REQUIRED_SOURCES <= {marker["path"] for marker in markers()}


def test_refresh_sets_the_named_files_numbers_at_readmes_decimals_and_leaves_the_rest(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures/run.jsonl").write_text('{"loss": 144.93873, "images": 12345, "delta": 1.25}\n')
    (tmp_path / "figures/other.json").write_text('{"loss": 7.5}')
    stale = ("test <!--n:figures/run.jsonl#0/loss-->143.1 on <!--n:figures/run.jsonl#0/images-->9,999 images, "
             "<!--n:figures/run.jsonl#0/delta-->+0.5 <!--n:figures/run.jsonl#0/loss-->144 | "
             "<!--n:figures/other.json#loss-->7.0")
    readme, changes = refreshed(stale, {"figures/run.jsonl"}, tmp_path)
    assert readme == ("test <!--n:figures/run.jsonl#0/loss-->144.9 on <!--n:figures/run.jsonl#0/images-->12,345 "
                      "images, <!--n:figures/run.jsonl#0/delta-->+1.3 <!--n:figures/run.jsonl#0/loss-->145 | "
                      "<!--n:figures/other.json#loss-->7.0")
    assert len(changes) == 4 and problems(readme, tmp_path) == ["<!--n:figures/other.json#loss-->7.0: README says 7.0, "
                                                                "figures/other.json says 7.5 (7.5)"]


def test_a_refreshed_number_is_fixed_point_never_minus_zero_and_still_readable_by_the_checker(tmp_path):
    (tmp_path / "run.json").write_text('{"tiny": 1.2e-7, "gone": -0.00001, "change": -3.25}')
    stale = ("<!--n:run.json#tiny-->0.0000005 <!--n:run.json#gone-->+0.5 <!--n:run.json#gone-->1.00 "
             "<!--n:run.json#change-->-1.0")
    readme, _ = refreshed(stale, {"run.json"}, tmp_path)
    assert readme == ("<!--n:run.json#tiny-->0.0000001 <!--n:run.json#gone-->+0.0 <!--n:run.json#gone-->0.00 "
                      "<!--n:run.json#change-->-3.3")
    assert problems(readme, tmp_path) == []


def test_refreshing_readme_from_its_own_files_changes_nothing():
    readme = README.read_text()
    assert refreshed(readme, {marker["path"] for marker in markers()}) == (readme, [])
