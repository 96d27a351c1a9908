#!/usr/bin/env python
"""A small workload that touches every CUDA kernel once, for `compute-sanitizer --tool memcheck`.

Sizes are chosen to hit partial tiles, several candidate splits, N=1, M=0 and the smaller tiles
of a large vocabulary; for the loss, forward and backward with and without candidates, -1 rows,
zero rows, odd dimensions and bf16. Exits non-zero if the CUDA results differ from the CPU kernels.
"""

import sys

import torch

from medtrim_ext import MetaEntities, MultimodalTripletLoss, TripletMiner, Vocabulary
from medtrim_ext.entities.synthetic import synthetic_entities


def same(a, b) -> bool:
    return all(torch.equal(x.cpu(), y) for x, y in zip(a, b))


def loss_on(device, dtype, img, txt, cand, triplets):
    leaves = [x.detach().to(device=device, dtype=dtype).clone().requires_grad_() for x in (img, txt, *cand)]
    li, lt = MultimodalTripletLoss(0.3, "none")(
        leaves[0], leaves[1], tuple(t.to(device) for t in triplets),
        cand_img=leaves[2] if cand else None, cand_txt=leaves[3] if cand else None)
    (li.sum() + lt.sum()).backward()
    return [li.detach().cpu(), lt.detach().cpu()] + [x.grad.float().cpu() for x in leaves]


def loss_case() -> bool:
    ok = True
    g = torch.Generator().manual_seed(7)
    for n, m, dim, with_cand in [(1, 0, 1, False), (37, 0, 257, False), (20, 45, 33, True), (300, 0, 768, False)]:
        img, txt = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
        img[n // 2] = 0
        cand = (torch.randn(m, dim, generator=g), torch.randn(m, dim, generator=g)) if with_cand else ()
        rows = m if with_cand else n
        t = 2 * n + 3
        triplets = (torch.randint(-1, n, (t,), generator=g), torch.randint(-1, rows, (t,), generator=g),
                    torch.randint(-1, rows, (t,), generator=g))
        for dtype in (torch.float32, torch.bfloat16):
            got = loss_on("cuda", dtype, img, txt, cand, triplets)
            want = loss_on("cpu", dtype, img, txt, cand, triplets)
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            ok &= all(torch.allclose(a, b, atol=tol * max(1.0, b.abs().max().item()), rtol=0)
                      for a, b in zip(got, want))
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to sanitize")
        return 0
    miner = TripletMiner(semi_hard_prob=0.5)
    ok = True
    for n, m in [(1, 1), (1, 0), (130, 70), (600, 1500)]:
        a, b = synthetic_entities(n, seed=n), synthetic_entities(m, seed=m + 1)
        ok &= torch.equal(miner.score_matrix(a.cuda(), b.cuda()).cpu(), miner.score_matrix(a, b))
        g = lambda: torch.Generator().manual_seed(n)  # noqa: E731
        ok &= same(miner(a.cuda(), b.cuda(), generator=g()), miner(a, b, generator=g()))
        if m:
            ia, ib = torch.randint(-1, n, (257,)), torch.randint(-1, m, (257,))
            got = miner.pair_scores(a.cuda(), b.cuda(), ia.cuda(), ib.cuda()).cpu()
            ok &= torch.equal(got.nan_to_num(-1), miner.pair_scores(a, b, ia, ib).nan_to_num(-1))
    big = Vocabulary(tuple(f"d{i}" for i in range(32)), tuple(f"a{i}" for i in range(500)),
                     tuple(f"r{i}" for i in range(100)))
    c, a_, r = big.sizes
    gen = torch.Generator().manual_seed(0)
    ents = MetaEntities.from_masks(torch.rand(300, c, generator=gen) < 0.2,
                                   torch.rand(300, c, a_, generator=gen) < 0.02,
                                   torch.rand(300, c, r, generator=gen) < 0.05, big)
    ok &= torch.equal(miner.score_matrix(ents.cuda()).cpu(), miner.score_matrix(ents))
    ok &= same(miner(ents.cuda(), generator=torch.Generator().manual_seed(1)),
               miner(ents, generator=torch.Generator().manual_seed(1)))
    first = TripletMiner(tie_break="first")  # the lowest-index rule too
    ok &= same(first(ents.cuda()), first(ents))
    ok &= loss_case()
    torch.cuda.synchronize()
    print("sanitize case:", "CUDA == CPU" if ok else "MISMATCH between CUDA and CPU")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
