"""A real S3-compatible server on 127.0.0.1 (moto's, in a thread) for the tests and bench/object_store.py.

`S3Server` serves moto's S3 over HTTP on a free port, counts the requests it answers, and can hold
each one for an artificial latency (a real store answers in tens of milliseconds, moto in one).
`s3_environment` points the standard AWS configuration (what mixtera and boto3 read) at it, with
test credentials and no profile files of the machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ACCESS_KEY = "MIXTERATESTACCESSKEY"
SECRET_KEY = "mixtera-test-secret-4f9c2a77d1e04b5d"  # tests grep every artefact for it


class _Counting:
    """WSGI middleware: counts requests (ranged GETs apart) and sleeps ``latency_s`` before each."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.latency_s = 0.0
        self.requests = 0
        self.ranged_gets = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self._lock:
            self.requests += 1
            self.ranged_gets += environ.get("REQUEST_METHOD") == "GET" and "HTTP_RANGE" in environ
        if self.latency_s:
            time.sleep(self.latency_s)
        return self.app(environ, start_response)


class S3Server:
    """moto's S3 on 127.0.0.1:<free port>, threaded (concurrent requests are served concurrently)."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.app = _Counting(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True,
                                   request_handler=MotoRequestHandler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        """Stop serving and close the port: later connections are refused."""
        if self.running:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self.running = False

    def client(self) -> Any:
        return client(self.endpoint)

    def upload(self, folder: Path, bucket: str, prefix: str) -> str:
        return upload(self.endpoint, folder, bucket, prefix)

    def require_auth(self, on: bool) -> None:
        """Make moto check credentials (only keys made through its IAM are valid) or accept any.
        The server runs in this process, so this is moto's own switch (what /moto-api/reset-auth sets)."""
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin

        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if on else float("inf")
        ActionAuthenticatorMixin.request_count = 0


def client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


def upload(endpoint: str, folder: Path, bucket: str, prefix: str) -> str:
    """Create ``bucket`` (if new) and put every file under ``folder`` at ``prefix/<relative path>``;
    returns the URL ``s3://bucket/prefix/``."""
    s3 = client(endpoint)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}/"


@contextlib.contextmanager
def server_process(latency_ms: float) -> Iterator[str]:
    """An `S3Server` in a child process (its request handling then does not share this process's
    GIL, as a real store does not), each request held ``latency_ms``; yields its endpoint."""
    import subprocess
    import sys

    code = ("import sys; from tests.helpers.s3_server import S3Server; s = S3Server(); "
            f"s.app.latency_s = {latency_ms / 1000!r}; print(s.endpoint, flush=True); sys.stdin.read()")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()  # type: ignore[union-attr]
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def s3_environment(endpoint: str, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                   tmp: Path | None = None) -> Iterator[None]:
    """The standard AWS configuration pointed at ``endpoint`` for the block (then restored)."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE", "AWS_SESSION_TOKEN",
             "AWS_EC2_METADATA_DISABLED")
    saved = {n: os.environ.get(n) for n in names}
    nowhere = str((tmp or Path("/nonexistent")) / "no-aws-config")
    values = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
              "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": nowhere,
              "AWS_SHARED_CREDENTIALS_FILE": nowhere, "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        for n in names:
            os.environ.pop(n, None)
        os.environ.update({k: v for k, v in values.items() if v})
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
