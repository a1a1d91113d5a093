"""A static file server for the browser tests that logs every request: `STATUS PATH` per line.

    python gallery_server.py PORT FOLDER LOG

Run as a subprocess by tests/test_gallery_browser.py (no tests here)."""

from __future__ import annotations

import functools
import http.server
import sys


def serve(port: int, folder: str, log_path: str) -> None:
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the server's life

    class LoggingHandler(http.server.SimpleHTTPRequestHandler):
        def send_response(self, code, message=None):
            log.write(f"{code} {self.path}\n")
            super().send_response(code, message)

        def log_message(self, format, *args):  # quiet on stderr
            pass

    handler = functools.partial(LoggingHandler, directory=folder)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
