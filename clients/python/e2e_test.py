"""End-to-end check of the Python client against a running server, the way
a Python agent would drive it: create, list, delete with progress, a busy
refusal. Run by tests/tests/server.rs with the state directory as argument
(a running domain `vm`, the server holding each transaction briefly before
its commit point)."""

import sys
import threading

from snapjournal_client import Client, SnapjournalError

state_dir = sys.argv[1]
c = Client(state_dir)

for name in ("s1", "s2"):
    r = c.call({"snapshot": {"create": {"domain": "vm", "name": name}}})
    assert r["snapshot"] == name and r["txn"].startswith("txn-"), r

names = [s["name"] for s in c.call({"snapshot": {"list": {"domain": "vm"}}})]
assert sorted(names) == ["s1", "s2"], names

progress = []
r = c.call({"snapshot": {"delete": {"domain": "vm", "name": "s2"}}}, on_progress=progress.append)
assert r["deleted"] == ["s2"], r
assert progress and progress[-1]["disk"] == "vda", progress

# A request held before its commit point, and a second one on the same
# domain meanwhile: refused as busy, naming the first one's transaction.
began = threading.Event()
holder = {}


def first():
    with Client(state_dir) as c2:
        holder["result"] = c2.call(
            {"snapshot": {"create": {"domain": "vm", "name": "s3"}}},
            on_frame=lambda f: (holder.__setitem__("txn", f["txn"]), began.set()) if f.get("event") == "began" else None,
        )


t = threading.Thread(target=first)
t.start()
assert began.wait(30), "the first create never began"
try:
    c.call({"snapshot": {"create": {"domain": "vm", "name": "s4"}}})
    raise AssertionError("the second create was not refused")
except SnapjournalError as e:
    assert e.kind == "busy", (e.kind, e.message)
    assert e.txn == holder["txn"], (e.txn, holder)
    assert e.changed is False and e.domain == "vm"
t.join()
assert holder["result"]["snapshot"] == "s3"

# A typed refusal.
try:
    c.call({"snapshot": {"revert": {"domain": "vm", "name": "nope"}}})
    raise AssertionError("revert to a missing snapshot succeeded")
except SnapjournalError as e:
    assert e.kind == "invalid" and e.changed is False, (e.kind, e.message)

names = sorted(s["name"] for s in c.call({"snapshot": {"list": {"domain": "vm"}}}))
assert names == ["s1", "s3"], names
c.close()
print("python client: ok")
