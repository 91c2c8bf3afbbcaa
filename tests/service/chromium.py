"""Drive Debian's headless Chromium over the DevTools protocol on a pipe.

``--dump-dom`` and ``--screenshot`` wait for the network to go idle, which a live page's
event stream never does; ``--remote-debugging-pipe`` lets a test look at the page while the
stream is open, with no client library: the browser reads NUL-terminated JSON commands on
fd 3 and writes responses and events on fd 4.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]


def _above_nine(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD, 10)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page.

    Args:
        binary: the chromium executable.
        profile: an empty directory for ``--user-data-dir``.
        size: the page's viewport in CSS pixels (screenshots have this size).
        timeout_s: the longest any single command may take.
    """

    def __init__(
        self, binary: str, profile: Path, size: tuple[int, int], timeout_s: float = 60.0
    ) -> None:
        self.timeout_s = timeout_s
        commands_r, self._commands = os.pipe()
        self._responses, responses_w = os.pipe()
        # bash moves the child's pipe ends to the fds the protocol expects (3 and 4); doing it
        # in preexec_fn is unsafe in a process with threads. Both are first moved above 9 so
        # that neither redirection overwrites the other.
        child = [_above_nine(commands_r), _above_nine(responses_w)]
        script = f'exec "$0" "$@" 3<&{child[0]} 4>&{child[1]}'
        self.process = subprocess.Popen(
            ["bash", "-c", script, binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=child,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # chromium complains about the missing D-Bus; noise
        )
        for fd in (commands_r, responses_w, *child):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]
        width, height = size
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A command to the page."""
        return self._call(method, params, self._session)

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def add_init_script(self, source: str) -> None:
        """Run ``source`` in every page this browser loads from now on, before its scripts."""
        self.call("Page.enable")  # without it, the script is accepted and never runs
        self.call("Page.addScriptToEvaluateOnNewDocument", {"source": source})

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float) -> Any:
        """Poll ``expression`` until it is truthy; return its value. Exceptions count as
        falsy (e.g. before the page has a body)."""
        deadline = time.monotonic() + timeout_s
        last_error: RuntimeError | None = None
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError as err:
                value, last_error = None, err
            else:
                last_error = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} stayed falsy for {timeout_s} s ({last_error})")
            time.sleep(0.2)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self._call("Browser.close")
        except (OSError, TimeoutError, RuntimeError):
            pass
        finally:
            try:
                self.process.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            os.close(self._commands)
            os.close(self._responses)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------- protocol
    def _call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:  # skip events and other sessions' traffic until our answer arrives
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._responses], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._responses, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited (status {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)
