"""An instance metadata service on loopback, for tests of the boot script: the sandbox's own IMDSv2
(release/sandbox/engines/imds.py) behind a small HTTP server, answering for one instance at its root URL
(what AWS_EC2_METADATA_SERVICE_ENDPOINT names)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from release.clock import SystemClock
from release.sandbox.engines.imds import TOKEN_HEADER, TTL_HEADER, InstanceMetadataService


@contextmanager
def metadata_service(document: Mapping[str, Any]) -> Iterator[str]:
    """Serve `document` (instance_id, local_ipv4, region, availability_zone, user_data, ...);
    yields the base URL."""
    service = InstanceMetadataService(SystemClock())
    instance_id = str(document["instance_id"])

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            headers = {TOKEN_HEADER: self.headers.get(TOKEN_HEADER, ""), TTL_HEADER: self.headers.get(TTL_HEADER, "")}
            got = service.handle(self.command, f"{instance_id}{self.path}", headers, document)
            self.send_response(got.status)
            self.send_header("Content-Type", got.content_type)
            self.send_header("Content-Length", str(len(got.body)))
            self.end_headers()
            self.wfile.write(got.body)

        do_GET = do_PUT = answer

        def log_message(self, *args: Any) -> None:
            pass

    with on_loopback(Handler) as url:
        yield url


@contextmanager
def on_loopback(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server for `handler` on 127.0.0.1 (a free port), in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
