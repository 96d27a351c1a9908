"""Why does a trained model retrieve what it retrieves? Embedding diagnostics of demo runs.

For each run folder (``<demo out>/runs/<method>-seed<k>``) it embeds the test split and prints:
the share of "no finding" reports among every image query's top-5 texts (a hub: the same few
reports retrieved for every image), the distinct items that appear in any top-5, the mean
cosine of each sample's own image/report pair against that of all pairs (alignment), and the
mean pairwise cosine and effective rank of each modality (collapse).

    python benchmarks/embedding_diagnostics.py benchmarks/out/demo/runs/*-seed0
"""

from __future__ import annotations

import argparse

import torch

from medtrim_ext.training.builders import build_dataset
from medtrim_ext.evaluation.run import embed_dataset, load_trained


def effective_rank(e: torch.Tensor) -> float:
    s2 = torch.linalg.svdvals(e) ** 2
    return float(torch.exp(torch.special.entr(s2 / s2.sum()).sum()))


def diagnose(run: str) -> None:
    device = torch.device("cpu")
    model, tokenizer, cfg, _ = load_trained(f"{run}/last.pt", device)
    ds = build_dataset(cfg, cfg.data.eval_split, train=False, progress=False)
    img, txt = embed_dataset(model, ds, tokenizer, cfg, device, progress=False)
    img, txt = torch.nn.functional.normalize(img, dim=1), torch.nn.functional.normalize(txt, dim=1)
    normal = torch.tensor([not a for a in (ds.attributes or ds.records)])
    sims = img @ txt.T
    top_i2t, top_t2i = sims.topk(5, dim=1).indices, sims.T.topk(5, dim=1).indices
    print(f"{run}:")
    print(f"  i2t top-5 texts that are 'no finding': {normal[top_i2t].float().mean():.1%} "
          f"(test share {normal.float().mean():.1%}); distinct texts in any top-5: "
          f"{len(set(top_i2t.flatten().tolist()))} of {len(ds)}")
    print(f"  t2i distinct images in any top-5: {len(set(top_t2i.flatten().tolist()))} of {len(ds)}")
    print(f"  cosine of own pair {sims.diag().mean():.3f} vs all pairs {sims.mean():.3f}")
    for name, e in (("image", img), ("text", txt)):
        print(f"  {name}: mean pairwise cosine {(e @ e.T).mean():.3f}, effective rank {effective_rank(e):.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders with last.pt")
    for run in p.parse_args().runs:
        diagnose(run)


if __name__ == "__main__":
    main()
