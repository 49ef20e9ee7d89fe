"""Crash-point enumeration for the index folder's write path, in the manner of ALICE / CrashMonkey / SQLite's I/O-error tests.

Used by tests/test_serve_crash_points.py; prints the counts when run as a script:

    PYTHONPATH=. python tests/crash_points.py

`run_workload` drives the write path (open with recovery of a torn tail, add, replace, delete, a
two-pin write, manual compaction with a write landing while its snapshot is written, automatic
compaction, close, `pinclip index add`) on a copy of a
template folder while `FaultInjector` counts every write, fsync, rename and truncate on files under
that folder. With `at=k` the k-th of them fails, once:
  - "crash":  the process dies there (a write first lands half its bytes, a torn record); every file
              descriptor the write path opened is closed, as the kernel would, and the run stops;
  - "enospc": a write lands half its bytes and returns short, and the next write to that file fails
              with ENOSPC (so two steps may fail); an fsync, rename or truncate fails with ENOSPC;
  - "eio":    the call fails with EIO, nothing written.
After either error the disk is fine again and the workload goes on with its next step.
`check_recovery` then reopens the folder and requires every acknowledged write, nothing
half-applied (a two-pin write is all there or all gone), no unacknowledged state other than the
one write that failed, a folder holding only what its manifest names, and a write that succeeds.
Automatic compaction runs inline (the same code as its background thread) so runs are deterministic.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from serve_fakes import FakeEmbedder, codes_for

from pinclip.serve.faiss_backend import FaissBackend
from pinclip.serve.index import IndexConfig, PinIndex, load_embeddings
from pinclip.serve.index_cli import titles_of

FAKE = FakeEmbedder()
MODES = ("crash", "enospc", "eio")
COUNTED = ("write", "fsync", "replace", "rename", "ftruncate")
COMPACT_BYTES = 600  # small enough that the workload's writes trigger automatic compaction


class Crash(BaseException):
    """The process dies here (not an Exception: nothing in the write path may catch it)."""



@dataclass
class FaultInjector:
    """Wraps os.open/write/fsync/replace/rename/ftruncate; counts and fails calls on files under `root`."""

    root: Path
    at: int | None = None  # the 1-based call that fails
    mode: str = "crash"
    calls: list[str] = field(default_factory=list)  # "write log-000001.wal", in order
    fds: dict[int, str] = field(default_factory=dict)  # open fds under root -> path
    enospc_fd: int | None = None  # the next write to this fd fails with ENOSPC

    def _ours(self, path: Any) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(str(self.root))

    def _hit(self, what: str) -> bool:
        self.calls.append(what)
        return len(self.calls) == self.at

    def _fail(self, what: str) -> None:
        if self.mode == "crash":
            raise Crash(what)
        code = errno.ENOSPC if self.mode == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code))

    def patched(self, real: dict[str, Callable]) -> dict[str, Callable]:
        def open_(path, flags, mode=0o777, *, dir_fd=None):
            fd = real["open"](path, flags, mode, dir_fd=dir_fd)
            if self._ours(path):
                self.fds[fd] = os.fspath(path)
            return fd

        def close(fd):
            self.fds.pop(fd, None)
            return real["close"](fd)

        def write(fd, data):
            if fd not in self.fds:
                return real["write"](fd, data)
            if self.enospc_fd == fd:
                self.enospc_fd = None
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if self._hit(f"write {Path(self.fds[fd]).name}"):
                if self.mode == "eio":
                    self._fail("write")
                half = real["write"](fd, bytes(data)[: len(data) // 2])
                if self.mode == "crash":
                    raise Crash("write")
                self.enospc_fd = fd
                return half
            return real["write"](fd, data)

        def on_fd(name):
            def call(fd, *args):
                if fd in self.fds and self._hit(f"{name} {Path(self.fds[fd]).name}"):
                    self._fail(name)
                return real[name](fd, *args)
            return call

        def on_path(name):
            def call(src, dst, *args, **kwargs):
                if self._ours(dst) and self._hit(f"{name} {Path(dst).name}"):
                    self._fail(name)
                return real[name](src, dst, *args, **kwargs)
            return call

        return {"open": open_, "close": close, "write": write, "fsync": on_fd("fsync"),
                "ftruncate": on_fd("ftruncate"), "replace": on_path("replace"), "rename": on_path("rename")}

    def die(self) -> None:
        """What the kernel does at a kill -9: close the dead process's files (and so free its flock)."""
        for fd in list(self.fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


@contextmanager
def injected(injector: FaultInjector):
    names = ("open", "close", "write", "fsync", "ftruncate", "replace", "rename")
    real = {name: getattr(os, name) for name in names}
    for name, fn in injector.patched(real).items():
        setattr(os, name, fn)
    try:
        yield injector
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)


@dataclass
class Ledger:
    """Per pin: the state of its last acknowledged write and the states a failed write may have left."""

    acked: dict[str, str | None] = field(default_factory=dict)  # pin -> title (None: absent)
    maybe: dict[str, set[str | None]] = field(default_factory=dict)
    groups: list[tuple[list[str], list[str | None]]] = field(default_factory=list)  # failed multi-pin writes
    codes: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (pin, title) -> (D,) int8
    failed_steps: list[str] = field(default_factory=list)
    acknowledged: int = 0

    def ack(self, pins: list[str], titles: list[str | None]) -> None:
        for pin, title in zip(pins, titles):
            self.acked[pin] = title
            self.maybe.pop(pin, None)
        self.acknowledged += 1

    def fail(self, step: str, pins: list[str], titles: list[str | None]) -> None:
        self.failed_steps.append(step)
        for pin, title in zip(pins, titles):
            self.maybe.setdefault(pin, set()).add(title)
        if len(pins) > 1:
            self.groups.append((pins, titles))


def make_template(root: Path) -> Path:
    """An index folder of 12 seed pins whose log ends in a torn record (so opening it cuts a tail)."""
    folder = root / "template"
    titles = [f"seed {i}" for i in range(12)]
    FaissBackend.create(folder, PinIndex.build(codes_for(titles), [f"s{i}" for i in range(12)], FAKE.quant,
                                               FAKE.version, config=IndexConfig(kind="flat")),
                        {f"s{i}": {"title": t, "image": None} for i, t in enumerate(titles)})
    store = FaissBackend.open(folder)
    log_path = store.log.path
    store.close()
    with open(log_path, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"op\": \"put\"")  # a record cut short by a crash
    return folder


def seed_ledger(embeddings: Path) -> Ledger:
    ledger = Ledger()
    for i in range(12):
        ledger.acked[f"s{i}"] = f"seed {i}"
        ledger.codes[(f"s{i}", f"seed {i}")] = codes_for([f"seed {i}"])[0]
    emb, titles = load_embeddings(embeddings, "pin"), titles_of(str(embeddings))
    for pin, row in zip(emb.pin_ids, emb.codes):
        ledger.codes[(pin, titles[pin])] = row
    return ledger


def _put(pins: list[str], titles: list[str], image: bytes | None = None) -> Callable[[Any], Any]:
    return lambda s: s.put(pins, codes_for(titles), [{"title": t, "image": image} for t in titles], FAKE.version)


def compact_with_a_write_meanwhile(ledger: Ledger) -> Callable[[Any], Any]:
    """Manual compaction during which another write (pin m1) lands, between the rotation and the new
    snapshot: it goes to the new log and is replayed onto the new snapshot in memory."""
    import pinclip.serve.faiss_backend as backend

    def action(store: FaissBackend) -> Any:
        real = backend.write_snapshot

        def snapshot_after_a_write(*args: Any) -> Any:
            try:
                _put(["m1"], ["mango one"])(store)
            except OSError:
                ledger.fail("m1 during compaction", ["m1"], ["mango one"])
            except Crash:
                ledger.fail("m1 during compaction", ["m1"], ["mango one"])
                raise
            else:
                ledger.ack(["m1"], ["mango one"])
            return real(*args)

        backend.write_snapshot = snapshot_after_a_write
        try:
            return store.compact()
        finally:
            backend.write_snapshot = real
    return action


def _steps(ledger: Ledger) -> list[tuple[str, list[str], list[str | None], Callable[[Any], Any]]]:
    """(name, pins, titles, action on the open store) in order; no pins: not a pin write."""
    steps = [("add a1", ["a1"], ["apple one"], _put(["a1"], ["apple one"])),
             ("add g1 g2", ["g1", "g2"], ["grape one", "grape two"], _put(["g1", "g2"], ["grape one", "grape two"])),
             ("replace a1", ["a1"], ["avocado one"], _put(["a1"], ["avocado one"])),
             ("delete s3", ["s3"], [None], lambda s: s.delete(["s3"])),
             ("add a2 with image", ["a2"], ["apricot two"], _put(["a2"], ["apricot two"], b"\x89PNG fake" * 20)),
             ("compact, m1 written meanwhile", [], [], compact_with_a_write_meanwhile(ledger))]
    for i in range(3, 9):  # past COMPACT_BYTES: automatic compaction
        steps.append((f"add a{i}", [f"a{i}"], [f"almond {i}"], _put([f"a{i}"], [f"almond {i}"])))
    steps.append(("delete a2", ["a2"], [None], lambda s: s.delete(["a2"])))
    return steps


def run_workload(folder: Path, embeddings: Path, ledger: Ledger, injector: FaultInjector) -> bool:
    """The write path under `injector`; False when the injected crash ended it."""
    from pinclip.cli import main

    steps = _steps(ledger)
    for step in steps:
        ledger.codes.update({(p, t): codes_for([t])[0] for p, t in zip(step[1], step[2]) if t})
    ledger.codes[("m1", "mango one")] = codes_for(["mango one"])[0]
    store = None
    try:
        with injected(injector):
            for _ in range(2):  # an open that fails on an injected error is retried
                try:
                    store = FaissBackend.open(folder, compact_bytes=COMPACT_BYTES)
                    break
                except OSError:
                    ledger.failed_steps.append("open")
            store.compact_in_background = store._compact_quietly  # inline: deterministic
            for name, pins, titles, action in steps:
                try:
                    action(store)
                except OSError:
                    ledger.fail(name, pins, titles)
                    continue
                except Crash:  # in flight when the process died: it may or may not be there
                    ledger.fail(name, pins, titles)
                    raise
                if pins:
                    ledger.ack(pins, titles)
            live_state_matches(store, ledger)
            store.close()
            titles = titles_of(str(embeddings))
            add_pins = load_embeddings(embeddings, "pin").pin_ids
            add_titles = [titles[p] for p in add_pins]
            try:
                main(["index", "add", "--index", str(folder), "--embeddings", str(embeddings)])
            except (OSError, Crash) as err:
                ledger.fail("index add", add_pins, add_titles)
                if isinstance(err, Crash):
                    raise
            else:
                ledger.ack(add_pins, add_titles)
        return True
    except Crash:
        injector.die()
        return False


def pin_state(store: FaissBackend, pin: str, ledger: Ledger) -> str | None:
    """None if absent; else the title of the write it holds (its card and its vector must agree)."""
    if pin not in store:
        return None
    card = store.card(pin) or {}
    title = card.get("title")
    codes = store.index.codes_of([pin])[0]
    if not np.array_equal(codes, ledger.codes[(pin, title)]):
        raise AssertionError(f"{pin}: its card says {title!r} but its vector is another write's (half-applied)")
    return title


def live_state_matches(store: FaissBackend, ledger: Ledger) -> None:
    """With no crash, the open store shows exactly the acknowledged writes (a failed one is never applied)."""
    for pin, title in ledger.acked.items():
        if pin_state(store, pin, ledger) != title:
            raise AssertionError(f"live store: {pin} is {pin_state(store, pin, ledger)!r}, acknowledged {title!r}")
    for pin in ledger.maybe:
        if pin not in ledger.acked and pin in store:
            raise AssertionError(f"live store shows {pin}, whose only write failed")


def check_recovery(folder: Path, ledger: Ledger) -> int:
    """Reopen and check; returns how many acknowledged pins were found in their acknowledged state."""
    store = FaissBackend.open(folder)
    try:
        found = 0
        for pin in set(ledger.acked) | set(ledger.maybe):
            state = pin_state(store, pin, ledger)
            allowed = {ledger.acked.get(pin)} | ledger.maybe.get(pin, set())
            if state not in allowed:
                raise AssertionError(f"{pin}: recovered {state!r}, allowed {allowed}")
            found += state == ledger.acked.get(pin)
        for pins, titles in ledger.groups:
            whole = [pin_state(store, p, ledger) == t for p, t in zip(pins, titles)]
            if any(whole) and not all(whole):
                raise AssertionError(f"the write of {pins} is half there after recovery")
        named = {store.manifest["snapshot"], *store.manifest["logs"], "index.json", "LOCK"}
        extra = sorted(p.name for p in folder.iterdir() if p.name not in named)
        if extra:
            raise AssertionError(f"files the manifest does not name: {extra}")
        store.put(["after"], codes_for(["after recovery"]), [{"title": "after recovery"}], FAKE.version)
    finally:
        store.close()
    return found


@dataclass
class Enumeration:
    points: int  # calls counted in a fault-free run
    runs: dict[str, int] = field(default_factory=dict)  # mode -> runs
    acknowledged: int = 0  # acknowledged writes over all runs
    lost: int = 0
    failures: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)


def enumerate_crash_points(root: Path, template: Path, embeddings: Path, modes: tuple[str, ...] = MODES,
                           only: str = "") -> Enumeration:
    """Every k × every mode: a run and a recovery check; failures collected, not raised. With `only`, just
    the calls whose description holds it ("index.json": the manifest's writes)."""
    clean, ledger = FaultInjector(root / "clean"), seed_ledger(embeddings)
    shutil.copytree(template, root / "clean")
    run_workload(root / "clean", embeddings, ledger, clean)
    if ledger.failed_steps:
        raise AssertionError(f"a run without faults failed at {ledger.failed_steps}")
    check_recovery(root / "clean", ledger)
    result = Enumeration(len(clean.calls), calls=list(clean.calls))
    for mode in modes:
        for k in [k for k, call in enumerate(clean.calls, 1) if only in call]:
            folder = root / f"{mode}-{k}"
            shutil.copytree(template, folder)
            ledger = seed_ledger(embeddings)
            try:
                run_workload(folder, embeddings, ledger, FaultInjector(folder, k, mode))
                result.acknowledged += ledger.acknowledged
                allowed = 2 if mode == "enospc" and clean.calls[k - 1].startswith("write") else 1
                if mode != "crash" and len(ledger.failed_steps) > allowed:
                    raise AssertionError(f"one failed call failed the steps {ledger.failed_steps}: writes did not "
                                         "resume")
                check_recovery(folder, ledger)
            except AssertionError as err:
                result.failures.append(f"{mode} at call {k} ({clean.calls[k - 1]}): {err}")
                result.lost += "recovered" in str(err)
            result.runs[mode] = result.runs.get(mode, 0) + 1
            shutil.rmtree(folder, ignore_errors=True)
    return result


def make_embeddings(root: Path) -> Path:
    """An embedding run of 3 pins "b-p000".. (FakeEmbedder), its pins table beside it, for `index add`."""
    from serve_fakes import synthetic_pins, write_pins_parquet

    from pinclip.serve.embed import embed_pins_table

    pins = synthetic_pins(root / "fresh", 3)
    for pin in pins:
        pin["pin_id"] = "b-" + pin["pin_id"]
    write_pins_parquet(pins, root / "fresh" / "pins.parquet")
    embed_pins_table(FAKE, root / "fresh" / "pins.parquet", root / "fresh" / "emb", progress=False)
    return root / "fresh" / "emb"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        emb = make_embeddings(Path(tmp))
        found = enumerate_crash_points(Path(tmp), make_template(Path(tmp)), emb)
        print(f"{found.points} crash points x {len(found.runs)} modes = {sum(found.runs.values())} runs; "
              f"{found.acknowledged} acknowledged writes; {found.lost} lost; {len(found.failures)} failures")
        for line in found.failures:
            print(" ", line)
