"""The report as a person sees it: rendered by headless Chromium (Debian's package), its layout
measured and its screenshot's pixels read.

Screenshots and pages are kept under $KILN_TEST_ARTIFACTS/report (else pytest's tmp_path); the
path is printed. Chromium missing is a failure that says how to install it, never a skip: CI
installs it (./bootstrap's package list).
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from release import report
from release.report import render
from release.timeline import Timeline

from .browser import Box, BrowserMissing, Picture, chromium, decode_png, layout, page_requests, render_html, rgb
from .synthetic import release

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
WINDOW = (1400, 1000)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser() -> str:
    try:
        return chromium()
    except BrowserMissing as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    base = os.environ.get("KILN_TEST_ARTIFACTS")
    out = Path(base) / "report" if base else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def saved_then_loaded(n: int, **kw: int) -> tuple[str, int]:
    """The page of a synthetic release whose timeline went through encode/decode, as one saved would."""
    synthetic = release(n, **kw)
    timeline = Timeline()
    for s in synthetic.samples:
        timeline.add(s)
    samples = timeline.samples()
    return render(synthetic.record, samples, generated_at=AT), len({i.instance_id for s in samples
                                                                     for i in s.instances})


def look(html: str, name: str, artifacts: Path, selectors: list[str]) -> tuple[str, Picture, dict[str, list[Box]]]:
    page = artifacts / f"{name}.html"
    page.write_text(html)
    asked: list[str] = []
    dom, png = render_html(page, window=WINDOW, requests=asked)
    boxes = layout(page, selectors, window=WINDOW, requests=asked)
    shot = artifacts / f"{name}.png"
    shot.write_bytes(png)
    print(f"\nscreenshot of the {name} report: {shot}")
    assert page_requests(asked) == [], f"the page asked the network for {page_requests(asked)}"
    picture = decode_png(png)
    assert (picture.width, picture.height) == WINDOW
    return dom, picture, boxes


def visible(boxes: list[Box], min_size: float = 4) -> list[Box]:
    return [b for b in boxes if b.inside(WINDOW) and b.width >= min_size and b.height >= min_size]


def red_columns(picture: Picture, colour: str, at_least: int) -> list[int]:
    """The screenshot's columns with at least this many pixels of the colour: a vertical line."""
    want = rgb(colour)
    counts: Counter[int] = Counter()
    for y in range(picture.height):
        for x in range(picture.width):
            if picture.pixel(x, y) == want:
                counts[x] += 1
    return sorted(x for x, n in counts.items() if n >= at_least)


LANES = ['[data-lane]', '[data-category="new"] rect.segment.inservice:not(.warming)',
         '[data-category="previous"] rect.segment.inservice', "svg.timeline", "#failure-marker line",
         "#rollback-marker line", "g.poll", "#outcome"]


def test_a_successful_release_as_a_person_sees_it(browser: str, artifacts: Path) -> None:
    html, instances = saved_then_loaded(16)
    dom, picture, boxes = look(html, "success", artifacts, LANES)
    # The browser built the picture: the SVG, a lane per instance, the polls, laid out with a size.
    assert "<svg" in dom and dom.count("data-lane=") == instances and 'id="failure-marker"' not in dom
    (svg,) = boxes["svg.timeline"]
    assert svg.width > 1000 and svg.height > 400 and svg.x >= 0 and svg.x + svg.width <= WINDOW[0]
    assert len(boxes["[data-lane]"]) == instances and all(b.height > 5 for b in boxes["[data-lane]"])
    assert len(boxes["g.poll"]) > 10 and boxes["#failure-marker line"] == []
    # What is on screen: the outcome badge in green, lanes in the new and the previous version's colours.
    (badge,) = boxes["#outcome"]
    assert picture.box_colours(badge).most_common(1)[0][0] == rgb(report.PASS)
    for selector, colour in ((LANES[1], report.NEW), (LANES[2], report.PREVIOUS)):
        shown = visible(boxes[selector])
        assert shown, f"no {selector} in the first window"
        assert all(picture.pixel(*b.centre) == rgb(colour) for b in shown), selector
    assert picture.count(report.NEW) > 5_000 and picture.count(report.PREVIOUS) > 5_000
    assert picture.count(report.PASS) > 500
    assert red_columns(picture, report.FAILURE_MARKER, 100) == [], "a red line on a release that passed"


def test_a_rolled_back_release_shows_where_it_failed_and_turned_back(browser: str, artifacts: Path) -> None:
    html, instances = saved_then_loaded(16, fail_batch=3)
    dom, picture, boxes = look(html, "rollback", artifacts, LANES)
    assert 'id="failure-marker"' in dom and 'id="rollback-marker"' in dom and dom.count("data-lane=") == instances
    (badge,) = boxes["#outcome"]
    assert picture.box_colours(badge).most_common(1)[0][0] == rgb(report.FAIL)
    # The failure marker is a red line across the chart, inside the first window, where the layout put it.
    (line,) = boxes["#failure-marker line"]
    assert 0 < line.x < WINDOW[0] and line.height > 300
    columns = red_columns(picture, report.FAILURE_MARKER, 200)
    assert columns and all(abs(x - line.x) <= 2 for x in columns), (columns, line)
    (back,) = boxes["#rollback-marker line"]
    assert back.x > line.x
    near = Counter(picture.pixel(x, y) for x in range(int(back.x) - 1, int(back.x) + 2)
                   for y in range(int(back.y), min(WINDOW[1], int(back.y + back.height))))
    assert near[rgb(report.ROLLBACK_MARKER)] > 100, "the dashed rollback line"
    # Both versions' lanes are drawn, and the failing poll's cells are red.
    for selector, colour in ((LANES[1], report.NEW), (LANES[2], report.PREVIOUS)):
        shown = visible(boxes[selector])
        assert shown and all(picture.pixel(*b.centre) == rgb(colour) for b in shown), selector
    assert picture.count(report.FAIL) > 1_000


def test_the_check_would_catch_a_page_that_reaches_out(browser: str, tmp_path: Path) -> None:
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://kiln-canary.invalid/p.png">'
                    '<img src="https://192.0.2.9/q.png"></body></html>')
    asked: list[str] = []
    render_html(page, requests=asked)
    leaked = page_requests(asked)
    assert "GET http://kiln-canary.invalid/p.png" in leaked and "CONNECT 192.0.2.9:443" in leaked
