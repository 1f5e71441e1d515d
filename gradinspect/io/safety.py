"""Untrusted input stops here, before Keras or h5py reads a byte it should not.

Every model and data file is treated as written by an attacker:

- **Only regular files** are opened: a FIFO, socket or device would block or stream forever.
- **HDF5** (models, weights, data, labels): no external links, no soft links that lead through
  one, no external raw storage, no virtual datasets — each would make the tool read another
  file — and no dataset whose stored bytes are implausibly few for its declared size (chunks
  never written: gigabytes of fill values from a file of kilobytes).
- **Model configs** are read as JSON and checked against an allow-list before Keras builds
  anything. The rule is on what each entry *resolves to* by Keras' own lookup rules
  (``gradinspect.io.resolve``), not on its spelling: every ``Lambda`` (whatever it wraps),
  ``TFSMLayer``, lookup and vectorization layers whose vocabulary is a file, any function that
  is not a modelling function, and any object that is neither Keras' nor from the modules the
  user imported with ``--custom-objects``, are refused unless ``--unsafe``; so is a config
  nested deeper than ``MAX_DEPTH``.
- **Budgets**: the weights a model allocates while it is built are counted as they are
  created, and the build stops before the total passes ``max_model_bytes``.

No TensorFlow here; h5py is imported where HDF5 is read.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gradinspect.errors import DataError, ModelLoadError

if TYPE_CHECKING:
    from gradinspect.io.resolve import Found, Refusal

MAX_DEPTH = 200
"""Deepest nesting of a model config (a Functional model 20 levels deep is about 120)."""
MAX_HDF5_OBJECTS = 200_000
"""Links walked in one HDF5 file before it is refused as a maze."""
SPARSE_MIN_BYTES = 64 << 20
"""Datasets declaring at least this many bytes must store at least 1/``SPARSE_RATIO`` of them."""
SPARSE_RATIO = 1024
"""Declared / stored bytes beyond which a dataset is implausible (gzip's best is ~1000:1)."""

ErrorType = type[ModelLoadError] | type[DataError]


def require_regular_file(path: Path, kind: str, error: ErrorType) -> None:
    """Refuse a FIFO, socket or device without opening it (directories are the caller's)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise error(f"{kind} file cannot be read: {path} ({exc.strerror})",
                    "check the path and its permissions") from exc
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return
    what = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
    raise error(f"{path}: is {what}, not a regular file; refused (reading it could block "
                "forever)", f"pass the {kind} file itself")


# ---------------------------------------------------------------- HDF5


def check_hdf5(source: Any, label: str, error: ErrorType) -> int:
    """Walk every link of an HDF5 file (a path or an open binary file object) and refuse what
    would read outside it or inflate from nothing; raise ``error`` naming the object. Returns
    the bytes its datasets declare (what the file can give a model as weights)."""
    import h5py

    try:
        with h5py.File(source, "r") as f:
            return _walk_hdf5(f, label, error)
    except (ModelLoadError, DataError):
        raise
    except Exception as exc:  # h5py raises OSError, RuntimeError, KeyError ... on damage
        raise error(f"{label}: damaged HDF5 file ({str(exc).splitlines()[0] if str(exc) else ''})",
                    "save or download it again") from exc


def _walk_hdf5(f: Any, label: str, error: ErrorType) -> int:
    import h5py

    hint = "refused: it would make gradinspect read another file; save the data into this file"
    seen: set[Any] = set()
    stack: list[tuple[Any, str]] = [(f, "/")]
    count = declared = 0
    while stack:
        group, where = stack.pop()
        for name in group:
            count += 1
            if count > MAX_HDF5_OBJECTS:
                raise error(f"{label}: more than {MAX_HDF5_OBJECTS} HDF5 objects", "refused")
            path = f"{where.rstrip('/')}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise error(f"{label}: {path} is an external link to {link.filename!r}", hint)
            if isinstance(link, h5py.SoftLink):
                _check_soft_link(f, path, link.path, label, error, hint)
                continue  # its target is walked where it is hard-linked
            obj = group.get(name)
            key = h5py.h5o.get_info(obj.id).addr if hasattr(h5py.h5o, "get_info") else path
            if key in seen:
                continue
            seen.add(key)
            if isinstance(obj, h5py.Dataset):
                declared += _check_dataset(obj, path, label, error, hint)
            elif isinstance(obj, h5py.Group):
                stack.append((obj, path))
    return declared


def _check_soft_link(f: Any, path: str, target: str, label: str, error: ErrorType,
                     hint: str) -> None:
    """A soft link stays in the file, but its target path may pass through an external link."""
    import h5py

    node: Any = f
    parts = [p for p in target.split("/") if p]
    if not target.startswith("/"):
        raise error(f"{label}: {path} is a relative soft link ({target!r})", "refused")
    for depth, part in enumerate(parts):
        if depth > 64 or not isinstance(node, h5py.Group) or part not in node:
            return  # dangling: reading it fails inside the file, nothing outside is touched
        link = node.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise error(f"{label}: {path} is a soft link through an external link to "
                        f"{link.filename!r}", hint)
        if isinstance(link, h5py.SoftLink):
            return  # a chain of soft links: each is checked where it stands
        node = node.get(part)


def _check_dataset(ds: Any, path: str, label: str, error: ErrorType, hint: str) -> int:
    plist = ds.id.get_create_plist()
    if getattr(ds, "is_virtual", False):
        raise error(f"{label}: {path} is a virtual dataset (its data lives in other files)",
                    hint)
    if plist.get_external_count() > 0:
        raise error(f"{label}: {path} keeps its data in external raw files", hint)
    declared = math.prod(int(d) for d in (ds.shape or ())) * int(ds.dtype.itemsize)
    if declared >= SPARSE_MIN_BYTES:
        stored = int(ds.id.get_storage_size())
        if stored * SPARSE_RATIO < declared:
            raise error(f"{label}: {path} declares {declared:,} bytes but stores {stored:,}: "
                        "an implausible ratio (chunks never written); refused",
                        "write the data into the file in full")
    return declared


def check_keras_archive(path: Path, error: ErrorType = ModelLoadError) -> int:
    """The HDF5 weights inside a ``.keras`` zip, under the same rules; returns the bytes their
    datasets declare. Each member is copied once into an anonymous temporary file first: HDF5
    seeks back and forth, and a zip member seeks backwards by decompressing from its start
    again (0.7 s on MobileNetV2's weights)."""
    import shutil
    import tempfile

    declared = 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename.endswith(".h5"):
                    with z.open(info) as member, tempfile.TemporaryFile() as copy:
                        shutil.copyfileobj(member, copy, 1 << 20)
                        copy.seek(0)
                        declared += check_hdf5(copy, f"{path} ({info.filename})", error)
    except (ModelLoadError, DataError):
        raise
    except Exception as exc:  # zip and zlib raise many kinds on damaged bytes
        raise error(f"{path}: damaged zip archive ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''})",
                    "save or download it again") from exc
    return declared


# ---------------------------------------------------------------- model configs


UNSAFE_HINT = ("if and only if you trust where the file came from, pass --unsafe "
               "(and --custom-objects for your own modules)")
UNKNOWN_HINT = ("if it is your own code, pass the file that defines it: --custom-objects "
                "my_layers.py (--unsafe skips this check: only for files you trust)")


class ConfigJudge(Protocol):
    """What ``scan_config`` asks of a resolver (``gradinspect.io.resolve.Resolver``, which needs
    Keras; this module does not)."""

    def judge(self, node: Mapping[str, Any]) -> tuple[Sequence[Found], Refusal | None]: ...
    def judge_string(self, value: str, config_value: bool) -> Refusal | None: ...
    def is_layer(self, found: Sequence[Found]) -> bool: ...


def scan_config(config: Any, label: str, judge: ConfigJudge) -> None:
    """Refuse a config that would run code or read files when Keras builds it: every entry
    Keras would deserialize (a dict with a ``class_name``) is resolved by Keras' lookup rules
    and the object it resolves to must be admitted (``gradinspect.io.resolve``), and so must every
    string that Keras would swap for a registered object; nesting deeper than ``MAX_DEPTH`` is
    refused too. The message names the enclosing layer, the spelling and what it resolved to."""
    stack: list[tuple[Any, int, str, bool]] = [(config, 0, "", False)]
    while stack:
        node, depth, layer, config_value = stack.pop()
        if depth > MAX_DEPTH:
            raise ModelLoadError(f"{label}: the model config is nested more than {MAX_DEPTH} "
                                 "levels deep", "refused: no real model nests this deep")
        if isinstance(node, str):
            refusal = judge.judge_string(node, config_value)
            if refusal is not None:
                _refuse(label, layer, f"the string {node!r}", refusal, None)
            continue
        if isinstance(node, list):
            stack.extend((v, depth + 1, layer, False) for v in node)
            continue
        if not isinstance(node, dict):
            continue
        inner = node.get("config")
        if isinstance(node.get("class_name"), str):
            found, refusal = judge.judge(node)
            name = inner.get("name") if isinstance(inner, dict) else None
            if isinstance(name, str) and (not found or judge.is_layer(found)):
                layer = f"layer {name!r}"
            if refusal is not None:
                _refuse(label, layer, spelling(node), refusal, _wrapped(node, judge))
            if isinstance(inner, dict):
                stack.extend((v, depth + 2, layer, k != "name") for k, v in inner.items())
            stack.extend((v, depth + 1, layer, False) for k, v in node.items() if k != "config")
            continue
        stack.extend((v, depth + 1, layer, False) for v in node.values())


def _wrapped(node: Mapping[str, Any], judge: ConfigJudge) -> str | None:
    """For a layer that wraps a function (``Lambda``): how the file spells it, and what it
    resolves to."""
    inner = node.get("config")
    fn = inner.get("function") if isinstance(inner, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("class_name"), str):
        return None
    found, _ = judge.judge(fn)
    resolved = found[0].how if found else ""
    return spelling(fn) + (f", which resolves to {resolved}" if resolved else "")


def _refuse(label: str, layer: str, spelled: str, refusal: Refusal,
            wrapped: str | None) -> None:
    where = f"{layer}: " if layer else ""
    what = f"{spelled} resolves to {refusal.resolved}, which" if refusal.resolved else spelled
    extra = f" (it wraps the function {wrapped})" if wrapped else ""
    raise ModelLoadError(f"{label}: {where}{what} {refusal.reason}{extra}; refused",
                         refusal.hint or (UNKNOWN_HINT if refusal.unknown else UNSAFE_HINT))


def spelling(node: Mapping[str, Any]) -> str:
    """How a config spells an entry: ``'layers.Lambda' (module 'keras')``."""
    cls = node.get("class_name")
    spelled = node.get("config") if cls == "function" else cls
    module = node.get("module")
    text = f"{str(spelled)!r}"
    if isinstance(module, str):
        text += f" (module {module!r})"
    return text


# ---------------------------------------------------------------- budgets


def human_bytes(n: int) -> str:
    """``64 MiB``, ``1.5 GiB``: a size for a message."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def available_memory() -> int:
    """Bytes the machine can still give (MemAvailable), or 8 GiB when it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


STORED_SLACK = 64 << 20
"""Bytes a model may create beyond twice what its file stores (state Keras creates and does not
save, a float16 file read into float32 variables)."""


def stored_weight_limit(stored: int) -> int:
    """The most weight bytes a model whose file stores ``stored`` bytes of datasets may create:
    a model cannot need much more than the weights it carries, so a config that declares a
    50000 x 50000 Dense in a file of kilobytes is refused before ``build`` allocates 10 GB."""
    return 2 * stored + STORED_SLACK


@contextmanager
def weight_budget(keras: Any, label: str, limit: int,
                  stored: int | None = None) -> Iterator[None]:
    """Count the bytes of every weight the model creates while it is built (Keras builds the
    layers from the config before reading a single stored weight) and stop the build before
    the total passes ``limit`` (the memory the machine has, or ``--max-model-bytes``) or, when
    ``stored`` (the bytes the file's weights declare) is given, ``stored_weight_limit``."""
    import numpy as np

    layer_class = keras.layers.Layer
    original = layer_class.add_weight
    total = [0]

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        shape = kwargs.get("shape", args[0] if args else None)
        dtype = kwargs.get("dtype") or getattr(self, "variable_dtype", None) or "float32"
        try:
            itemsize = np.dtype(str(getattr(dtype, "name", dtype))).itemsize
        except TypeError:
            itemsize = 4
        dims = [int(d) for d in (shape or ()) if d is not None]
        total[0] += math.prod(dims) * itemsize
        if stored is not None and total[0] > min(limit, stored_weight_limit(stored)):
            raise ModelLoadError(
                f"{label}: the model's config declares more weights than the file stores "
                f"(layer {getattr(self, 'name', '?')!r} asks for a {tuple(dims)} weight, "
                f"{human_bytes(total[0])} so far; the file holds {human_bytes(stored)}); "
                "refused before allocating it",
                "the file is damaged or not what it claims; save or download it again")
        if total[0] > limit:
            raise ModelLoadError(
                f"{label}: the model's weights need more than {human_bytes(limit)} "
                f"(layer {getattr(self, 'name', '?')!r} asks for a {tuple(dims)} weight); "
                "refused before allocating it",
                "pass --max-model-bytes SIZE if the machine really has the memory")
        return original(self, *args, **kwargs)

    layer_class.add_weight = counted
    try:
        yield
    finally:
        layer_class.add_weight = original
