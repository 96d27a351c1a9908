"""open_clip models as the dual encoder, against the real, pinned open_clip: a tiny open_clip
config (no pretrained weights, nothing downloaded) trains with every objective, evaluates, and
the exported result loads back through open_clip with the same embeddings."""

from __future__ import annotations

import json

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from training_helpers import TINY  # noqa: E402

from medtrim_ext.evaluation.run import evaluate_run, load_trained  # noqa: E402
from medtrim_ext.integrations.open_clip import (EXPORT_CONFIG, EXPORT_WEIGHTS, TINY as TINY_CLIP,  # noqa: E402
                                                OpenCLIPDualEncoder, OpenCLIPTokenizer, build,
                                                export_open_clip, model_config)
from medtrim_ext.training import load_config, train  # noqa: E402

REPORTS = ["Small left pleural effusion.", "No acute cardiopulmonary process.",
           "Moderate cardiomegaly with mild pulmonary edema."]


def tiny_open_clip(tmp_path, kind="medtrim+soft_infonce", steps=4, **train):
    """TINY (32 px gray phantoms, 12 per batch) with the packaged tiny open_clip model."""
    data = {"data": TINY["data"], "model": {"kind": "open_clip", "name": TINY_CLIP},
            "objective": {"kind": kind}, "optim": TINY["optim"],
            "train": {**TINY["train"], "steps": steps, "out_dir": str(tmp_path / "run"), **train},
            "eval": {**TINY["eval"], "probe": False}}
    path = tmp_path / "tiny-open-clip.yaml"
    path.write_text(json.dumps(data))   # JSON is YAML
    return load_config(path)


def open_clip_weights(out_dir):
    return torch.load(out_dir / "open_clip" / EXPORT_WEIGHTS, weights_only=True)


def test_trains_evaluates_saves_and_loads_back_through_open_clip(tmp_path):
    torch.manual_seed(0)
    first = train(tiny_open_clip(tmp_path, steps=3))
    out = tmp_path / "run"
    at3 = open_clip_weights(out)
    result = train(tiny_open_clip(tmp_path, steps=6))     # continues the run to step 6
    assert result["resumed_from"] == 3 and result["steps"] == 6
    assert result["paths"]["open_clip"] == str(out / "open_clip")
    assert torch.isfinite(torch.tensor(result["final"]["loss"])) and first["final"]["loss"] > 0
    at6 = open_clip_weights(out)
    # both towers trained; the model's own temperature is frozen (the objective holds its own)
    for key in ("visual.conv1.weight", "token_embedding.weight", "text_projection"):
        assert not torch.equal(at3[key], at6[key]), key
    assert torch.equal(at3["logit_scale"], at6["logit_scale"])

    report = evaluate_run(result["checkpoint"], device="cpu", progress=False)
    assert report["result"]["num_samples"] == 48 and report["result"]["step"] == 6
    for direction in ("i2t", "t2i"):
        assert 0 <= report["result"][direction]["disease"]["precision@1"] <= 1

    # the run's model (from last.pt) and open_clip's own loading of the export agree
    ours, tokenizer, cfg, _ = load_trained(result["checkpoint"], torch.device("cpu"))
    assert isinstance(ours, OpenCLIPDualEncoder) and isinstance(tokenizer, OpenCLIPTokenizer)
    theirs = open_clip.create_model(f"local-dir:{out / 'open_clip'}").eval()
    by_name = open_clip.create_model(TINY_CLIP, pretrained=str(out / "open_clip" / EXPORT_WEIGHTS)).eval()
    their_tok = open_clip.get_tokenizer(f"local-dir:{out / 'open_clip'}")
    ids = tokenizer(REPORTS, padding="longest", truncation=True, max_length=cfg.data.max_length)["input_ids"]
    assert torch.equal(ids, their_tok(REPORTS))        # max_length 48 = the model's context length
    gray = torch.rand(3, 1, 32, 32) * 2 - 1            # the loop's images: "half"-normalised gray
    rgb = (gray.expand(-1, 3, -1, -1) * 0.5 + 0.5 - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)   # what open_clip's preprocess gives
    with torch.no_grad():
        img, txt = ours(gray, ids)
        for model in (theirs, by_name):
            torch.testing.assert_close(model.encode_image(rgb), img, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.encode_text(ids), txt, rtol=1e-5, atol=1e-5)
    assert torch.equal(theirs.state_dict()["visual.conv1.weight"], at6["visual.conv1.weight"])


@pytest.mark.parametrize("kind", ["medtrim", "medtrim_offline", "infonce", "soft_infonce"])
def test_every_objective_trains_it(tmp_path, kind):
    result = train(tiny_open_clip(tmp_path, kind=kind, steps=3, ckpt_every=3))
    assert torch.isfinite(torch.tensor(result["final"]["loss"]))
    w = open_clip_weights(tmp_path / "run")
    fresh = OpenCLIPDualEncoder.from_config(model_config(TINY_CLIP)).model.state_dict()
    assert set(w) == set(fresh)   # the export is a plain open_clip state_dict
    assert result["final"]["grad_norm"] > 0


def test_tokenizer_truncates_and_pads_to_the_context_length():
    _, tok = build(TINY_CLIP)
    out = tok(REPORTS * 2, padding="longest", truncation=True, max_length=6)
    assert out["input_ids"].shape == (6, 48) and out["input_ids"].dtype == torch.int64
    assert out["attention_mask"].sum(1).max() == 6      # cut to 6 tokens, end token kept
    assert (out["input_ids"].argmax(1) == 5).all()      # the end token (the largest id) pools
    assert len(tok) == 49408


def test_image_input_follows_data_normalize():
    gray = torch.rand(2, 1, 32, 32)
    half, _ = build(TINY_CLIP, input_normalize="half")
    imnet = OpenCLIPDualEncoder.from_config(model_config(TINY_CLIP, input_normalize="imagenet"))
    imnet.load_state_dict(half.state_dict())
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():   # the same picture, normalised either way, gives the same embedding
        torch.testing.assert_close(half.encode_image(gray * 2 - 1),
                                   imnet.encode_image((gray.expand(-1, 3, -1, -1) - mean) / std))
    with pytest.raises(ValueError, match="set data.image_size=32"):
        half.encode_image(torch.zeros(1, 1, 64, 64))
    # open_clip's own preprocessing for PIL images outside the loop
    from PIL import Image

    x = half.image_transform()(Image.new("RGB", (50, 40), (128, 128, 128)))
    assert x.shape == (3, 32, 32)


def test_checkpoint_file_and_json_config(tmp_path):
    ref, _ = build(TINY_CLIP)
    export_open_clip(ref, tmp_path / "exported")
    cfg_file = tmp_path / "mine.json"   # a model-config file (open_clip's format), its weights from a file
    cfg_file.write_text(json.dumps(json.loads((tmp_path / "exported" / EXPORT_CONFIG).read_text())["model_cfg"]))
    loaded, _ = build(str(cfg_file), checkpoint=str(tmp_path / "exported" / EXPORT_WEIGHTS))
    from_dir, _ = build(f"local-dir:{tmp_path / 'exported'}")   # weights found in the folder
    for model in (loaded, from_dir):
        for k, v in ref.model.state_dict().items():
            assert torch.equal(model.model.state_dict()[k], v), k


@pytest.mark.parametrize("overrides, match", [
    (["model.kind=open_clip"], "model.name must name the open_clip model"),
    (["model.kind=clip"], "model.kind must be one of"),
    (["model.name=ViT-B-16"], "model.name is for model.kind=open_clip"),
    (["model.kind=open_clip", "model.name=ViT-B-16", "optim.text_lr=1e-5"], "optim.text_lr is not supported"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config("demo", overrides)


@pytest.mark.parametrize("overrides, match", [
    (["model.name=no-such-model"], "model.name='no-such-model' is not an open_clip model"),
    (["data.image_size=64"], r"data.image_size=64 but the open_clip model 'medtrim-tiny-clip' takes 32 px"),
    (["model.checkpoint=/no/such/file.bin"], "model.checkpoint '/no/such/file.bin' does not exist"),
])
def test_bad_model_stops_before_anything_is_written(tmp_path, overrides, match):
    from medtrim_ext.training.config import Config, apply_overrides

    cfg = tiny_open_clip(tmp_path)
    cfg = Config.from_dict(apply_overrides(cfg.to_dict(), overrides))
    with pytest.raises(ValueError, match=match):
        train(cfg)
    assert not (tmp_path / "run").exists()


def biomedclip_style(tmp_path):
    """A BiomedCLIP-shaped config (Hugging Face BERT text tower, as open_clip's
    open_clip_config.json has it) at tiny size, and a local folder with the tower's config.json and
    tokenizer files, as a user would point model.tokenizer at a local PubMedBERT copy."""
    from transformers import BertConfig

    from medtrim_ext.models.tokenization import train_wordpiece_tokenizer

    local = tmp_path / "bert"
    tok = train_wordpiece_tokenizer(REPORTS * 4, vocab_size=200, out_dir=local)
    BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(local)
    hub = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"   # never contacted
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 8},
           "text_cfg": {"hf_model_name": hub, "hf_tokenizer_name": hub, "hf_proj_type": "mlp",
                        "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32}}
    path = tmp_path / "open_clip_config.json"
    path.write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    return path, local


def test_hugging_face_text_tower_from_local_files(tmp_path):
    path, local = biomedclip_style(tmp_path)
    with pytest.raises(ValueError, match="would be downloaded: set model.tokenizer"):
        model_config(str(path))
    cfg = tiny_open_clip(tmp_path, steps=3)
    from medtrim_ext.training.config import Config, apply_overrides

    cfg = Config.from_dict(apply_overrides(cfg.to_dict(), [f"model.name={path}", f"model.tokenizer={local}"]))
    result = train(cfg)
    assert torch.isfinite(torch.tensor(result["final"]["loss"]))
    out = tmp_path / "run" / "open_clip"
    assert (out / "tokenizer.json").is_file()   # open_clip's local-dir: reads an HF tokenizer there
    ours, tokenizer, _, _ = load_trained(result["checkpoint"], torch.device("cpu"))
    theirs = open_clip.create_model(f"local-dir:{out}").eval()
    assert type(theirs).__name__ == "CustomTextCLIP"
    ids = open_clip.get_tokenizer(f"local-dir:{out}")(REPORTS)
    assert torch.equal(ids, tokenizer(REPORTS, max_length=32)["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode_text(ids), ours.encode_text(ids), rtol=1e-5, atol=1e-5)


def test_missing_library_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)   # as if not installed
    monkeypatch.delitem(sys.modules, "medtrim_ext.integrations.open_clip")
    with pytest.raises(ImportError, match=r'pip install "medtrim_ext\[open-clip\]"'):
        importlib.import_module("medtrim_ext.integrations.open_clip")
