"""Every measured number in README.md is read from the JSON its measuring command wrote.

README writes such a number as `<!--n:RELPATH#KEY-->NUMBER`: an HTML comment, invisible when rendered, right
before the number. RELPATH is a .json or .jsonl file from the repository root; KEY a `/`-separated path of dict
keys and list indices (negative allowed; a .jsonl file is the list of its lines; `*` maps the rest of the path
over every item of a list). Transforms may follow, each after a `|` (written `\\|` inside a Markdown table):
`x100` (a percentage), `/60` (minutes), `median` `min` `max` `sum` `mean` (of a list), `over:KEY2` (the ratio to
another value of the same file) and `change:KEY2` (the percent change from it). The check: the value, rounded
half up to as many decimals as README's NUMBER shows, equals NUMBER exactly (144.93873 is 144.94, not 145.00).
"""

import json
import re
import shutil
import statistics
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(
    r"<!--n:(?P<path>[^#\s]+)#(?P<key>(?:(?!-->)[^|\\])+)(?P<transforms>(?:\\?\|(?:(?!-->)[^|\\])+)*)-->"
    r"(?P<number>[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+(?:\.\d+)?)?")
REDUCTIONS = {"median": statistics.median, "min": min, "max": max, "sum": sum, "mean": statistics.mean}
# The files README's numbers must come from, one per kind of claim the README makes.
REQUIRED_SOURCES = {"figures/mnist/metrics.jsonl", "benchmarks/results/main_job-cpu.json",
                    "benchmarks/results/train_speed-cpu.json", "benchmarks/results/explore_latency.json",
                    "benchmarks/results/mutants.json", "benchmarks/results/sampler_table.json",
                    "benchmarks/results/iwae_table.json"}


def load(path: Path):
    """A .json document, or a .jsonl file as the list of its lines; every number exact, as Decimal."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line, parse_float=Decimal, parse_int=Decimal) for line in text.splitlines() if line]
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def lookup(document, key: str):
    """The value at a `/`-separated key; `*` maps the rest of the key over a list."""
    head, _, rest = key.partition("/")
    if head == "*":
        return [lookup(item, rest) if rest else item for item in document]
    value = document[int(head)] if isinstance(document, list) else document[head]
    return lookup(value, rest) if rest else value


def transform(value, name: str, document):
    """One of the transforms the module docstring lists."""
    if name == "x100":
        return value * 100
    if name == "/60":
        return value / 60
    if name in REDUCTIONS:
        return REDUCTIONS[name](value)
    if name.startswith("over:"):
        return value / lookup(document, name.removeprefix("over:"))
    if name.startswith("change:"):
        return 100 * (value / lookup(document, name.removeprefix("change:")) - 1)
    raise ValueError(f"unknown transform {name!r}")


def value_of(marker: re.Match, root: Path) -> Decimal:
    """What the marker's file says, after its transforms."""
    document = load(root / marker["path"])
    value = lookup(document, marker["key"])
    for name in filter(None, re.split(r"\\?\|", marker["transforms"])):
        value = transform(value, name, document)
    if not isinstance(value, Decimal):
        raise TypeError(f"not a number: {value!r}")
    return value


def problems(readme: str, root: Path = ROOT) -> list[str]:
    """One line per marker whose file, key or value disagrees with README's number."""
    found = []
    markers = list(MARKER.finditer(readme))
    if len(markers) != readme.count("<!--n:"):
        found.append(f"{readme.count('<!--n:') - len(markers)} markers do not parse")
    for marker in markers:
        if marker["number"] is None:
            found.append(f"{marker[0]}: no number follows the marker")
            continue
        try:
            value = value_of(marker, root)
        except (OSError, KeyError, IndexError, ValueError, TypeError, ArithmeticError) as error:
            found.append(f"{marker[0]}: {type(error).__name__}: {error}")
            continue
        shown = Decimal(marker["number"].replace(",", ""))
        rounded = value.quantize(Decimal(1).scaleb(shown.as_tuple().exponent), rounding=ROUND_HALF_UP)
        if rounded != shown:
            found.append(f"{marker[0]}: README says {marker['number']}, {marker['path']} says {rounded} ({value})")
    return found


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
