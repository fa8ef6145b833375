"""Load SAM 3 from a hub id, a local directory, or Meta's original checkpoint.

``load_model(spec)`` accepts:

* a Hugging Face hub id (default ``facebook/sam3``): taken from the local cache when
  present, downloaded otherwise;
* a directory written by ``Sam3Model.save_pretrained`` (tokenizer files optional);
* Meta's ``sam3.pt`` (any ``.pt`` / ``.pth`` file): converted by key mapping into the
  same ``transformers`` model (:mod:`ovearth.model.convert`). Its configuration is the
  ``config.json`` beside the file when there is one, else the released ``Sam3Config()``.

Loading is safe and strict: safetensors only for ``save_pretrained`` directories,
``torch.load(weights_only=True)`` for ``.pt`` files, and every parameter must be
matched. A model that cannot be found raises :class:`ModelNotFoundError` (exit code 2)
with one sentence saying how to get the weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Sam3Config, Sam3Model

from ..constants import DEFAULT_MODEL
from ..errors import CheckpointError, ModelNotFoundError
from .fingerprint import fingerprint_files
from .tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

_HOW_TO_GET = (
    "download it once on a machine with internet access "
    "(`hf download facebook/sam3` after accepting the licence on its model page) and copy the "
    "Hugging Face cache here, or pass --model with a save_pretrained directory or Meta's sam3.pt"
)


@dataclass
class LoadedModel:
    """A SAM 3 model ready for inference.

    Attributes:
        model: the ``transformers`` model, in eval mode.
        tokenizer: the tokenizer to use with it.
        source: what was loaded (hub id or path), as given.
        fingerprint: 16 hex digits of SHA-256 over the weight files' bytes
            (:func:`~ovearth.model.fingerprint.fingerprint_files`).

    """

    model: Sam3Model
    tokenizer: PreTrainedTokenizerBase
    source: str
    fingerprint: str


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` names a file or folder rather than a hub id."""
    return spec.startswith((".", "/", "~")) or Path(spec).suffix in {".pt", ".pth"} or Path(spec).exists()


def quiet_transformers() -> None:
    """Keep transformers' own progress bars out of the user's terminal."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_model(spec: str | Path = DEFAULT_MODEL, *, attn_implementation: str = "sdpa") -> LoadedModel:
    """Load SAM 3 for inference.

    Args:
        spec: hub id, ``save_pretrained`` directory, or Meta ``.pt`` checkpoint.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"`` (needed to read
            attention weights).

    Returns:
        The model in eval mode (float32, CPU; move it with ``.to``), its tokenizer and
        a fingerprint of its weights.

    Raises:
        ModelNotFoundError: the path does not exist, or the hub id is neither cached
            nor downloadable.
        CheckpointError: a file exists but is not a loadable SAM 3 checkpoint.

    """
    quiet_transformers()
    text = str(spec)
    path = Path(text).expanduser()
    if looks_like_path(text):
        if not path.exists():
            raise ModelNotFoundError(f"SAM 3 weights not found at '{path}': no such file or directory.")
        if path.is_file():
            model = _load_meta_file(path, attn_implementation)
            files = [path]
            tokenizer = load_tokenizer(path.parent)
        else:
            model = _load_directory(path, attn_implementation)
            files = sorted(path.glob("*.safetensors"))
            tokenizer = load_tokenizer(path)
    else:
        model, files = _load_hub(text, attn_implementation)
        tokenizer = load_tokenizer(text)
    return LoadedModel(
        model=model.eval(), tokenizer=tokenizer, source=text, fingerprint=fingerprint_files(files)
    )


#: ``model_type`` values of the configurations ``Sam3Model`` is built from.
SAM3_MODEL_TYPES = ("sam3", "sam3_video")


def read_config(path: Path) -> Sam3Config:
    """A SAM 3 configuration from a ``config.json``, checked before any weight is read.

    Raises:
        CheckpointError: not JSON, not a JSON object, or not a SAM 3 configuration.

    """
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"'{path}' is not a readable JSON file: {_first_line(error)}.") from error
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise CheckpointError(f"'{path}' holds a JSON {kind}, not a SAM 3 configuration object.")
    kind = data.get("model_type")
    if kind not in SAM3_MODEL_TYPES:
        raise CheckpointError(
            f"'{path}' is not a SAM 3 configuration (model_type {kind!r}, expected 'sam3'); "
            "pass the config.json written with the weights."
        )
    try:
        return Sam3Config.from_dict(data)
    except Exception as error:  # transformers raises many types for bad fields
        raise CheckpointError(f"'{path}' is not a valid SAM 3 configuration: {_first_line(error)}") from error


def _load_directory(path: Path, attn_implementation: str) -> Sam3Model:
    if not (path / "config.json").exists():
        raise ModelNotFoundError(
            f"'{path}' is not a SAM 3 model directory (no config.json); "
            "pass a directory written by Sam3Model.save_pretrained or `ovearth make-tiny-model`."
        )
    config = read_config(path / "config.json")
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(
            f"'{path}' has no .safetensors weights; only safetensors directories are loaded."
        )
    try:
        with quiet_hub():  # transformers' load report: our one sentence says what is wrong
            model, info = Sam3Model.from_pretrained(
                path,
                config=config,
                use_safetensors=True,
                attn_implementation=attn_implementation,
                local_files_only=True,
                output_loading_info=True,
            )
    except Exception as error:  # safetensors, torch and transformers raise many types for bad files
        raise CheckpointError(
            f"'{path}' could not be loaded as a SAM 3 model: {_first_line(error)}"
        ) from error
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:
        raise CheckpointError(
            f"'{path}' does not hold every SAM 3 weight for its config.json ({len(missing)} missing or of "
            f"another shape, e.g. {missing[0]}); loading is strict."
        )
    return model


def _load_meta_file(path: Path, attn_implementation: str) -> Sam3Model:
    from .convert import load_meta_checkpoint  # the converter is only needed for .pt files

    config_file = path.parent / "config.json"
    config = read_config(config_file) if config_file.exists() else Sam3Config()
    config._attn_implementation = attn_implementation
    state = load_meta_checkpoint(path, config)
    model = Sam3Model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"'{path}' does not match the SAM 3 configuration: {_first_line(error)}"
        ) from error
    return model


def _load_hub(repo_id: str, attn_implementation: str) -> tuple[Sam3Model, list[Path]]:
    kwargs = dict(use_safetensors=True, attn_implementation=attn_implementation)
    try:
        model = Sam3Model.from_pretrained(repo_id, local_files_only=True, **kwargs)
    except OSError:
        logger.info("%s is not in the local Hugging Face cache; trying the hub", repo_id)
        try:
            with quiet_hub():
                model = Sam3Model.from_pretrained(repo_id, **kwargs)
        except OSError as error:
            raise ModelNotFoundError(
                f"SAM 3 weights '{repo_id}' are not in the local Hugging Face cache and the hub cannot be "
                f"reached or refused them: {_HOW_TO_GET}."
            ) from error
    files = []
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "model.safetensors")
        if isinstance(cached, str):
            files.append(Path(cached))
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        pass
    return model, files


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """Silence the hub client's per-retry warnings; a failure ends in one sentence of ours."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of a model's parameters (the library never names a device itself)."""
    return next(model.parameters()).device
