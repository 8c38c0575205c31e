"""A client of `snapjournal serve`, standard library only.

Speaks the local API of docs/API.md: one JSON request per line on the
server's unix socket, frames back, the last of which is ``done``.

    from snapjournal_client import Client, SnapjournalError
    c = Client("/var/lib/snapjournal")            # or Client(socket=...)
    c.call({"snapshot": {"create": {"domain": "vm1", "name": "s1"}}})
    c.call({"snapshot": {"list": {"domain": "vm1"}}})   # -> list of dicts
    try:
        c.call({"snapshot": {"delete": {"domain": "vm1", "name": "s1"}}},
               on_progress=lambda p: print(p["current"], "/", p["total"]))
    except SnapjournalError as e:
        if e.kind == "busy":
            print("busy with", e.txn)
"""

import json
import os
import socket

PROTOCOL_VERSION = 1
SOCKET_NAME = "snapjournal.sock"


class SnapjournalError(Exception):
    """A request that failed: ``kind`` (``invalid``, ``busy``,
    ``rolled-back``, ``incomplete``, ``xml``, ``image``, ``live``,
    ``journal``, ``forbidden``, ``bad-request``, ``stopping``, ``other``),
    the message, the domain and transaction concerned, and whether anything
    changed (False: nothing; True: recovery finishes it; None: unknown)."""

    def __init__(self, kind, message, domain=None, txn=None, changed=None, code=1):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.domain = domain
        self.txn = txn
        self.changed = changed
        self.code = code


class ServerGone(Exception):
    """The connection ended before the reply; ``txn`` is the transaction
    the server had begun (recovery finishes it), or None."""

    def __init__(self, txn=None, what=None):
        super().__init__(
            "the server stopped before it replied"
            + (f" (it had begun transaction {txn}: {what})" if txn else "")
        )
        self.txn = txn
        self.what = what


class Client:
    """One connection to a server; requests run one after another on it
    (open several clients to run requests at once)."""

    def __init__(self, state_dir=None, socket_path=None, timeout=None):
        if socket_path is None:
            if state_dir is None:
                state_dir = os.environ.get("SNAPJOURNAL_DIR", "/var/lib/snapjournal")
            socket_path = os.path.join(state_dir, SOCKET_NAME)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(socket_path)
        self._file = self._sock.makefile("rb")

    def close(self):
        self._file.close()
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, cmd, inputs=None, on_progress=None, on_frame=None):
        """Runs ``cmd`` (a command as the CLI names it, e.g.
        ``{"snapshot": {"create": {"domain": "a", "name": "s1"}}}``) and
        returns its result (what the CLI prints with ``--json``). ``inputs``
        maps the paths a command names (``--xml``, redefine files) to the
        documents' text. Raises SnapjournalError on failure."""
        request = {"v": PROTOCOL_VERSION, "cmd": cmd, "json": True, "inputs": inputs or {}}
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        began = (None, None)
        while True:
            line = self._file.readline()
            if not line:
                raise ServerGone(*began)
            frame = json.loads(line)
            event = frame.get("event")
            if on_frame is not None:
                on_frame(frame)
            if event == "began":
                began = (frame["txn"], frame["what"])
            elif event == "progress" and on_progress is not None:
                on_progress(frame["progress"])
            elif event == "done":
                err = frame.get("error")
                if err is not None:
                    raise SnapjournalError(
                        err["kind"], err["message"], err.get("domain"), err.get("txn"),
                        err.get("changed"), frame.get("code", 1))
                return frame.get("result")
