"""Can an image encoder learn the built-in phantoms in a small budget? A supervised check.

Trains ``--model`` (any timm name) with a linear head on the phantoms' ground-truth disease labels
(multi-label BCE) for ``--steps`` steps, then prints the test AUC per class. This is how the demo's
image encoder was chosen: a small ViT from scratch stays at AUC 0.39-0.66 after 160 steps, timm's
``test_resnet`` reaches 0.73-1.00 (benchmarks/RESULTS.md).

    python benchmarks/encoder_check.py --model test_resnet --lr 2e-3
    python benchmarks/encoder_check.py --model vit_tiny_patch16_224 --lr 5e-4 \
        --kwargs "{img_size: 64, patch_size: 8, embed_dim: 96, depth: 4, num_heads: 3}"
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from medtrim_ext.datasets import load_dataset
from medtrim_ext.evaluation import roc_auc
from medtrim_ext.models import ImageEncoder
from medtrim_ext.entities.vocabulary import Vocabulary


def labels(ds, classes) -> torch.Tensor:
    return torch.tensor([[float(c in a) for c in classes] for a in ds.attributes])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="test_resnet")
    p.add_argument("--kwargs", default="{}", help="timm model kwargs as YAML")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    classes = list(Vocabulary.default().diseases)
    train = load_dataset("phantoms", "train", image_size=args.image_size, n=3000, entities="ground_truth",
                         progress=False, train=True, aug_seed=args.seed)
    test = load_dataset("phantoms", "test", image_size=args.image_size, n=500, entities="ground_truth",
                        progress=False)
    x_test = torch.stack([test[i]["image"] for i in range(len(test))])
    y_train, y_test = labels(train, classes), labels(test, classes)
    enc = ImageEncoder(args.model, in_chans=1, **(yaml.safe_load(args.kwargs) or {}))
    head = torch.nn.Linear(enc.feature_dim, len(classes))
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, len(train), (64,), generator=gen)
        x = torch.stack([train[int(i)]["image"] for i in idx])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(enc(x)), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    enc.eval()
    with torch.no_grad():
        scores = head(enc(x_test))
    aucs = {c: roc_auc(scores[:, k], y_test[:, k]) for k, c in enumerate(classes) if y_test[:, k].any()}
    print(f"{args.model}: {sum(q.numel() for q in params) / 1e6:.2f} M parameters, {args.steps} steps in "
          f"{seconds:.0f} s, final loss {loss.item():.3f}")
    print("test AUC: " + ", ".join(f"{c} {a:.2f}" for c, a in aucs.items()))


if __name__ == "__main__":
    main()
