#!/usr/bin/env python
"""Publish the benchmark results: from each benchmarks/results/*.json, write the
markdown beside it (a bench_se.py result gets the targets of scripts/targets.py, which
the measuring code does not compute) and copy it into README.md between the results
markers, so the README quotes nothing the benchmarks did not measure.

    python scripts/update_readme.py           # rewrite results/*.md and README.md
    python scripts/update_readme.py --check   # exit 1 if either would change

In the README a per-case table longer than MAX_ROWS (a --full run has hundreds) and the
list of cases that miss a target are linked to the results file instead of copied.
"""
import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

import _report  # noqa: E402
import targets  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
MAX_ROWS = 40


def _nest_headings(text: str) -> str:
    """Shift every heading so the file's top one becomes '### ' (under README's '## Results')."""
    levels = [len(m) for m in re.findall(r"(?m)^(#+) ", text)]
    shift = 3 - min(levels) if levels else 0
    return re.sub(r"(?m)^(#+) ", lambda m: "#" * (len(m.group(1)) + shift) + " ", text)


def _shorten_long_tables(text: str, link: str) -> str:
    """Replace the body of every '### ' section whose table has more than MAX_ROWS rows."""
    parts = re.split(r"(?m)^(?=### )", text)
    for i, part in enumerate(parts):
        rows = [ln for ln in part.splitlines() if ln.startswith("|")]
        if part.startswith("### ") and len(rows) - 2 > MAX_ROWS:
            title = part.splitlines()[0]
            parts[i] = (f"{title}\n\n{len(rows) - 2} rows: see the table in [{link}]({link}).\n\n")
    return "".join(parts)


def render(json_path: Path, for_readme: bool) -> str:
    """The markdown of one result: the results file's, or the README's shorter one."""
    result = json.loads(json_path.read_text())
    link = f"benchmarks/results/{json_path.with_suffix('.md').name}"
    if targets.is_bench_result(result):
        images = [p.name for p in _report.image_paths(json_path) if p.exists()]
        return _report.markdown(result, images,
                                targets.section(result, link if for_readme else None))
    import memory  # the memory benchmark's results render with its own tables
    return memory.markdown(result) + "\n"


def readme_section(json_path: Path) -> str:
    link = f"benchmarks/results/{json_path.with_suffix('.md').name}"
    text = _shorten_long_tables(render(json_path, for_readme=True), link)
    # Image links in the result files are relative to results/.
    text = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", r"![\1](benchmarks/results/\2)", text)
    text = _nest_headings(text).replace("### se_fused benchmark:", "### Measured on")
    return f"From [`{link}`]({link}):\n\n{text}"


def outputs() -> Dict[Path, str]:
    """Every file this publishes, with its new text."""
    results = sorted(RESULTS.glob("*.json"))
    out = {p.with_suffix(".md"): render(p, for_readme=False) for p in results}
    body = [readme_section(p) for p in results] or ["No results yet: run `make bench`."]
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    out[readme] = text[:start] + "\n" + "\n".join(body) + "\n" + text[end:]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 and name the files that are not up to date")
    args = p.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                _report.write_text(path, text)
    verb = "out of date" if args.check else "rewritten"
    print(f"{len(stale)} file(s) {verb}" + "".join(f"\n  {p}" for p in stale))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
