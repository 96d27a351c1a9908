"""A tiny training configuration (seconds on a CPU) shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = {
    "data": {"kind": "phantoms", "image_size": 32, "in_chans": 1, "entities": "ground_truth",
             "max_length": 48, "options": {"n_train": 96, "n_validate": 48, "n_test": 48}},
    "model": {
        "image": {"name": "vit_tiny_patch16_224", "in_chans": 1, "img_size": 32, "patch_size": 8,
                  "embed_dim": 32, "depth": 1, "num_heads": 2},
        "text": {"config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "intermediate_size": 64,
                            "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
                            "attention_probs_dropout_prob": 0.0}},
        "embed_dim": 16, "tokenizer_vocab_size": 300},
    "objective": {"kind": "medtrim"},
    "optim": {"lr": 0.001, "warmup_steps": 2},
    "train": {"steps": 6, "batch_size": 12, "log_every": 2, "ckpt_every": 3, "progress": False,
              "tensorboard": False, "device": "cpu"},
    "eval": {"ks": [1, 5], "batch_size": 64},
}


def tiny_config_file(tmp_path: Path, **sections) -> Path:
    data = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def dropout_model() -> dict:
    """TINY's model section with dropout on in both encoders (resume must restore its masks)."""
    model = TINY["model"]
    return {**model, "image": {**model["image"], "drop_rate": 0.2, "attn_drop_rate": 0.2},
            "text": {"config": {**model["text"]["config"], "hidden_dropout_prob": 0.2,
                                "attention_probs_dropout_prob": 0.2}}}
