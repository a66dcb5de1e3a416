"""Load a UniPixel checkpoint (hub layout or local dir) onto transformers 5.x + PyPI sam2.

No `trust_remote_code`, no pickle: the LLM goes through transformers' own Qwen2.5-VL
classes (which map the legacy `model.layers.*` / `visual.*` names), SAM 2 is composed
from PyPI sam2's Hydra configs, and the UniPixel heads are read from safetensors.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sam2  # noqa: F401  (initialises sam2's Hydra config module)
import torch
from hydra import compose
from hydra.utils import instantiate
from safetensors import safe_open
from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from .heads import UniPixelHeads
from .sam2_hidden import HiddenPromptSAM2
from .unipixel import TokenIds, UniPixel

log = logging.getLogger(__name__)

UNIPIXEL_KEYS = ("sam2_", "ref_token_id", "seg_token_id", "mem_token_id")
HEAD_PREFIXES = ("seg_head.", "ref_encoder.", "ref_proj", "tem_pe.", "tem_emb.", "tem_proj.", "msk_proj.")
# PyPI sam2 names the memory-encoder layer scale `gamma`; the checkpoints call it `weight`
SAM2_RENAMES = {"memory_encoder.fuser.layers.0.weight": "memory_encoder.fuser.layers.0.gamma",
                "memory_encoder.fuser.layers.1.weight": "memory_encoder.fuser.layers.1.gamma"}


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be loaded; the message says why and what to do."""


@dataclass
class Processor:
    tokenizer: object
    video_processor: Qwen2VLVideoProcessor
    tokens: TokenIds
    sam2_image_size: int


def sam2_config_name(name: str) -> str:
    """Published checkpoints name the authors' yaml ("configs/sam2.1_hiera_b+"); PyPI sam2
    keeps the same architectures under configs/sam2.1/ and configs/sam2/."""
    stem = Path(name).name.removesuffix(".yaml")
    family = "sam2.1" if stem.startswith("sam2.1") else "sam2"
    return f"configs/{family}/{stem}.yaml"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, bf16, fp16 or fp32")
    return table[dtype]


# files that are (or may be) pickles: refused before transformers could `torch.load` them
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# HF Trainer's pickled arguments sit in many checkpoint folders; nothing here ever reads them
NOT_WEIGHTS = ("training_args.bin",)
# UniPixel's own config keys (and the LLM sizes the heads need), checked before anything is built
CONFIG_TYPES = {"model_type": str, "sam2_config": str, "sam2_image_size": int, "sam2_hidden_tokens": int,
                "ref_token_id": int, "seg_token_id": int, "mem_token_id": int, "video_token_id": int,
                "hidden_size": int}


def one_line(e: BaseException) -> str:
    """An exception as one line (library messages often span several)."""
    return " ".join(str(e).split()) or type(e).__name__


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror or e})") from e


def check_checkpoint_files(model_dir: Path) -> None:
    """Refuse pickles and unreadable JSON before any library opens the folder."""
    for path in sorted(model_dir.iterdir()):
        if path.suffix.lower() in PICKLE_SUFFIXES and path.name not in NOT_WEIGHTS:
            raise ModelLoadError(f"{path}: pickle weight files are refused (unipixel loads safetensors only "
                                 "and never unpickles); remove it or convert it to .safetensors")
        if path.suffix == ".json" and path.is_file():
            read_json(path)


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.exists():
        raise ModelLoadError(f"{model_dir} has no config.json: not a UniPixel checkpoint")
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    if cfg.get("model_type") != "pixel_qwen2_5_vl":
        raise ModelLoadError(f"{path}: model_type is {cfg.get('model_type')!r}, expected 'pixel_qwen2_5_vl'")
    for key, kind in CONFIG_TYPES.items():
        value = cfg.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ModelLoadError(f"{path}: {key} must be {'an integer' if kind is int else 'a string'}, "
                                 f"got {value!r:.60}" if key in cfg else f"{path}: {key} is missing")
    overrides = cfg.get("sam2_overrides", [])
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise ModelLoadError(f"{path}: sam2_overrides must be a list of strings")
    return cfg


def qwen_config(cfg: dict) -> Qwen2_5_VLConfig:
    plain = {k: v for k, v in cfg.items() if not k.startswith(UNIPIXEL_KEYS)}
    plain["model_type"] = "qwen2_5_vl"
    plain["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    return Qwen2_5_VLConfig(**plain)


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files, each checked to open as safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: no weight_map")
        files = []
        for name in sorted(set(map(str, weight_map.values()))):
            # an index naming a pickle would make transformers torch.load it
            if not name.endswith(".safetensors") or Path(name).name != name:
                raise ModelLoadError(f"{index}: refers to {name!r}; only .safetensors files in the checkpoint "
                                     "folder are loaded (pickle weights are refused)")
            if not (model_dir / name).is_file():
                raise ModelLoadError(f"{index}: refers to {name}, which is missing")
            files.append(model_dir / name)
    elif (model_dir / "model.safetensors").exists():
        files = [model_dir / "model.safetensors"]
    else:
        raise ModelLoadError(f"{model_dir} holds no safetensors weights (pickled .bin weights are refused)")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as e:  # SafetensorError, OSError: truncated, garbage, unreadable
            raise ModelLoadError(f"{f}: not a valid safetensors file ({one_line(e)})") from e
    return files


def read_tensors(files: list[Path], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118  (safe_open is not iterable)
                if k.startswith(prefixes):
                    out[k] = st.get_tensor(k)
    return out


def build_sam2(cfg: dict) -> HiddenPromptSAM2:
    overrides = [
        f"++model.image_size={cfg['sam2_image_size']}",
        "++model._target_=unipixel_cli.model.sam2_hidden.HiddenPromptSAM2",
        # float32 islands of the authors' bf16 policy (no-ops on float32 weights)
        "++model.image_encoder.trunk._target_=unipixel_cli.model.sam2_precision.Fp32PosEmbedHiera",
        "++model.image_encoder.neck._target_=unipixel_cli.model.sam2_precision.Fp32UpsampleFpnNeck",
        *cfg.get("sam2_overrides", []),
    ]
    # sam2_apply_postprocessing=false in the published configs: no fill-hole, no stability
    # multimask, no binarised memory — PyPI's defaults when its post-processing is not asked for
    if cfg.get("sam2_apply_postprocessing"):
        overrides += ["++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
                      "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
                      "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
                      "++model.binarize_mask_from_pts_for_mem_enc=true"]
    composed = compose(config_name=sam2_config_name(cfg["sam2_config"]), overrides=overrides)
    return instantiate(composed.model, _recursive_=True)


def load_processor(model_dir: Path, cfg: dict) -> Processor:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ModelLoadError(f"{model_dir / 'tokenizer.json'}: cannot load the tokenizer "
                             f"({type(e).__name__}: {one_line(e)})") from e
    try:
        video_processor = Qwen2VLVideoProcessor.from_pretrained(str(model_dir))
    except Exception as e:
        raise ModelLoadError(f"{model_dir / 'video_preprocessor_config.json'}: cannot load the video processor "
                             f"({type(e).__name__}: {one_line(e)})") from e
    gen_path = model_dir / "generation_config.json"
    eos = json.loads(gen_path.read_text()).get("eos_token_id") if gen_path.exists() else None
    eos = eos if eos is not None else cfg.get("eos_token_id")
    eos = tuple(eos) if isinstance(eos, list) else (eos,)
    tokens = TokenIds(ref=cfg["ref_token_id"], seg=cfg["seg_token_id"], mem=cfg["mem_token_id"],
                      video=cfg["video_token_id"], pad=tokenizer.pad_token_id or eos[0], eos=eos)
    return Processor(tokenizer, video_processor, tokens, cfg["sam2_image_size"])


def load_unipixel(model_dir: str | os.PathLike, device: str = "auto",
                  dtype: str = "auto") -> tuple[UniPixel, Processor]:
    """Load a checkpoint; every failure is a one-line `ModelLoadError` naming the file."""
    model_dir = Path(model_dir)
    try:
        return _load_unipixel(model_dir, device, dtype)
    except ModelLoadError:
        raise
    except Exception as e:  # a library error that the checks before it did not foresee
        log.debug("loading %s failed", model_dir, exc_info=True)
        raise ModelLoadError(f"{model_dir}: cannot load the checkpoint ({type(e).__name__}: {one_line(e)})") from e


def _load_unipixel(model_dir: Path, device: str, dtype: str) -> tuple[UniPixel, Processor]:
    t0 = time.perf_counter()
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: not a checkpoint directory")
    check_checkpoint_files(model_dir)
    cfg = read_config(model_dir)
    dev = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, dev)
    files = weight_files(model_dir)  # before transformers: it would torch.load a pickle an index names

    with quiet_transformers():
        attn = "sdpa"
        try:
            import flash_attn  # noqa: F401
            if dev.type == "cuda" and compute_dtype != torch.float32:
                attn = "flash_attention_2"
        except ImportError:
            pass
        try:
            qcfg = qwen_config(cfg)
        except Exception as e:
            raise ModelLoadError(f"{model_dir / 'config.json'}: not a valid Qwen2.5-VL config "
                                 f"({type(e).__name__}: {one_line(e)})") from e
        llm, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(model_dir), config=qcfg, dtype=compute_dtype, attn_implementation=attn,
            output_loading_info=True, use_safetensors=True)
        processor = load_processor(model_dir, cfg)
    _check_llm_tensors(info, tied=cfg.get("tie_word_embeddings", False), model_dir=model_dir)

    try:
        sam2_model = build_sam2(cfg)
    except Exception as e:  # Hydra: unknown config name or bad override
        raise ModelLoadError(f"{model_dir / 'config.json'}: cannot build SAM 2 from sam2_config "
                             f"{cfg['sam2_config']!r} ({type(e).__name__}: {one_line(e)})") from e
    sam2_sd = {SAM2_RENAMES.get(k[5:], k[5:]): v for k, v in read_tensors(files, ("sam2.",)).items()}
    if not sam2_sd:
        # a training-time `sam2_checkpoint` path is never used: it does not exist for users
        raise ModelLoadError(f"{model_dir}: weights hold no sam2.* tensors")
    _load_strict(sam2_model, sam2_sd, "sam2")

    llm_dim = cfg["hidden_size"]
    heads = UniPixelHeads(
        llm_dim=llm_dim, sam_dim=sam2_model.hidden_dim, merger_dim=llm.model.visual.merger.hidden_size,
        sam_image_size=cfg["sam2_image_size"], sam_embedding_size=sam2_model.sam_image_embedding_size,
        hidden_tokens=cfg["sam2_hidden_tokens"])
    _load_strict(heads, read_tensors(files, HEAD_PREFIXES), "UniPixel heads")

    model = UniPixel(llm, sam2_model, heads, tokens=None, sam2_image_size=cfg["sam2_image_size"],
                     compute_dtype=compute_dtype)
    model.tokens = processor.tokens
    # the authors' policy: every parameter and persistent buffer in `compute_dtype` (the stored
    # float32 random-Fourier matrices are rounded at load), no autocast; the float32 islands
    # live in the modules themselves (sam2_precision.py)
    model.sam2.to(compute_dtype)
    model.heads.to(compute_dtype)
    model.to(dev).eval()
    log.info("loaded %s in %.2fs on %s (%s)", model_dir, time.perf_counter() - t0, dev, compute_dtype)
    return model, processor


@contextmanager
def quiet_transformers():
    """The flat legacy config makes transformers print notices and a load bar: not for users."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _check_llm_tensors(info: dict, tied: bool, model_dir: Path) -> None:
    """Every LLM tensor comes from the checkpoint; the only tensors transformers may leave
    to us are the UniPixel modules (read separately, strictly). A tied `lm_head` is the
    embedding table; an untied one must be in the files, never randomly initialised."""
    missing = [k for k in sorted(info["missing_keys"]) if not (tied and k.startswith("lm_head."))]
    if missing:
        raise ModelLoadError(f"{model_dir}: checkpoint lacks tensor {missing[0]}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [k for k in sorted(info["unexpected_keys"]) if not k.startswith(("sam2.", *HEAD_PREFIXES))]
    if unexpected:
        raise ModelLoadError(f"{model_dir}: checkpoint has tensor {unexpected[0]} that no module of "
                             f"UniPixel uses" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))


def _load_strict(module: torch.nn.Module, state: dict, what: str) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(f"{what} weights do not match the config: missing {result.missing_keys[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
