"""Compiled parts kept as ahead-of-time packages (torch.export + AOTInductor) in the shared compile cache.

A fresh worker that reads torch.compile's cache still re-traces each graph with Dynamo before its first step (most of
what a first backfill loses); a package is loaded instead: a shared library compiled for one architecture and call
shape, whose weights are handed to it by pointer, so one package serves every model of that architecture.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import uuid
from collections import Counter
from pathlib import Path

import torch
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)  # into the run's log during a run (quiet.engine_warnings_to)

# Packages this process compiled, and read from the folder instead: added to compiled_graphs() / graphs_from_cache().
PACKAGES: Counter = Counter()
# A package takes its weights as they are when it runs; folded ones (weights pre-transformed for its kernels) are
# computed from them at the first call after the weights change, not stored in the package (folded at compile time,
# they were the first model's: another model of the architecture then gave wrong pixels).
PACKAGE_CONFIG = {"aot_inductor.package_constants_in_so": False, "aot_inductor.use_runtime_constant_folding": True}


# New call shapes (image sizes, mostly) a part compiles packages for in one process; further ones are compiled just in
# time, where torch.compile makes the sizes dynamic after the second one (a collection of many aspect ratios would
# otherwise compile a package for each). Packages other workers compiled are loaded whatever their number.
PACKAGED_SHAPES_PER_PROCESS = 2


def packages_folder(cache: Path | None = None) -> Path:
    """Beside torch.compile's own cache (TORCHINDUCTOR_CACHE_DIR, which settings point at the shared step storage),
    or in `cache`."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache or cache_dir()) / "packages"


class PackagedModule(torch.nn.Module):
    """`module` called through packages, one per call shape (the batch size free within the range export allows),
    read from packages_folder() (or `read_only_cache`'s, a shared cache this process cannot write) or
    exported and compiled there once. Attributes read through to `module`, as on torch.compile's wrapper. A call no
    package takes (its export failed, the package failed, the weights are off the call's device) goes to `fallback`,
    the module compiled just in time; `identity` names what the module's code reads besides its weights (its owner's
    class and config)."""

    def __init__(
        self,
        module: torch.nn.Module,
        fallback,
        identity: str,
        inductor_configs: dict,
        read_only_cache: Path | None = None,
    ) -> None:
        super().__init__()
        self._orig_mod = module
        self.__dict__["_fallback"] = fallback  # not a submodule: its parameters are module's
        self.__dict__["_identity"] = identity
        self.__dict__["_inductor_configs"] = {**PACKAGE_CONFIG, **inductor_configs}  # part of each package's key
        self.__dict__["_read_only_cache"] = read_only_cache
        self.__dict__["_parts"] = list(module.modules())  # walked at every call to see whether the weights moved
        self.__dict__["_unpackaged"] = set()  # call signatures that go just in time
        self.__dict__["_compiled"] = 0  # packages this process compiled for this part
        self.__dict__["_limit_said"] = False  # the run's log was told that later shapes go just in time
        self._forget_runners()

    def _forget_runners(self) -> None:
        self.__dict__["_runners"] = {}  # call signature -> [(lowest batch, highest batch, runner)]
        self.__dict__["_loaded"] = (None, None)  # (weight pointers, structure) the runners were given

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._orig_mod, name)

    def forward(self, *args, **kwargs):
        call = inspect.signature(self._orig_mod.forward).bind(*args, **kwargs).arguments
        tensors = [leaf for leaf in pytree.tree_leaves(dict(call)) if isinstance(leaf, torch.Tensor)]
        if not tensors or tensors[0].dim() == 0:
            return self._fallback(*args, **kwargs)
        batch, device = tensors[0].shape[0], tensors[0].device
        signature = _call_signature(call, batch)
        if signature not in self._unpackaged:
            try:
                if runner := self._runner(signature, call, batch, device):
                    return runner(**call)
            except Exception as exc:  # noqa: BLE001 - a package failing costs speed, never the image
                log.warning("%s is compiled just in time: its ahead-of-time package failed (%s)", self._name, exc)
                self._unpackaged.add(signature)
        return self._fallback(*args, **kwargs)

    def _runner(self, signature: str, call: dict, batch: int, device: torch.device):
        """The package for this call, given the module's weights as they are now; None where there is none."""
        pointers = _pointers(self._parts)
        if pointers != self._loaded[0]:  # first call, or the weights moved (CPU offload moves them at every call)
            weights = _weights(self._orig_mod)
            if any(tensor.device != device for tensor in weights.values()):
                return None
            structure = _structure(weights)
            if structure != self._loaded[1]:  # cast to another dtype or layout: other packages
                self._forget_runners()
            for runners in self._runners.values():
                for _, _, runner in runners:
                    _load_weights(runner, weights)
            self.__dict__["_loaded"] = (pointers, structure)
        for lowest, highest, runner in self._runners.get(signature, []):
            if lowest <= batch <= highest:
                return runner
        settings = json.dumps(self._inductor_configs, sort_keys=True)  # a max-autotune package is not the default's
        identity = self._identity + _code(self._parts) + self._loaded[1] + _machine(device) + settings + signature
        key = hashlib.sha256(identity.encode()).hexdigest()[:32]
        path = _stored(key, batch, self._read_only_cache)
        if path is None and self._compiled >= PACKAGED_SHAPES_PER_PROCESS:
            if not self._limit_said:
                self.__dict__["_limit_said"] = True
                log.warning(
                    "%s is compiled just in time for the call shapes (image sizes) after its first %d: a package is "
                    "compiled for at most %d new ones per process",
                    self._name,
                    self._compiled,
                    PACKAGED_SHAPES_PER_PROCESS,
                )
            self._unpackaged.add(signature)
            return None
        runner = None
        if path is not None:
            try:
                runner = torch._inductor.aoti_load_package(str(path))
            except Exception as exc:  # noqa: BLE001 - damaged on the shared storage, or another torch build's
                log.warning("%s: the package %s could not be read (%s); compiling it again", self._name, path.name, exc)
                with contextlib.suppress(OSError):  # a read-only shared folder keeps it; this process writes its own
                    path.unlink(missing_ok=True)  # written by this project (whole, by os.replace): not worth keeping
        compiling = runner is None
        if compiling:
            try:
                path = self._compile(key, call, batch)
            except Exception as exc:  # noqa: BLE001 - whatever export or AOTInductor raise: this part goes just in time
                log.warning("%s is compiled just in time: no ahead-of-time package for it (%s)", self._name, exc)
                self._unpackaged.add(signature)
                return None
            self.__dict__["_compiled"] = self._compiled + 1
            runner = torch._inductor.aoti_load_package(str(path))
        _load_weights(runner, _weights(self._orig_mod))
        PACKAGES["compiled" if compiling else "loaded"] += 1
        self._runners.setdefault(signature, []).append((*_batch_range_of(path), runner))
        return runner

    @property
    def _name(self) -> str:
        return type(self._orig_mod).__name__

    def _compile(self, key: str, call: dict, batch: int) -> Path:
        batched = {
            name: pytree.tree_map(
                # a batch of 1 is exported as it is: export would specialise it anyway (and warn)
                lambda v: {0: torch.export.Dim.AUTO} if batch > 1 and _batched(v, batch) else None,
                value,
                is_leaf=lambda v: v is None,
            )
            for name, value in call.items()
        }
        with torch.inference_mode(False), torch.no_grad():
            program = torch.export.export(self._orig_mod, (), dict(call), dynamic_shapes=batched)
        lowest, highest = _batch_range(program, batch)
        folder = packages_folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{key}.b{lowest}-{highest}.pt2"
        partial = folder / f".{key}.{os.getpid()}.{uuid.uuid4().hex}.pt2"
        try:
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(partial), inductor_configs=self._inductor_configs
            )
            os.replace(partial, path)  # whole or absent for the other workers sharing the folder
        finally:
            partial.unlink(missing_ok=True)
        return path


def _stored(key: str, batch: int, read_only_cache: Path | None) -> Path | None:
    for folder in dict.fromkeys((packages_folder(), packages_folder(read_only_cache))):  # its own first
        for path in folder.glob(f"{key}.b*-*.pt2"):
            lowest, highest = _batch_range_of(path)
            if lowest <= batch <= highest:
                return path
    return None


def _batched(value, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch


def _call_signature(call: dict, batch: int) -> str:
    """What a package is specialised to: every tensor's dtype and shape (the batch dimension left free) and every
    other argument's value."""

    def describe(value):
        if isinstance(value, torch.Tensor):
            shape = ["batch" if _batched(value, batch) and i == 0 else size for i, size in enumerate(value.shape)]
            return [str(value.dtype), str(value.device.type), shape]
        return repr(value)

    return json.dumps({name: pytree.tree_map(describe, value) for name, value in call.items()}, default=str)


def _code(parts: list[torch.nn.Module]) -> str:
    """The classes the module runs, its attention processors' too."""
    return json.dumps([type(m).__qualname__ + ":" + type(getattr(m, "processor", None)).__name__ for m in parts])


def _structure(weights: dict[str, torch.Tensor]) -> str:
    """What the compiled kernels assume of the module's weights (each one's name, shape, strides and dtype), and the
    versions of the code that made them."""
    import diffusers

    layout = [(name, list(t.shape), list(t.stride()), str(t.dtype)) for name, t in weights.items()]
    return json.dumps([torch.__version__, diffusers.__version__, layout])


def _machine(device: torch.device) -> str:
    """What the compiled code was built for: the GPU model, or the CPU's vector instructions (a package built where
    AVX-512 exists crashes a machine without it); workers that share the cache may differ."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} {torch.cuda.get_device_capability(device)}"
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return f"{device.type} {pick_vec_isa()}"


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _pointers(parts: list[torch.nn.Module]) -> tuple[int, ...]:
    """Where a module's weights are now, from the list of its modules: cheaper than naming them all."""
    return tuple(
        tensor.data_ptr()
        for part in parts
        for tensor in (*part._parameters.values(), *part._buffers.values())
        if tensor is not None
    )


def _load_weights(runner, weights: dict[str, torch.Tensor]) -> None:
    """Hand the package the module's own tensors by pointer (it holds none)."""
    needed = {name: weights[name] for name in runner.get_constant_fqns() if name in weights}
    runner.load_constants(needed, check_full_update=True, user_managed=True)


def _batch_range_of(path: Path) -> tuple[int, int]:
    lowest, highest = path.stem.rsplit(".b", 1)[1].split("-")
    return int(lowest), int(highest)


def _batch_range(program, batch: int) -> tuple[int, int]:
    """The batch sizes the exported program is valid for (its first input's first dimension)."""
    first = next(
        n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs
    )
    size = first.meta["val"].shape[0]
    if isinstance(size, int):
        return size, size
    bounds = program.range_constraints[size.node.expr]
    return int(bounds.lower), int(min(bounds.upper, 2**31 - 1))
