"""README's measured numbers and the JSON they come from: the checker tests/test_readme_numbers.py runs, and the
rewriter that brings README up to date after a measuring command wrote its JSON again.

    python benchmarks/readme_numbers.py                                   # every disagreement, one per line
    python benchmarks/readme_numbers.py --refresh figures/mnist/metrics.jsonl benchmarks/results/sampler_table.json

README writes such a number as `<!--n:RELPATH#KEY-->NUMBER`: an HTML comment, invisible when rendered, right
before the number. RELPATH is a .json or .jsonl file from the repository root; KEY a `/`-separated path of dict
keys and list indices (negative allowed; a .jsonl file is the list of its lines; `*` maps the rest of the path
over every item of a list). Transforms may follow, each after a `|` (written `\\|` inside a Markdown table):
`x100` (a percentage), `/60` (minutes), `median` `min` `max` `sum` `mean` (of a list), `over:KEY2` (the ratio to
another value of the same file) and `change:KEY2` (the percent change from it). The check: the value, rounded
half up to as many decimals as README's NUMBER shows, equals NUMBER exactly (144.93873 is 144.94, not 145.00).
`--refresh` sets each number of the named files' markers to its value at the decimals README already shows
(fixed point, with a `+` and thousands separators where README's number had them), so prose around a number
still has to be read again by whoever refreshes it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vaejax.files import atomic_write  # noqa: E402

README = ROOT / "README.md"
MARKER = re.compile(
    r"<!--n:(?P<path>[^#\s]+)#(?P<key>(?:(?!-->)[^|\\])+)(?P<transforms>(?:\\?\|(?:(?!-->)[^|\\])+)*)-->"
    r"(?P<number>[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+(?:\.\d+)?)?")
# what a marker whose file, key or transform is wrong raises
LOOKUP_ERRORS = (OSError, KeyError, IndexError, ValueError, TypeError, ArithmeticError)
REDUCTIONS = {"median": statistics.median, "min": min, "max": max, "sum": sum, "mean": statistics.mean}


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
        except LOOKUP_ERRORS as error:
            found.append(f"{marker[0]}: {type(error).__name__}: {error}")
            continue
        rounded, shown = at_decimals_of(value, marker["number"])
        if rounded != shown:
            found.append(f"{marker[0]}: README says {marker['number']}, {marker['path']} says {rounded} ({value})")
    return found


def at_decimals_of(value: Decimal, number: str) -> tuple[Decimal, Decimal]:
    """`value` rounded half up to as many decimals as README's `number` shows, and that number."""
    shown = Decimal(number.replace(",", ""))
    return value.quantize(Decimal(1).scaleb(shown.as_tuple().exponent), rounding=ROUND_HALF_UP), shown


def written_like(value: Decimal, number: str) -> str:
    """`value` (already at `number`'s decimals) written as README wrote `number`: fixed point, a `+` sign and
    thousands separators where `number` had them, never `-0`."""
    sign, separator = "+" if number.startswith("+") else "", "," if "," in number else ""
    return f"{value + 0:{sign}{separator}f}"  # + 0: -0.0 is 0.0


def refreshed(readme: str, relpaths: set[str], root: Path = ROOT) -> tuple[str, list[str]]:
    """README with every number of the markers of `relpaths` set from its file, and one line per change."""
    changes = []

    def replace(marker: re.Match) -> str:
        if marker["path"] not in relpaths or marker["number"] is None:
            return marker[0]
        number = written_like(at_decimals_of(value_of(marker, root), marker["number"])[0], marker["number"])
        if number != marker["number"]:
            changes.append(f"{marker['path']}#{marker['key']}{marker['transforms']}: {marker['number']} -> {number}")
        return marker[0][:marker.start("number") - marker.start()] + number

    return MARKER.sub(replace, readme), changes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refresh", nargs="+", metavar="RELPATH", default=[],
                        help="rewrite the numbers of these files' markers from the files")
    args = parser.parse_args(argv)
    readme = README.read_text()
    if args.refresh:
        unknown = set(args.refresh) - {marker["path"] for marker in MARKER.finditer(readme)}
        if unknown:
            raise SystemExit(f"readme_numbers.py: README has no marker for {', '.join(sorted(unknown))}")
        try:
            readme, changes = refreshed(readme, set(args.refresh))
        except LOOKUP_ERRORS as error:
            raise SystemExit(f"readme_numbers.py: README left as it was: {type(error).__name__}: {error}") from None
        atomic_write(README, readme.encode())
        print("\n".join(changes) or "README already agrees with those files")
    found = problems(readme)
    print("\n".join(found) or "every README number agrees with its file")
    raise SystemExit(1 if found else 0)


if __name__ == "__main__":
    main()
