"""The benchmark results as published: the target checks (scripts/targets.py) and the
results markdown and README block (scripts/update_readme.py), all rendered from the
committed results JSON. No benchmark runs here."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import targets  # noqa: E402
import update_readme  # noqa: E402

RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


def test_readme_and_results_markdown_are_what_the_results_json_renders_to():
    stale = [str(p.relative_to(ROOT)) for p, text in update_readme.outputs().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"run python scripts/update_readme.py: {stale} differ from the JSON"


@pytest.mark.parametrize("path", [p for p in RESULTS
                                  if "targets" in json.loads(p.read_text())],
                         ids=lambda p: p.name)
def test_targets_recomputed_from_the_rows_match_those_the_run_recorded(path):
    # Results written before the checks left bench_se.py carry their targets: the moved
    # checks must give the same rows and misses from the same case rows.
    result = json.loads(path.read_text())
    rows, misses = targets.evaluate(result)
    shown = [{k: v for k, v in r.items() if v is not None or k != "display"} for r in rows]
    assert shown == [{k: v for k, v in r.items() if v is not None or k != "display"}
                     for r in result["targets"]]
    assert misses == result["target_misses"]


def test_targets_skip_files_that_are_not_bench_results(capsys):
    memory = [p for p in RESULTS if p.name.endswith("-memory.json")]
    assert memory, "the committed results include the memory benchmark's"
    assert targets.main([str(memory[0])]) == 0
    assert capsys.readouterr().out == ""
