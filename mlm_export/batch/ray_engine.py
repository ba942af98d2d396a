"""PLL scoring as Ray Data `map_batches` on an actor pool: the same `Scorer`, one per actor.

Each actor opens the artifact once, with its thread count, and holds the session for its life;
`compute=ActorPoolStrategy(min_size=1, max_size=N)` sizes the pool (`concurrency=` is deprecated in
Ray 2.6x); the pool grows to N actors as the cluster's CPUs allow.
`ray.init()` without an address starts a local instance, or joins the cluster `RAY_ADDRESS` names;
an explicit address is passed through unchanged. On a cluster, the artifact path must be readable
on every worker (a shared file system); the driver reads the input and ships it as Arrow blocks.

Rows come back in input order (`preserve_order`) and are written by the caller, so the output
file is the local engine's, row for row. The kept input columns stay with the driver, which holds
the input anyway, and are joined back by position; the actors see only lines and texts.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, InputError
from ..interrupts import preserved_signal_handlers
from ..runtime.threads import default_threads
from ..runtime.scoring import RowError, ScoreOptions
from .engine import EngineRun
from .inputs import InputRow
from .outputs import ScoredRow

if TYPE_CHECKING:
    from . import ScoreJob

SEQUENCES_PER_BATCH = 32


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InputError("--engine ray needs Ray Data: pip install 'mlm-export[ray]'") from exc
    return ray


class PLLActor:
    """A Ray Data callable class: opens the artifact once, then scores batches of `{"text": ...}`."""

    def __init__(self, artifact: str, variant: str | None, threads: int | None, options: ScoreOptions,
                 public_key: str | None = None, providers: str = "cpu") -> None:
        from ..runtime.predictor import OnnxMaskFiller

        filler = OnnxMaskFiller.from_pretrained(artifact, variant=variant, providers=providers, threads=threads,
                                                public_key=public_key)
        self.scorer = filler.scorer()
        self.options = options
        self.provider = filler.provider

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = ["" if t is None else t for t in batch["text"].tolist()]
        found = [str(e or "") for e in batch["read_error"].tolist()]  # the reader's verdict: not scored
        scored = iter(self.scorer.score_rows([t for t, e in zip(texts, found) if not e], self.options))
        results = [RowError(0, t, e) if e else next(scored) for t, e in zip(texts, found)]
        ok = [not isinstance(r, RowError) for r in results]
        # Ray turns an all-None column into NaN: missing numbers are -1 or NaN, missing strings ""
        out: dict[str, Any] = {
            "text": np.array([r.text for r in results], dtype=object),
            "pll": np.array([np.nan if isinstance(r, RowError) else r.pll for r in results], dtype=np.float64),
            "n_tokens": np.array([-1 if isinstance(r, RowError) else r.n_tokens for r in results], dtype=np.int64),
            "unknown_tokens": np.array([-1 if isinstance(r, RowError) else r.unknown_tokens for r in results],
                                       dtype=np.int64),
            "ok": np.array(ok, dtype=bool),
            "error": np.array([r.message if isinstance(r, RowError) else "" for r in results], dtype=object),
            "warning": np.array(["" if isinstance(r, RowError) else r.warning or "" for r in results], dtype=object),
            "provider": np.array([self.provider] * len(results), dtype=object),
        }
        if self.options.per_token:
            per_token = np.empty(len(results), dtype=object)  # ragged: one array per row
            for i, r in enumerate(results):
                values = () if isinstance(r, RowError) else r.token_log_probs or ()
                per_token[i] = np.array(values, dtype=np.float64)
            out["token_log_probs"] = per_token
        out["line"] = batch["line"]
        return out


def score_with_ray(job: ScoreJob, rows: Iterable[InputRow],
                   sequences_per_batch: int = SEQUENCES_PER_BATCH) -> EngineRun:
    """Start (or join) Ray, and stream the scored rows back in input order."""
    from ..artifact.handle import Artifact
    from ..runtime.backends import choose_backend, providers_for
    from ..variants import CPU, check_pairing, preferred

    ray = _ray()
    # fail here, not in every actor; a slim artifact serves the graphs it holds
    artifact = Artifact.open(job.artifact, public_key=job.public_key)
    variants = artifact.graphs_of("fill-mask")
    # CPU workers: ONNX Runtime's CPU provider, or OpenVINO (the bf16 variant); auto picks as the local
    # engine does on a machine without a GPU
    key = job.providers.lower() if isinstance(job.providers, str) else None
    if key not in ("auto", "cpu", "openvino"):
        raise InputError(f"the Ray engine's workers run on CPUs: providers must be auto, cpu or openvino, "
                         f"got {job.providers!r}")
    backend = choose_backend(variants, key, job.variant, cpu_only=True) if variants else CPU
    providers = providers_for(backend, key)
    variant = job.variant or (preferred(variants, backend) if variants else None)
    if variant is None:
        raise InputError(f"{job.artifact} has no fill-mask graph to score with")
    if variant not in variants:
        raise InputError(f"variant {variant!r} is not in {job.artifact}; it has "
                         f"{', '.join(sorted(variants))}")
    check_pairing(variant, variants[variant].precision, backend, job.artifact, variants)
    started = not ray.is_initialized()
    if started:
        _init(ray, job)
    try:
        return _start(ray, job, rows, variant, backend, providers, sequences_per_batch, started)
    except BaseException:
        if started:  # nothing will close what it started: an error or a signal before the first row
            ray.shutdown()
        raise


def _start(ray: Any, job: ScoreJob, rows: Iterable[InputRow], variant: str, backend: str,
           providers: str | Sequence[str], sequences_per_batch: int, started: bool) -> EngineRun:
    """The actor pool over the input, as an `EngineRun` that stops Ray at the end if this run started it."""
    if not job.progress:  # -q, --json or no terminal: Ray Data's own INFO lines too
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = job.progress
    threads = job.threads or default_threads() or 1
    workers = job.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
    # The driver reads the input (as the local engine does) and hands it to Ray as Arrow blocks: read
    # tasks would wait for CPUs that the actor pool holds (a 2-CPU machine deadlocked on read_parquet).
    kept: deque[tuple[Any, ...]] = deque()
    blocks = _arrow_blocks(rows, workers, sequences_per_batch, kept)
    dataset = ray.data.from_arrow(blocks)
    scored = dataset.map_batches(
        PLLActor, batch_size=max(1, blocks[0].num_rows), batch_format="numpy", num_cpus=threads,
        # up to `workers` actors, as CPUs allow: a fixed size the cluster cannot place would wait forever
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
        fn_constructor_kwargs={"artifact": str(Path(job.artifact).resolve()), "variant": variant,
                               "threads": threads, "options": job.options, "providers": providers,
                               "public_key": None if job.public_key is None else str(Path(job.public_key).resolve())})
    return EngineRun(variant, backend, _rows(scored, max(1, blocks[0].num_rows), variant, kept),
                     close=ray.shutdown if started else None)


def _init(ray: Any, job: ScoreJob) -> None:
    """`ray.init`, keeping the process's own signal handlers: Ray installs a SIGTERM one that calls
    `sys.exit(15)`, which made a terminated run exit 15 with no `Error:` line instead of 143 with one."""
    address = job.ray_address or os.environ.get("RAY_ADDRESS") or None
    where = "--ray-address" if job.ray_address else "RAY_ADDRESS"
    _check_reachable(address, where)
    with preserved_signal_handlers():  # ray.init's SIGTERM handler would turn 143 into a bare exit 15
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", configure_logging=True)
        except ValueError as exc:  # Ray's word for an address it cannot parse: the user's input, not a bug
            raise ConfigError(f"{where} {address!r} is not a Ray address ({_first_line(exc)}); give the cluster's "
                              "HOST:PORT (e.g. 10.0.0.5:6379), 'auto', or leave it out for a local instance") \
                from exc


def _arrow_blocks(rows: Iterable[InputRow], workers: int, largest: int,
                  kept: deque[tuple[Any, ...]]) -> list[Any]:
    """The input as Arrow tables of at most `largest` rows, at least four per actor where the input
    allows, so that every actor gets work. The rows' kept values go to `kept`, in input order."""
    import pyarrow as pa

    lines: list[int] = []
    texts: list[Any] = []
    errors: list[str] = []
    for row in rows:
        lines.append(row.line)
        texts.append(row.text)
        errors.append(row.error or "")
        kept.append(row.kept)
    table = pa.table({"line": pa.array(lines, pa.int64()), "text": pa.array(texts, pa.string()),
                      "read_error": pa.array(errors, pa.string())})
    size = max(1, min(largest, -(-len(lines) // (4 * workers))))
    return [table.slice(start, size) for start in range(0, max(len(lines), 1), size)]


def _rows(scored: Any, size: int, variant: str, kept: deque[tuple[Any, ...]]) -> Iterator[list[ScoredRow]]:
    """Rows come back in input order (`preserve_order`): the kept values are joined back by position."""
    for batch in scored.iter_batches(batch_size=size, batch_format="numpy"):
        chunk = []
        for i in range(len(batch["text"])):
            line = int(batch["line"][i])
            provider, values = str(batch["provider"][i]), kept.popleft()
            if not batch["ok"][i]:
                chunk.append(ScoredRow(line, str(batch["text"][i]), None, None, None, str(batch["error"][i]),
                                       variant=variant, provider=provider, kept=values))
                continue
            per_token = batch["token_log_probs"][i] if "token_log_probs" in batch else None
            chunk.append(ScoredRow(line, str(batch["text"][i]), float(batch["pll"][i]), int(batch["n_tokens"][i]),
                                   None if per_token is None else tuple(float(v) for v in per_token),
                                   unknown_tokens=int(batch["unknown_tokens"][i]),
                                   warning=str(batch["warning"][i]) or None, variant=variant, provider=provider,
                                   kept=values))
        yield chunk


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str | None, where: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that accepts no connection is a ConfigError within
    CONNECT_TIMEOUT_S: `ray.init` would retry it for many minutes, printing only its reconnect messages."""
    if address is None or address == "auto" or address.startswith(("http://", "https://")):
        return  # a local instance, Ray's own discovery, or an address ray.init refuses at once
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # not HOST:PORT: ray.init says what is wrong with it
    import socket

    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(f"{where} {address!r}: no Ray cluster answers there ({exc.strerror or exc}, within "
                          f"{CONNECT_TIMEOUT_S:.0f} s); start the cluster, fix the address, or leave it out for a "
                          "local instance") from exc
