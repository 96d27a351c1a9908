"""Evaluate a trained run: retrieval (disease-level and fine-grained) and a linear probe.

    from medtrim_ext.evaluation import evaluate_run
    report = evaluate_run("runs/x/last.pt")              # the run's own test split
    report = evaluate_run("runs/x")                      # a run folder: its last.pt
    report = evaluate_run("runs/x/last.pt", overrides=["data.kind=manifest", "data.root=m.csv"])

Relevance: by disease set (as in the paper) and fine-grained, by the ground-truth attributes where
the dataset has them (the phantoms) and by the meta-entities (diseases + descriptors) otherwise.
The probe trains on ``eval.probe_split`` image embeddings and reports per-class test AUC.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..training.builders import build_dataset, resolve_device
from ..training.checkpoint import load_checkpoint, resolve_checkpoint
from ..training.config import Config, apply_overrides, upgrade_config_dict
from ..training.distributed import DistContext
from ..training.loop import autocast_context


@torch.no_grad()
def embed_dataset(model, dataset, tokenizer, cfg: Config, device: torch.device,
                  progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 CPU ``(N, D)`` image and text embeddings of every sample, in dataset order."""
    from tqdm import tqdm

    from ..datasets import Collator

    n = len(dataset) if cfg.eval.max_samples is None else min(len(dataset), cfg.eval.max_samples)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(n)), batch_size=cfg.eval.batch_size, shuffle=False,
        num_workers=cfg.data.num_workers, collate_fn=Collator(tokenizer, max_length=cfg.data.max_length))
    model.eval()
    imgs, txts = [], []
    for batch in tqdm(loader, desc="embed", unit="batch", disable=not progress, leave=False):
        with autocast_context(device, cfg.train.amp):
            img, txt = model(batch["images"].to(device), batch["input_ids"].to(device),
                             batch["attention_mask"].to(device))
        imgs.append(img.float().cpu())
        txts.append(txt.float().cpu())
    return torch.cat(imgs), torch.cat(txts)


def _ground_truth(dataset, n: int) -> list | None:
    return None if dataset.attributes is None else list(dataset.attributes)[:n]


def relevance_keys(dataset, n: int | None = None) -> dict:
    """``{"disease", "fine"}`` relevance keys of the first ``n`` samples: from the ground-truth
    attributes where the dataset has them, else from its meta-entities."""
    from ..entities.meta_entities import MetaEntities
    from .keys import keys_for

    n = len(dataset) if n is None else n
    return keys_for(entities=MetaEntities.from_records(dataset.records[:n]),
                    attributes=_ground_truth(dataset, n))


def class_labels(dataset, n: int) -> tuple[torch.Tensor, list[str]]:
    """Probe labels: the dataset's own (e.g. CheXpert) labels, else the diseases of the ground
    truth (phantoms), else of the extracted meta-entities; plus "no finding"."""
    if getattr(dataset, "labels", None) is not None:
        return dataset.labels[:n].float(), list(dataset.label_names)
    from ..entities.meta_entities import MetaEntities
    from ..entities.vocabulary import NO_FINDING

    source = _ground_truth(dataset, n) or dataset.records[:n]
    ents = MetaEntities.from_records([{d: {} for d in sample} for sample in source])
    diseases = ents.masks()[0]
    labels = torch.cat([diseases, ~diseases.any(dim=1, keepdim=True)], dim=1).float()
    return labels, list(ents.vocabulary.diseases) + [NO_FINDING]


def evaluate_model(model, tokenizer, cfg: Config, device: torch.device, progress: bool = True) -> dict:
    """Retrieval on ``data.eval_split`` and (with ``eval.probe``) the linear probe."""
    from .attributes import ATTRIBUTE_KINDS, evaluate_attributes
    from .probe import linear_probe
    from .retrieval import evaluate_retrieval

    test = build_dataset(cfg, cfg.data.eval_split, train=False, progress=progress)
    img, txt = embed_dataset(model, test, tokenizer, cfg, device, progress)
    n = img.shape[0]
    keys = relevance_keys(test, n)
    from ..entities.meta_entities import MetaEntities

    # pair recall counts identical reports as one item; nDCG@10 grades by the meta-entity score
    # of the samples' records with the published weights, the same for every objective compared
    result = {"split": cfg.data.eval_split, "num_samples": n,
              **evaluate_retrieval(img, txt, keys, cfg.eval.ks, progress=progress, texts=test.texts[:n],
                                   entities=MetaEntities.from_records(test.records[:n]))}
    # per attribute kind (with ground truth) and the hub diagnostic (always)
    truth = _ground_truth(test, n)
    result["attributes"] = evaluate_attributes(img, txt, truth if truth is not None else test.records[:n],
                                               k=cfg.eval.attribute_k,
                                               kinds=ATTRIBUTE_KINDS if truth is not None else ())
    if cfg.eval.probe:
        train = build_dataset(cfg, cfg.eval.probe_split, train=False, progress=progress)
        train_img, _ = embed_dataset(model, train, tokenizer, cfg, device, progress)
        train_y, names = class_labels(train, train_img.shape[0])
        test_y, _ = class_labels(test, n)
        result["probe"] = linear_probe(train_img, train_y, img, test_y, names)
    return result


def load_trained(checkpoint: str | Path, device: torch.device):
    """Model (eval mode, on ``device``), tokenizer and config of a training checkpoint (a
    ``last.pt`` file or a run folder)."""
    from ..models.tokenization import load_tokenizer
    from ..training.builders import model_from_config

    checkpoint = resolve_checkpoint(checkpoint)
    state = load_checkpoint(checkpoint)
    cfg = Config.from_dict(upgrade_config_dict(state["config"]), f"checkpoint {checkpoint}")
    model, tokenizer = model_from_config(state["model_config"])   # open_clip brings its tokenizer
    if tokenizer is None:
        tok = Path(state["tokenizer"])
        tokenizer = load_tokenizer(tok if tok.is_absolute() else Path(checkpoint).parent / tok)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), tokenizer, cfg, state


def evaluation_files() -> list[str]:
    """The names of the files an evaluation writes into its folder (results and figures)."""
    from .plots import RESULT_PLOTS

    return ["results.json", "results.md", *RESULT_PLOTS.values()]


def evaluate_run(checkpoint: str | Path, overrides=(), out_dir: str | Path | None = None,
                 device: str = "auto", progress: bool = True) -> dict:
    """Evaluate a checkpoint (a ``last.pt`` file or a run folder; config overrides may point at
    other data); write ``results.json``, ``results.md`` and the figures (``retrieval.png``,
    ``probe_auc.png``, ``attributes.png``; see :func:`~medtrim_ext.evaluation.plots.plot_results`)
    into ``out_dir`` (default ``<run>/eval``), which is checked before any work.
    Returns {result, markdown, paths}."""
    from .plots import plot_results
    from .report import summarize_runs, write_results
    from ..training.rundir import config_inputs
    from ..utils.io import check_outputs_not_inputs, check_writable

    checkpoint = resolve_checkpoint(checkpoint)
    out = Path(out_dir) if out_dir is not None else Path(checkpoint).parent / "eval"
    check_writable(out, "evaluation output folder", folder=True)
    dev = resolve_device(device, DistContext())
    model, tokenizer, cfg, state = load_trained(checkpoint, dev)
    cfg = Config.from_dict(apply_overrides(cfg.to_dict(), list(overrides)), "evaluation overrides")
    # before the (long) evaluation: no result file may replace the checkpoint or the data
    check_outputs_not_inputs(out, evaluation_files(),
                             {"--checkpoint": checkpoint, **config_inputs(cfg)}, "evaluation output folder")
    result = evaluate_model(model, tokenizer, cfg, dev, progress)
    result["step"] = state["step"]
    runs = {cfg.objective.kind: [result]}
    summary = summarize_runs(runs)
    paths = write_results(out, runs, summary)
    paths.update(plot_results(summary, out))
    # the report written (making it again would warn of a collapse twice)
    markdown = Path(paths["markdown"]).read_text(encoding="utf-8")
    return {"result": result, "markdown": markdown, "paths": paths}


__all__ = ["class_labels", "embed_dataset", "evaluate_model", "evaluate_run", "evaluation_files",
           "load_trained", "relevance_keys"]
