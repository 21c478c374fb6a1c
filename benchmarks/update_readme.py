#!/usr/bin/env python
"""Copy the benchmark's markdown results (benchmarks/results/*.md) into README.md,
between the results markers, so the README quotes nothing the benchmark did not write."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def main() -> int:
    results = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    body = []
    for md in results:
        text = md.read_text()
        # Image links in the result files are relative to results/.
        text = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", r"![\1](benchmarks/results/\2)", text)
        text = text.replace("## se_fused benchmark:", "### Measured on")
        text = re.sub(r"^### ", "#### ", text, flags=re.M).replace("#### Measured on", "### Measured on")
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
