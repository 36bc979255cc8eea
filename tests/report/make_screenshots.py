"""Render the synthetic release reports (a success and a rollback of 16 instances) and screenshot them
into docs/report-success.png and docs/report-rollback.png (and their .html next to the PNGs when
--html is given). Run from the repository: .venv/bin/python -m tests.report.make_screenshots [OUT_DIR]

The real pictures will come from real releases; these show what the report looks like.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from release.report import render  # noqa: E402
from release.timeline import Timeline  # noqa: E402
from report.browser import render_html  # noqa: E402
from report.synthetic import release  # noqa: E402

WINDOW = (1400, 1000)
LIMIT = 200_000


def main(argv: list[str]) -> int:
    keep_html = "--html" in argv
    args = [a for a in argv if a != "--html"]
    out = Path(args[0]) if args else ROOT / "docs"
    out.mkdir(parents=True, exist_ok=True)
    for name, kw in (("success", {}), ("rollback", {"fail_batch": 3})):
        synthetic = release(16, **kw)
        timeline = Timeline()
        for s in synthetic.samples:
            timeline.add(s)
        html = render(synthetic.record, timeline.samples(), generated_at=datetime(2026, 11, 22, 12, tzinfo=UTC))
        page = out / f"report-{name}.html"
        page.write_text(html)
        _, png = render_html(page, window=WINDOW)
        if not keep_html:
            page.unlink()
        shot = out / f"report-{name}.png"
        shot.write_bytes(png)
        print(f"{shot}: {len(png) // 1000} KB")
        if len(png) > LIMIT:
            print(f"  larger than {LIMIT // 1000} KB", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
