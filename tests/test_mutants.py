"""The mutation set keeps up with the code: every mutant of benchmarks/mutants.py still applies to
exactly one place, and benchmarks/results/mutants.json is the score of this very set, all killed."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mutants  # noqa: E402


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda mutant: mutant.name)
def test_every_mutant_still_applies_once(mutant):
    assert mutants.stale_reasons(mutant) == []


def test_a_mutant_whose_text_moved_is_reported_stale(tmp_path):
    mutant = mutants.MUTANTS[0]
    (tmp_path / mutant.path).parent.mkdir(parents=True)
    (tmp_path / mutant.path).write_text("nothing to change here\n")
    assert any("occurs 0 times" in reason for reason in mutants.stale_reasons(mutant, tmp_path))
    (tmp_path / mutant.path).write_text(f"{mutant.old}\n{mutant.old}\n")
    assert any("occurs 2 times" in reason for reason in mutants.stale_reasons(mutant, tmp_path))


def test_the_recorded_score_is_this_set_and_kills_every_mutant():
    record = json.loads(mutants.RESULTS.read_text())
    recorded = {result["mutant"]: result for result in record["mutants"]}
    assert sorted(recorded) == sorted(mutant.name for mutant in mutants.MUTANTS), "rerun benchmarks/mutants.py"
    for mutant in mutants.MUTANTS:
        assert recorded[mutant.name]["fingerprint"] == mutant.fingerprint, f"{mutant.name}: edited since its run"
        assert recorded[mutant.name]["killed"], f"{mutant.name} survived"
        assert recorded[mutant.name]["by_its_listed_killer"], f"{mutant.name}: its listed killers let it pass"
    assert record["killed"] == record["total"] == len(mutants.MUTANTS)
    assert record["fast_tests"] == mutants.fast_tests()


def test_the_fast_list_holds_every_killer_and_the_importance_weighted_tests():
    assert "tests/test_iwae.py" in mutants.fast_tests()
    for path in mutants.fast_tests():
        assert (ROOT / path).is_file()
