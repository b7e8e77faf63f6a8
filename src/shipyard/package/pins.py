"""Requirements pinned from the running environment: the distributions a model needs, at their installed versions.

A package made from a trained object must install the libraries that object was made with, at the
same versions (a pickle written by one scikit-learn may not load in another). The modules a model
needs come from its format's framework and, for pickled objects, from the pickle itself: every
``GLOBAL`` / ``STACK_GLOBAL`` opcode names a module the unpickler imports. Modules map to the
distributions that installed them with :func:`importlib.metadata.packages_distributions`.
Shipyard itself and the standard library are never pinned.
"""

from __future__ import annotations

import importlib.metadata
import pickletools
import sys
from functools import lru_cache
from typing import Any, Callable, Iterable

#: Distributions that must never appear in a model's requirements (the server installs itself).
NEVER_PINNED = frozenset({"shipyard"})
#: Modules a pickle may reference that belong to no distribution.
NOT_INSTALLED = frozenset({"__main__", "__mp_main__"})

#: Modules each format's runtime imports to serve a model (besides what the artifact references).
FORMAT_MODULES: dict[str, tuple[str, ...]] = {
    "sklearn": ("numpy", "sklearn", "joblib"),
    "xgboost": ("numpy", "xgboost"),
    "lightgbm": ("numpy", "lightgbm"),
    "onnx": ("numpy", "onnxruntime"),
    "pytorch": ("numpy", "torch"),
    "huggingface": ("numpy", "torch", "transformers", "tokenizers"),
    "python": ("numpy",),
}


def pickle_modules(data: bytes) -> set[str]:
    """The modules a pickle's ``GLOBAL`` and ``STACK_GLOBAL`` opcodes import, found without unpickling it.

    ``STACK_GLOBAL`` takes its module and name from the stack; the pickler pushes them as strings
    just before it, or fetches them from the memo when the same string was written earlier, so
    the memo is followed too.
    """
    modules: set[str] = set()
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # what each opcode left on top of the stack (None when not a string)
    for opcode, argument, _ in pickletools.genops(data):
        name = opcode.name
        if name == "GLOBAL":
            modules.add(str(argument).split(" ", 1)[0])
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            if len(pushed) >= 2 and isinstance(pushed[-2], str):
                modules.add(pushed[-2])
            pushed.append(None)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(argument)] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(int(argument)))
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(argument)
        else:
            pushed.append(None)
    return modules


def object_modules(obj: Any, dumps: Callable[..., bytes]) -> set[str]:
    """The modules that unpickling ``obj`` (as written by ``dumps``, e.g. ``pickle.dumps``) would import.

    Protocol 5 with a buffer callback keeps large array buffers out of the bytes analysed.
    """
    data = dumps(obj, protocol=5, buffer_callback=lambda buffer: None)
    return pickle_modules(data)


def _is_stdlib(top: str) -> bool:
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


@lru_cache(maxsize=1)
def _module_owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(module: str) -> str | None:
    """The installed distribution (its metadata name) that provides ``module``, or None."""
    top = module.split(".", 1)[0]
    owners = list(dict.fromkeys(_module_owners().get(top, [])))
    if len(owners) > 1:  # a namespace package (google.*): find who ships the submodule's folder
        prefix = "/".join(module.split(".")[:2])
        owners = [name for name in owners if any(str(f).startswith(prefix) for f in _files(name))] or owners[:1]
    if not owners:
        return None
    return importlib.metadata.distribution(owners[0]).metadata["Name"]


def _files(distribution: str) -> list[Any]:
    try:
        return list(importlib.metadata.distribution(distribution).files or [])
    except importlib.metadata.PackageNotFoundError:
        return []


def pin(distribution: str) -> str:
    """``name==version`` for an installed distribution; a local version label (``+cpu``) is dropped,
    since ``==2.3.0`` already matches ``2.3.0+cpu`` and PyPI has no local versions."""
    version = importlib.metadata.version(distribution).split("+", 1)[0]
    return f"{distribution}=={version}"


def pin_modules(modules: Iterable[str]) -> tuple[list[str], list[str]]:
    """Pins for the distributions providing ``modules``, and the modules no distribution provides.

    Standard-library modules, ``__main__`` and Shipyard are left out of both lists.
    """
    pins: dict[str, str] = {}
    unowned: list[str] = []
    for module in sorted(set(modules)):
        top = module.split(".", 1)[0]
        if not top or top in NOT_INSTALLED or _is_stdlib(top):
            continue
        distribution = distribution_of(module)
        if distribution is None:
            if top not in unowned and top != "shipyard":
                unowned.append(top)
            continue
        if distribution.lower() in NEVER_PINNED:
            continue
        pins.setdefault(distribution.lower(), pin(distribution))
    return sorted(pins.values(), key=str.lower), unowned


def format_requirements(fmt: str, extra_modules: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Pins for serving a model of format ``fmt`` plus the modules its artifact references."""
    return pin_modules([*FORMAT_MODULES.get(fmt, ("numpy",)), *extra_modules])
