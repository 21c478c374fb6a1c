#!/usr/bin/env python
"""Copy the benchmark's markdown results (benchmarks/results/*.md) into README.md,
between the results markers, so the README quotes nothing the benchmark did not write.
A per-case table longer than MAX_ROWS (a --full run has hundreds) is left in its
results file and linked instead."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def main() -> int:
    results = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    body = []
    for md in results:
        text = _shorten_long_tables(md.read_text(), f"benchmarks/results/{md.name}")
        # Image links in the result files are relative to results/.
        text = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", r"![\1](benchmarks/results/\2)", text)
        text = _nest_headings(text).replace("### se_fused benchmark:", "### Measured on")
        body.append(f"From [`benchmarks/results/{md.name}`](benchmarks/results/{md.name}):\n\n{text}")
    if not body:
        body = ["No results yet: run `make bench`."]
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    readme.write_text(text[:start] + "\n" + "\n".join(body) + "\n" + text[end:])
    print(f"README.md: results from {len(results)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
