"""The `paper` preset (the published MedTrim training code) and the options it needs: ImageNet
normalisation, weight decay on every parameter, eval-mode training, triplets mined once."""

from __future__ import annotations

import csv

import pytest
import torch

from medtrim_ext.training import load_config
from medtrim_ext.training.checkpoint import load_checkpoint
from medtrim_ext.training.config import preset_names
from training_helpers import tiny_config_file


# -- the preset ------------------------------------------------------------------------------------
def test_paper_preset_sets_every_row_of_the_published_setting():
    assert "paper" in preset_names()
    cfg = load_config("paper")
    d, m, o, opt, t = cfg.data, cfg.model, cfg.objective, cfg.optim, cfg.train
    # text: Bio_ClinicalBERT pooler output, no projection; image: ViT-B/16 [CLS] + new 768->768 head
    assert m.text["pooling"] == "pooler" and m.text_projection == "none"
    assert "Bio_ClinicalBERT" in m.text["pretrained"] and "Bio_ClinicalBERT" in m.tokenizer
    assert m.image["name"] == "vit_base_patch16_224" and m.image["checkpoint"]
    assert m.image_projection == "linear" and m.embed_dim == 768
    # freezing: first 2 blocks of each encoder, the stem trainable; dropout off
    for enc in (m.image, m.text):
        assert enc["freeze_layers"] == 2 and enc["freeze_stem"] is False
    assert m.dropout is False
    # optimizer
    assert (opt.lr, opt.weight_decay, opt.decay_all) == (2e-5, 5e-4, True)
    assert isinstance(opt.lr, float) and isinstance(opt.weight_decay, float)
    assert (opt.schedule, opt.warmup_steps, opt.clip_grad) == ("constant", 0, 0)
    assert tuple(opt.betas) == (0.9, 0.999) and opt.eps == 1e-8
    # precision, batch
    assert t.amp == "fp16" and t.batch_size == 192
    # mining: offline, pools of 32 from sets of 512, mined once (40,000 sets x 32)
    assert o.kind == "medtrim_offline" and o.pool_size == 32 and o.offline_set_size == 512
    assert o.offline_triplets == 1_280_000
    assert (o.margin, o.w_dis, o.w_adj, o.w_dir, o.threshold, o.upper, o.semi_hard_prob) == (
        0.3, 0.85, 0.10, 0.05, 0.25, 0.6, 1.0)
    # images, text, data
    assert (d.image_size, d.in_chans, d.normalize, d.augment) == (224, 3, "imagenet", False)
    assert m.image["in_chans"] == 3 and m.image["img_size"] == 224
    assert d.max_length == 128 and d.kind == "mimic"
    # 20 epochs of 1,280,000 / 64 steps
    assert t.steps == 20 * o.offline_triplets // (t.batch_size // 3)


def test_mimic_config_no_longer_claims_to_be_the_paper():
    from importlib import resources

    text = (resources.files("medtrim_ext") / "data" / "configs" / "mimic.yaml").read_text()
    assert "As in the paper" not in text and "--config paper" in text


# -- config keys -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, match", [
    (["model.projection=conv"], "model.projection must be one of"),
    (["model.text_projection=conv"], "model.text_projection must be one of"),
    (["model.image_projection=1"], "model.image_projection must be str"),
    (["model.dropout=maybe"], "model.dropout must be bool"),
    (["data.normalize=zscore"], "data.normalize must be one of"),
    (["data.normalize=imagenet", "data.in_chans=1"], "data.in_chans must be 3 with data.normalize=imagenet"),
    (["optim.decay_all=1"], "optim.decay_all must be bool"),
    (["objective.offline_triplets=-1"], "objective.offline_triplets must be >= 0"),
    (["objective.offline_set_size=-1"], "objective.offline_set_size must be >= 0"),
    (["objective.kind=medtrim"], "objective.offline_triplets needs objective.kind=medtrim_offline"),
    (["objective.offline_triplets=0"], "objective.offline_set_size needs objective.offline_triplets > 0"),
    (["objective.offline_set_size=16"], r"objective.offline_set_size must be >= objective.pool_size \(32\)"),
    (["objective.offline_triplets=10"], "objective.offline_triplets must be at least one batch"),
])
def test_bad_paper_options_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config("paper", overrides)


# -- images: every split normalised as configured ----------------------------------------------
def test_datasets_and_evaluation_use_the_configured_normalisation(tmp_path):
    from medtrim_ext.training.builders import build_dataset

    cfg = load_config(tiny_config_file(tmp_path, data={"in_chans": 3, "normalize": "imagenet"}))
    for split, train in (("train", True), ("test", False), ("validate", False)):
        assert build_dataset(cfg, split, train=train, progress=False).transform.normalize == "imagenet"


# -- optimizer: decay on every parameter -----------------------------------------------------------
def test_decay_all_puts_weight_decay_on_every_parameter():
    from medtrim_ext.training.optim import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model[0].bias.requires_grad_(False)  # frozen parameters stay out
    objective = torch.nn.Module()
    cfg = load_config("demo", ["optim.weight_decay=0.5"]).optim
    groups = build_optimizer(model, objective, cfg).param_groups
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.5]  # norms and biases excluded
    cfg.decay_all = True
    groups = build_optimizer(model, objective, cfg).param_groups
    assert [g["weight_decay"] for g in groups] == [0.5]
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[1].weight),
                                                     id(model[1].bias)}


# -- dropout off: the trainer keeps the encoders in eval mode --------------------------------------
@pytest.mark.parametrize("dropout", [True, False])
def test_model_dropout_false_trains_in_eval_mode(tmp_path, dropout):
    from medtrim_ext.training.loop import Trainer

    cfg = load_config(tiny_config_file(tmp_path), [f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
                                                    f"model.dropout={str(dropout).lower()}"])
    trainer = Trainer(cfg)
    seen = []
    trainer.model.text.model.encoder.layer[0].register_forward_pre_hook(
        lambda module, args: seen.append(module.training))
    trainer.fit()
    assert seen == [dropout, dropout]


# -- a tiny run of the preset's structure, end to end ----------------------------------------------
@pytest.fixture(scope="module")
def local_weights(tmp_path_factory):
    """A tiny local BERT folder (with a pooler, and its tokenizer) and a tiny ViT weights file, as
    the preset expects Bio_ClinicalBERT and ViT-B/16."""
    import timm
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    from medtrim_ext.datasets import load_dataset
    from medtrim_ext.models.tokenization import train_wordpiece_tokenizer

    root = tmp_path_factory.mktemp("weights")
    texts = load_dataset("phantoms", "train", n=96, image_size=32, entities="ground_truth").texts
    tok = train_wordpiece_tokenizer(texts, vocab_size=300, out_dir=root / "bert")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    assert bert.pooler is not None
    bert.save_pretrained(root / "bert")
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10, img_size=32,
                            patch_size=8, embed_dim=32, depth=3, num_heads=2)
    save_file(vit.state_dict(), str(root / "vit.safetensors"))
    return root, {k: v.clone() for k, v in bert.state_dict().items()}, vit.state_dict()


def paper_config(root, out_dir, steps: int, *extra):
    """The paper preset with only paths and sizes changed (train.amp stays fp16: CPU autocast)."""
    return load_config("paper", [
        f"train.out_dir={out_dir}", f"train.steps={steps}", "train.batch_size=12", "train.device=cpu",
        "train.progress=false", "train.tensorboard=false", "train.log_every=1", "train.ckpt_every=4",
        "data.kind=phantoms", "data.root=null", "data.image_size=32", "data.entities=ground_truth",
        "data.max_length=48", "data.num_workers=0",
        "data.options={n_train: 96, n_validate: 48, n_test: 48}",
        f"model.image.checkpoint={root / 'vit.safetensors'}", "model.image.img_size=32",
        "model.image.patch_size=8", "model.image.embed_dim=32", "model.image.depth=3",
        "model.image.num_heads=2", f"model.text.pretrained={root / 'bert'}",
        f"model.tokenizer={root / 'bert'}", "model.embed_dim=32",
        "objective.pool_size=8", "objective.offline_set_size=24", "objective.offline_triplets=40",
        *extra])


def test_paper_preset_trains_end_to_end(tmp_path, local_weights, monkeypatch):
    from medtrim_ext.models import DualEncoder
    from medtrim_ext.mining.offline import load_offline_triplets
    from medtrim_ext.training.loop import Trainer
    from medtrim_ext.training.sampling import MinedTripletBatchSampler

    root, bert_state, vit_state = local_weights
    run = tmp_path / "run"
    # 40 triplets, 4 a step: 10 steps an epoch; the run stops in epoch 1, then resumes to step 14
    trainer = Trainer(paper_config(root, run, 7))
    modes = []
    trainer.model.image.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    assert trainer.scaler is not None  # fp16 with a GradScaler
    groups = trainer.optimizer.param_groups
    assert {(g["lr"], g["weight_decay"]) for g in groups} == {(2e-5, 5e-4)}
    n_trainable = sum(p.requires_grad for p in trainer.model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_trainable  # biases and norms decayed too
    trainer.fit()
    assert modes == [False] * 7  # eval mode throughout (no dropout)

    triplets_file = run / "offline_triplets.csv"
    assert triplets_file.is_file()
    rows = list(csv.reader(line for line in triplets_file.open() if not line.startswith("#")))
    assert len(rows) == 41 and rows[0][:3] == ["anchor", "positive", "negative"]

    state = load_checkpoint(run / "last.pt")
    mc = state["model_config"]
    assert (mc["image_projection"], mc["text_projection"], mc["embed_dim"]) == ("linear", "none", 32)
    assert mc["text"]["pooling"] == "pooler" and mc["text"]["freeze_stem"] is False
    weights = state["model"]
    assert not any(k.startswith("text_proj") for k in weights)  # no text projection
    assert weights["image_proj.weight"].shape == (32, 32)  # the new linear head
    # frozen: blocks / layers 0-1; trained: their stem, block 2, the pooler
    for k, v in vit_state.items():
        if k.startswith("head."):
            continue
        same = torch.equal(weights[f"image.model.{k}"], v)
        assert same == k.startswith(("blocks.0.", "blocks.1.")), k
    for k, v in bert_state.items():
        same = torch.equal(weights[f"text.model.{k}"], v)
        frozen = k.startswith(("encoder.layer.0.", "encoder.layer.1."))
        assert same == frozen, k
    assert not torch.equal(weights["text.model.pooler.dense.weight"], bert_state["pooler.dense.weight"])
    # the checkpoint's model_config rebuilds the model
    DualEncoder.from_config(mc).load_state_dict(weights)
    lrs = [float(r["lr"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert lrs == [2e-5] * 7  # constant

    # every epoch iterates all 40 triplets, in a new order
    saved = load_offline_triplets(triplets_file, trainer.dataset.study_ids, _meta(trainer))
    sampler = MinedTripletBatchSampler(saved, 4, steps=20, seed=42)
    epoch0 = torch.cat([sampler.triplets_for(s) for s in range(10)])
    epoch1 = torch.cat([sampler.triplets_for(s) for s in range(10, 20)])
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(epoch0) == key(epoch1) == key(saved) and not torch.equal(epoch0, epoch1)
    batches = list(trainer.loader)
    assert [b["index"][:4].tolist() for b in batches[:3]] == [sampler.triplets_for(s)[:, 0].tolist()
                                                              for s in range(3)]

    # resume: the saved triplets are reused (never mined again) and the weights equal a straight run
    import medtrim_ext.mining.offline as offline

    before = triplets_file.read_bytes()
    monkeypatch.setattr(offline, "mine_offline_triplets", _no_mining)
    Trainer(paper_config(root, run, 14)).fit()
    assert triplets_file.read_bytes() == before
    monkeypatch.undo()
    straight = tmp_path / "straight"
    Trainer(paper_config(root, straight, 14)).fit()
    a, b = load_checkpoint(run / "last.pt")["model"], load_checkpoint(straight / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the straight run"
    assert (straight / "offline_triplets.csv").read_bytes() == before  # seeded by train.seed

    # a triplets file of other data or other settings is a clear error, even when the run is
    # continued on purpose with the changed config (without force the run folder refuses it)
    other_data = "data.options={n_train: 90, n_validate: 48, n_test: 48}"
    with pytest.raises(ValueError, match="data.options.n_train: 96 -> 90"):
        Trainer(paper_config(root, straight, 14, other_data))
    with pytest.raises(ValueError, match="mined with num_samples=96 but this run has num_samples=90"):
        with pytest.warns(UserWarning, match="changed config"):
            Trainer(paper_config(root, straight, 14, other_data, "train.resume=force"))
    with pytest.raises(ValueError, match="mined with upper=0.6 but this run has upper=0.5"):
        with pytest.warns(UserWarning, match="changed config"):
            Trainer(paper_config(root, straight, 14, "objective.upper=0.5", "train.resume=force"))


def _meta(trainer):
    from medtrim_ext.mining.offline import offline_triplets_meta

    o = trainer.cfg.objective
    return offline_triplets_meta(trainer.dataset.study_ids, trainer.objective.miner,
                                 num_triplets=o.offline_triplets, pool_size=o.pool_size,
                                 set_size=o.offline_set_size, seed=trainer.cfg.train.seed)


def _no_mining(*args, **kwargs):
    raise AssertionError("the triplets were mined again instead of reusing the saved file")


def test_offline_set_larger_than_the_training_set(tmp_path, local_weights):
    from medtrim_ext.training.loop import Trainer

    root, _, _ = local_weights
    with pytest.raises(ValueError, match=r"objective.offline_set_size=512 is larger than the training set"):
        Trainer(paper_config(root, tmp_path / "run", 2, "objective.offline_set_size=512"))

