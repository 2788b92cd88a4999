"""What the scripts share besides the command line (see :mod:`editspecialists.command_line`):
the console (logging, warnings, lines above progress bars) and the process state."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path


# Loggers whose INFO lines say nothing a person acts on (requests, image plugins, compiler statistics).
CHATTY_LOGGERS = ("httpx", "urllib3", "PIL", "torch")


class ConsoleFormatter(logging.Formatter):
    """Our console lines: an INFO message as it is, a warning or error after its level in lower case
    (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


_warnings_shown: set[str] = set()
# Our code: the package and the scripts folder of a checkout.
OUR_FOLDERS = (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "scripts")


def is_another_librarys_deprecation(category: type, filename: str) -> bool:
    """Whether a warning is a deprecation notice (DeprecationWarning, FutureWarning) that a library
    raises about code outside ours, such as its own import of another library's old module path:
    news for that library's developers, nothing our user can act on. Notices about calls made from
    our code are attributed to our files and are not among them."""
    path = Path(filename).resolve()
    return (issubclass(category, (DeprecationWarning, FutureWarning))
            and not any(folder in path.parents for folder in OUR_FOLDERS))


def show_warning_once(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one console line, the first time its text comes up (another library's
    warning repeats at every model load): ``warning: <text> (<category> from <file>:<line>)``.
    Other libraries' deprecation notices about their own code are left to ``--verbose``
    (:func:`is_another_librarys_deprecation`)."""
    text = " ".join(str(message).split())
    if text not in _warnings_shown and not is_another_librarys_deprecation(category, filename):
        _warnings_shown.add(text)
        logging.getLogger("py.warnings").warning("%s (%s from %s:%d)", text, category.__name__,
                                                 Path(filename).name, lineno)


def setup_logging(verbose: bool = False) -> None:
    """The scripts' console (stderr): this package's INFO lines and every library's warnings.

    Quiet (the default): other libraries' INFO lines (accelerate's at every checkpoint, open_clip's
    at every load) and their loading and shard-writing progress bars are off (downloads keep
    theirs); lines are plain text; a Python warning is one line, given once
    (:func:`show_warning_once`). ``verbose`` (``--verbose``): other libraries' INFO lines and
    progress bars too, each line with time, level and logger, warnings as Python prints them.
    Replaces any handler of the root logger (absl's), so that each line is printed once.
    """
    import diffusers
    import huggingface_hub
    import transformers

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s") if verbose
                         else ConsoleFormatter("%(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("editspecialists").setLevel(logging.INFO)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    if not verbose:
        warnings.showwarning = show_warning_once
    for library in (transformers, diffusers):
        if verbose:
            library.utils.logging.enable_progress_bar()
        else:
            library.utils.logging.disable_progress_bar()
    huggingface_hub.utils.enable_progress_bars()  # downloads show theirs (transformers' switch turns them off)


def console_line(text: str) -> None:
    """Print ``text`` as a line of its own above the progress bars, on stderr like them:
    ``accelerate launch`` relays a process's stderr through a pipe, so a line printed on stdout
    would reach the terminal ahead of a bar's redraw and be glued to it."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)


def process_state():
    """accelerate's process state, honouring ACCELERATE_USE_CPU like ``Accelerator`` does.

    (A bare ``PartialState()`` created before the ``Accelerator`` ignores that variable and
    would turn a multi-process CPU launch into independent single processes.)
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def end_process_group() -> None:
    """Every process waits for the others, then the process group is torn down; nothing without one.

    Torn down here rather than at the interpreter's exit, where gloo may abort a process whose peer
    is still printing. The last barrier's work is held until the group is gone: in torch 2.6, gloo's
    worker thread may otherwise still be freeing it (and the gathers it waited on, whose tensors
    Python owns) when the main thread joins that worker holding the GIL the worker waits for, and
    the process never exits (measured on 2 CPU processes: 1 launch in 26 hung without this, none
    of 150 with it).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    barrier = dist.barrier(async_op=True)
    barrier.wait()
    dist.destroy_process_group()
    del barrier  # only now, with the group's threads joined
