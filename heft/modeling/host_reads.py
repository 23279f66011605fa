"""Count the host reads of device tensors a piece of code makes, on any machine.

On a GPU every read of a device tensor's value on the host (``loss.item()``, ``if
torch.isfinite(loss):``, ``.tolist()``, ``.cpu()``, a boolean-mask index whose size the host
must learn) waits for the device to finish all queued work: the loop stalls until the GPU
drains, and the GPU then idles while Python prepares the next step.  On the CPU those reads
cost nothing, so a loop can grow them unnoticed.  ``HostReads`` makes them visible here: it
follows which tensors *would* live on the device (those it is told about, e.g. the model's
parameters and a batch after ``to_device``, and every tensor computed from one of them) and
counts the reads of their values.  ``torch.cuda.set_sync_debug_mode`` is the same check on a
real GPU (bench/real_work.py uses it).

    with HostReads(model.parameters()) as reads:
        reads.mark(batch_tensors)
        ...
    reads.count, reads.where
"""
from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

# reads of a value (the host waits for it) and ops whose output size depends on the values
READS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy,
         torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
         torch.Tensor.nonzero, torch.nonzero, torch.Tensor.masked_select, torch.masked_select,
         torch.Tensor.unique, torch.unique}


class HostReads(TorchFunctionMode):
    """A torch function mode counting host reads of device tensors (see the module doc)."""

    def __init__(self, tensors=()):
        super().__init__()
        self._device = WeakIdKeyDictionary()
        self.count = 0
        self.where: Counter[str] = Counter()
        self.mark(tensors)

    def mark(self, tensors) -> None:
        """Treat these tensors as living on the device."""
        for t in tree_leaves(list(tensors) if not isinstance(tensors, torch.Tensor) else [tensors]):
            if isinstance(t, torch.Tensor):
                self._device[t] = True

    def _on_device(self, leaves) -> bool:
        return any(isinstance(t, torch.Tensor) and t in self._device for t in leaves)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = tree_leaves((args, kwargs))
        on_device = self._on_device(leaves)
        if on_device and (func in READS or _bool_index(func, args)):
            self.count += 1
            frame = next((f for f in reversed(traceback.extract_stack()[:-1])
                          if "host_reads.py" not in f.filename and "/torch/" not in f.filename), None)
            self.where[f"{getattr(func, '__name__', func)} at "
                       f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}" if frame else str(func)] += 1
        out = func(*args, **kwargs)
        if on_device:
            self.mark(out if isinstance(out, (tuple, list)) else [out])
        return out


def _bool_index(func, args) -> bool:
    """t[mask] with a boolean mask: the output's size is read on the host."""
    if func not in (torch.Tensor.__getitem__,) or len(args) < 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
