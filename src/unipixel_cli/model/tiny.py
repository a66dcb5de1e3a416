"""A seeded tiny random UniPixel checkpoint in the published format, for tests and smoke runs.

Its weights are random: answers are gibberish and masks are meaningless. It exists so that
tests, examples and `--model tiny-random` work offline in seconds, through exactly the same
loading path (flat config, legacy weight names, `sam2.*`, heads, tokenizer files) as the
real checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                "<|repo_name|>", "<|file_sep|>"]
UNIPIXEL_SPECIAL = ["<|ref|>", "<|seg|>", "<|mem|>"]

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

SAM2_OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=8",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.neck.d_model=32",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "++model.memory_attention.d_model=32",
    "++model.memory_attention.num_layers=2",
    "++model.memory_attention.layer.d_model=32",
    "++model.memory_attention.layer.dim_feedforward=64",
    "++model.memory_attention.layer.self_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.in_dim=32",
    "++model.memory_encoder.out_dim=16",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.mask_downsampler.embed_dim=32",
    "++model.memory_encoder.fuser.layer.dim=32",
]

CORPUS = [
    "Please segment the red ball. Please segment the yellow triangle in this video.",
    "Where is the blue box? Please provide the segmentation mask. It is the ball.",
    "What is the relationship between [0] and [1]? Options: (A) left (B) right (C) above (D) below.",
    "Here is a video with 16 frames denoted as <1> to <16>. The highlighted regions are as follows:",
    "Sure, it is the car. The best option is (A). What color is the highlighted object? It is green.",
]


def _tokenizer(out: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(CORPUS * 4, trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Qwen2Tokenizer(vocab=spec["vocab"], merges=merges)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:] + UNIPIXEL_SPECIAL})
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return tok


def _config(tok) -> dict:
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL + UNIPIXEL_SPECIAL}
    return {
        "architectures": ["PixelQwen2_5_VLForConditionalGeneration"], "model_type": "pixel_qwen2_5_vl",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": [2, 3, 3]},
        "vocab_size": 64 * ((len(tok) + 63) // 64), "tie_word_embeddings": True, "torch_dtype": "float32",
        "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 70, "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "ref_token_id": ids["<|ref|>"], "seg_token_id": ids["<|seg|>"],
        "mem_token_id": ids["<|mem|>"],
        "vision_config": {"depth": 2, "fullatt_block_indexes": [1], "hidden_act": "silu", "hidden_size": 32,
                          "in_channels": 3, "intermediate_size": 64, "model_type": "qwen2_5_vl", "num_heads": 2,
                          "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112},
        "sam2_config": "configs/sam2.1_hiera_b+", "sam2_image_size": 256, "sam2_hidden_tokens": 2,
        "sam2_batch_mode": False, "sam2_apply_postprocessing": False, "sam2_enable_decoder": True,
        "sam2_inference_mode": False, "sam2_checkpoint": "does/not/exist.pt", "sam2_overrides": SAM2_OVERRIDES,
    }


def _legacy_name(key: str) -> str:
    # the published checkpoints were written by transformers 4.5x with these names
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")
    if key.startswith("model.visual."):
        return key.removeprefix("model.")
    return key


def make_tiny_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a seeded random UniPixel checkpoint to `path` and return it."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .heads import UniPixelHeads
    from .loading import SAM2_RENAMES, build_sam2, qwen_config

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out)
    cfg = _config(tok)
    torch.manual_seed(seed)
    llm = Qwen2_5_VLForConditionalGeneration(qwen_config(cfg))
    sam2 = build_sam2(cfg)
    heads = UniPixelHeads(64, sam2.hidden_dim, llm.model.visual.merger.hidden_size, 256,
                          sam2.sam_image_embedding_size, 2)
    tensors = {_legacy_name(k): v for k, v in llm.state_dict().items() if k != "lm_head.weight"}
    back = {v: k for k, v in SAM2_RENAMES.items()}
    tensors |= {"sam2." + back.get(k, k): v for k, v in sam2.state_dict().items()}
    tensors |= dict(heads.state_dict())
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
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


def tiny_random_path(seed: int = 0) -> Path:
    """The cached tiny-random checkpoint, created on first use."""
    root = Path(os.environ.get("UNIPIXEL_CACHE", Path.home() / ".cache" / "unipixel"))
    path = root / f"tiny-random-seed{seed}"
    if not (path / "model.safetensors").exists():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        make_tiny_checkpoint(tmp, seed)
        tmp.rename(path) if not path.exists() else None
    return path
