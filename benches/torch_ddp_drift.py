"""PyTorch's data-parallel arithmetic against one process on Snell's blocks (issue #26).

The question: do 2 ranks with a global batch of 12 hold one process's parameters within
1e-5 after 20 steps, when the tower has batch norm over its convolutions? The test
`crates/siamese-train/tests/data_parallel.rs` asks it of siamese; this script asks it of
PyTorch, on the same synthetic images and tower shape, with episodes of the same shape
but its own draws and initialisation, undistorted (16x16, 4-way 1-shot with 2 queries,
four blocks of conv3x3-64, batch norm, ReLU, max-pool, a linear 8-D
embedding, the prototypical loss), float32, one thread per process:

- one process: the 12-image episode as one batch;
- 2 ranks: two real processes (torch.distributed over gloo on localhost), 6 images
  each; batch norm over both ranks' rows through the differentiable all-reduce
  (SyncBatchNorm's arithmetic: PyTorch's own SyncBatchNorm runs on CUDA only); the loss
  over the all-gathered episode with each rank's own rows in the graph
  (pytorch-metric-learning's DistributedLossWrapper); gradients all-reduced (summed:
  each rank's is its rows' share), then the same optimiser step on every rank.

Needs torch (`pip install torch`); about a minute on 2 cores:

    python benches/torch_ddp_drift.py
"""

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.multiprocessing as mp
import torch.nn.functional as F

SIDE, WAYS, SHOTS, QUERIES, CLASSES, PER_CLASS = 16, 4, 1, 2, 10, 6


def images():
    """The test's synthetic classes: stripes whose slope is the class, plus a ramp."""
    n = CLASSES * PER_CLASS
    x = torch.zeros(n, SIDE * SIDE)
    for i in range(n * SIDE * SIDE):
        image, p = divmod(i, SIDE * SIDE)
        on = (p // SIDE + p % SIDE * (image // PER_CLASS)) % 7 < 2
        x[image, p] = ((200 if on else 30) + (i * 31 % 40)) / 255.0
    return x.view(n, 1, SIDE, SIDE)


def init(seed, dim=8):
    """He-initialised convolutions (no bias: batch norm follows), batch norm's scale 1
    and shift 0, and the linear head, from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    params, c_in = {}, 1
    for b in range(4):
        params[f"conv{b}.weight"] = torch.randn(64, c_in, 3, 3, generator=g) * (2 / (c_in * 9)) ** 0.5
        params[f"bn{b}.weight"] = torch.ones(64)
        params[f"bn{b}.bias"] = torch.zeros(64)
        c_in = 64
    params["head.weight"] = torch.randn(dim, 64, generator=g) * (1 / 64) ** 0.5
    return {k: v.requires_grad_() for k, v in params.items()}


def batch_norm(x, gamma, beta, world, eps=1e-5):
    """Training-mode batch norm over every rank's rows: the sums are all-reduced, and
    so, in the backward pass, are their gradients."""
    n = x.shape[0] * x.shape[2] * x.shape[3] * world
    total = x.sum((0, 2, 3))
    mean = (dist_fn.all_reduce(total) if world > 1 else total) / n
    centred = x - mean[None, :, None, None]
    squares = (centred**2).sum((0, 2, 3))
    var = (dist_fn.all_reduce(squares) if world > 1 else squares) / n
    scale = torch.rsqrt(var + eps)[None, :, None, None]
    return centred * scale * gamma[None, :, None, None] + beta[None, :, None, None]


def embed(params, x, world):
    for b in range(4):
        x = F.conv2d(x, params[f"conv{b}.weight"], padding=1)
        x = batch_norm(x, params[f"bn{b}.weight"], params[f"bn{b}.bias"], world)
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1) @ params["head.weight"].T


def prototypical_loss(e):
    e = e.view(WAYS, SHOTS + QUERIES, -1)
    means = e[:, :SHOTS].mean(1)
    queries = e[:, SHOTS:].reshape(-1, e.shape[-1])
    distances = ((queries[:, None] - means[None]) ** 2).sum(-1)
    return F.cross_entropy(-distances, torch.arange(WAYS).repeat_interleave(QUERIES))


def train(rank, world, method, lr, steps, out):
    torch.set_num_threads(1)
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("gloo", rank=rank, world_size=world)
    x, params = images(), init(7)
    if method == "adam":
        opt = torch.optim.Adam(params.values(), lr=lr)
    else:
        opt = torch.optim.SGD(params.values(), lr=lr, momentum=0.9)
    episodes = torch.Generator().manual_seed(3)  # one stream, the same on every rank
    share = WAYS * (SHOTS + QUERIES) // world
    for _ in range(steps):
        classes = torch.randperm(CLASSES, generator=episodes)[:WAYS]
        rows = torch.cat(
            [c * PER_CLASS + torch.randperm(PER_CLASS, generator=episodes)[: SHOTS + QUERIES] for c in classes]
        )
        opt.zero_grad()
        e = embed(params, x[rows[rank * share : (rank + 1) * share]], world)
        if world > 1:
            gathered = [torch.empty_like(e) for _ in range(world)]
            dist.all_gather(gathered, e.detach())
            gathered[rank] = e
            e = torch.cat(gathered)
        prototypical_loss(e).backward()
        if world > 1:
            for p in params.values():
                dist.all_reduce(p.grad)
        opt.step()
    if rank == 0:
        torch.save(torch.cat([p.detach().flatten() for p in params.values()]), out)
    if world > 1:
        dist.destroy_process_group()


def main():
    folder = os.environ.get("TMPDIR", "/tmp")
    one, two = os.path.join(folder, "ddp_drift_one.pt"), os.path.join(folder, "ddp_drift_two.pt")
    start = torch.cat([p.detach().flatten() for p in init(7).values()])
    print("| optimiser | steps | relative difference, 2 ranks vs 1 process | largest entry | moved |")
    print("|---|---|---|---|---|")
    for method, lr in [("adam", 1e-3), ("sgd", 0.002)]:
        for steps in [1, 20]:
            train(0, 1, method, lr, steps, one)
            mp.spawn(train, args=(2, method, lr, steps, two), nprocs=2)
            a, b = torch.load(one), torch.load(two)
            print(
                f"| {method} lr {lr} | {steps} | {((a - b).norm() / a.norm()).item():.2e} "
                f"| {(a - b).abs().max().item():.2e} | {((a - start).norm() / start.norm()).item():.2e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
