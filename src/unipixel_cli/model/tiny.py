"""Tiny UniPixel checkpoints in the published format, for tests and smoke runs.

`make_tiny_checkpoint` writes seeded random weights (architecture and tokenizer corpus from
`weights/tiny/tiny-random.json`). `--model tiny-random` is that checkpoint briefly fitted on
the synthetic examples (`tiny_fit.py`), so a smoke run on `examples/` shows short answers with
`<|seg|>` and visible masks; on any other input its answers mean nothing. Both go through
exactly the same loading path (flat config, legacy weight names, `sam2.*`, heads, tokenizer
files) as the real checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                "<|repo_name|>", "<|file_sep|>"]
UNIPIXEL_SPECIAL = ["<|ref|>", "<|seg|>", "<|mem|>"]
log = logging.getLogger(__name__)

# Qwen2.5-VL-Instruct's chat template (one system prompt, vision placeholders per item)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

def _tokenizer(out: Path, spec: dict):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=spec["vocab_size"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(spec["corpus"] * 4, trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Qwen2Tokenizer(vocab=spec["vocab"], merges=merges)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:] + UNIPIXEL_SPECIAL})
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return tok


def _config(tok, architecture: dict) -> dict:
    """The flat published-style config: the recipe's architecture plus the tokenizer's ids."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL + UNIPIXEL_SPECIAL}
    return {
        "architectures": ["PixelQwen2_5_VLForConditionalGeneration"], "model_type": "pixel_qwen2_5_vl",
        **architecture,
        "vocab_size": 64 * ((len(tok) + 63) // 64),
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "ref_token_id": ids["<|ref|>"], "seg_token_id": ids["<|seg|>"],
        "mem_token_id": ids["<|mem|>"],
    }


def _legacy_name(key: str) -> str:
    # the published checkpoints were written by transformers 4.5x with these names
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")
    if key.startswith("model.visual."):
        return key.removeprefix("model.")
    return key


def make_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, recipe: dict | None = None) -> Path:
    """Write a seeded random UniPixel checkpoint (architecture from `weights/tiny/tiny-random.json`
    unless `recipe` is given) to `path` and return it."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from ..weights import tiny_recipe
    from .heads import UniPixelHeads
    from .loading import build_sam2, qwen_config

    recipe = recipe or tiny_recipe()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out, recipe["tokenizer"])
    cfg = _config(tok, recipe["config"])
    torch.manual_seed(seed)
    llm = Qwen2_5_VLForConditionalGeneration(qwen_config(cfg))
    sam2 = build_sam2(cfg)
    heads = UniPixelHeads(cfg["hidden_size"], sam2.hidden_dim, llm.model.visual.merger.hidden_size,
                          cfg["sam2_image_size"], sam2.sam_image_embedding_size, cfg["sam2_hidden_tokens"])
    save_weights(out, llm.state_dict(), sam2.state_dict(), heads.state_dict())
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": cfg["bos_token_id"], "eos_token_id": [cfg["eos_token_id"], cfg["bos_token_id"]],
        "pad_token_id": cfg["bos_token_id"], "do_sample": False}, indent=2))
    processor = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                 "min_pixels": 3136, "max_pixels": 12845056, "merge_size": 2, "patch_size": 14,
                 "temporal_patch_size": 2, "resample": 3, "rescale_factor": 1 / 255, "do_convert_rgb": True,
                 "do_normalize": True, "do_rescale": True, "do_resize": True}
    (out / "preprocessor_config.json").write_text(json.dumps(
        processor | {"image_processor_type": "Qwen2VLImageProcessor"}, indent=2))
    (out / "video_preprocessor_config.json").write_text(json.dumps(
        processor | {"video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False}, indent=2))
    (out / "README.md").write_text("Tiny RANDOM UniPixel checkpoint made by unipixel_cli.model.tiny "
                                   f"(seed {seed}). Its answers and masks are meaningless.\n")
    return out


def save_weights(out: Path, llm_state: dict, sam2_state: dict, heads_state: dict) -> None:
    """`model.safetensors` with the published names (legacy LLM names, `sam2.*`, heads)."""
    from .loading import SAM2_RENAMES

    tensors = {_legacy_name(k): v for k, v in llm_state.items() if k != "lm_head.weight"}
    back = {v: k for k, v in SAM2_RENAMES.items()}
    tensors |= {"sam2." + back.get(k, k): v for k, v in sam2_state.items()}
    tensors |= dict(heads_state)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})


def cache_root() -> Path:
    """`$UNIPIXEL_CACHE`, else `$XDG_CACHE_HOME/unipixel`, else `~/.cache/unipixel`."""
    if os.environ.get("UNIPIXEL_CACHE"):
        return Path(os.environ["UNIPIXEL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "unipixel"


def recipe_key(recipe: dict) -> str:
    """Short hash of the recipe and the fitting code's version: a changed recipe rebuilds."""
    from .tiny_fit import FIT_VERSION

    blob = json.dumps({"recipe": recipe, "fit_version": FIT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def make_tiny_random(path: str | os.PathLike, seed: int = 0, recipe: dict | None = None) -> Path:
    """The `tiny-random` checkpoint: seeded random weights, then fitted on the synthetic examples."""
    from ..weights import tiny_recipe
    from .tiny_fit import fit_on_examples

    recipe = recipe or tiny_recipe()
    out = make_tiny_checkpoint(path, seed, recipe)
    fit_on_examples(out, recipe["fit"], seed)
    (out / "README.md").write_text(
        f"Tiny UniPixel checkpoint made by unipixel_cli.model.tiny (seed {seed}, recipe {recipe_key(recipe)}): "
        "random weights briefly fitted on the synthetic examples (examples/), so a smoke run shows short "
        "answers with <|seg|> and visible masks there. Its answers and masks mean nothing on other inputs.\n")
    return out


def tiny_random_path(seed: int = 0) -> Path:
    """The cached tiny-random checkpoint, created (and fitted) on first use."""
    from ..weights import tiny_recipe

    recipe = tiny_recipe()
    path = cache_root() / f"tiny-random-seed{seed}-{recipe_key(recipe)}"
    if not (path / "model.safetensors").exists():
        log.warning("creating the tiny-random checkpoint in %s (fitted on the synthetic examples; "
                    "once, about a minute on a CPU)", path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        make_tiny_random(tmp, seed, recipe)
        try:
            tmp.rename(path)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return path
