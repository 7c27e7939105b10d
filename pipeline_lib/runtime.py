"""The process's runtime, set by explicit calls, never as a side effect of importing pipeline_lib:
the environment at process start (flows/ and tasks/ package init, tests' conftest, benchmarks'
helpers: telemetry and update checks off, the OpenMP wait policy), and in every stage
``use(params.runtime)``: torch's CPU threads and the device."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

ENV_DEFAULTS = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_HUB_OFFLINE": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    # an MLflow server that does not answer: 3 retries per request (1, 2, 4 s) instead of MLflow's
    # 7 with up to 2 min between them; the logging task retries twice more (tasks/stages.py)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    # OpenMP threads sleep instead of spinning when they wait: beside another busy process a
    # fine-tuning epoch slowed 1.4-1.9x instead of 2.2-4.1x (benchmarks/threads.py); 22 % slower idle
    "OMP_WAIT_POLICY": "PASSIVE",
    # pipeline_lib's log lines (a stage's summary, each fine-tuning epoch) go to the Prefect run's log
    "PREFECT_LOGGING_EXTRA_LOGGERS": "pipeline_lib",
    # torch's compile cache (loading the exported model creates it) in the user's cache, not in the
    # system's temporary folder where it would stay behind after every run
    "TORCHINDUCTOR_CACHE_DIR": os.path.join(os.path.expanduser("~"), ".cache", "torchinductor"),
}


def process_environment() -> None:
    """Silence telemetry and update checks of the stack, shorten MLflow's HTTP retries and make
    OpenMP threads wait passively; a value already in the environment wins. Call at process
    start, before torch, Prefect, MLflow or DVC is imported."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def use(runtime) -> "torch.device":
    """What every stage does first: torch's CPU threads (runtime.num_threads) and the device it
    computes on (runtime.device); ``runtime`` is params.runtime."""
    configure_threads(runtime.num_threads)
    return pick_device(runtime.device)


def pick_device(preference: str = "auto") -> "torch.device":
    import torch

    from .errors import PipelineError

    if preference == "cuda" and not torch.cuda.is_available():
        raise PipelineError("runtime.device: cuda requested but no CUDA device is available; use auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def resolve_precision(device, precision: str = "auto") -> str:
    """What runtime.precision means on ``device``: "fp32", "bf16" or "fp16". On CUDA ``auto`` is
    bf16 where the GPU supports it, else fp16; on the CPU ``auto`` stays fp32: bf16 autocast is
    faster only on CPUs with native bf16 (AMX / AVX512-BF16, benchmarks/precision.py) and its
    accuracy is not yet measured end to end (docs/benchmarks.md, "Mixed precision on the CPU");
    ask for it with runtime.precision: bf16."""
    import torch

    if precision != "auto":
        return precision
    if is_cuda(device):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def precision_tag(encoder) -> str:
    """What an encoder's cache key adds for its precision: nothing for fp32 (the vectors cached
    before mixed precision existed stay valid), "|bf16" or "|fp16" otherwise. An encoder of a plugin
    modality written before precision existed has no such attribute: fp32."""
    precision = getattr(encoder, "precision", "fp32")
    return "" if precision in ("fp32", "auto") else f"|{precision}"


def autocast(device, precision: str = "auto"):
    """The autocast context of runtime.precision on ``device`` (a no-op for fp32)."""
    import contextlib

    import torch

    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device, precision: str = "auto"):
    """A gradient scaler where fp16 training needs one (CUDA), else None."""
    import torch

    if is_cuda(device) and resolve_precision(device, precision) == "fp16":
        return torch.amp.GradScaler("cuda")
    return None


def optimizer_step(loss, optimizer, scaler, parameters, clip: float = 0.0, backward=None) -> None:
    """One optimisation step: gradients of ``loss`` (scaled when ``scaler``, fp16 on CUDA, is
    given; ``backward()`` instead of ``loss.backward()`` where given), clipped to norm ``clip`` over
    ``parameters`` (0 = no clipping), then the step."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        (backward or loss.backward)()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if clip:
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def configure_threads(num_threads: int) -> None:
    """torch's intra-op CPU threads: ``num_threads``, or for 0 the environment's OMP_NUM_THREADS
    when set (a scheduler, or parallel test workers sharing the cores), else one per CPU this
    process may use."""
    import torch

    torch.set_num_threads(thread_budget(num_threads))


def thread_budget(num_threads: int = 0) -> int:
    """How many CPU threads this process may use: ``num_threads`` (runtime.num_threads) when set,
    else the environment's OMP_NUM_THREADS, else the CPUs of its affinity mask and cgroup quota."""
    return num_threads or _env_threads() or available_cpus()


def loader_workers(workers: int | str, device) -> int:
    """How many DataLoader worker processes decode and augment images (runtime.loader_workers): a
    number, or ``auto``: none on the CPU, where the model's passes already use every core and a
    worker only competes with them (benchmarks/input_pipeline.py), one per usable core up to 8 on
    CUDA, where the GPU waits for decoding otherwise."""
    if workers != "auto":
        return int(workers)
    return min(8, thread_budget()) if is_cuda(device) else 0


def load_batches(load, keys: list, workers: int = 0, pin: bool = False, threaded: bool = False) -> Iterator:
    """``load(key)`` for every key, in order: in this process (``threaded``: the next one loaded in
    a thread while the caller uses this one), or in ``workers`` DataLoader processes (``pin``: into
    page-locked memory, for copies to CUDA). ``load`` must be a function of its key alone, so the
    results are the same whichever way they are made; no random number is drawn here."""
    if workers <= 0 or len(keys) <= 1:
        yield from (prefetch(keys, load) if threaded else map(load, keys))
        return
    import torch
    from torch.utils.data import DataLoader

    # a generator of its own: without one each pass through a DataLoader draws its workers' base
    # seed from torch's global generator, and whatever draws from it next would change
    loader = DataLoader(_Keyed(load, keys), batch_size=None, num_workers=min(workers, len(keys)), pin_memory=pin,
                        generator=torch.Generator().manual_seed(0))
    yield from loader


class _Keyed:
    """A map-style dataset whose j-th item is ``load(keys[j])``."""

    def __init__(self, load, keys: list):
        self.load, self.keys = load, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, j: int):
        return self.load(self.keys[j])


def prefetch(keys: Iterable, load, depth: int = 2) -> Iterator:
    """``load(key)`` for every key, in order, the next ones loaded in a background thread while the
    caller uses the current one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque = deque()
        for key in keys:
            pending.append(pool.submit(load, key))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def is_cuda(device) -> bool:
    """Whether ``device`` (a torch.device or its name) is a CUDA GPU."""
    import torch

    return torch.device(device).type == "cuda"


def cpu_lanes(device, jobs: int = 2) -> int:
    """How many jobs run side by side: on the CPU up to 2 (each with half of the thread budget),
    on other devices 1. The small convolutions of the default backbone keep one thread busy but
    not two: two lanes of one thread each made 1.5x the images per second of one lane of two in
    fine-tuning and 1.3x in inference on 2 cores (docs/benchmarks.md "Fold runs side by side");
    more than 2 lanes is not measured."""
    import torch

    return min(2, jobs, torch.get_num_threads()) if torch.device(device).type == "cpu" else 1


@contextlib.contextmanager
def _lane_threads(lanes: int) -> Iterator[None]:
    """torch's intra-op threads split between ``lanes`` lanes, restored afterwards."""
    import torch

    budget = torch.get_num_threads()
    torch.set_num_threads(max(1, budget // lanes))
    try:
        yield
    finally:
        torch.set_num_threads(budget)


@contextlib.contextmanager
def lane_pool(device, jobs: int = 2) -> Iterator[ThreadPoolExecutor | None]:
    """Threads for work side by side (cpu_lanes), torch's threads split between them for the
    duration; None where one lane is all there is (this thread does the work)."""
    lanes = cpu_lanes(device, jobs)
    if lanes < 2:
        yield None
        return
    with _lane_threads(lanes), ThreadPoolExecutor(lanes) as pool:
        yield pool


def in_lanes(jobs: list[Callable[[], T]], device) -> list[T]:
    """The jobs' results, in order; on the CPU two at a time, side by side in threads (cpu_lanes).
    A job must not draw from torch's global generator (its draws would depend on timing)."""
    with lane_pool(device, len(jobs)) as pool:
        return [job() for job in jobs] if pool is None else list(pool.map(lambda job: job(), jobs))


def lanes_map(fn: Callable[[Any], T], items: Iterable, device) -> Iterator[T]:
    """``fn(item)`` for every item, in order; on the CPU two items at a time in threads
    (cpu_lanes: featurize's, evaluate's and predict's forward passes). ``fn`` runs in another
    thread: it enters its own no_grad / autocast contexts (they are thread-local)."""
    with lane_pool(device) as pool:
        if pool is None:
            yield from map(fn, items)
            return
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def chunks(items: list, size: int) -> list[list]:
    """Consecutive chunks of ``size`` items, in input order (runtime.shard_size: a worker's share)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def _env_threads() -> int:
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return 0


def available_cpus(cgroup: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us``), as containers and CI runners set them; never
    ``os.cpu_count()`` alone, which counts the host's cores."""
    import math
    from pathlib import Path

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    root = Path(cgroup)
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota not in ("max", "-1") and int(period) > 0:
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
