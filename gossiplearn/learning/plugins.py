"""A user's own code, named by a string: ``MODULE:CALLABLE`` or ``path/to/file.py:CALLABLE``.

The same strings work on the command line, in scenario files and in the Python API, so a
scenario that names ``mypkg.nets:Small`` runs the same model in the simulator and on real
peers. Every failure (no such file or module, an import that raises, no such callable)
becomes the caller's :class:`~gossiplearn.errors.ConfigError` subclass naming the flag, so
the CLI exits 2 with the user's own message in it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossiplearn.errors import ConfigError


def is_plugin(spec: str) -> bool:
    """Whether ``spec`` names a user's callable rather than a registry entry."""
    target, sep, name = spec.rpartition(":")
    return bool(sep and target and name)


def load_callable(
    spec: str, flag: str, error: type[ConfigError] = ConfigError
) -> Callable[..., Any]:
    """The callable ``spec`` names; ``error`` (naming ``flag``) if it cannot be had."""
    target, _, name = spec.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        namespace = _module_from_file(Path(target).expanduser(), spec, flag, error)
    else:
        namespace = _module(target, spec, flag, error)
    found = getattr(namespace, name, None)
    if found is None:
        public = sorted(n for n, v in vars(namespace).items() if callable(v) and n[0] != "_")
        raise error(
            f"{flag} {spec!r}: {target} has no {name!r}"
            + (f" (it has: {', '.join(public[:12])})" if public else "")
        )
    if not callable(found):
        raise error(f"{flag} {spec!r}: {name!r} in {target} is a {type(found).__name__}, not "
                    "a callable")  # fmt: skip
    return found


def _module(target: str, spec: str, flag: str, error: type[ConfigError]) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as missing:
        if missing.name and target.startswith(missing.name):
            raise error(
                f"{flag} {spec!r}: no module named {missing.name!r} (is it installed, or on "
                "PYTHONPATH? a file is named as path/to/file.py:CALLABLE)"
            ) from None
        raise error(f"{flag} {spec!r}: importing {target} failed: {_said(missing)}") from None
    except Exception as failed:  # the user's module raised while importing
        raise error(f"{flag} {spec!r}: importing {target} failed: {_said(failed)}") from None


def _module_from_file(path: Path, spec: str, flag: str, error: type[ConfigError]) -> Any:
    if not path.is_file():
        raise error(f"{flag} {spec!r}: there is no file {path}")
    resolved = path.resolve()
    # One module per file, under a name of its own, so two files called model.py coexist
    # and loading the same file twice gives the same module (and the same classes).
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"gossiplearn_user_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise error(f"{flag} {spec!r}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException as failed:
        del sys.modules[name]
        if not isinstance(failed, Exception):
            raise
        raise error(f"{flag} {spec!r}: importing {path} failed: {_said(failed)}") from None
    return module


def call_user(
    function: Callable[..., Any], spec: str, flag: str, error: type[ConfigError], **kwargs: Any
) -> Any:
    """``function(**kwargs)``; what it raises becomes ``error`` showing its message."""
    try:
        return function(**kwargs)
    except Exception as failed:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise error(f"{flag} {spec!r}: calling it with ({shown}) raised {_said(failed)}") from None


def _said(failed: BaseException) -> str:
    """The exception as the user would read it, with where it was raised in their code."""
    frames = traceback.extract_tb(failed.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(failed).__name__}: {failed}{where}"
