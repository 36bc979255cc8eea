"""Open an HTML file in headless Chromium (Debian's `chromium` package) and look at it as a person would.

- `render_html(path)` -> (dom, png): the DOM after the page loaded (--dump-dom) and a screenshot.
- `layout(path, selectors)` -> where the browser laid each selected element out (CSS pixels, which
  are screenshot pixels at the device scale factor of 1 used here): a copy of the page with a probe
  script appended is dumped; the page itself is never changed.
- `decode_png(png)` -> `Picture`, with pixel helpers (`pixel`, `count`, `box_colours`), standard
  library only (zlib + struct).

Chromium is kept off the network: background services are disabled, every host name resolves to
nothing, and any request that still goes out is sent to a loopback proxy that refuses it and writes
it down (`requests=` collects them, so a test can assert that a page asked for nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WINDOW = (1400, 1000)
INSTALL = ("headless Chromium is needed to check the report as a person sees it: install Debian's package "
           "with `apt-get install -y chromium` (./bootstrap test installs it)")


_FEATURES_OFF = ("Translate", "OptimizationHints", "MediaRouter", "AutofillServerCommunication",
                 "NetworkTimeServiceQuerying", "CertificateTransparencyComponentUpdater",
                 "InterestFeedContentSuggestions")


# What Chromium itself still asks for whatever the flags (a sign-in preconnect): refused by the
# loopback proxy like anything else, but not the page's doing.
CHROMIUM_OWN = frozenset({"CONNECT accounts.google.com:443"})


def page_requests(requests: list[str]) -> list[str]:
    """The requests the refusing proxy saw, minus Chromium's own background ones."""
    return [r for r in requests if r not in CHROMIUM_OWN]


class BrowserMissing(RuntimeError):
    pass


def chromium() -> str:
    """The browser binary itself: Debian's /usr/bin/chromium wrapper adds flags that fetch extension
    updates (--enable-remote-extensions) and API keys from /etc/chromium.d; the binary has neither."""
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrowserMissing(INSTALL)


def render_html(path: Path, *, window: tuple[int, int] = WINDOW, requests: list[str] | None = None,
                timeout: float = 120) -> tuple[str, bytes]:
    """The page's DOM after loading, and a screenshot of its first window (PNG bytes)."""
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="kiln-chromium-") as tmp:
        shot = Path(tmp) / "screenshot.png"
        dom = _run(path, ["--dump-dom"], window, requests, timeout, Path(tmp))
        _run(path, [f"--screenshot={shot}"], window, requests, timeout, Path(tmp))
        if not shot.exists():
            raise AssertionError(f"chromium wrote no screenshot of {path}")
        return dom, shot.read_bytes()


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float

    @property
    def centre(self) -> tuple[int, int]:
        return int(self.x + self.width / 2), int(self.y + self.height / 2)

    def inside(self, window: tuple[int, int] = WINDOW) -> bool:
        return self.x >= 0 and self.y >= 0 and self.x + self.width <= window[0] and self.y + self.height <= window[1]


_PROBE = """<script>(function () {
  var out = {}, selectors = %s;
  selectors.forEach(function (s) {
    out[s] = Array.prototype.map.call(document.querySelectorAll(s), function (e) {
      var r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height];
    });
  });
  var pre = document.createElement("pre"); pre.id = "kiln-layout"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();</script>"""


def layout(path: Path, selectors: Sequence[str], *, window: tuple[int, int] = WINDOW,
           requests: list[str] | None = None, timeout: float = 120) -> dict[str, list[Box]]:
    """Where Chromium lays out each selector's elements in a window of this size."""
    page = Path(path).read_text()
    probe = _PROBE % json.dumps(list(selectors))
    with tempfile.TemporaryDirectory(prefix="kiln-layout-") as tmp:
        copy = Path(tmp) / "probed.html"
        copy.write_text(page.replace("</body>", probe + "</body>", 1))
        dom = _run(copy, ["--dump-dom"], window, requests, timeout, Path(tmp))
    start = dom.index('<pre id="kiln-layout">') + len('<pre id="kiln-layout">')
    raw = json.loads(_unescape(dom[start:dom.index("</pre>", start)]))
    return {s: [Box(*b) for b in boxes] for s, boxes in raw.items()}


def _unescape(text: str) -> str:
    return text.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


class _Refuse(BaseHTTPRequestHandler):
    seen: list[str]

    def _refuse(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_error(403, "the report's browser test allows no network")

    do_GET = do_POST = do_HEAD = do_CONNECT = do_PUT = do_OPTIONS = _refuse

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _refusing_proxy(seen: list[str]) -> Iterator[int]:
    handler = type("Refuse", (_Refuse,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run(path: Path, action: list[str], window: tuple[int, int], requests: list[str] | None, timeout: float,
         tmp: Path) -> str:
    seen: list[str] = []
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    with _refusing_proxy(seen) as port:
        command = [
            chromium(), "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}", "--hide-scrollbars", "--force-device-scale-factor=1",
            "--force-color-profile=srgb", "--font-render-hinting=none",
            # Off the network: no background services, no name resolves, anything left goes to a
            # loopback proxy that refuses it (and tells the test).
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
            "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-breakpad",
            "--metrics-recording-only", "--disable-features=" + ",".join(_FEATURES_OFF),
            "--disable-dev-shm-usage", "--disable-pings", "--media-router=0", "--allow-browser-signin=false",
            "--component-updater=url-source=http://127.0.0.1:9/update",  # discard port: refused at once
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--proxy-server=http://127.0.0.1:{port}", "--proxy-bypass-list=<-loopback>",
            *action, path.as_uri(),
        ]
        env = {**os.environ, "HOME": str(tmp)}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"chromium did not finish within {timeout:.0f} s: {' '.join(command)}") from err
    if requests is not None:
        requests += seen
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


# ---------------------------------------------------------------------- pixels
@dataclass(frozen=True)
class Picture:
    width: int
    height: int
    rgb: bytes  # width * height * 3

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        o = (y * self.width + x) * 3
        return self.rgb[o], self.rgb[o + 1], self.rgb[o + 2]

    def colours(self) -> Counter[tuple[int, int, int]]:
        return Counter(zip(self.rgb[0::3], self.rgb[1::3], self.rgb[2::3], strict=True))

    def count(self, colour: str | tuple[int, int, int], tolerance: int = 0) -> int:
        """How many pixels have this colour (each channel within `tolerance`)."""
        want = rgb(colour) if isinstance(colour, str) else colour
        if tolerance == 0:
            return self.colours()[want]
        return sum(n for c, n in self.colours().items() if all(abs(a - b) <= tolerance for a, b in zip(c, want,
                                                                                                        strict=True)))

    def box_colours(self, box: Box) -> Counter[tuple[int, int, int]]:
        out: Counter[tuple[int, int, int]] = Counter()
        for y in range(max(0, int(box.y)), min(self.height, int(box.y + box.height))):
            for x in range(max(0, int(box.x)), min(self.width, int(box.x + box.width))):
                out[self.pixel(x, y)] += 1
        return out


def rgb(colour: str) -> tuple[int, int, int]:
    """'#2563eb' -> (37, 99, 235)"""
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def decode_png(data: bytes) -> Picture:
    """An 8-bit RGB or RGBA PNG (what Chromium writes) as RGB pixels."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat = 8, bytearray()
    width = height = depth = kind = interlace = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            width, height, depth, kind, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        elif tag == b"IEND":
            break
    if depth != 8 or kind not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {kind}, interlace {interlace}")
    bpp = 3 if kind == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    prev = bytearray(stride)
    out = bytearray()
    for y in range(height):
        start = y * (stride + 1)
        kind_ = raw[start]
        row = bytearray(raw[start + 1:start + 1 + stride])
        if kind_ == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 255
        elif kind_ == 2:
            row = bytearray((a + b) & 255 for a, b in zip(row, prev, strict=True))
        elif kind_ == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + prev[i]) >> 1)) & 255
        elif kind_ == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        elif kind_ != 0:
            raise ValueError(f"unknown PNG filter {kind_} on row {y}")
        out += row if bpp == 3 else bytes(b for i, b in enumerate(row) if i % 4 != 3)
        prev = row
    return Picture(width, height, bytes(out))
