"""Unpickling files mmzoo did not write, with an allow-list of globals.

A pickle runs whatever function its author names (``os.system`` through ``__reduce__``) the moment it
is loaded. Two formats mmzoo reads are pickles by design: the CIFAR-10 python batches and the
``.metadata`` file of a torch distributed (sharded) checkpoint. Both are read by
:class:`RestrictedUnpickler`, which resolves only the globals listed for that format and refuses every
other one with :class:`UnsafePickleError`, naming the file and the global it asked for. Tensors and
checkpoints go through ``torch.load(weights_only=True)``, torch's own allow-list, instead.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, Callable, Collection, Mapping, Union

Resolver = Callable[[str, str], Any]
Allowed = Union[Collection[tuple[str, str]], Mapping[tuple[str, str], Any], Resolver]
PathLike = Union[str, os.PathLike]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that asks for a global outside the allow-list of its format (a possible code payload)."""


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only allowed globals.

    Args:
        file: binary file object.
        allowed: the ``(module, name)`` pairs resolved as usual (a set), or ``{(module, name): object}``
            handing back ``object`` for the global ``module.name``, or a function ``(module, name) -> object``
            raising ``KeyError`` for refused names.
        source: how messages name the file.
        **kwargs: ``pickle.Unpickler`` options (``encoding="bytes"`` for Python 2 pickles).
    """

    def __init__(self, file: io.BufferedIOBase, allowed: Allowed, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.allowed, self.source = allowed, source

    def find_class(self, module: str, name: str) -> Any:
        try:
            if callable(self.allowed):
                return self.allowed(module, name)
            if isinstance(self.allowed, Mapping):
                return self.allowed[(module, name)]
            if (module, name) in self.allowed:
                return super().find_class(module, name)
            raise KeyError(name)
        except KeyError:
            raise UnsafePickleError(f"{self.source} asks for the Python object {module}.{name}, which this format "
                                    f"never holds; refusing to load it (a pickle can run code when it is loaded: "
                                    f"only use files from a source you trust)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source} holds a persistent reference ({str(pid)[:60]!r}), which this "
                                f"format never holds; refusing to load it")


def restricted_load(path: PathLike, allowed: Allowed, what: str, **kwargs: Any) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure names the file and ``what`` it
    should be (``UnsafePickleError`` for a refused global, ``ValueError`` for a broken file)."""
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, allowed, str(path), **kwargs).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated / garbled pickles raise many types
            raise ValueError(f"{path} is not a readable {what} ({type(e).__name__}: {e})") from e
