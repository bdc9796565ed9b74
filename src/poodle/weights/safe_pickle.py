"""Read foreign PyTorch checkpoints without running any code from them.

The authors' PooDLe and FlowE checkpoints, DINO's full checkpoints and PixPro's training files pickle more than
tensors: an OmegaConf config, an `argparse.Namespace`, numpy scalars. `torch.load(weights_only=True)` refuses them;
`weights_only=False` would call whatever the pickle names. `read_foreign(path)` takes a third way:

- torch's own storage loader reads the tensors (zip or legacy format), behind an unpickler whose `find_class` is
  the only door to Python objects;
- the globals torch's weights-only loader allows (tensor rebuild functions, storages, dtypes, `OrderedDict`, ...)
  and a few numpy data constructors are the real ones;
- every other class becomes an inert stand-in (`Opaque`): constructing it only records its name, arguments and
  state, so a config object turns into plain data and a callable is never called;
- a global that is a way to run code (`os.system`, `subprocess.*`, `builtins.eval`, `importlib`, ...) is refused by
  name with `UnsafeCheckpointError`, so a malicious file is reported rather than silently defanged.

The result is converted to plain data (`plain`): dicts, lists, tensors (detached, without hooks), numbers, strings,
and `{"__class__": "omegaconf.dictconfig.DictConfig", ...}` records for the stand-ins, with OmegaConf containers
unwrapped to their values. Nothing here needs the foreign packages installed.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import torch

# Modules and names whose globals exist to run code, import code or touch the system: refused by name.
_DANGEROUS_MODULES = (
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pickle", "_pickle",
    "marshal", "ctypes", "code", "codeop", "pty", "webbrowser", "multiprocessing", "threading", "signal", "asyncio",
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.__import__", "builtins.open", "builtins.getattr",
    "builtins.setattr", "builtins.delattr", "builtins.globals", "builtins.locals", "builtins.vars", "builtins.input",
    "builtins.breakpoint", "builtins.apply", "commands", "pdb", "timeit", "platform", "shlex",
    "operator.attrgetter", "operator.methodcaller", "functools.partial", "types", "inspect", "torch.hub",
    "torch.ops", "torch._ops", "torch.load", "torch.jit", "torch.package", "torch.serialization", "numpy.load",
    "numpy.lib.npyio", "numpy.testing", "numpy.f2py", "numpy.distutils", "pandas.io", "yaml", "dill", "joblib",
)  # fmt: skip
# Harmless builtins that rebuild plain data.
_BUILTINS_OK = {"set", "frozenset", "complex", "bytearray", "bytes", "slice", "range", "list", "dict", "tuple",
                "int", "float", "str", "bool", "object"}  # fmt: skip
# numpy's data constructors (numpy scalars and arrays pickle through them); they build data, never call out.
_NUMPY_OK = {
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}  # fmt: skip


class UnsafeCheckpointError(RuntimeError):
    """The file names a global that runs code; nothing from it was executed."""


class Opaque:
    """Inert stand-in for a class the file names that is not plain data. Records, never runs."""

    _poodle_global = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_kwargs"] = kwargs
        obj.__dict__["_state"] = None
        obj.__dict__["_items"] = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ARG002 - recorded by __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS on a dict subclass
        self.__dict__["_items"].append((key, value))

    def append(self, value: Any) -> None:  # APPENDS on a list subclass
        self.__dict__["_items"].append((None, value))

    def extend(self, values: Any) -> None:
        for v in values:
            self.append(v)

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:  # an instance used as a callable: record, no call
        return _opaque_class(f"{self._poodle_global}()")(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<inert {self._poodle_global}>"


_OPAQUE_CLASSES: dict[str, type] = {}


def _opaque_class(name: str) -> type:
    cls = _OPAQUE_CLASSES.get(name)
    if cls is None:
        cls = _OPAQUE_CLASSES[name] = type(f"Opaque[{name}]", (Opaque,), {"_poodle_global": name})
    return cls


def _torch_allowed() -> dict[str, Any]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except (ImportError, AttributeError):  # a future torch without the helper: the minimum for tensors
        from torch import _utils

        return {"torch._utils._rebuild_tensor_v2": _utils._rebuild_tensor_v2,
                "torch._utils._rebuild_parameter": _utils._rebuild_parameter,
                "collections.OrderedDict": __import__("collections").OrderedDict}  # fmt: skip


class _RestrictedUnpickler(pickle.Unpickler):
    allowed: dict[str, Any] = {}
    seen: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol-2 name of the same module
        full = f"{module}.{name}"
        type(self).seen.add(full)
        if full in self.allowed:  # torch's own weights-only allow-list: tensors, storages, dtypes, OrderedDict
            return self.allowed[full]
        if any(full == d or full.startswith(d + ".") or module == d or module.startswith(d + ".")
               for d in _DANGEROUS_MODULES):  # fmt: skip
            raise UnsafeCheckpointError(full)
        if module == "builtins" and name in _BUILTINS_OK:
            return getattr(__import__("builtins"), name)
        if (module, name) in _NUMPY_OK:
            import numpy  # numpy is a torch dependency here; imported only when the file needs it

            mod = __import__(module, fromlist=[name])
            return getattr(mod, name) if hasattr(mod, name) else getattr(numpy, name)
        return _opaque_class(full)


def _pickle_module() -> types.ModuleType:
    allowed = _torch_allowed()

    class Unpickler(_RestrictedUnpickler):
        pass

    Unpickler.allowed = allowed
    Unpickler.seen = set()
    module = types.ModuleType("poodle_restricted_pickle")
    module.Unpickler = Unpickler
    module.load = lambda f, **kw: Unpickler(f, **kw).load()
    module.__name__ = "poodle_restricted_pickle"
    return module


def read_foreign(path: str | Path) -> tuple[Any, set[str]]:
    """(plain data of the checkpoint, the set of globals the pickle named). Raises `UnsafeCheckpointError`
    naming a code-running global, or `ValueError` for a file that is not a readable PyTorch checkpoint."""
    path = Path(path)
    module = _pickle_module()
    try:
        obj = torch.load(path, map_location="cpu", pickle_module=module, weights_only=False)
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({str(e).splitlines()[0][:200]})") from e
    return plain(obj), set(module.Unpickler.seen)


def plain(obj: Any, _depth: int = 0) -> Any:
    """Plain data: containers, numbers, strings, detached hook-free tensors; stand-ins as records."""
    if _depth > 200:
        raise ValueError("checkpoint nesting deeper than 200 levels")
    d = _depth + 1
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)
    if isinstance(obj, Opaque):
        return _opaque_to_plain(obj, d)
    if isinstance(obj, dict):
        return {plain(k, d) if not isinstance(k, (str, int)) else k: plain(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v, d) for v in obj]
    if isinstance(obj, (str, int, float, bool, bytes, type(None), complex)):
        return obj
    try:  # numpy scalars and arrays
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return torch.from_numpy(obj.copy()) if obj.dtype.kind in "biuf" else obj.tolist()
    except ImportError:
        pass
    return repr(obj)


def _opaque_to_plain(o: Opaque, depth: int) -> Any:
    name = o._poodle_global
    state = plain(o.__dict__["_state"], depth)
    if name.startswith("omegaconf."):  # DictConfig / ListConfig / nodes: keep only the values
        if isinstance(state, dict):
            if "_content" in state:
                return state["_content"]
            if "_val" in state:
                return state["_val"]
        return state
    if name == "argparse.Namespace" and isinstance(state, dict):
        return state
    record: dict[str, Any] = {"__class__": name}
    if o.__dict__["_args"]:
        record["args"] = plain(list(o.__dict__["_args"]), depth)
    if o.__dict__["_kwargs"]:
        record["kwargs"] = plain(o.__dict__["_kwargs"], depth)
    if state is not None:
        record["state"] = state
    if o.__dict__["_items"]:
        record["items"] = [[plain(k, depth), plain(v, depth)] for k, v in o.__dict__["_items"]]
    return record
