"""live_updates: 1,000 websocket clients on one Daphne process; commit → gate.opened at the clients."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

NAME = "live_updates"
TITLE = "Live updates: commit → message at 1,000 websocket clients"
TARGET_P99_MS = 250
CLIENT_PROCESSES = 2
HOW = (
    'One Daphne process (`daphne gateway.asgi:application`, the production ASGI stack: origin check, session '
    "authentication, the live consumer) with channels-redis's pub/sub layer on the bench Redis. 1,000 "
    'websocket clients (the `websockets` package, asyncio) in two client processes of 500 each hold the '
    "portal sessions of 250 analysts of one tenant (four tabs each), all cleared for the gates' label, so "
    'every client must receive every message; the clients connect before anything is measured (the open of a '
    'socket means its groups are joined). The bench process then submits runs whose root is a gate '
    '(`run_submit`, one transaction each), one per second (a latency figure, not a saturation test); each '
    "commit sends two messages to the label's group (the gate task's `task.state` and `gate.opened`), so "
    '2,000 frames leave the server per commit. t0 is the wall clock (`time.time()`) taken in the first on-'
    "commit callback of the submission (registered before the submission's own, so before the publish is "
    'queued); each client takes the wall clock when the `gate.opened` frame is read from its socket (same '
    'machine clock); latency = arrival − t0, over every (commit, client) pair. The first submissions warm the'
    ' server and are not counted. Delivered = `gate.opened` frames received / (commits × clients). Everything'
    " (PostgreSQL, Redis, Daphne, the clients, the bench process) shares the machine's two cores; the CPU "
    'time Daphne and the client processes used while the commits were made (from /proc) is given per commit.'
)


# ----------------------------------------------------------------------------------------- clients


async def _clients(url: str, origin: str, cookies: list[str], expect: int, out: Path, ready: Path,
                   deadline: float) -> None:
    from websockets.asyncio.client import connect

    arrivals: list[tuple[str, float]] = []
    connected = 0
    opened = asyncio.Event()
    gate = asyncio.Semaphore(20)  # handshakes in flight at once

    failures: list[str] = []

    async def one(cookie: str) -> None:
        nonlocal connected
        for attempt in range(10):  # as the portal's live.js does: try again after a refused handshake
            try:
                async with gate:
                    ws = await connect(url, origin=origin, additional_headers={"Cookie": f"sessionid={cookie}"},
                                       open_timeout=60, ping_interval=None, max_queue=None)
                break
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc)[:200])
                await asyncio.sleep(0.5 * (attempt + 1))
        else:
            raise RuntimeError("could not connect")
        connected += 1
        if connected == len(cookies):
            opened.set()
        got = 0
        try:
            while got < expect:
                text = await ws.recv()
                now = time.time()
                message = json.loads(text)
                if message.get("type") == "gate.opened":
                    arrivals.append((message["run"], now))
                    got += 1
        finally:
            await ws.close()

    tasks = [asyncio.create_task(one(c)) for c in cookies]
    try:
        await asyncio.wait_for(opened.wait(), timeout=max(1.0, deadline - time.time()))
    finally:
        if failures:
            print(f"{len(failures)} connection attempts failed: {sorted(set(failures))[:5]}", flush=True)
    ready.write_text(str(connected))
    done, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.time()))
    for task in pending:
        task.cancel()
    errors = [repr(t.exception()) for t in done if not t.cancelled() and t.exception() is not None]
    out.write_text(json.dumps({"connected": connected, "arrivals": arrivals, "errors": errors[:5],
                               "incomplete": len(pending), "connect_retries": len(failures),
                               "connect_errors": sorted(set(failures))[:5]}))


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--origin")
    parser.add_argument("--cookies")
    parser.add_argument("--expect", type=int)
    parser.add_argument("--out")
    parser.add_argument("--ready")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args(argv)
    cookies = json.loads(Path(args.cookies).read_text())
    asyncio.run(_clients(args.url, args.origin, cookies, args.expect, Path(args.out), Path(args.ready),
                         time.time() + args.seconds))


# ----------------------------------------------------------------------------------------- driver


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _workflow(label: str) -> str:
    import yaml

    return yaml.safe_dump({
        "apiVersion": "gatehouse/v1", "kind": "Workflow", "name": "bench-live", "classification": label,
        "tasks": [{"id": "review", "type": "gate", "title": "Bench live gate", "options": ["confirm", "reject"],
                   "approvers": ["analyst"]}],
    }, sort_keys=False)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc, timeout: float) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("daphne exited before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("daphne did not listen")


def run(ctx, *, live_clients: int = 1000, live_commits: int = 100, live_warmup: int = 5,
        live_interval: float = 1.0, **_) -> list:
    from django.conf import settings
    from django.db import transaction
    from django.test import Client

    from gateway.clearances import ClearanceInput
    from gateway.realtime.publisher import publisher
    from gateway.services import run_submit
    from gateway.tenancy import member_create

    from .common import VAR_DIR, Figure, percentile, process_cpu_seconds

    if not settings.CHANNEL_LAYERS["default"]["BACKEND"].startswith("channels_redis"):
        raise RuntimeError("live_updates needs channels-redis (the bench broker is Redis, so it is the default)")
    _raise_fd_limit(live_clients * 2 + 1000)
    tabs = 4
    users = max(1, live_clients // tabs)
    label = "SECRET"
    cleared = ClearanceInput(policy=None, max_level=label, compartments=[], releasability=[])
    ctx.say(f"creating {users} analysts")
    analysts = [member_create(tenant=ctx.tenant, username=f"live-{i}", roles=["analyst"], clearance=cleared)
                for i in range(users)]
    sessions = []
    for user in analysts:
        client = Client()
        client.force_login(user)
        sessions.append(client.cookies[settings.SESSION_COOKIE_NAME].value)
    cookies = [sessions[i % users] for i in range(live_clients)]
    run_submit(tenant=ctx.tenant, actor=ctx.author, source=_workflow(label))  # registers the label
    publisher.flush(10)

    port = _free_port()
    workdir = VAR_DIR / "live"
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*"):
        stale.unlink()
    daphne = ctx.procs._start("daphne", [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p",
                                         str(port), "gateway.asgi:application"])
    _wait_listening(port, daphne, 60)
    ctx.say(f"daphne on port {port}; connecting {live_clients} clients in {CLIENT_PROCESSES} processes")
    expect = live_warmup + live_commits
    seconds = 180 + expect * (live_interval + 0.5)
    shares = [cookies[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
    outs, readies = [], []
    t_connect = time.time()
    for n, share in enumerate(shares):
        (workdir / f"cookies-{n}.json").write_text(json.dumps(share))
        outs.append(workdir / f"out-{n}.json")
        readies.append(workdir / f"ready-{n}")
        ctx.procs._start(f"live-clients-{n}", [
            sys.executable, "-m", "bench.live_updates", "clients", "--url", f"ws://127.0.0.1:{port}/ws/live/",
            "--origin", f"http://127.0.0.1:{port}", "--cookies", str(workdir / f"cookies-{n}.json"),
            "--expect", str(expect), "--out", str(outs[-1]), "--ready", str(readies[-1]), "--seconds", str(seconds)])
    deadline = time.time() + 180
    while not all(r.exists() for r in readies):
        if time.time() > deadline:
            raise RuntimeError("the clients did not all connect: " + " | ".join(
                ctx.procs.log(f"live-clients-{n}")[-1500:] for n in range(CLIENT_PROCESSES)))
        for n in range(CLIENT_PROCESSES):
            proc = ctx.procs.procs[f"live-clients-{n}"]
            if proc.poll() is not None and not readies[n].exists():
                raise RuntimeError(f"client process {n} exited:\n{ctx.procs.log(f'live-clients-{n}')[-3000:]}")
        time.sleep(0.2)
    connect_seconds = time.time() - t_connect
    connected = sum(int(r.read_text()) for r in readies)
    ctx.say(f"{connected} clients connected in {connect_seconds:.1f} s; {live_warmup} warm-up and "
            f"{live_commits} measured commits, one every {live_interval} s")

    clients = [ctx.procs.procs[f"live-clients-{n}"].pid for n in range(CLIENT_PROCESSES)]
    cpu0 = [process_cpu_seconds(pid) for pid in [daphne.pid, *clients]]
    commit_at: dict[str, float] = {}
    source = _workflow(label)
    for i in range(expect):
        stamp: list[float] = []
        started = time.perf_counter()
        with transaction.atomic():
            transaction.on_commit(lambda: stamp.append(time.time()))
            new = run_submit(tenant=ctx.tenant, actor=ctx.author, source=source)
        if i >= live_warmup:
            commit_at[str(new.id)] = stamp[0]
        time.sleep(max(0.0, live_interval - (time.perf_counter() - started)))

    time.sleep(2.0)  # the last broadcast reaches the clients
    cpu1 = [process_cpu_seconds(pid) for pid in [daphne.pid, *clients]]
    (workdir / "commits.json").write_text(json.dumps(commit_at))  # for a closer look at one run
    for n in range(CLIENT_PROCESSES):
        proc = ctx.procs.procs[f"live-clients-{n}"]
        try:
            proc.wait(timeout=seconds)
        except Exception:  # noqa: BLE001
            pass
    latencies, received = [], 0
    errors = []
    for out in outs:
        if not out.exists():
            raise RuntimeError("a client process wrote no results")
        data = json.loads(out.read_text())
        errors += data["errors"]
        for run_id, at in data["arrivals"]:
            if run_id in commit_at:
                received += 1
                latencies.append((at - commit_at[run_id]) * 1000.0)
    if errors:
        ctx.say(f"client errors: {errors[:3]}")
    wanted = live_commits * live_clients
    return [
        Figure("websocket clients connected (one Daphne process)", connected, "", f"= {live_clients}"),
        Figure("time to connect them all", round(connect_seconds, 1), "s"),
        Figure("measured commits", live_commits, ""),
        Figure("frames delivered", round(100.0 * received / wanted, 2), "%", "= 100"),
        Figure("commit → gate.opened at the client, p50", round(percentile(latencies, 50), 1), "ms"),
        Figure("commit → gate.opened at the client, p99", round(percentile(latencies, 99), 1), "ms",
               f"p99 < {TARGET_P99_MS} ms"),
        Figure("commit → gate.opened at the client, max", round(max(latencies) if latencies else float("nan"), 1),
               "ms"),
        Figure("Daphne CPU per commit (2,000 frames out)", _per_commit(cpu0[0], cpu1[0], expect), "ms"),
        Figure("client processes' CPU per commit (2,000 frames in)",
               _per_commit(sum(cpu0[1:]), sum(cpu1[1:]), expect), "ms"),
    ]


def _per_commit(before, after, commits: int) -> float:
    if before is None or after is None:
        return float("nan")
    return round((after - before) * 1000.0 / commits, 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["clients"]:
        client_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m bench.live_updates clients ... (the benchmark itself runs from bench/run.py)")
