"""The release report: one self-contained HTML page, escaped, with what a person needs to find."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from report.synthetic import NEW_IMAGE, release

from release.record import JournalEntry, Outcome
from release.report import render
from release.timeline import InstanceSample, Timeline

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def page(n: int = 16, **kw: int) -> tuple[str, int]:
    synthetic = release(n, **kw)
    instances = len({i.instance_id for s in synthetic.samples for i in s.instances})
    return render(synthetic.record, synthetic.samples, generated_at=AT), instances


def test_a_successful_release_has_its_outcome_lanes_polls_and_no_failure_marker() -> None:
    synthetic = release(16)
    html = render(synthetic.record, synthetic.samples, generated_at=AT)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert 'data-outcome="succeeded"' in html and "✔ succeeded" in html
    lanes = re.findall(r'data-lane="([^"]+)"', html)
    assert sorted(lanes) == sorted({i.instance_id for s in synthetic.samples for i in s.instances})
    assert len(re.findall(r'class="poll (pass|wait|fail)', html)) == len(synthetic.samples)
    assert html.count('class="poll pass') == 1
    assert 'id="failure-marker"' not in html and 'id="rollback-marker"' not in html
    assert html.count('data-version="1.1.0"') == 16 and html.count('data-version="1.0.0"') == 16
    for field in ("3f2c9a1b7e40", "prod", NEW_IMAGE, "f1e2d3c4b5a69788", "9c1e2d4", "web-prod v6 → v7",
                  "ir-0new", "ana@build-7", "2026-11-22 10:00:00 UTC"):
        assert field in html, field
    assert "<title>" in html and "<desc" in html and 'aria-label="Legend"' in html


def test_a_rolled_back_release_marks_the_failure_and_the_rollback() -> None:
    synthetic = release(16, fail_batch=3)
    html = render(synthetic.record, synthetic.samples, generated_at=AT)
    assert synthetic.record.outcome is Outcome.ROLLED_BACK
    assert 'id="failure-marker"' in html and 'id="rollback-marker"' in html
    assert 'data-outcome="rolled_back"' in html and "alarm web-prod-5xx in ALARM" in html
    first_fail = next(s for s in synthetic.samples if s.verdict == "fail")
    marker = re.search(r'id="failure-marker" class="marker" data-at="([^"]+)"', html)
    assert marker and marker.group(1) == first_fail.at.isoformat()
    assert re.search(r'class="poll fail" data-poll="\d+" data-at="' + re.escape(first_fail.at.isoformat()), html)
    assert 'data-check="alarms"' in html and 'class="check fail" data-check="alarms"' in html
    assert 'id="failure-entry"' in html and 'data-alarm="web-prod-5xx"' in html and 'data-state="ALARM"' in html
    assert 'data-watch="rollback"' in html


def test_everything_from_outside_is_escaped() -> None:
    synthetic = release(4, fail_batch=1)
    evil = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    record = replace(synthetic.record, reason=f"alarm {evil}", actor=evil, environment=f"prod{evil}",
                     journal=(*synthetic.record.journal, JournalEntry(AT, "rolled_back", f"done {evil} & more")))
    samples = [replace(s, instances=tuple(replace(i, instance_id=i.instance_id + evil) for i in s.instances),
                       alarms={f"{k}{evil}": v for k, v in s.alarms.items()}, reason=s.reason and f"x {evil}")
               for s in synthetic.samples]
    html = render(record, samples, generated_at=AT)
    assert "<script" not in html and "<img" not in html  # the only tags are the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;script&gt;" in html  # in attributes too (data-lane)
    assert "done &quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt; &amp; more" in html


def test_the_page_loads_nothing_from_anywhere() -> None:
    html, _ = page(16, fail_batch=2)
    assert "http://" not in html and "https://" not in html and "//" not in re.sub(r"<!DOCTYPE html>", "", html)
    assert not re.search(r"\b(src|href|xlink:href|srcset|action|poster|data)\s*=", html.replace("data-", "")), \
        "no attribute may point at another resource"
    assert "<script" not in html and "<link" not in html and "@import" not in html and "@font-face" not in html
    assert "<iframe" not in html and "<object" not in html and "<embed" not in html
    # url(...) only ever names a pattern defined in the page itself.
    urls = set(re.findall(r"url\(([^)]*)\)", html))
    assert urls and all(u.startswith("#") for u in urls)
    defined = set(re.findall(r'<pattern id="([^"]+)"', html))
    assert {u[1:] for u in urls} <= defined


def test_a_release_recorded_before_timelines_shows_its_journal() -> None:
    synthetic = release(4, fail_batch=1)
    html = render(synthetic.record, [], generated_at=AT)
    assert 'id="no-timeline"' in html and "not recorded" in html
    assert "<svg" not in html.split('id="timeline"')[1].split("</section>")[0]
    for entry in synthetic.record.journal:
        assert entry.message.replace("&", "&amp;") in html
    assert 'id="failure-entry"' in html and 'data-outcome="rolled_back"' in html
    assert "rolled back" in html and "alarm web-prod-5xx in ALARM" in html


def test_an_in_progress_release_without_journal_or_reason() -> None:
    synthetic = release(4)
    record = replace(synthetic.record, outcome=Outcome.IN_PROGRESS, ended_at=None, journal=(), reason=None)
    html = render(record, synthetic.samples[:5], generated_at=AT)
    assert 'data-outcome="in_progress"' in html and "The journal is empty." in html and "Still in progress" in html


def test_git_sha_from_the_caller_wins_over_the_journal() -> None:
    synthetic = release(4)
    assert "9c1e2d4" in render(synthetic.record, synthetic.samples, generated_at=AT)
    html = render(synthetic.record, synthetic.samples, generated_at=AT, git_sha="abcdef0123")
    assert '<dd data-field="git-sha">abcdef0123</dd>' in html
    bare = replace(synthetic.record, journal=synthetic.record.journal[:1])
    assert "not recorded (see the AMI" in render(bare, [], generated_at=AT)


def test_lanes_show_lifecycle_health_and_an_unknown_image() -> None:
    synthetic = release(4)
    samples = list(synthetic.samples)
    odd = InstanceSample("i-0stranger", "ami-0elsewhere", None, "Standby", "Unhealthy", "unhealthy", False, None)
    samples[3] = replace(samples[3], instances=(*samples[3].instances, odd))
    html = render(synthetic.record, samples, generated_at=AT, omitted_instances=7)
    lane = re.search(r'<g class="lane other" data-lane="i-0stranger" data-version="ami-0elsewhere".*?</g>', html)
    assert lane is not None
    assert 'class="segment other"' in lane.group(0) and 'class="unhealthy"' in lane.group(0)
    assert 'class="segment pending"' in html and 'class="segment terminating"' in html
    assert 'class="segment inservice warming"' in html
    assert "7 more are not drawn" in html


def test_render_is_fast_for_500_instances_from_a_saved_timeline(capsys: pytest.CaptureFixture[str]) -> None:
    synthetic = release(500, fail_batch=4, batch_polls=22)
    t = Timeline()
    for s in synthetic.samples:
        t.add(s)
    samples = t.samples()
    start = time.perf_counter()
    html = render(synthetic.record, samples, generated_at=AT)
    took = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nreport of 500 instances, {len(synthetic.samples)} polls: {took:.3f} s, {len(html) // 1000} KB")
    assert took < 3
    assert html.count("data-lane=") == len({i.instance_id for s in samples for i in s.instances})
    assert 'id="failure-marker"' in html


@pytest.mark.parametrize("module", ["release.timeline", "release.report"])
def test_the_report_modules_are_pure(module: str) -> None:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       cwd=ROOT).stdout)
    bad = [m for m in loaded if m.split(".")[0] in ("boto3", "botocore", "paramiko", "invoke", "moto", "subprocess")
           or m.startswith(("release.aws", "release.cloud", "release.ledger", "release.sandbox", "release.commands"))]
    assert bad == []
