"""Python objects gathered from every process (accelerate's ``gather_object``, also on one), and
tensors sharded by FSDP gathered whole."""

from __future__ import annotations


def gather_list(accelerator, items: list) -> list:
    """The concatenation of every process's ``items``, in process order."""
    from accelerate.utils import gather_object as gather

    return gather(items) if accelerator.num_processes > 1 else list(items)


def gather_object(accelerator, value) -> list:
    """``value`` of every process, in process order."""
    return gather_list(accelerator, [value])


def full_tensors(tensors: dict) -> dict:
    """``tensors`` with each one sharded across processes (FSDP's ``DTensor``) gathered whole; the
    others as they are. Under FSDP a collective: every process calls it."""
    return {name: value.full_tensor() if hasattr(value, "full_tensor") else value for name, value in tensors.items()}
