"""kill -9 loop for the served index folder: writes over HTTP, SIGKILL at a random moment, restart, check.

Used by tests/test_serve_durable.py (a few kills) and bench/serve_durability.py (many):

    python bench/serve_durability.py --kills 40

Each round starts `python tests/serve_fakes.py serve` on an index folder, runs client threads that
add, replace and delete their own pins over HTTP (each id is written by one thread, one request at a
time), kills the server with SIGKILL after a random delay, and restarts it. After every restart
each pin must be in the state of its last acknowledged write, or of the one write that was in
flight for it when the server died (applied whole: the title and the search hit together);
nothing else is allowed. The folder must hold only the files the manifest names.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

TOKEN = "durable-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HERE = Path(__file__).resolve().parent
GONE = None  # the state of a deleted pin


@dataclass
class PinLedger:
    """Per pin: the state after its last acknowledged write, and a write in flight (if any)."""

    acked: dict[str, str | None] = field(default_factory=dict)  # pin_id -> title, or GONE
    in_flight: dict[str, str | None] = field(default_factory=dict)
    acknowledged_writes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir: Path, compact_bytes: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "serve_fakes.py"), "serve", str(index_dir), str(port), TOKEN,
                             str(compact_bytes)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start within 60 s")


def client(url: str, worker: int, ledger: PinLedger, stop: threading.Event, rng: random.Random) -> None:
    """Writes until the server dies: new pins, replacements and deletes of this worker's own pins."""
    mine: list[str] = []
    with httpx.Client(base_url=url, timeout=10, headers=AUTH) as http:
        n = 0
        while not stop.is_set():
            n += 1
            roll = rng.random()
            live = [p for p in mine if ledger.acked.get(p) is not GONE]
            if roll < 0.15 and live:
                pin_id, title = rng.choice(live), GONE
            else:
                pin_id = rng.choice(live) if roll < 0.35 and live else f"w{worker}-{rng.getrandbits(40):x}"
                title = f"t{rng.getrandbits(48):x} u{rng.getrandbits(48):x}"  # words no other pin has
            with ledger.lock:
                ledger.in_flight[pin_id] = title
            try:
                if title is GONE:
                    ok = http.delete(f"/pins/{pin_id}").status_code == 200
                else:
                    ok = http.post("/pins", data={"pin_id": pin_id, "title": title}).status_code == 201
            except httpx.HTTPError:
                return  # the server died with this write in flight
            with ledger.lock:
                del ledger.in_flight[pin_id]
                if ok:
                    ledger.acked[pin_id] = title
                    ledger.acknowledged_writes += 1
                    if pin_id not in mine:
                        mine.append(pin_id)


def pin_state(http: httpx.Client, pin_id: str) -> str | None:
    """The pin's title if it is whole (card and top search hit agree), GONE if absent; raises if half-there."""
    card = http.get(f"/pins/{pin_id}")
    if card.status_code == 404:
        return GONE
    title = card.json()["title"]
    hits = http.get("/search/text", params={"q": title, "k": 1}).json()["results"]
    if not hits or hits[0]["pin_id"] != pin_id:
        raise AssertionError(f"{pin_id} is half-there: its card says {title!r} but search finds {hits}")
    return title


def check(url: str, ledger: PinLedger, folder: Path) -> tuple[int, int]:
    """(acknowledged pins checked, found in their acknowledged or in-flight state); raises on a violation."""
    found = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        for pin_id, title in ledger.acked.items():
            state = pin_state(http, pin_id)
            allowed = {title} | ({ledger.in_flight[pin_id]} if pin_id in ledger.in_flight else set())
            if state not in allowed:
                raise AssertionError(f"{pin_id}: found {state!r}, acknowledged {title!r}")
            found += 1
        for pin_id, title in ledger.in_flight.items():
            if pin_id not in ledger.acked and pin_state(http, pin_id) not in (GONE, title):
                raise AssertionError(f"{pin_id}: unacknowledged write found in another state")
    extra = [p.name for p in folder.iterdir() if not p.name.startswith(("snap-", "log-")) and
             p.name not in ("index.json", "LOCK")]
    if extra:
        raise AssertionError(f"leftover files in the index folder: {extra}")
    return len(ledger.acked), found


def settle(ledger: PinLedger, url: str, folder: Path) -> tuple[int, int]:
    """Resolve in-flight writes after a check: a pin's observed state becomes its acknowledged one."""
    checked = check(url, ledger, folder)
    with httpx.Client(base_url=url, timeout=30) as http:
        for pin_id in list(ledger.in_flight):
            ledger.acked[pin_id] = pin_state(http, pin_id)
    ledger.in_flight.clear()
    return checked


def kill_loop(folder: Path, kills: int, seed: int = 0, workers: int = 4, compact_bytes: int = 6000,
              max_delay_s: float = 1.5) -> dict[str, int]:
    """Run `kills` rounds on an index folder; returns the counts. Raises AssertionError on any loss."""
    rng, ledger = random.Random(seed), PinLedger()
    totals = {"kills": 0, "acknowledged_writes": 0, "pins_checked": 0, "pins_found": 0}
    proc, url = start_server(folder, compact_bytes)
    try:
        for _ in range(kills):
            stop = threading.Event()
            threads = [threading.Thread(target=client, args=(url, w, ledger, stop, random.Random(rng.random())))
                       for w in range(workers)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.05, max_delay_s))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            stop.set()
            for t in threads:
                t.join()
            totals["kills"] += 1
            proc, url = start_server(folder, compact_bytes)
            checked, found = settle(ledger, url, folder)
            totals["pins_checked"], totals["pins_found"] = totals["pins_checked"] + checked, totals["pins_found"] + found
        totals["acknowledged_writes"] = ledger.acknowledged_writes
        totals["pins_acknowledged_at_end"] = sum(t is not GONE for t in ledger.acked.values())
    finally:
        proc.kill()
        proc.wait()
    return totals
