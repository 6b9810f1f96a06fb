"""Where a diffusers model comes from: a local folder, a Hub id or a single checkpoint file.

:func:`resolve_source` reads what the user gave (``--model SOURCE``) without loading
anything: an existing folder is a diffusers folder; an existing ``.safetensors`` file a
single-file checkpoint (its configuration from ``--config``, or from the Hub cache);
``org/name[@revision]`` a Hub id, fetched through huggingface_hub's cache (offline with
``HF_HUB_OFFLINE=1``, or when the Hub does not answer at once; downloaded with the hub's
own progress bar otherwise). Pickles
(``.ckpt``, ``.pt``, ``.pth``, ``.bin``) can run code when loaded: they are refused
unless ``allow_pickle`` is given, and nothing is unpickled before that check.
:class:`Source` then says which family the model is (reading ``model_index.json`` or
the file's tensor names only) and gives the local folder to load from.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import InputError
from .families import Family, family_of_index, family_of_keys

if TYPE_CHECKING:
    from torch import Tensor

PICKLES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
PICKLE_RISK = "a pickle runs code when loaded; allow it (allow_pickle=) only for a file you trust, or convert it to .safetensors"
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# A Hub snapshot's configs and tokenizers; weights come from the parts' folders only (a
# repository's top level often holds multi-GB single-file copies of the same model).
CONFIGS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model"]
VARIANTS = ["*.fp16.*", "*non_ema*", "*ema-only*"]


def is_pickle(path: Union[str, Path]) -> bool:
    """Whether ``path`` names a file in a pickle format (by its suffix)."""
    return Path(path).suffix.lower() in PICKLES


@dataclass(frozen=True)
class Source:
    """A model as given: ``kind`` 'folder' (``path``), 'hub' (``repo`` at ``revision``,
    None: the default branch) or 'file' (``path``, with ``config``: the Source its
    configuration comes from, None: diffusers' default for its family, from the cache).
    ``given`` is the user's spelling and ``flag`` the option it came with, for messages."""

    given: str
    kind: str
    path: Optional[Path] = None
    repo: Optional[str] = None
    revision: Optional[str] = None
    config: Optional["Source"] = None
    allow_pickle: bool = False
    flag: str = "model"

    @property
    def local(self) -> Path:
        """The folder or file on disk of a 'folder' or 'file' source."""
        if self.path is None:
            raise TypeError(f"a {self.kind} source has no path on disk")
        return self.path

    @property
    def hub_repo(self) -> str:
        """The repository of a 'hub' source."""
        if self.repo is None:
            raise TypeError(f"a {self.kind} source has no Hub repository")
        return self.repo

    def index(self) -> dict[str, Any]:
        """The pipeline's ``model_index.json`` (for a Hub id, that file alone is fetched)."""
        if self.kind == "file":
            raise TypeError("a single file has no model_index.json; see Source.family")
        if self.kind == "hub":
            from huggingface_hub import hf_hub_download

            path = Path(from_hub(self, lambda **local: hf_hub_download(self.hub_repo, "model_index.json", revision=self.revision, **local)))
        else:
            path = self.local / "model_index.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{self.flag}={self.given}: not a diffusers folder (no model_index.json); give a diffusers folder, a Hub id or a .safetensors file") from None
        except (OSError, ValueError) as error:
            raise InputError(f"{self.flag}={self.given}: cannot read model_index.json ({error})") from None

    def family(self) -> type[Family]:
        """The family the model is, read from ``model_index.json`` or the file's tensor names."""
        return family_of_keys(self.keys(), self.given) if self.kind == "file" else family_of_index(self.index(), self.given)

    def keys(self) -> list[str]:
        """A single file's tensor names (the safetensors header only)."""
        return list(read_checkpoint(self))

    def folder(self, weights: Optional[list[str]] = None) -> Path:
        """The local diffusers folder: the given one, or the Hub snapshot with the
        configs, tokenizers and the parts' weights (``weights``: patterns of the weight
        files to fetch, default every part's safetensors; pickles with ``allow_pickle``)."""
        if self.kind == "folder":
            return self.local
        if self.kind != "hub":
            raise TypeError("a single file has no folder; see its config")
        from huggingface_hub import snapshot_download

        if weights is None:
            weights = ["*/*.safetensors"] + (["*/*.bin"] if self.allow_pickle else [])
        patterns = CONFIGS + weights
        return Path(from_hub(self, lambda **local: snapshot_download(self.hub_repo, revision=self.revision, allow_patterns=patterns,
                                                                 ignore_patterns=VARIANTS, **local)))


def resolve_source(given: Union[str, Path], config: Optional[Union[str, Path]] = None, allow_pickle: bool = False, flag: str = "model") -> Source:
    """What ``given`` is: a diffusers folder, a single ``.safetensors`` file (``config``: a
    diffusers folder or Hub id holding its configuration; default: diffusers' own for
    the file's family, from the Hub cache) or a Hub id ``org/name[@revision]``. Nothing
    is loaded. A pickle is an InputError unless ``allow_pickle``; so is ``config`` for
    anything but a single file. ``flag`` names the option in messages."""
    if not isinstance(given, (str, Path)) or not str(given):
        raise TypeError(f"model must be a folder, a file or a Hub id (str or Path), got {given!r}")
    text, path = str(given), Path(given)
    if path.is_dir():
        source = Source(text, "folder", path=path, allow_pickle=allow_pickle, flag=flag)
    elif path.is_file():
        if is_pickle(path) and not allow_pickle:
            raise InputError(f"{flag}={text}: refused, {PICKLE_RISK}")
        if path.suffix.lower() != ".safetensors" and not is_pickle(path):
            raise InputError(f"{flag}={text}: not a model file; give a diffusers folder, a Hub id or a .safetensors checkpoint")
        settings = None if config is None else resolve_source(config, allow_pickle=allow_pickle, flag="config")
        if settings is not None and settings.kind == "file":
            raise InputError(f"config={config}: give a diffusers folder or Hub id with the configuration, not a file")
        return Source(text, "file", path=path, config=settings, allow_pickle=allow_pickle, flag=flag)
    elif (match := HUB_ID.match(text)) and path.suffix.lower() not in (".safetensors", *PICKLES):
        source = Source(text, "hub", repo=match["repo"], revision=match["revision"], allow_pickle=allow_pickle, flag=flag)
    else:
        raise InputError(f"{flag}={text}: no such file or folder, and not a Hub id (org/name[@revision])")
    if config is not None:
        raise InputError(f"config={config} is for single-file checkpoints; model={text} is a diffusers pipeline with its own")
    return source


def read_checkpoint(source: Source) -> dict[str, "Tensor"]:
    """A single file's tensors by name, to read their names and shapes: for a safetensors
    file, meta tensors from its header alone; a trusted pickle is loaded (torch's
    weights-only unpickler). InputError for a corrupt file."""
    import torch

    try:
        if not is_pickle(source.local):
            from safetensors import safe_open

            with safe_open(str(source.local), "pt") as file:
                return {key: torch.empty(file.get_slice(key).get_shape(), device="meta") for key in file.keys()}
        if not source.allow_pickle:  # checked at resolution too: never unpickle by accident
            raise InputError(f"{source.flag}={source.given}: refused, {PICKLE_RISK}")
        checkpoint = torch.load(source.local, map_location="cpu", weights_only=True, mmap=True)
        return checkpoint.get("state_dict", checkpoint)
    except InputError:
        raise
    except Exception as error:  # safetensors and torch.load raise many kinds for a bad file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{source.flag}={source.given}: cannot read the checkpoint ({reason})") from None


def cached_folder(source: Source) -> Path:
    """The folder of the Hub id ``source`` in the local Hub cache, found without the
    network; an InputError saying plainly when it is not there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source.hub_repo, revision=source.revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise InputError(f"{source.flag}={source.given}: not in the local Hub cache; download it once (hf download {source.repo}), "
                         "or give a local folder") from None


# Seconds the Hub's endpoint has to accept a connection before it counts as unreachable.
PROBE_SECONDS = 3


@functools.lru_cache(maxsize=None)
def hub_reachable(endpoint: str) -> bool:
    """Whether ``endpoint`` (the Hub's URL) accepts a TCP connection within PROBE_SECONDS,
    asked once per process. Behind a proxy the answer is yes: the proxy decides."""
    import socket
    import urllib.request
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    if url.scheme in urllib.request.getproxies() or not url.hostname:
        return True
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def from_hub(source: Source, fetch: Any) -> str:
    """Run a huggingface_hub ``fetch`` (which takes ``local_files_only``), from the cache
    alone when the Hub cannot be reached, so that huggingface_hub's retries never start;
    its errors (not cached, no such repository, revision or file, gated, the Hub failing)
    become one InputError line."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    reachable = not constants.HF_HUB_OFFLINE and hub_reachable(constants.ENDPOINT)
    try:
        return fetch() if reachable else fetch(local_files_only=True)
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise InputError(f"{source.flag}={source.given}: not (wholly) in the Hub cache, and HF_HUB_OFFLINE=1; download it once online, or give a local folder") from None
        raise InputError(f"{source.flag}={source.given}: not (wholly) in the local Hub cache, and the Hub ({constants.ENDPOINT}) cannot be reached; check the connection, or give a local folder") from None
    except EntryNotFoundError:
        raise InputError(f"{source.flag}={source.given}: not a diffusers repository (no model_index.json); give a single .safetensors file from it instead") from None
    except RevisionNotFoundError:
        raise InputError(f"{source.flag}={source.given}: the Hub repository has no revision {source.revision}") from None
    except GatedRepoError:
        raise InputError(f"{source.flag}={source.given}: a gated Hub repository; accept its licence on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise InputError(f"{source.flag}={source.given}: no such Hub repository (or a private one: log in with hf auth login)") from None
    except (HfHubHTTPError, HFValidationError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{source.flag}={source.given}: the Hub refused it ({reason})") from None
