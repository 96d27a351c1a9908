"""Encoders: tiny timm / transformers models built from configs (nothing downloaded)."""

import json

import pytest
import torch

from medtrim_ext.models import DEFAULT_TEXT_CONFIG, DualEncoder, ImageEncoder, TextEncoder
from medtrim_ext.models.freezing import trainable_parameters
from medtrim_ext.models.text import _build_config

VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}
VOCAB = 120


def vit(in_chans=1, img_size=32, **kw):
    return ImageEncoder("vit_tiny_patch16_224", in_chans=in_chans, img_size=img_size, **VIT, **kw)


def bert(**kw):
    kw.setdefault("vocab_size", VOCAB)
    return TextEncoder(config=BERT, **kw)


def tokens(b=3, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    for k in range(b):  # right padding of various lengths, at least one token per row
        mask[k, length - k:] = 0
    return ids, mask


def images(b=3, c=1, size=32, seed=0):
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_dual(**kw):
    torch.manual_seed(0)
    return DualEncoder(vit(), bert(), embed_dim=16, **kw)


# ---- image encoder ------------------------------------------------------------------------

def test_image_forward_backward():
    enc = vit()
    assert enc.feature_dim == 32
    out = enc(images())
    assert out.shape == (3, 32) and out.dtype == torch.float32
    out.square().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_gray_images_repeat_into_rgb_model():
    enc = vit(in_chans=3).eval()
    x = images(2, 1)
    assert torch.allclose(enc(x), enc(x.repeat(1, 3, 1, 1)), atol=1e-6)


@pytest.mark.parametrize("in_chans,given", [(3, 2), (1, 3), (3, 4)])
def test_channel_mismatch_is_an_error(in_chans, given):
    with pytest.raises(ValueError, match=f"{given} channels"):
        vit(in_chans=in_chans)(images(2, given))


@pytest.mark.parametrize("bad,err,match", [
    (torch.randn(1, 32, 32), ValueError, "4-D"),
    (torch.zeros(1, 1, 32, 32, dtype=torch.uint8), TypeError, "floating-point"),
    ([[0.0]], TypeError, "torch.Tensor"),
])
def test_image_bad_inputs(bad, err, match):
    with pytest.raises(err, match=match):
        vit()(bad)


def test_image_bad_construction():
    with pytest.raises(ValueError, match="unknown timm model"):
        ImageEncoder("no_such_model")
    with pytest.raises(ValueError, match="not_an_arg"):
        vit(not_an_arg=3)
    with pytest.raises(ValueError, match="num_classes"):
        vit(num_classes=5)
    with pytest.raises(ValueError, match="in_chans"):
        vit(in_chans=0)


def test_cnn_is_built_without_img_size_and_frozen_batchnorm_stays_put():
    enc = ImageEncoder("resnet10t", in_chans=1, img_size=48, freeze_layers=1)
    assert enc.num_layers == 4 and enc.feature_dim == enc.model.num_features

    def running_means():
        return {n: b.clone() for n, b in enc.model.named_buffers() if n.endswith("running_mean")}

    before = running_means()
    enc.train()
    enc(images(2, 1, 48)).sum().backward()
    after = running_means()
    frozen = [n for n in before if n.startswith(("conv1", "bn1", "layer1."))]
    later = [n for n in before if n.startswith("layer4.")]
    assert frozen and later
    assert all(torch.equal(before[n], after[n]) for n in frozen)  # eval mode: statistics kept
    assert all(not torch.equal(before[n], after[n]) for n in later)


# ---- freezing ------------------------------------------------------------------------------

def _frozen_step(model, inputs):
    """One SGD step; returns (changed frozen params, unchanged trainable params)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.5)
    model.train()
    out = model(*inputs)
    (out[0].square().sum() + out[1].square().sum() if isinstance(out, tuple) else out.square().sum()).backward()
    opt.step()
    frozen_changed = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, before[n])]
    trainable_same = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    return frozen_changed, trainable_same


def test_freeze_vit_stem_and_first_block():
    enc = vit(freeze_layers=1)
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert {"model.cls_token", "model.pos_embed", "model.patch_embed.proj.weight"} <= frozen
    assert all(n.startswith(("model.cls_token", "model.pos_embed", "model.patch_embed", "model.blocks.0."))
               for n in frozen)
    assert any(n.startswith("model.blocks.0.") for n in frozen)
    enc.train()
    assert not enc.model.blocks[0].training and enc.model.blocks[1].training
    changed, same = _frozen_step(enc, (images(),))
    assert changed == [] and same == []


def test_freeze_text_embeddings_and_first_layer():
    enc = bert(freeze_layers=1)
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert "model.embeddings.word_embeddings.weight" in frozen
    assert all(n.startswith(("model.embeddings.", "model.encoder.layer.0.")) for n in frozen)
    enc.train()
    assert not enc.model.embeddings.training and enc.model.encoder.layer[1].training
    changed, same = _frozen_step(enc, tokens())
    assert changed == [] and same == []


def test_freeze_dual_and_all_layers():
    torch.manual_seed(0)
    model = DualEncoder(vit(freeze_layers=2), bert(freeze_layers=2), embed_dim=8)
    changed, same = _frozen_step(model, (images(), *tokens()))
    assert changed == [] and same == []
    assert model.image_proj.weight.requires_grad and model.text_proj.weight.requires_grad


@pytest.mark.parametrize("make", [vit, bert])
def test_freeze_too_many_layers(make):
    with pytest.raises(ValueError, match="freeze_layers=3"):
        make(freeze_layers=3)
    with pytest.raises(ValueError, match="freeze_layers"):
        make(freeze_layers=-1)
    with pytest.raises(TypeError, match="freeze_layers"):
        make(freeze_layers=1.0)


# ---- image checkpoints ---------------------------------------------------------------------

def _source_vit(in_chans=3, num_classes=10):
    import timm

    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes,
                             in_chans=in_chans, img_size=32, **VIT).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_image_checkpoint_reproduces_outputs(tmp_path, fmt):
    src = _source_vit()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(src.state_dict(), str(path))
    else:  # a training checkpoint with the weights nested under "state_dict"
        torch.save({"state_dict": src.state_dict(), "epoch": 3}, path)
    enc = vit(in_chans=3, checkpoint=path).eval()
    x = images(2, 3)
    expected = src.forward_head(src.forward_features(x), pre_logits=True)
    assert torch.allclose(enc(x), expected, atol=1e-6)
    assert enc.config()["in_chans"] == 3 and "checkpoint" not in enc.config()


def test_image_checkpoint_of_an_encoder_reloads(tmp_path):
    """The timm model of a (1-channel, headless) ImageEncoder saved and loaded again."""
    torch.manual_seed(2)
    enc = vit(in_chans=1).eval()
    torch.save(enc.model.state_dict(), tmp_path / "encoder.pth")
    again = vit(in_chans=1, checkpoint=tmp_path / "encoder.pth").eval()
    x = images(2, 1)
    assert torch.equal(again(x), enc(x))


def test_image_checkpoint_adapts_channels_and_size(tmp_path):
    from safetensors.torch import save_file

    src = _source_vit()
    path = tmp_path / "rgb.safetensors"
    save_file(src.state_dict(), str(path))
    gray = vit(in_chans=1, checkpoint=path).eval()  # RGB filters summed into one channel
    x = images(2, 1)
    expected = src.forward_head(src.forward_features(x.repeat(1, 3, 1, 1)), pre_logits=True)
    assert torch.allclose(gray(x), expected, atol=1e-5)
    bigger = vit(in_chans=1, img_size=48, checkpoint=path)  # position embeddings resampled
    assert bigger.model.pos_embed.shape[1] == 1 + 6 * 6
    assert bigger(images(1, 1, 48)).shape == (1, 32)


def test_image_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        vit(checkpoint=tmp_path / "missing.safetensors")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="must end with"):
        vit(checkpoint=tmp_path / "w.txt")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint file"):
        vit(checkpoint=tmp_path / "garbage.pth")
    torch.save({"blocks.9.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="(?s)does not fit timm model.*Missing key"):
        vit(checkpoint=tmp_path / "other.pth")
    from safetensors.torch import save_file
    save_file(_source_vit().state_dict(), str(tmp_path / "deep.safetensors"))
    with pytest.raises(ValueError, match="blocks.2"):  # a deeper model than the file
        ImageEncoder("vit_tiny_patch16_224", in_chans=3, img_size=32, patch_size=8, embed_dim=32,
                     depth=3, num_heads=2, checkpoint=tmp_path / "deep.safetensors")


# ---- text encoder --------------------------------------------------------------------------

def test_text_forward_backward_and_pooling():
    torch.manual_seed(0)
    enc = bert(pooling="cls").eval()
    ids, mask = tokens()
    hidden = enc.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(enc(ids, mask), hidden[:, 0])
    enc.pooling = "mean"
    m = mask.unsqueeze(-1).float()
    assert torch.allclose(enc(ids, mask), (hidden * m).sum(1) / m.sum(1), atol=1e-6)
    enc.train()
    out = enc(ids, mask)
    assert out.shape == (3, 32)
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())  # no unused pooler
    assert enc.model.pooler is None


def test_mean_pooling_ignores_padding():
    enc = bert(pooling="mean").eval()
    ids, mask = tokens()
    changed = torch.where(mask.bool(), ids, (ids + 7) % VOCAB)
    assert torch.allclose(enc(ids, mask), enc(changed, mask), atol=1e-5)


def test_text_bf16_autocast():
    enc = bert(pooling="mean").eval()
    ids, mask = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(ids, mask)
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    assert torch.allclose(out.float(), enc(ids, mask), atol=0.1)


@pytest.mark.parametrize("case,err,match", [
    ("out_of_vocab", ValueError, "outside"),
    ("negative_id", ValueError, "outside"),
    ("empty_row", ValueError, "without any token"),
    ("mask_values", ValueError, "only 0 and 1"),
    ("float_ids", TypeError, "input_ids"),
    ("shape", ValueError, "attention_mask has shape"),
    ("no_tokens", ValueError, "at least one token"),
    ("not_tensor", TypeError, "input_ids"),
])
def test_text_bad_inputs(case, err, match):
    enc = bert()
    ids, mask = tokens()
    if case == "out_of_vocab":
        ids[0, 0] = VOCAB
    elif case == "negative_id":
        ids[1, 2] = -1
    elif case == "empty_row":
        mask[2] = 0
    elif case == "mask_values":
        mask[0, 0] = 2
    elif case == "float_ids":
        ids = ids.float()
    elif case == "shape":
        mask = mask[:, :-1]
    elif case == "no_tokens":
        ids, mask = ids[:, :0], mask[:, :0]
    elif case == "not_tensor":
        ids = ids.tolist()
    with pytest.raises(err, match=match):
        enc(ids, mask)


def test_text_pretrained_directory_roundtrip(tmp_path):
    torch.manual_seed(0)
    enc = bert(pooling="mean").eval()
    enc.model.save_pretrained(tmp_path / "model")
    loaded = TextEncoder(tmp_path / "model", pooling="mean").eval()
    ids, mask = tokens()
    assert torch.equal(loaded(ids, mask), enc(ids, mask))
    resized = TextEncoder(tmp_path / "model", vocab_size=VOCAB + 30)
    assert resized.vocab_size == VOCAB + 30
    ids[0, 0] = VOCAB + 29
    assert resized(ids, mask).shape == (3, 32)
    frozen = TextEncoder(tmp_path / "model", freeze_layers=2)
    assert not any(p.requires_grad for p in frozen.model.encoder.parameters())


def test_text_config_sources(tmp_path):
    cfg = _build_config(None, None)  # the default: BERT-base shaped like BioClinicalBERT
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.vocab_size) == ("bert", 768, 12, 12, 28996)
    assert DEFAULT_TEXT_CONFIG["vocab_size"] == 28996
    path = tmp_path / "config.json"
    path.write_text(json.dumps(BERT))
    assert TextEncoder(config=path, vocab_size=77).vocab_size == 77
    assert TextEncoder(config=tmp_path).feature_dim == 32  # a directory holding config.json


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(config={"hidden_size": 32}), ValueError, "model_type"),
    (dict(config={"model_type": "not-a-model"}), ValueError, "not-a-model"),
    (dict(config=BERT, pooling="max"), ValueError, "pooling"),
    (dict(config=BERT, vocab_size=0), ValueError, "vocab_size"),
    (dict(config=5), TypeError, "config"),
    (dict(pretrained="/nonexistent/model"), ValueError, "not a directory"),
    (dict(pretrained=".", config=BERT), ValueError, "not both"),
])
def test_text_bad_construction(kwargs, err, match):
    with pytest.raises(err, match=match):
        TextEncoder(**kwargs)


def test_text_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        TextEncoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TextEncoder(config=tmp_path / "config.json")
    with pytest.raises(ValueError, match="cannot read"):
        TextEncoder(config=tmp_path / "missing.json")
    (tmp_path / "config.json").write_text(json.dumps(BERT))  # a config but no weights
    with pytest.raises(ValueError, match="cannot load"):
        TextEncoder(tmp_path)


# ---- dual encoder --------------------------------------------------------------------------

@pytest.mark.parametrize("projection", ["linear", "mlp"])
def test_dual_forward_backward(projection):
    model = tiny_dual(projection=projection)
    x, (ids, mask) = images(), tokens()
    img_emb, txt_emb = model(x, ids, mask)
    assert img_emb.shape == txt_emb.shape == (3, 16)
    assert not torch.allclose(img_emb.norm(dim=1), torch.ones(3))  # not normalised
    (img_emb.sum() + txt_emb.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert torch.equal(model.encode_image(x), model(x, ids, mask)[0])
    assert torch.equal(model.encode_text(ids, mask), model(x, ids, mask)[1])


def test_dual_bf16_autocast():
    model = tiny_dual().eval()
    x, (ids, mask) = images(), tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img_emb, txt_emb = model(x, ids, mask)
    assert img_emb.dtype == txt_emb.dtype == torch.bfloat16
    ref_img, ref_txt = model(x, ids, mask)
    assert torch.allclose(img_emb.float(), ref_img, atol=0.1, rtol=0.05)
    assert torch.allclose(txt_emb.float(), ref_txt, atol=0.1, rtol=0.05)


def test_dual_config_roundtrip_through_json():
    model = tiny_dual(projection="mlp")
    cfg = json.loads(json.dumps(model.to_config()))
    rebuilt = DualEncoder.from_config(cfg)
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    x, (ids, mask) = images(), tokens()
    for a, b in zip(model(x, ids, mask), rebuilt(x, ids, mask)):
        assert torch.equal(a, b)
    assert rebuilt.to_config() == cfg


def test_dual_from_config_with_freezing_and_defaults():
    model = DualEncoder.from_config({"image": {"name": "vit_tiny_patch16_224", "in_chans": 1, "img_size": 32,
                                               **VIT, "freeze_layers": 1},
                                     "text": {"config": BERT, "vocab_size": VOCAB, "pooling": "mean"}})
    assert model.embed_dim == 512 and model.projection == "linear"
    assert not model.image.model.blocks[0].norm1.weight.requires_grad


@pytest.mark.parametrize("cfg,err,match", [
    ({"image": {}, "text": {}, "embed_dims": 3}, ValueError, "embed_dims"),
    ({"text": {"config": BERT, "tokenizer": "x"}}, ValueError, "tokenizer"),
    ({"image": {"name": "vit_tiny_patch16_224", "bogus": 1}}, ValueError, "bogus"),
    ({"image": [], "text": {}}, TypeError, "image"),
    ([], TypeError, "dict"),
])
def test_dual_from_config_errors(cfg, err, match):
    with pytest.raises(err, match=match):
        DualEncoder.from_config(cfg)


def test_dual_bad_arguments():
    with pytest.raises(ValueError, match="projection"):
        DualEncoder(vit(), bert(), projection="conv")
    with pytest.raises(ValueError, match="embed_dim"):
        DualEncoder(vit(), bert(), embed_dim=0)
    with pytest.raises(TypeError, match="ImageEncoder"):
        DualEncoder(bert(), bert())
    with pytest.raises(ValueError, match="rows"):
        tiny_dual()(images(2), *tokens(3))


# ---- the published MedTrim encoders: pooler output, stem left trainable, per-modality heads ----

def test_pooler_pooling_is_the_models_pooler_output():
    torch.manual_seed(0)
    enc = bert(pooling="pooler").eval()
    assert enc.model.pooler is not None and bert(pooling="cls").model.pooler is None
    ids, mask = tokens()
    hidden = enc.model(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = torch.tanh(enc.model.pooler.dense(hidden[:, 0]))  # BERT: tanh(W h_CLS + b)
    assert torch.allclose(enc(ids, mask), expected, atol=1e-6)
    enc.train()
    enc(ids, mask).sum().backward()
    assert all(p.grad is not None for p in enc.model.pooler.parameters())
    assert enc.config()["pooling"] == "pooler"


def test_pooler_pooling_loads_the_pretrained_pooler(tmp_path):
    from transformers import BertModel

    torch.manual_seed(0)
    enc = bert(pooling="pooler").eval()
    enc.model.save_pretrained(tmp_path / "bert")
    loaded = TextEncoder(tmp_path / "bert", pooling="pooler").eval()
    assert torch.equal(loaded(*tokens()), enc(*tokens()))
    BertModel(enc.model.config, add_pooling_layer=False).save_pretrained(tmp_path / "no-pooler")
    with pytest.warns(UserWarning, match="no pooler weights"):
        TextEncoder(tmp_path / "no-pooler", pooling="pooler")


def test_pooler_pooling_needs_a_model_with_a_pooler():
    distilbert = {"model_type": "distilbert", "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64}
    with pytest.raises(ValueError, match="pooling='pooler' needs a model with a pooler"):
        TextEncoder(config=distilbert, vocab_size=VOCAB, pooling="pooler")


def test_freeze_stem_false_freezes_only_the_first_blocks():
    enc = vit(freeze_layers=1, freeze_stem=False)
    # the published image features: the [CLS] token after the final norm (timm global_pool "token")
    assert enc.model.global_pool == "token"
    x = images()
    assert torch.allclose(enc.eval()(x), enc.model.forward_features(x)[:, 0], atol=1e-6)
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("model.blocks.0.") for n in frozen)
    assert all(p.requires_grad for p in (enc.model.cls_token, enc.model.pos_embed,
                                         enc.model.patch_embed.proj.weight))
    enc.train()
    assert not enc.model.blocks[0].training and enc.model.patch_embed.training
    assert _frozen_step(enc, (images(),)) == ([], [])
    assert enc.config()["freeze_stem"] is False

    text = bert(freeze_layers=1, freeze_stem=False)
    frozen = {n for n, p in text.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("model.encoder.layer.0.") for n in frozen)
    assert text.model.embeddings.word_embeddings.weight.requires_grad
    text.train()
    assert not text.model.encoder.layer[0].training and text.model.embeddings.training
    assert _frozen_step(text, tokens()) == ([], [])
    assert text.config()["freeze_stem"] is False
    for make in (vit, bert):
        with pytest.raises(TypeError, match="freeze_stem must be a bool"):
            make(freeze_layers=1, freeze_stem="no")


def test_per_modality_projections_and_none():
    torch.manual_seed(0)
    model = DualEncoder(vit(), bert(pooling="pooler"), embed_dim=32, projection="mlp",
                        image_projection="linear", text_projection="none")
    assert isinstance(model.image_proj, torch.nn.Linear) and isinstance(model.text_proj, torch.nn.Identity)
    assert not any(k.startswith("text_proj") for k in model.state_dict())
    model.eval()
    ids, mask = tokens()
    assert torch.equal(model.encode_text(ids, mask), model.text(ids, mask))
    cfg = json.loads(json.dumps(model.to_config()))
    assert (cfg["image_projection"], cfg["text_projection"]) == ("linear", "none")
    rebuilt = DualEncoder.from_config(cfg)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = images()
    for a, b in zip(model(x, ids, mask), rebuilt(x, ids, mask)):
        assert torch.equal(a, b)
    # a config from before the per-modality keys: both heads are `projection`
    old = {k: v for k, v in cfg.items() if k not in ("image_projection", "text_projection")}
    old_model = DualEncoder.from_config(old)
    assert (old_model.image_projection, old_model.text_projection) == ("mlp", "mlp")


def test_projection_none_needs_features_of_embed_dim():
    with pytest.raises(ValueError, match="text_projection='none'.*embed_dim must be 32, got 16"):
        DualEncoder(vit(), bert(), embed_dim=16, text_projection="none")
    with pytest.raises(ValueError, match="image_projection='none'"):
        DualEncoder(vit(), bert(), embed_dim=16, projection="none")
    with pytest.raises(ValueError, match="image_projection must be one of"):
        DualEncoder(vit(), bert(), image_projection="conv")
