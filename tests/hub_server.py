"""A loopback stand-in for the Hugging Face Hub's HTTP API, for testing `fmkit.hub.push_to_hub`.

This mocks an external service, which is acceptable here only because the real Hub is unreachable from the test
machines. It implements just the endpoints that `HfApi.create_repo` and `HfApi.upload_folder` call, answers
"regular" upload mode for every file (a real mode the Hub also uses for small files, so no Xet or LFS storage is
needed), and writes committed files to disk, one folder per repo id, where tests can read them back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

from typing_extensions import Self

_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
# (method, path, handler): what the client sends, and which HfApi call sends it.
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "_create_repo"),  # create_repo
    ("POST", re.compile(r"/api/validate-yaml"), "_validate_yaml"),  # upload_folder, when README.md is uploaded
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/[^/]+"), "_preupload"),  # upload_folder: upload modes
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/[^/]+"), "_commit"),  # upload_folder: the commit itself
]


class LoopbackHub:
    """The fake Hub on 127.0.0.1 with an ephemeral port; use as a context manager.

    Every request's Authorization header is appended to `auth_headers`; requests bearing `Bearer {reject_token}`
    get 401, as the real Hub answers an invalid token (this also answers the repo-info GET that `create_repo`
    sends after a 401, to check whether the repo exists anyway). The server stops itself after `timeout_s` in
    case a test never leaves the `with` block.
    """

    def __init__(self, root: str | Path, *, reject_token: str = "hf_bad", timeout_s: float = 120.0) -> None:
        self.root = Path(root)
        self.reject_token = reject_token
        self.auth_headers: list[str | None] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)
        self._timer = threading.Timer(timeout_s, self.stop)
        self._timer.daemon = True
        self._stopped = False

    def __enter__(self) -> Self:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self.lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def repo_dir(self, repo_id: str) -> Path:
        """Where the committed files of `repo_id` live, laid out as in the repo."""
        return self.root / repo_id

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Committed files of `repo_id`, keyed by their path in the repo."""
        folder = self.repo_dir(repo_id)
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _handler_for(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        body = b""

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def log_message(self, format: str, *args: object) -> None:
            """Silent: the default writes every request line to stderr, which tests capture."""

        def _dispatch(self, method: str) -> None:
            authorization = self.headers.get("Authorization")
            with hub.lock:
                hub.auth_headers.append(authorization)
            self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if authorization == f"Bearer {hub.reject_token}":
                return self._reply(401, {"error": "Invalid credentials in Authorization header"})
            path = self.path.split("?", 1)[0]
            for route_method, pattern, name in _ROUTES:
                match = pattern.fullmatch(path)
                if route_method == method and match:
                    return getattr(self, name)(**match.groupdict())
            self._reply(404, {"error": f"no route for {method} {path}"})

        def _reply(self, status: int, payload: dict[str, object]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _create_repo(self) -> None:
            request = json.loads(self.body)
            repo_id = f"{request['organization']}/{request['name']}"
            url = f"{hub.url}/{repo_id}"
            try:
                hub.repo_dir(repo_id).mkdir(parents=True)
            except FileExistsError:
                return self._reply(409, {"error": "You already created this model repo", "url": url})
            self._reply(200, {"url": url, "name": repo_id})

        def _validate_yaml(self) -> None:
            self._reply(200, {"errors": [], "warnings": []})

        def _preupload(self, repo: str) -> None:
            if not hub.repo_dir(repo).is_dir():
                return self._reply(404, {"error": "Repository not found"})
            files = json.loads(self.body)["files"]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            self._reply(200, {"files": answer})

        def _commit(self, repo: str) -> None:
            folder = hub.repo_dir(repo)
            if not folder.is_dir():
                return self._reply(404, {"error": "Repository not found"})
            _header, *operations = [json.loads(line) for line in self.body.splitlines() if line.strip()]
            files: dict[PurePosixPath, bytes] = {}
            for op in operations:
                path = PurePosixPath(op["value"]["path"])
                if op["key"] != "file" or path.is_absolute() or ".." in path.parts:
                    return self._reply(400, {"error": f"unsupported operation {op['key']} on {path}"})
                files[path] = base64.b64decode(op["value"]["content"])
            for path, content in files.items():
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                (folder / path).write_bytes(content)
            oid = hashlib.sha1(self.body).hexdigest()
            self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid})

    return Handler
