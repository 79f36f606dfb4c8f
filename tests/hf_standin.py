"""A local stand-in for huggingface.co's file endpoint, enough for `huggingface_hub.hf_hub_download`."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStandIn:
    """Serves {repo_id: {filename: bytes}} at /{repo_id}/resolve/{revision}/{filename}."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[str] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _lookup(self):
                standin.requests.append(f"{self.command} {self.path}")
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return 404, "RepoNotFound", None
                repo = "/".join(parts[:2])
                filename = "/".join(parts[4:])
                if repo not in standin.repos:
                    return 404, "RepoNotFound", None
                if filename not in standin.repos[repo]:
                    return 404, "EntryNotFound", None
                return 200, None, standin.repos[repo][filename]

            def _headers(self, status, error, data):
                self.send_response(status)
                if error:
                    self.send_header("X-Error-Code", error)
                    self.send_header("X-Error-Message", error)
                    self.send_header("Content-Length", "0")
                else:
                    digest = hashlib.sha256(data).hexdigest()
                    self.send_header("X-Repo-Commit", "a" * 40)
                    self.send_header("ETag", f'"{digest}"')
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()

            def do_HEAD(self):
                self._headers(*self._lookup())

            def do_GET(self):
                status, error, data = self._lookup()
                self._headers(status, error, data)
                if data is not None:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
