"""PLL scoring and encoding (sparse, embed) as Ray Data `map_batches` on an actor pool: the same `Scorer`,
`SparseEncoder` or `Embedder` as the local engine, one per actor.

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
    from .encoding import EncodeJob

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


class EncodeActor:
    """A Ray Data callable class: opens the artifact's sparse or embed graph once, then encodes batches."""

    def __init__(self, artifact: str, task: str, variant: str, threads: int | None, options: dict[str, Any],
                 public_key: str | None = None, providers: str = "cpu") -> None:
        from ..runtime.embed import Embedder
        from ..runtime.sparse import SparseEncoder

        model_class = SparseEncoder if task == "sparse" else Embedder
        self.model = model_class.from_pretrained(artifact, variant=variant, providers=providers, threads=threads,
                                                 public_key=public_key)
        self.task = task
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = ["" if t is None else t for t in batch["text"].tolist()]
        found = [str(e or "") for e in batch["read_error"].tolist()]
        encoded = iter(self.model.encode_rows([t for t, e in zip(texts, found) if not e], **self.options))
        results = [None if e else next(encoded) for e in found]
        vectors = {name: np.empty(len(texts), dtype=object) for name in (("indices", "values") if self.task == "sparse"
                                                                         else ("embedding",))}
        for i, result in enumerate(results):  # ragged: one array per row, empty where there is none
            value = None if result is None else result.value
            if self.task == "sparse":
                vectors["indices"][i] = np.zeros(0, np.int64) if value is None else value.indices
                vectors["values"][i] = np.zeros(0, np.float32) if value is None else value.values
            else:
                vectors["embedding"][i] = np.zeros(0, np.float32) if value is None else value
        # the reader's verdict as it is; an encoding error as the local engine words it
        errors = [e or (f"the sequence {r.error}" if r is not None and r.error else "") for e, r in zip(found, results)]
        return {"line": batch["line"], "text": np.array(texts, dtype=object),
                "n_tokens": np.array([-1 if r is None or r.n_tokens is None else r.n_tokens for r in results],
                                     dtype=np.int64),
                "error": np.array(errors, dtype=object),
                "provider": np.array([self.model.provider] * len(texts), dtype=object)} | vectors


def encode_with_ray(job: EncodeJob, rows: Iterable[InputRow], task: str, options: dict[str, Any],
                    sequences_per_batch: int = SEQUENCES_PER_BATCH) -> EngineRun:
    """Start (or join) Ray, and stream the encoded rows (`EncodedRow` chunks) back in input order."""
    from .vectors import EncodedRow

    ray = _ray()
    variant, backend, providers = _pick(job, task)
    started = not ray.is_initialized()
    if started:
        _init(ray, job)
    try:
        kept: deque[tuple[Any, ...]] = deque()
        mapped, size = _pool(ray, job, rows, EncodeActor, {"task": task, "variant": variant, "options": options,
                                                           "providers": providers}, sequences_per_batch, kept)
    except BaseException:
        if started:
            ray.shutdown()
        raise

    def chunks() -> Iterator[list[Any]]:
        for batch in mapped.iter_batches(batch_size=size, batch_format="numpy"):
            chunk = []
            for i in range(len(batch["text"])):
                error = str(batch["error"][i]) or None
                common: dict[str, Any] = {"variant": variant, "provider": str(batch["provider"][i]),
                                          "kept": kept.popleft()}
                if error is not None:
                    chunk.append(EncodedRow(int(batch["line"][i]), str(batch["text"][i]), None, error=error, **common))
                elif task == "sparse":
                    chunk.append(EncodedRow(int(batch["line"][i]), str(batch["text"][i]), int(batch["n_tokens"][i]),
                                            indices=np.asarray(batch["indices"][i], dtype=np.int64),
                                            values=np.asarray(batch["values"][i], dtype=np.float32), **common))
                else:
                    chunk.append(EncodedRow(int(batch["line"][i]), str(batch["text"][i]), int(batch["n_tokens"][i]),
                                            embedding=np.asarray(batch["embedding"][i], dtype=np.float32), **common))
            yield chunk

    return EngineRun(variant, backend, chunks(), close=ray.shutdown if started else None)


def score_with_ray(job: ScoreJob, rows: Iterable[InputRow],
                   sequences_per_batch: int = SEQUENCES_PER_BATCH) -> EngineRun:
    """Start (or join) Ray, and stream the scored rows back in input order."""
    ray = _ray()
    variant, backend, providers = _pick(job, "fill-mask")
    started = not ray.is_initialized()
    if started:
        _init(ray, job)
    try:
        return _start(ray, job, rows, variant, backend, providers, sequences_per_batch, started)
    except BaseException:
        if started:  # nothing will close what it started: an error or a signal before the first row
            ray.shutdown()
        raise


def _pick(job: ScoreJob | EncodeJob, task: str) -> tuple[str, str, str | Sequence[str]]:
    """The variant of `task` the actors open, the backend and the `providers` they open it with: checked
    here, not in every actor (a slim artifact serves the graphs it holds)."""
    from ..artifact.handle import Artifact
    from ..runtime.backends import choose_backend, providers_for
    from ..variants import CPU, check_pairing, preferred

    artifact = Artifact.open(job.artifact, public_key=job.public_key)
    variants = artifact.graphs_of(task)
    # CPU workers: ONNX Runtime's CPU provider, or OpenVINO (the bf16 variant); auto picks as the local
    # engine does on a machine without a GPU
    key = job.providers.lower() if isinstance(job.providers, str) else None
    if key not in ("auto", "cpu", "openvino"):
        raise InputError(f"the Ray engine's workers run on CPUs: providers must be auto, cpu or openvino, "
                         f"got {job.providers!r}")
    asked = job.variant
    if asked is not None and task != "fill-mask" and "." not in asked:
        asked = f"{task}.{asked}"
    backend = choose_backend(variants, key, asked, cpu_only=True, task=task) if variants else CPU
    providers = providers_for(backend, key)
    variant = asked or (preferred(variants, backend, task) if variants else None)
    if variant is None:
        raise InputError(f"{job.artifact} has no {task} graph to run")
    if variant not in variants:
        raise InputError(f"variant {variant!r} is not in {job.artifact}; it has "
                         f"{', '.join(sorted(variants))}")
    check_pairing(variant, variants[variant].precision, backend, job.artifact, variants)
    return variant, backend, providers


def _start(ray: Any, job: ScoreJob, rows: Iterable[InputRow], variant: str, backend: str,
           providers: str | Sequence[str], sequences_per_batch: int, started: bool) -> EngineRun:
    """The actor pool over the input, as an `EngineRun` that stops Ray at the end if this run started it."""
    kept: deque[tuple[Any, ...]] = deque()
    scored, size = _pool(ray, job, rows, PLLActor, {"variant": variant, "options": job.options,
                                                   "providers": providers}, sequences_per_batch, kept)
    return EngineRun(variant, backend, _rows(scored, size, variant, kept), close=ray.shutdown if started else None)


def _pool(ray: Any, job: ScoreJob | EncodeJob, rows: Iterable[InputRow], actor: type, kwargs: dict[str, Any],
          sequences_per_batch: int, kept: deque[tuple[Any, ...]]) -> tuple[Any, int]:
    """The input mapped by an actor pool of `actor` (built with `kwargs` plus the artifact, threads and key);
    the rows' kept values go to `kept`. Returns the mapped dataset and its batch size."""
    if not job.progress:  # -q, --json or no terminal: Ray Data's own INFO lines too
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = job.progress
    threads = job.threads or default_threads() or 1
    workers = job.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
    # The driver reads the input (as the local engine does) and hands it to Ray as Arrow blocks: read
    # tasks would wait for CPUs that the actor pool holds (a 2-CPU machine deadlocked on read_parquet).
    blocks = _arrow_blocks(rows, workers, sequences_per_batch, kept)
    dataset = ray.data.from_arrow(blocks)
    size = max(1, blocks[0].num_rows)
    mapped = dataset.map_batches(
        actor, batch_size=size, batch_format="numpy", num_cpus=threads,
        # up to `workers` actors, as CPUs allow: a fixed size the cluster cannot place would wait forever
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
        fn_constructor_kwargs=kwargs | {
            "artifact": str(Path(job.artifact).resolve()), "threads": threads,
            "public_key": None if job.public_key is None else str(Path(job.public_key).resolve())})
    return mapped, size


def _init(ray: Any, job: ScoreJob | EncodeJob) -> None:
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
