"""One release as one self-contained HTML page (`inv report`). Pure: record and samples in, text out.

The page needs nothing but itself: inline CSS, inline SVG, system fonts, no script, no link to
anything. What it shows (docs/report.md): the outcome and its reason; the release's provenance; a
timeline of the gate (the refresh's percentage, each poll's checks, the alarms, one lane per
instance coloured by version, with its lifecycle and health) with the moment the gate failed and
the rollback began; and the journal. Everything that comes from outside (instance ids, reasons,
journal messages, names) is escaped.

Why one module (~600 lines): one self-contained HTML file; its CSS, SVG timeline and tables are
rendered together and share one scale and palette.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from release.record import Outcome, ReleaseRecord
from release.timeline import RELEASE, ROLLBACK, InstanceSample, Sample

# Colours (the legend names each; none is the only signal: patterns, heights, glyphs and text too).
NEW, PREVIOUS, OTHER = "#2563eb", "#9ca3af", "#9333ea"
PASS, WAIT, FAIL = "#16a34a", "#f59e0b", "#dc2626"
FAILURE_MARKER, ROLLBACK_MARKER = "#dc2626", "#111827"
ALARM_COLOURS = {"OK": "#bbf7d0", "ALARM": FAIL, "INSUFFICIENT_DATA": "#e5e7eb", "MISSING": "#111827"}
CATEGORY_COLOURS = {"new": NEW, "previous": PREVIOUS, "other": OTHER}
OUTCOME_TEXT = {
    Outcome.SUCCEEDED: ("✔", "succeeded", PASS),
    Outcome.ROLLED_BACK: ("↺", "rolled back", FAIL),
    Outcome.ROLLBACK_FAILED: ("✘", "rollback failed", FAIL),
    Outcome.FAILED: ("✘", "failed", FAIL),
    Outcome.IN_PROGRESS: ("…", "in progress", WAIT),
}

WIDTH = 1360
LEFT = 210  # the labels' column
RIGHT = 24
PLOT = WIDTH - LEFT - RIGHT
_GIT_SHA = re.compile(r"\bgit[ -]sha[ :=]+([0-9a-f]{7,40})\b", re.IGNORECASE)


def render(record: ReleaseRecord, samples: Sequence[Sample], *, generated_at: datetime,
           git_sha: str | None = None, omitted_instances: int = 0) -> str:
    """The report of one release. `samples` may be empty (a release recorded before timelines were):
    the page then says so and shows the journal. `git_sha` (the image's kiln:git-sha tag) is shown
    when given, else looked for in the journal. `omitted_instances`: lanes the saved timeline left out."""
    icon, word, colour = OUTCOME_TEXT.get(record.outcome, ("?", str(record.outcome), WAIT))
    title = f"{record.kind} {record.version} to {record.environment}: {word}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Kiln {_e(title)} ({_e(record.release_id)})</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<header class="outcome {_e(record.outcome)}" style="border-left-color:{colour}">',
        f'<h1><span class="badge" style="background:{colour}" id="outcome" data-outcome="{_e(record.outcome)}">'
        f'{icon} {_e(word)}</span> {_e(record.kind)} <b>{_e(record.version)}</b> to <b>{_e(record.environment)}</b>'
        "</h1>",
        f'<p class="reason" id="reason">{_e(_reason(record))}</p>',
        "</header>",
        _provenance(record, git_sha or _sha_in_journal(record)),
    ]
    if samples:
        parts.append(_Timeline(record, samples, omitted_instances).section())
    else:
        parts.append('<section id="timeline"><h2>Timeline</h2><p class="note" id="no-timeline">The timeline was '
                     "not recorded for this release (it predates reports, or its gate never polled): only the "
                     "journal below tells what happened.</p></section>")
    parts.append(_journal(record, samples))
    parts.append(f'<footer>Kiln report of release {_e(record.release_id)}, generated {_e(_when(generated_at))}. '
                 "This page is self-contained: it loads nothing.</footer>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(at: datetime | None) -> str:
    return "—" if at is None else at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min"


def _reason(record: ReleaseRecord) -> str:
    if record.reason:
        return record.reason
    last = record.journal[-1].message if record.journal else ""
    if record.outcome is Outcome.SUCCEEDED:
        return f"The gate passed: {last}" if last else "The gate passed."
    if record.outcome is Outcome.IN_PROGRESS:
        return f"Still in progress (phase {record.phase})."
    return last or "No reason recorded."


def _sha_in_journal(record: ReleaseRecord) -> str | None:
    for entry in record.journal:
        if found := _GIT_SHA.search(entry.message):
            return found.group(1)
    return None


def _provenance(record: ReleaseRecord, git_sha: str | None) -> str:
    duration = (record.ended_at - record.started_at).total_seconds() if record.ended_at else None
    template = record.template or "—"
    after = f"v{record.template_after}" if record.template_after is not None else "(none created)"
    rows = [
        ("Release", record.release_id),
        ("Environment", record.environment),
        ("Kind", record.kind),
        ("Version", record.version),
        ("AMI", record.image_id),
        ("Fingerprint", record.fingerprint or "—"),
        ("Git sha", git_sha or "not recorded (see the AMI's kiln:git-sha tag)"),
        ("Previous", f"{record.previous_version or 'unknown version'} ({record.previous_image_id or '—'})"),
        ("Group", record.group or "—"),
        ("Launch template", f"{template} v{record.template_before} → {after}"
                            + (f" (default was v{record.default_before})" if record.default_before else "")),
        ("Refresh", record.refresh_id or "—"),
        ("Rollback refresh", record.rollback_refresh_id or "—"),
        ("Actor", record.actor),
        ("Started", _when(record.started_at)),
        ("Ended", _when(record.ended_at) + (f" ({_duration(duration)})" if duration is not None else "")),
        ("Phase", record.phase),
    ]
    cells = "".join(f'<div><dt>{_e(k)}</dt><dd data-field="{_e(k.lower().replace(" ", "-"))}">{_e(v)}</dd></div>'
                    for k, v in rows)
    return f'<section id="provenance"><h2>Provenance</h2><dl class="grid">{cells}</dl></section>'


def _journal(record: ReleaseRecord, samples: Sequence[Sample]) -> str:
    failure = _failure_entry(record)
    rows = []
    for n, entry in enumerate(record.journal):
        attrs = ' class="failure" id="failure-entry"' if n == failure else ""
        rows.append(f"<tr{attrs}><td>{_e(_when(entry.at))}</td><td>{_e(entry.phase)}</td>"
                    f"<td>{_e(entry.message)}</td></tr>")
    body = "".join(rows) or '<tr><td colspan="3">The journal is empty.</td></tr>'
    return ('<section id="journal"><h2>Journal</h2><table><caption>Every step the release wrote down, in order'
            '</caption><thead><tr><th scope="col">When (UTC)</th><th scope="col">Phase</th>'
            f'<th scope="col">What happened</th></tr></thead><tbody>{body}</tbody></table></section>')


def _failure_entry(record: ReleaseRecord) -> int | None:
    """The journal line where the release turned back (its gate failed), if it did."""
    if record.outcome not in (Outcome.ROLLED_BACK, Outcome.ROLLBACK_FAILED, Outcome.FAILED):
        return None
    for n, entry in enumerate(record.journal):
        if entry.phase in ("rolling_back", "failed"):
            return n
    return None


@dataclass(frozen=True)
class _Segment:
    start: datetime
    end: datetime
    state: InstanceSample


def _lifecycle(state: str) -> str:
    if state.startswith("Pending"):
        return "pending"
    if state == "InService":
        return "inservice"
    if state.startswith("Terminat"):
        return "terminating"
    return "other"


LIFECYCLE_WORDS = {"pending": "pending", "inservice": "in service", "terminating": "terminating",
                   "other": "standby/other"}


class _Timeline:
    """The SVG picture of the samples, with its legend and a summary in words."""

    def __init__(self, record: ReleaseRecord, samples: Sequence[Sample], omitted: int) -> None:
        self.record = record
        self.samples = list(samples)
        self.omitted = omitted
        gaps = sorted((b.at - a.at).total_seconds() for a, b in zip(self.samples, self.samples[1:], strict=False))
        self.poll = timedelta(seconds=gaps[len(gaps) // 2] if gaps else 2.0)
        first, last = self.samples[0].at, self.samples[-1].at + self.poll
        # From the release's start (unless it was resumed long after it began) to its end.
        start = record.started_at
        self.t0 = min(start, first) if first - start <= timedelta(minutes=10) else first
        self.t1 = max([last, *(e.at for e in record.journal[-1:]), *([record.ended_at] if record.ended_at else [])])
        if self.t1 <= self.t0:
            self.t1 = self.t0 + timedelta(seconds=1)
        self.failed_at = next((s.at for s in self.samples if s.watch == RELEASE and s.verdict == "fail"), None)
        self.failed_sample = next((s for s in self.samples if s.watch == RELEASE and s.verdict == "fail"), None)
        self.rollback_at = next((s.at for s in self.samples if s.watch == ROLLBACK), None)

    def x(self, at: datetime) -> float:
        span = (self.t1 - self.t0).total_seconds()
        return LEFT + PLOT * min(1.0, max(0.0, (at - self.t0).total_seconds() / span))

    def end_of(self, k: int) -> datetime:
        return self.samples[k + 1].at if k + 1 < len(self.samples) else self.t1

    def category(self, i: InstanceSample) -> str:
        r = self.record
        if i.image_id == r.image_id or (i.version is not None and i.version == r.version):
            return "new"
        if i.image_id == r.previous_image_id or (i.version is not None and i.version == r.previous_version):
            return "previous"
        return "other"

    # ------------------------------------------------------------------ the section
    def section(self) -> str:
        svg = self.svg()
        return (f'<section id="timeline"><h2>Timeline</h2>{self.summary()}{self.legend()}'
                f'<div class="chart">{svg}</div></section>')

    def summary(self) -> str:
        polls = sum(s.polls for s in self.samples)
        by_watch = {w: sum(s.polls for s in self.samples if s.watch == w) for w in (RELEASE, ROLLBACK)}
        words = [f"{polls} gate polls over {_duration((self.samples[-1].at - self.samples[0].at).total_seconds())}"
                 f" ({by_watch[RELEASE]} of the release's gate"
                 + (f", {by_watch[ROLLBACK]} watching the rollback)" if by_watch[ROLLBACK] else ")") + "."]
        if self.failed_sample is not None:
            failing = [name for name, ok in self.failed_sample.checks.items() if ok is False]
            words.append(f"The gate failed at {_clock(self.failed_sample.at)} UTC"
                         + (f" on {', '.join(failing)}" if failing else "")
                         + (f": {self.failed_sample.reason}" if self.failed_sample.reason else "") + ".")
        if self.rollback_at is not None:
            words.append(f"The rollback was watched from {_clock(self.rollback_at)} UTC.")
        instances = {i.instance_id for s in self.samples for i in s.instances}
        words.append(f"{len(instances)} instances took part.")
        if self.omitted:
            words.append(f"{self.omitted} more are not drawn: the saved timeline left them out to stay small.")
        return f'<p class="summary" id="summary">{_e(" ".join(words))}</p>'

    def legend(self) -> str:
        r = self.record
        items = [
            _swatch(NEW, "new", f"new version {r.version} ({r.image_id})"),
            _swatch(PREVIOUS, "previous",
                    f"previous version {r.previous_version or '?'} ({r.previous_image_id or '?'})"),
            _swatch(OTHER, "other", "another image"),
            _swatch(NEW, "pending", "pending: hatched"),
            _swatch(NEW, "inservice", "in service: solid"),
            _swatch(NEW, "warming", "in service, not yet healthy in its target group: lighter"),
            _swatch(NEW, "terminating", "terminating: cross-hatched, faded"),
            _swatch(FAIL, "unhealthy", "unhealthy (ASG, target group or /health): red underline"),
            _swatch(PASS, "pass", "check passed ✔ (full bar)"),
            _swatch(WAIT, "wait", "check pending (half bar)"),
            _swatch(FAIL, "fail", "check failed ✘ (full bar)"),
            _swatch(FAILURE_MARKER, "failure", "the moment the gate failed (red line)"),
            _swatch(ROLLBACK_MARKER, "rollback", "the rollback starts (dashed line)"),
        ]
        return f'<ul class="legend" aria-label="Legend">{"".join(items)}</ul>'

    # ------------------------------------------------------------------ the picture
    def svg(self) -> str:
        out: list[str] = []
        y = 48.0
        rows: list[str] = []
        rows += self._phases(y)
        y += 26
        rows += self._refresh(y)
        y += 70
        rows += self._polls(y)
        checks = list(dict.fromkeys(name for s in self.samples for name in s.checks))
        y += 20 + 12 * len(checks) + 10
        alarms = sorted({name for s in self.samples for name in s.alarms})
        rows += self._alarms(y, alarms)
        y += 14 * len(alarms) + (12 if alarms else 0)
        lanes = self._lanes()
        lane_h = 14.0 if len(lanes) <= 40 else max(2.0, min(14.0, 720 / max(1, len(lanes))))
        rows += self._lane_rows(y, lanes, lane_h)
        y += lane_h * len(lanes) + 10
        top, bottom = 44.0, y
        height = y + 28
        out.append(f'<svg role="img" aria-labelledby="chart-title chart-desc" width="{WIDTH}" height="{height:.0f}" '
                   f'viewBox="0 0 {WIDTH} {height:.0f}" class="timeline" font-family="system-ui, sans-serif" '
                   'font-size="11">')
        out.append('<title id="chart-title">Timeline of the release</title>')
        out.append(f'<desc id="chart-desc">{_e(self._description(len(lanes)))}</desc>')
        out.append(_PATTERNS)
        out += self._watch_bands(top, bottom)
        out += self._axis(top, bottom)
        out += rows
        out += self._markers(top, bottom)
        out.append("</svg>")
        return "".join(out)

    def _description(self, lanes: int) -> str:
        r = self.record
        text = (f"From {_clock(self.t0)} to {_clock(self.t1)} UTC: the refresh's progress, the gate's checks at "
                f"each poll, the alarms, and {lanes} instance lanes coloured by version ({r.version} new, "
                f"{r.previous_version or 'unknown'} previous).")
        if self.failed_at is not None:
            text += f" The gate failed at {_clock(self.failed_at)}."
        if self.rollback_at is not None:
            text += f" The rollback was watched from {_clock(self.rollback_at)}."
        return text

    def _axis(self, top: float, bottom: float) -> list[str]:
        span = (self.t1 - self.t0).total_seconds()
        step = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
                     if span / s <= 10), 14400)
        out = ['<g class="axis" aria-hidden="true">']
        offset = self.t0.timestamp() % step
        t = self.t0 + timedelta(seconds=step - offset) if offset else self.t0
        while t <= self.t1:
            x = self.x(t)
            out.append(f'<line x1="{x:.1f}" y1="{top - 6:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="#e5e7eb"/>'
                       f'<text x="{x:.1f}" y="{top - 10:.1f}" text-anchor="middle" fill="#374151">{_clock(t)}</text>')
            t += timedelta(seconds=step)
        out.append(f'<text x="8" y="{top - 10:.1f}" fill="#374151">UTC</text></g>')
        return out

    def _label(self, y: float, text: str, *, size: int = 11, weight: str = "normal") -> str:
        return (f'<text x="{LEFT - 8}" y="{y:.1f}" text-anchor="end" dominant-baseline="middle" font-size="{size}" '
                f'font-weight="{weight}" fill="#111827">{_e(text)}</text>')

    def _phases(self, y: float) -> list[str]:
        journal = self.record.journal
        out = ['<g class="phases">', self._label(y + 9, "phase (journal)", weight="bold")]
        colours = {"rolling_back": "#fecaca", "rolled_back": "#fecaca", "rollback_failed": FAIL,
                   "succeeded": "#bbf7d0", "failed": FAIL, "gating": "#dbeafe"}
        for n, entry in enumerate(journal):
            end = journal[n + 1].at if n + 1 < len(journal) else self.t1
            x0, x1 = self.x(entry.at), self.x(max(end, entry.at))
            w = max(1.0, x1 - x0)
            fill = colours.get(entry.phase, "#f3f4f6")
            out.append(f'<g class="phase" data-phase="{_e(entry.phase)}"><title>{_e(_clock(entry.at))} '
                       f'{_e(entry.phase)}: {_e(entry.message)}</title>'
                       f'<rect x="{x0:.1f}" y="{y:.1f}" width="{w:.1f}" height="18" fill="{fill}" stroke="#fff"/>')
            if w > 8 * len(entry.phase):
                out.append(f'<text x="{x0 + 4:.1f}" y="{y + 13:.1f}" fill="#111827">{_e(entry.phase)}</text>')
            out.append("</g>")
        out.append("</g>")
        return out

    def _refresh(self, y: float) -> list[str]:
        h = 56.0
        out = ['<g class="refresh">', self._label(y + 10, "instance refresh", weight="bold"),
               self._label(y + 24, "% complete", size=10),
               f'<rect x="{LEFT}" y="{y:.1f}" width="{PLOT}" height="{h}" fill="#f9fafb" stroke="#e5e7eb"/>',
               f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="9" fill="#6b7280">100%</text>',
               f'<text x="{LEFT - 8}" y="{y + h:.1f}" text-anchor="end" font-size="9" fill="#6b7280">0%</text>']
        for watch, colour, name in ((RELEASE, NEW, "the release's refresh"), (ROLLBACK, PREVIOUS, "the refresh back")):
            points: list[tuple[float, float]] = []
            for k, s in enumerate(self.samples):
                if s.watch != watch or not s.observed or s.refresh_percentage is None:
                    continue
                py = y + h - h * max(0, min(100, s.refresh_percentage)) / 100
                points += [(self.x(s.at), py), (self.x(self.end_of(k)), py)]
            if not points:
                continue
            base = y + h
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            last = next(s for s in reversed(self.samples) if s.watch == watch and s.refresh_percentage is not None)
            out.append(f'<g class="refresh-line" data-watch="{watch}"><title>{_e(name)}: {last.refresh_percentage}% '
                       f'({_e(last.refresh_status or "none")}) at {_clock(last.at)}</title>'
                       f'<polygon points="{points[0][0]:.1f},{base:.1f} {path} {points[-1][0]:.1f},{base:.1f}" '
                       f'fill="{colour}" fill-opacity="0.25"/>'
                       f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
                       f'<text x="{points[-1][0] - 4:.1f}" y="{max(y + 10, points[-1][1] - 4):.1f}" text-anchor="end" '
                       f'fill="#111827">{last.refresh_percentage}% {_e(last.refresh_status or "")}</text></g>')
        out.append("</g>")
        return out

    def _polls(self, y: float) -> list[str]:
        checks = list(dict.fromkeys(name for s in self.samples for name in s.checks))
        out = ['<g class="polls">', self._label(y + 7, "gate verdict", weight="bold")]
        for c, name in enumerate(checks):
            out.append(self._label(y + 20 + 12 * c + 5, name, size=10))
        for k, s in enumerate(self.samples):
            x0, x1 = self.x(s.at), self.x(self.end_of(k))
            w = max(1.0, x1 - x0 - (1 if x1 - x0 > 3 else 0))
            kind = s.verdict if s.verdict in ("pass", "wait", "fail") else "wait"
            words = [f"poll at {_clock(s.at)}" + (f" (and {s.polls - 1} like it)" if s.polls > 1 else ""),
                     f"{s.watch} watch", f"verdict {s.verdict}" + (f": {s.reason}" if s.reason else "")]
            if not s.observed:
                words.append("AWS or a probe did not answer this poll")
            words += [f"{name}: {_ok_word(ok)}" for name, ok in s.checks.items()]
            cls = f"poll {kind}" + ("" if s.observed else " unobserved")
            out.append(f'<g class="{cls}" data-poll="{k}" data-at="{_e(s.at.isoformat())}" data-watch="{_e(s.watch)}" '
                       f'data-verdict="{_e(s.verdict)}"><title>{_e("; ".join(words))}</title>')
            out.append(_bar(x0, y, w, 14, kind, {"pass": PASS, "wait": WAIT, "fail": FAIL}[kind]))
            for c, name in enumerate(checks):
                if name not in s.checks:
                    continue
                ok = s.checks[name]
                state = {True: "pass", None: "wait", False: "fail"}[ok]
                colour = {True: PASS, None: WAIT, False: FAIL}[ok]
                out.append(_bar(x0, y + 20 + 12 * c, w, 10, state, colour, name))
            out.append("</g>")
        out.append("</g>")
        return out

    def _alarms(self, y: float, names: list[str]) -> list[str]:
        if not names:
            return []
        out = ['<g class="alarms">']
        for a, name in enumerate(names):
            row = y + 14 * a
            out.append(f'<g class="alarm" data-alarm="{_e(name)}">' + self._label(row + 5, f"alarm {name}", size=10))
            runs: list[tuple[int, int, str]] = []
            for k, s in enumerate(self.samples):
                if not s.observed:
                    continue
                state = s.alarms.get(name, "absent")
                if runs and runs[-1][2] == state:
                    runs[-1] = (runs[-1][0], k, state)
                else:
                    runs.append((k, k, state))
            for first, last, state in runs:
                x0, x1 = self.x(self.samples[first].at), self.x(self.end_of(last))
                fill = ALARM_COLOURS.get(state, "#fde68a")
                out.append(f'<rect class="alarm-state" data-state="{_e(state)}" x="{x0:.1f}" y="{row:.1f}" '
                           f'width="{max(1.0, x1 - x0):.1f}" height="10" fill="{fill}"><title>{_e(name)} {_e(state)} '
                           f'from {_clock(self.samples[first].at)} to {_clock(self.end_of(last))}</title></rect>')
                if state != "OK" and x1 - x0 > 7 * len(state):
                    out.append(f'<text x="{x0 + 3:.1f}" y="{row + 8.5:.1f}" font-size="9" fill="#fff" '
                               f'aria-hidden="true">{_e(state)}</text>')
            out.append("</g>")
        out.append("</g>")
        return out

    def _lanes(self) -> list[tuple[str, list[_Segment]]]:
        """Each instance's runs of one state, in the order the instances first appear."""
        lanes: dict[str, list[_Segment]] = {}
        open_: dict[str, tuple[int, InstanceSample]] = {}
        for k, s in enumerate(self.samples):
            if not s.observed:
                continue
            present = {}
            for i in s.instances:
                present[i.instance_id] = i
                current = open_.get(i.instance_id)
                if current is None or current[1] != i:
                    if current is not None:
                        lanes[i.instance_id].append(_Segment(self.samples[current[0]].at, s.at, current[1]))
                    lanes.setdefault(i.instance_id, [])
                    open_[i.instance_id] = (k, i)
            for gone in [iid for iid in open_ if iid not in present]:
                start, state = open_.pop(gone)
                lanes[gone].append(_Segment(self.samples[start].at, s.at, state))
        for iid, (start, state) in open_.items():
            lanes[iid].append(_Segment(self.samples[start].at, self.t1, state))
        # Old instances first, the first replaced on top; then the new ones as they arrived.
        order = sorted(lanes, key=lambda iid: (lanes[iid][0].start, lanes[iid][-1].end, iid))
        return [(iid, lanes[iid]) for iid in order]

    def _lane_rows(self, y: float, lanes: list[tuple[str, list[_Segment]]], h: float) -> list[str]:
        out = ['<g class="lanes">', self._label(y - 4, f"instances ({len(lanes)})", weight="bold")]
        gap = 2.0 if h >= 8 else 0.0
        for n, (iid, segments) in enumerate(lanes):
            row = y + 4 + n * h
            version = next((s.state.version for s in segments if s.state.version), None) or segments[0].state.image_id
            category = self.category(segments[0].state)
            words = [f"{iid}: {version} ({segments[0].state.image_id})"] + [
                f"{_clock(s.start)}–{_clock(s.end)} {_state_words(s.state)}" for s in segments]
            out.append(f'<g class="lane {category}" data-lane="{_e(iid)}" data-version="{_e(version)}" '
                       f'data-category="{category}"><title>{_e("; ".join(words))}</title>')
            if h >= 10:
                out.append(self._label(row + h / 2 - 1, f"{iid} · {version}", size=10))
            for s in segments:
                x0, x1 = self.x(s.start), self.x(s.end)
                w = max(1.0, x1 - x0)
                life = _lifecycle(s.state.lifecycle)
                colour = CATEGORY_COLOURS[self.category(s.state)]
                cat = self.category(s.state)
                fill = colour if life == "inservice" else f"url(#{life}-{cat})"
                warming = life == "inservice" and s.state.target_health not in (None, "healthy")
                extra = ' fill-opacity="0.55"' if life == "terminating" or warming else ""
                outline = ' stroke="#374151" stroke-dasharray="2,2"' if life == "other" else ""
                cls = f"segment {life} warming" if warming else f"segment {life}"
                out.append(f'<rect class="{cls}" data-lifecycle="{_e(s.state.lifecycle)}" '
                           f'x="{x0:.1f}" y="{row:.1f}" width="{w:.1f}" height="{h - gap:.1f}" fill="{fill}"'
                           f"{extra}{outline}/>")
                if _unhealthy(s.state):
                    out.append(f'<rect class="unhealthy" x="{x0:.1f}" y="{row + max(1.0, h - gap - 3):.1f}" '
                               f'width="{w:.1f}" height="{min(3.0, max(1.0, h - gap)):.1f}" fill="{FAIL}"/>')
            out.append("</g>")
        out.append("</g>")
        return out

    def _watch_bands(self, top: float, bottom: float) -> list[str]:
        if self.rollback_at is None:
            return []
        x0 = self.x(self.rollback_at)
        return [f'<g class="watch-band" data-watch="rollback"><rect x="{x0:.1f}" y="{top:.1f}" '
                f'width="{max(0.0, LEFT + PLOT - x0):.1f}" height="{bottom - top:.1f}" fill="#fef2f2"/>'
                f'<text x="{x0 + 4:.1f}" y="{bottom + 14:.1f}" fill="#7f1d1d">rollback watch →</text></g>']

    def _markers(self, top: float, bottom: float) -> list[str]:
        out = []
        if self.rollback_at is not None:
            x = self.x(self.rollback_at)
            out.append(f'<g id="rollback-marker" class="marker" data-at="{_e(self.rollback_at.isoformat())}">'
                       f"<title>The rollback started: its watch began at {_clock(self.rollback_at)} UTC</title>"
                       f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="{ROLLBACK_MARKER}" '
                       f'stroke-width="2" stroke-dasharray="6,4"/>'
                       f'<text x="{x + 4:.1f}" y="{bottom + 26:.1f}" fill="{ROLLBACK_MARKER}" font-weight="bold">'
                       f"↺ rollback started {_clock(self.rollback_at)}</text></g>")
        if self.failed_at is not None:
            x = self.x(self.failed_at)
            reason = self.failed_sample.reason if self.failed_sample is not None else ""
            out.append(f'<g id="failure-marker" class="marker" data-at="{_e(self.failed_at.isoformat())}">'
                       f"<title>The gate failed at {_clock(self.failed_at)} UTC: {_e(reason)}</title>"
                       f'<line x1="{x:.1f}" y1="{top - 4:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
                       f'stroke="{FAILURE_MARKER}" stroke-width="3"/>'
                       f'<rect x="{x - 70:.1f}" y="2" width="140" height="16" rx="3" fill="{FAILURE_MARKER}"/>'
                       f'<text x="{x:.1f}" y="14" text-anchor="middle" fill="#fff" font-weight="bold">'
                       f"✘ gate failed {_clock(self.failed_at)}</text></g>")
        return out


def _ok_word(ok: bool | None) -> str:
    return {True: "pass", None: "pending", False: "FAIL"}[ok]


def _bar(x: float, y: float, w: float, h: float, state: str, colour: str, check: str | None = None) -> str:
    """A poll's cell: full height when passed or failed, half when pending (shape, not only colour)."""
    top, height = (y + h / 2, h / 2) if state == "wait" else (y, h)
    data = f' data-check="{_e(check)}"' if check is not None else ""
    cls = "check" if check is not None else "verdict"
    return (f'<rect class="{cls} {state}"{data} x="{x:.1f}" y="{top:.1f}" width="{w:.1f}" height="{height:.1f}" '
            f'fill="{colour}"/>')


def _unhealthy(i: InstanceSample) -> bool:
    return i.asg_health == "Unhealthy" or i.target_health == "unhealthy" or i.health_ok is False


def _state_words(i: InstanceSample) -> str:
    health = {True: "ok", False: "failing", None: "not answered"}[i.health_ok]
    return (f"{i.lifecycle}, ASG {i.asg_health}, target {i.target_health or 'none'}, /health {health}, "
            f"serves {i.served_version or '?'}")


def _swatch(colour: str, kind: str, text: str) -> str:
    if kind in ("pending", "terminating"):
        shape = f'<rect width="22" height="12" fill="url(#legend-{kind})"/>'
        defs = (f'<defs><pattern id="legend-{kind}" width="4" height="4" patternUnits="userSpaceOnUse" '
                f'patternTransform="rotate(45)"><rect width="4" height="4" fill="#fff"/>'
                f'<rect width="2" height="4" fill="{colour}"/></pattern></defs>')
        if kind == "terminating":
            shape = f'<rect width="22" height="12" fill="url(#legend-{kind})" fill-opacity="0.55"/>'
        shape = defs + shape
    elif kind == "warming":
        shape = f'<rect width="22" height="12" fill="{colour}" fill-opacity="0.55"/>'
    elif kind == "wait":
        shape = f'<rect y="6" width="22" height="6" fill="{colour}"/>'
    elif kind == "unhealthy":
        shape = f'<rect width="22" height="12" fill="{NEW}"/><rect y="9" width="22" height="3" fill="{colour}"/>'
    elif kind == "failure":
        shape = f'<rect x="9" width="4" height="12" fill="{colour}"/>'
    elif kind == "rollback":
        shape = f'<line x1="11" y1="0" x2="11" y2="12" stroke="{colour}" stroke-width="2" stroke-dasharray="3,2"/>'
    else:
        shape = f'<rect width="22" height="12" fill="{colour}"/>'
    return (f'<li data-legend="{kind}"><svg width="22" height="12" aria-hidden="true">{shape}</svg>'
            f"{_e(text)}</li>")


def _patterns() -> Iterator[str]:
    for cat, colour in CATEGORY_COLOURS.items():
        yield (f'<pattern id="pending-{cat}" width="5" height="5" patternUnits="userSpaceOnUse" '
               f'patternTransform="rotate(45)"><rect width="5" height="5" fill="#fff"/>'
               f'<rect width="2.5" height="5" fill="{colour}"/></pattern>')
        yield (f'<pattern id="terminating-{cat}" width="6" height="6" patternUnits="userSpaceOnUse">'
               f'<rect width="6" height="6" fill="#fff"/><path d="M0,0 L6,6 M6,0 L0,6" stroke="{colour}" '
               f'stroke-width="1.5"/></pattern>')
        yield (f'<pattern id="other-{cat}" width="4" height="4" patternUnits="userSpaceOnUse">'
               f'<rect width="4" height="4" fill="#fff"/><circle cx="2" cy="2" r="1.2" fill="{colour}"/></pattern>')


_PATTERNS = "<defs>" + "".join(_patterns()) + "</defs>"

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #111827; margin: 16px 24px;
       background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; font-weight: 600; }
h2 { font-size: 15px; margin: 14px 0 6px; }
header.outcome { border-left: 6px solid; padding: 4px 0 4px 12px; }
.badge { color: #fff; border-radius: 4px; padding: 1px 8px; font-size: 16px; margin-right: 6px; }
.reason { margin: 0; font-size: 15px; }
dl.grid { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 2px 18px; margin: 0; }
dl.grid div { display: flex; gap: 6px; min-width: 0; }
dt { color: #6b7280; white-space: nowrap; }
dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; overflow-wrap: anywhere; }
ul.legend { list-style: none; padding: 0; margin: 4px 0 6px; display: flex; flex-wrap: wrap; gap: 2px 16px;
            font-size: 12px; }
ul.legend li { display: flex; align-items: center; gap: 5px; }
.summary { margin: 2px 0; }
.note { background: #fffbeb; border: 1px solid #f59e0b; padding: 8px 12px; }
.chart { overflow-x: auto; }
svg.timeline { display: block; max-width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
caption { text-align: left; color: #6b7280; padding-bottom: 4px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e5e7eb; vertical-align: top; }
td:first-child { white-space: nowrap; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
tr.failure td { background: #fef2f2; font-weight: 600; }
tr.failure td:first-child::before { content: "✘ "; color: #dc2626; }
footer { margin-top: 16px; color: #6b7280; font-size: 12px; }
""".strip()
