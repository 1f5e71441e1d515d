"""The pass on ``tf.distribute``: which strategy, which rows each worker reads, what the report
says about the execution.

- ``none``: today's single-device step.
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the visible GPUs (the first N with
  ``--replicas N``); on a host without GPUs, ``--replicas N`` splits the CPU into N logical
  devices, which runs the distributed engine anywhere.
- ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster in the
  standard ``TF_CONFIG`` environment variable, one process per worker.

Every batch of the run is the batch a single device would see. Of each batch (rows
``start:stop``), worker ``w`` of ``W`` reads only its contiguous share
``start + n*w//W : start + n*(w+1)//W`` (``n = stop - start``) from the .npy/HDF5 file, and
splits it the same way over its replicas; the strategy's collectives merge the replicas'
figures (``engine.layout``), so every worker holds the whole batch's figures, in row order.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradinspect.errors import UsageError
from gradinspect.report import ExecutionInfo

KINDS = ("none", "mirrored", "multiworker")

DEFAULT_TIMEOUT = 600.0
"""Seconds a collective (a step's merge) waits for the other replicas and workers."""


@dataclass(frozen=True)
class DistributeOptions:
    """How to distribute the pass (the command line's ``--distribute``, ``--replicas``,
    ``--worker-timeout``)."""

    kind: str = "none"
    """``none``, ``mirrored`` or ``multiworker``."""
    replicas: int | None = None
    """``mirrored``: this many devices (the first GPUs, or logical CPUs without GPUs)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds a merge waits for the others before the run fails (a worker that died)."""


def share(start: int, stop: int, part: int, parts: int) -> tuple[int, int]:
    """Part ``part`` of ``parts`` contiguous shares of rows ``start:stop`` (the later parts
    get the extra rows when they do not divide evenly)."""
    n = stop - start
    return start + n * part // parts, start + n * (part + 1) // parts


def tf_config_role(environ: Any = None) -> tuple[int, int]:
    """(this worker's index, the number of workers) from ``TF_CONFIG`` (a ``chief`` task,
    when the cluster has one, is worker 0 and the ``worker`` tasks follow)."""
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG")
    hint = ('set TF_CONFIG to {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}} on each worker')
    if not text:
        raise UsageError("--distribute multiworker needs the TF_CONFIG environment variable",
                         hint)
    try:
        config = json.loads(text)
        cluster = config["cluster"]
        task = config["task"]
        chiefs = list(cluster.get("chief", []))
        workers = list(cluster.get("worker", []))
        kind, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"TF_CONFIG is not a cluster description ({type(exc).__name__}: "
                         f"{exc})", hint) from exc
    others = sorted(set(cluster) - {"chief", "worker"})
    if others:
        raise UsageError(f"TF_CONFIG has {', '.join(others)} tasks; --distribute multiworker "
                         "runs chief and worker tasks only", hint)
    total = len(chiefs) + len(workers)
    position = {"chief": 0, "worker": len(chiefs) + index}.get(kind)
    if position is None or index < 0 or index >= len(chiefs if kind == "chief" else workers) \
            or len(chiefs) > 1 or total < 1:
        raise UsageError(f"TF_CONFIG's task {kind!r} {index} is not in its cluster "
                         f"({len(chiefs)} chief, {len(workers)} workers)", hint)
    return position, total


def check_options(options: DistributeOptions) -> None:
    """Refuse a combination that cannot run, before TensorFlow is imported."""
    if options.kind not in KINDS:
        raise UsageError(f"--distribute {options.kind!r} is not known",
                         "use none, mirrored or multiworker")
    if options.replicas is not None and options.kind != "mirrored":
        raise UsageError("--replicas is for --distribute mirrored",
                         "add --distribute mirrored" if options.kind == "none" else
                         "multiworker runs on each worker's GPUs (or its CPU); drop --replicas")
    if options.kind == "multiworker":
        tf_config_role()


def make_strategy(options: DistributeOptions) -> Any:
    """The strategy for ``options`` (``None`` for ``none``). Call it before TensorFlow runs
    anything: logical CPUs and the multi-worker runtime are set up once, at start."""
    check_options(options)
    if options.kind == "none":
        return None
    from gradinspect._tf import tf_modules

    tf, _ = tf_modules()
    if options.kind == "multiworker":
        return _multiworker(tf, options.timeout)
    return tf.distribute.MirroredStrategy(_mirrored_devices(tf, options.replicas))


def _multiworker(tf: Any, timeout: float) -> Any:
    """``MultiWorkerMirroredStrategy`` whose collectives give up after ``timeout`` seconds.
    Making it waits, in TensorFlow's runtime, until every worker of the cluster is up, with
    no limit of its own: the command line bounds that wait (``supervised``)."""
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=timeout))


def supervised(body: Callable[[Callable[[str], None]], int], timeout: float) -> int:
    """Run ``body(beat)`` in a child process and return its exit status; fail when
    ``timeout`` seconds pass without a ``beat``.

    A multi-worker run whose peer never started or died waits inside TensorFlow's runtime,
    which holds the interpreter (no Python thread or signal handler runs) and keeps SIGTERM
    for itself. So the command line forks before TensorFlow is imported: the child runs the
    pass and reports each step through a pipe; the parent, which never imports TensorFlow,
    ends a child that stays silent and says what it was waiting for. ``beat(what)`` says
    what the child does next. The child's stdout and stderr are the parent's.
    """
    from gradinspect.errors import ProbeError

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report, exit without returning into the caller
        os.close(read_end)
        status = 5

        def beat(what: str) -> None:
            os.write(write_end, what.replace("\n", " ").encode()[:400] + b"\n")

        try:
            status = body(beat)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    what, pending = "starting", b""
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise ProbeError(
                    f"no answer from the other workers within {timeout:g} s while {what}",
                    "start every worker in TF_CONFIG (each with its own task index) and check "
                    "that they reach each other; --worker-timeout sets how long to wait")
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            if lines:
                what = lines[-1].decode(errors="replace")
    except BaseException:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        os.close(read_end)
    _, code = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(code)
    if status < 0:
        raise ProbeError(f"the inspection process ended by signal {-status} while {what}",
                         "run with --traceback for details")
    return status


def _mirrored_devices(tf: Any, replicas: int | None) -> list[str]:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if replicas is not None and replicas > len(gpus):
            raise UsageError(f"--replicas {replicas}: this host has {len(gpus)} GPUs",
                             f"use --replicas {len(gpus)} or fewer")
        return [f"/gpu:{i}" for i in range(replicas or len(gpus))]
    n = replicas or 1
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:  # the runtime is up already: use the logical CPUs it has
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise UsageError(f"--replicas {n}: TensorFlow started with {have} logical CPUs",
                             "split the CPU before TensorFlow runs anything "
                             "(gradinspect.distribute.make_strategy first)") from None
    return [f"/cpu:{i}" for i in range(n)]


def describe(strategy: Any) -> ExecutionInfo:
    """Where a strategy runs the pass (``None``, or TensorFlow's default strategy: one
    device). Refuses strategies the pass does not run on."""
    if strategy is None:
        return ExecutionInfo()
    from gradinspect._tf import tf_modules

    tf, _ = tf_modules()
    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        return ExecutionInfo()
    devices = tuple(str(d) for d in getattr(strategy.extended, "worker_devices", ()))
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
        chiefs = len(spec.get("chief", []))
        workers = chiefs + len(spec.get("worker", []))
        task = resolver.task_type if resolver is not None else "worker"
        index = int(resolver.task_id or 0) if resolver is not None else 0
        return ExecutionInfo("multiworker", strategy.num_replicas_in_sync, max(workers, 1),
                             0 if task == "chief" else chiefs + index, devices)
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return ExecutionInfo("mirrored", strategy.num_replicas_in_sync, 1, 0, devices)
    raise UsageError(f"{type(strategy).__name__} is not supported",
                     "use tf.distribute.MirroredStrategy or MultiWorkerMirroredStrategy")


def effective(strategy: Any) -> Any:
    """``strategy``, or ``None`` when it runs on one device (TensorFlow's default strategy:
    what ``model.distribute_strategy`` gives for a model built outside any scope)."""
    return None if describe(strategy).strategy == "none" else strategy


def first_replica(strategy: Any) -> int:
    """The replica id (in sync group) of this worker's first replica: workers number their
    replicas one after the other, the chief first."""
    info = describe(strategy)
    return info.worker * len(info.devices)


def diverged_variables(model: Any) -> list[tuple[str, float]]:
    """Non-trainable variables (BatchNormalization's moving statistics ...) whose copies on
    the replicas differ, with the largest difference: Keras updates them on each replica
    from that replica's batches when it trains under a strategy, so each replica's pass
    normalises with its own copy, and a single-device run (which reads the first) differs."""
    found = []
    for variable in getattr(model, "non_trainable_variables", None) or []:
        copies = getattr(getattr(variable, "value", variable), "values", None)
        if not isinstance(copies, tuple) or len(copies) < 2:
            continue
        first = np.asarray(copies[0].numpy())
        worst = max(float(np.max(np.abs(np.asarray(c.numpy()) - first), initial=0.0))
                    for c in copies[1:])
        if worst > 0 or not np.isfinite(worst):
            found.append((str(getattr(variable, "path", variable.name)), worst))
    return found
