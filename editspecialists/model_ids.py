"""Model ids of a configuration, checked before loading, and loading failures explained.

Every model loads from a Hugging Face hub id (``owner/name``) or a local folder. A configured id
is named by its config key, its *role* (``models.depth``, ``pretrained.model``). The usual
mistakes become one line naming the role and the id, with what to do:

- a path that looks local (starts with ``/``, ``.`` or ``~``, has more than one ``/``, or its
  first part exists here) but is missing: ``role models.depth: folder ./depth does not exist``;
- a folder without the file its loader starts from (``pretrained.model``: ``model_index.json``);
- a URL instead of a hub id, or something that is neither an existing folder nor a hub id;
- a hub id that is not in the local hub cache while ``HF_HUB_OFFLINE=1`` forbids downloading it;
- a DreamSim variant (``models.dreamsim``) whose files its folder (``models.dreamsim_cache``, or the
  folder given as ``models.dreamsim``) lacks while ``HF_HUB_OFFLINE=1`` forbids downloading them.

:func:`validate_model_ids` finds these before anything loads (no network: the hub cache is read
only in offline mode); :func:`explain_loading` turns an error raised while loading that says the
files cannot be loaded (a missing or unreadable file, a hub or download error, a config or weights
file its loader refuses) into a :class:`ModelIdError` with the same kind of line. Out of memory
stays out of memory, with what holds less, and any other error keeps its traceback.
``scripts/check_models.py`` shows both per model; training, generation and evaluation reuse them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from editspecialists.config_keys import value_at

# What a role's value may be.
HUB = "hub"  # a hub repo id or a local model folder
DREAMSIM = "dreamsim"  # a DreamSim variant name (dinov2_vitb14) or a DreamSim cache folder
DREAMSIM_CACHE = "dreamsim_cache"  # the folder a DreamSim variant is read from (or downloaded into)
OPEN_CLIP = "open_clip"  # an open_clip architecture name (ViT-H-14) or a model-config .json file
HUB_FILE = "hub_file"  # a local file or "<owner/name>:<file name>" of a hub repo

KINDS = {
    "pretrained.model": HUB,
    "models.dreamsim": DREAMSIM,
    "models.dreamsim_cache": DREAMSIM_CACHE,
    "models.hps_architecture": OPEN_CLIP,
    "models.hps_checkpoint": HUB_FILE,
}  # every other role: HUB

# The file a local folder of a role must hold, and what such a folder is.
REQUIRED_FILES = {"pretrained.model": ("model_index.json", "diffusers pipeline folder (save_pretrained layout)")}

OFFLINE_FIX = "run download_repos.sh (with --eval for the evaluation models) or unset HF_HUB_OFFLINE"
MEMORY_FIX = ("to hold less: bf16 models (reward.dtype=bf16 for the feedback models, dtype=bf16 in "
              "evaluation, mixed_precision=bf16 for the policy), reward.offload=True, or fewer processes "
              "per GPU; scripts/check_models.py estimates the memory each model holds")
# Errors of a loader that mean the files of an id cannot be loaded, besides OSError (a missing or
# unreadable file, hub and connection errors), ValueError and KeyError (a config it refuses), by
# class name: the hub's missing file, safetensors', httpx's connection errors, a bad pickle.
LOADING_ERROR_NAMES = {"EntryNotFoundError", "SafetensorError", "SafetensorsParsingError", "TransportError",
                       "UnpicklingError"}

class ModelIdError(ValueError):
    """A configured model id that cannot be loaded; the message names the role and the id."""


# ------------------------------------------------------------------------------ ids of config keys
def model_ids_of(config, keys: Iterable[str]) -> dict[str, str]:
    """``{role: id}`` for the dotted config keys ``keys`` (in order, without repeats); a DreamSim
    variant (not a folder) brings the folder it is read from, ``models.dreamsim_cache``, after it."""
    ids = {}
    for key in dict.fromkeys(keys):
        ids[key] = value_at(config, key)
        if KINDS.get(key) == DREAMSIM and not Path(str(ids[key])).expanduser().is_dir():
            ids["models.dreamsim_cache"] = value_at(config, "models.dreamsim_cache")
    return ids


# ------------------------------------------------------------------------------ checks without loading
def looks_local(model_id: str) -> bool:
    """Whether ``model_id`` is meant as a path: it starts with ``/``, ``.`` or ``~``, has more than
    one ``/``, or its first part exists here (``data/model`` when ``data/`` exists)."""
    if model_id.startswith(("/", ".", "~")):
        return True
    parts = model_id.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).exists())


def is_hub_id(model_id: str) -> bool:
    """Whether ``model_id`` has the form of a hub repo id, ``owner/name`` or a legacy ``name``
    such as ``bert-base-uncased`` (the hub's character rules)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if model_id.count("/") > 1:
        return False
    try:
        validate_repo_id(model_id)
    except HFValidationError:
        return False
    return True


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as the hub client (and so every loader) read it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_hub_cache(repo_id: str, revision: str = "", filename: str = "") -> bool:
    """Whether the local hub cache holds ``repo_id`` at ``revision`` (default: main), or, given
    ``filename``, that file of it. Reads the cache only."""
    from huggingface_hub import constants, snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    if filename:
        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision or None), str)
    try:
        snapshot_download(repo_id, revision=revision or None, cache_dir=constants.HF_HUB_CACHE, local_files_only=True)
    except LocalEntryNotFoundError:
        return False
    return True


def _offline_problem(role: str, model_id: str, revision: str = "", filename: str = "") -> str | None:
    if not hub_offline() or in_hub_cache(model_id, revision, filename):
        return None
    from huggingface_hub import constants

    what = f"{model_id} (file {filename})" if filename else model_id
    at = f" at revision {revision}" if revision else ""
    return (f"role {role}: {what}{at} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"HF_HUB_OFFLINE=1 forbids downloading it: {OFFLINE_FIX}")


def _missing_path(role: str, model_id: str, what: str = "folder") -> str:
    resolved = str(Path(model_id).expanduser().resolve())
    where = "" if resolved == model_id else f" (looked for {resolved})"
    return f"role {role}: {what} {model_id} does not exist{where}"


def _not_an_id(role: str, model_id: str, expected: str) -> str:
    return f"role {role}: {model_id!r} is neither {expected}; fix --config.{role}"


def _folder_problem(role: str, model_id: str, folder: Path) -> str | None:
    """A local folder without the file its loader starts from (:data:`REQUIRED_FILES`)."""
    if role not in REQUIRED_FILES:
        return None
    required, what = REQUIRED_FILES[role]
    if (folder / required).is_file():
        return None
    return f"role {role}: folder {model_id} has no {required}: it is not a {what}"


def _url_problem(role: str, model_id: str) -> str:
    """A URL given for a hub id: the repo id is suggested when the URL's path starts with one."""
    repo = "/".join(model_id.split("://", 1)[1].split("/")[1:3])
    instead = f"the hub id {repo}" if repo.count("/") == 1 and is_hub_id(repo) else "a hub id (owner/name)"
    return f"role {role}: {model_id} is a URL; give {instead} or a local folder"


def _hub_problem(role: str, model_id: str, revision: str) -> str | None:
    path = Path(model_id).expanduser()
    if path.is_dir():
        return _folder_problem(role, model_id, path)
    if path.exists():
        return f"role {role}: {model_id} is a file, but a model folder or a hub id is needed"
    if "://" in model_id:
        return _url_problem(role, model_id)
    if looks_local(model_id):
        return _missing_path(role, model_id)
    if not is_hub_id(model_id):
        return _not_an_id(role, model_id, "an existing folder nor a Hugging Face hub id (owner/name)")
    return _offline_problem(role, model_id, revision)


def _hub_file_problem(role: str, model_id: str) -> str | None:
    if Path(model_id).expanduser().is_file():
        return None
    repo, separator, filename = model_id.partition(":")
    if separator and filename and is_hub_id(repo) and not looks_local(model_id):
        return _offline_problem(role, repo, filename=filename)
    if looks_local(model_id):
        return _missing_path(role, model_id, "file")
    return _not_an_id(role, model_id, "an existing file nor '<owner/name>:<file name>' of a Hugging Face hub repo")


def _dreamsim_problem(role: str, model_id: str, cache_dir: str) -> str | None:
    """A DreamSim id that is neither a folder nor a variant with a patch model; offline, a folder
    that lacks the variant's files (:func:`editspecialists.rewards.features.missing_dreamsim_files`)."""
    from editspecialists.rewards.features import (DREAMSIM_FETCH, DREAMSIM_FILES, dreamsim_source,
                                                  missing_dreamsim_files)

    if not Path(model_id).expanduser().is_dir():
        if looks_local(model_id) or "/" in model_id:
            return _missing_path(role, model_id)
        if model_id not in DREAMSIM_FILES:
            return _not_an_id(role, model_id, f"a DreamSim cache folder nor a DreamSim variant with a patch model "
                                              f"({', '.join(DREAMSIM_FILES)})")
    if not hub_offline():
        return None
    variant, folder = dreamsim_source(model_id, cache_dir)
    missing = missing_dreamsim_files(variant, folder)
    if not missing:
        return None
    where = "" if Path(model_id).expanduser().is_dir() else " (models.dreamsim_cache)"
    return (f"role {role}: DreamSim {variant} is not in {folder}{where}, which lacks {', '.join(missing)}, "
            f"and HF_HUB_OFFLINE=1 forbids downloading it: {DREAMSIM_FETCH}")


def _dreamsim_cache_problem(role: str, folder: str) -> str | None:
    """The folder is checked with its variant (:func:`_dreamsim_problem`); here only a file in its place."""
    path = Path(folder).expanduser()
    return f"role {role}: {folder} is a file, but a folder is needed" if path.exists() and not path.is_dir() else None


def _open_clip_problem(role: str, model_id: str) -> str | None:
    if model_id.endswith(".json") or looks_local(model_id) or "/" in model_id:
        return None if Path(model_id).expanduser().is_file() else _missing_path(role, model_id, "file")
    import open_clip

    if model_id not in open_clip.list_models():
        return _not_an_id(role, model_id, "an open_clip model-config .json file nor an open_clip architecture name")
    return None


def id_problem(role: str, model_id, *, revision: str = "", kind: str = "", dreamsim_cache: str = "") -> str | None:
    """Why ``model_id`` (the value of config key ``role``) cannot load, found without loading it;
    None when it may load. ``kind`` defaults to the role's entry of :data:`KINDS` (else a hub id or
    folder); ``dreamsim_cache``: the folder a DreamSim variant is read from. Hub ids and DreamSim
    folders are looked up locally in offline mode only."""
    if not isinstance(model_id, str) or not model_id.strip():
        return f"role {role}: no model id given; set --config.{role}"
    kind = kind or KINDS.get(role, HUB)
    if kind == HUB_FILE:
        return _hub_file_problem(role, model_id)
    if kind == DREAMSIM:
        return _dreamsim_problem(role, model_id, dreamsim_cache)
    if kind == DREAMSIM_CACHE:
        return _dreamsim_cache_problem(role, model_id)
    if kind == OPEN_CLIP:
        return _open_clip_problem(role, model_id)
    return _hub_problem(role, model_id, revision)


def problems_of(ids: Mapping[str, str], revisions: Mapping[str, str] | None = None) -> list[str]:
    """:func:`id_problem` of every role of ``ids`` (``{role: id}``) that has one, a DreamSim variant
    checked with the folder of ``models.dreamsim_cache`` in ``ids``; ``revisions``: ``{role:
    revision}`` where one is set."""
    revisions = revisions or {}
    problems = [id_problem(role, model_id, revision=revisions.get(role, ""),
                           dreamsim_cache=ids.get("models.dreamsim_cache", "")) for role, model_id in ids.items()]
    return [problem for problem in problems if problem]


def validate_model_ids(ids: Mapping[str, str], revisions: Mapping[str, str] | None = None) -> None:
    """Raise one :class:`ModelIdError` listing every role of ``ids`` (``{role: id}``) whose id
    cannot load (see :func:`problems_of`)."""
    problems = problems_of(ids, revisions)
    if problems:
        raise ModelIdError("\n".join(problems))


# ------------------------------------------------------------------------------ loading errors
def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _error_chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _chain_text(error: BaseException) -> str:
    return "\n".join(f"{type(e).__name__}: {e}" for e in _error_chain(error))


def _failure(label: str, local: bool, error: BaseException) -> str:
    """Why loading the model(s) ``label`` failed, with what to do, from the error's class chain."""
    cause = first_line(error)
    names = {type(e).__name__ for e in _error_chain(error)}
    if hub_offline() and (names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}
                          or "offline" in _chain_text(error).lower()):
        return (f"{label}: a file it needs is not in the Hugging Face cache and HF_HUB_OFFLINE=1 "
                f"forbids downloading it ({cause}): {OFFLINE_FIX}")
    if local:
        return (f"{label} could not be loaded ({cause}): check that it holds the files its loader "
                f"reads (the save_pretrained layout, or the files download_repos.sh fetches)")
    if names & {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "EntryNotFoundError"}:
        return (f"{label} was not found on the Hugging Face hub ({cause}): check the spelling and the "
                f"revision, or log in (hf auth login) for a gated repo")
    if names & {"ConnectionError", "ConnectTimeout", "ReadTimeout", "ConnectError", "TimeoutException"}:
        return (f"{label}: a download failed ({cause}): run download_repos.sh on a machine online "
                f"first, then HF_HUB_OFFLINE=1")
    return f"{label} could not be loaded: {cause}"


def _is_local(model_id: str) -> bool:
    return Path(str(model_id).partition(":")[0]).expanduser().exists()


def loading_error_message(role: str, ids: Mapping[str, str], error: BaseException, revision: str = "") -> str:
    """One line naming ``role`` and its id in ``ids`` that says why loading failed and what to do:
    :func:`id_problem` when it finds one, else what the error's class chain tells."""
    model_id = ids[role]
    problem = id_problem(role, model_id, revision=revision, dreamsim_cache=ids.get("models.dreamsim_cache", ""))
    return problem or _failure(f"role {role}: {model_id}", _is_local(model_id), error)


def is_loading_error(error: BaseException) -> bool:
    """Whether ``error`` says that a model's files cannot be loaded: an OSError, ValueError or
    KeyError, one of :data:`LOADING_ERROR_NAMES`, or torch's weights that do not fit the model."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return (isinstance(error, (OSError, ValueError, KeyError)) or bool(names & LOADING_ERROR_NAMES)
            or str(error).startswith("Error(s) in loading state_dict"))


def out_of_memory(error: BaseException) -> BaseException | None:
    """The out-of-memory error of ``error``'s chain: Python's MemoryError, torch's OutOfMemoryError
    (CUDA's), or a RuntimeError saying so (the CPU allocator's, MPS's); None if it has none."""
    import torch

    for link in _error_chain(error):
        if isinstance(link, (MemoryError, torch.OutOfMemoryError)) or (
                type(link) is RuntimeError and ("out of memory" in str(link) or "can't allocate memory" in str(link))):
            return link
    return None


@contextlib.contextmanager
def explain_loading(ids: Mapping[str, str], revisions: Mapping[str, str] | None = None) -> Iterator[None]:
    """Around the loading of the models of ``ids`` (``{role: id}``): an error that says the files
    cannot be loaded (:func:`is_loading_error`) becomes a :class:`ModelIdError` (chained to it)
    naming the failed role and id and what to do. The role is the one whose id the error text
    mentions; when it mentions none (or several), every role with an :func:`id_problem` is named,
    else all of them together. Out of memory is raised again as the same class, chained to the
    error, naming the roles and what holds less memory; any other error passes unchanged."""
    revisions = revisions or {}
    try:
        yield
    except ModelIdError:
        raise
    except Exception as error:
        memory = out_of_memory(error)
        if memory is not None:
            raise type(memory)(f"out of memory while loading {_roles_label(ids)} ({first_line(memory)}): "
                               f"{MEMORY_FIX}") from error
        if not is_loading_error(error):
            raise
        raise ModelIdError(_explain(ids, revisions, error)) from error


def _roles_label(ids: Mapping[str, str]) -> str:
    """``role a (id)``, or ``roles a (id), b (id)``."""
    listed = ", ".join(f"{role} ({model_id})" for role, model_id in ids.items())
    return f"role {listed}" if len(ids) == 1 else f"roles {listed}"


def _explain(ids: Mapping[str, str], revisions: Mapping[str, str], error: BaseException) -> str:
    text = _chain_text(error)
    named = [role for role, model_id in ids.items() if str(model_id) in text]
    if len(named) == 1:
        role = named[0]
        return loading_error_message(role, ids, error, revisions.get(role, ""))
    problems = problems_of(ids, revisions)
    if problems:
        return "\n".join(problems)
    return _failure(_roles_label(ids), any(_is_local(model_id) for model_id in ids.values()), error)
