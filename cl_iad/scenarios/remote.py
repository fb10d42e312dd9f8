"""Folders that live on the Hugging Face Hub, named ``hf://ORG/NAME[/SUBFOLDER][@REVISION]``.

A dataset root (``--dataset folder --root hf://ORG/NAME``, repo type "dataset") and a saved model
(``cl-iad predict --model-dir hf://ORG/NAME``, repo type "model") are both fetched with
``huggingface_hub.snapshot_download`` into the Hub's own cache (``HF_HOME``/``HF_HUB_CACHE``): the
first use downloads, later uses find the files there, and with ``HF_HUB_OFFLINE=1`` a cached
snapshot is used without any network access. A missing or unreachable one is one
:class:`HubError` line that says why and what to do.

This lives with the scenarios because a dataset root is the lowest thing that can be remote;
:mod:`cl_iad.deploy` and :mod:`cl_iad.hub` use it for models. ``pip install 'cl_iad[hub]'``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

SCHEME = "hf://"
# hf://ORG/NAME, an optional folder inside the repository, an optional @revision (branch, tag or commit);
# a single slash too, since pathlib turns "hf://x" into "hf:/x"
_REF = re.compile(r"hf:/{1,2}(?P<repo>[\w.-]+/[\w.-]+)(?P<sub>(?:/[^@]*)?)(?:@(?P<revision>.+))?")
_TRUE = {"1", "true", "yes", "on"}


class HubError(UserError):
    """A Hub repository cannot be found, reached or read from the cache; the message says what to do."""


@dataclass(frozen=True)
class HubRef:
    """A folder in a Hub repository: ``hf://repo_id[/subfolder][@revision]``."""

    repo_id: str
    subfolder: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        sub = f"/{self.subfolder}" if self.subfolder else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{SCHEME}{self.repo_id}{sub}{rev}"


def parse_hub_ref(value: str | Path | None) -> HubRef | None:
    """The :class:`HubRef` of an ``hf://`` string (or a Path made from one), else None."""
    if value is None:
        return None
    text = str(value)
    if not text.startswith("hf:/"):
        return None
    match = _REF.fullmatch(text)
    if match is None:
        raise HubError(f"{text!r} is not a Hub reference: write hf://ORG/NAME, hf://ORG/NAME@REVISION or "
                       "hf://ORG/NAME/FOLDER (a folder inside the repository)")
    sub = match.group("sub").strip("/")
    if ".." in sub.split("/"):
        raise HubError(f"{text!r}: the folder inside the repository may not contain '..'")
    return HubRef(match.group("repo"), sub, match.group("revision"))


def offline() -> bool:
    """Whether HF_HUB_OFFLINE is set, read now (huggingface_hub reads it once, at its import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or value.strip().lower() in _TRUE


def cache_dir() -> Path:
    """The Hub cache in use, from the environment as it is now (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(os.path.expandvars(os.path.expanduser(env[name])))
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(os.path.expanduser(env["HF_HOME"]))) / "hub"
    return Path(constants.HF_HUB_CACHE)


def snapshot(ref: HubRef, repo_type: str = "model", allow_patterns: list[str] | None = None) -> Path:
    """The local folder of `ref` in the Hub cache, downloaded first unless it is already there.

    Raises :class:`HubError` (one line) when the repository, revision or cached copy is missing,
    or the Hub cannot be reached.
    """
    from .._extras import require

    hub = require("huggingface_hub", "hub", f"reading {ref}")
    errors = hub.utils
    if ref.subfolder:
        allow_patterns = [f"{ref.subfolder}/{p}" for p in (allow_patterns or ["**"])]
    where = cache_dir()
    is_offline = offline()
    try:
        folder = hub.snapshot_download(ref.repo_id, repo_type=repo_type, revision=ref.revision,
                                       cache_dir=where, allow_patterns=allow_patterns,
                                       local_files_only=is_offline)
    except errors.RevisionNotFoundError as exc:
        raise HubError(f"{ref}: the {repo_type} repository {ref.repo_id} has no revision {ref.revision!r}; "
                       "name an existing branch, tag or commit after '@'") from exc
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as exc:
        raise HubError(f"{ref}: no {repo_type} repository {ref.repo_id} on the Hugging Face Hub, or it is private or "
                       "gated and no valid token was sent; check the name, or log in (`hf auth login`, or set "
                       "HF_TOKEN)") from exc
    except errors.LocalEntryNotFoundError as exc:
        if type(exc).__name__ == "IncompleteSnapshotError":  # huggingface_hub >= 1.x: some files never arrived
            raise HubError(f"{ref}: the copy in {where} is incomplete and cannot be completed now; "
                           f"{_first_line(exc)}") from exc
        if is_offline:
            raise HubError(f"{ref} is not in the Hugging Face cache {where} and HF_HUB_OFFLINE=1 forbids "
                           "downloading it; run once with network access (HF_HUB_OFFLINE unset) to cache it, or "
                           "point HF_HOME at the cache that holds it") from exc
        raise HubError(f"{ref}: the Hugging Face Hub cannot be reached and {where} holds no copy; check the "
                       f"network connection and try again ({_first_line(exc)})") from exc
    except (errors.HfHubHTTPError, OSError) as exc:  # an incomplete cached copy, a Hub error, a full disk
        raise HubError(f"{ref}: cannot fetch it from the Hugging Face Hub into {where}: {_first_line(exc)}") from exc
    path = Path(folder) / ref.subfolder if ref.subfolder else Path(folder)
    if not path.is_dir():
        raise HubError(f"{ref}: the repository {ref.repo_id} has no folder {ref.subfolder!r}")
    log.info("%s: %s", ref, path)
    return path


def resolve_root(value: str | Path) -> Path:
    """A dataset root as a local folder: ``hf://`` roots from the Hub cache (repo type "dataset"), others as is."""
    ref = parse_hub_ref(value)
    return Path(value) if ref is None else snapshot(ref, repo_type="dataset")


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:240] or type(exc).__name__
