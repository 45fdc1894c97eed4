"""DDP with gloo on CPU: one step on 2 processes gives the gradients of one process on the global batch."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mammodetr import LossConfig, ModelConfig, build_criterion, build_model

CFG = dict(backbone="test_convnext", pretrained="none", d_model=32, nheads=4, dec_layers=2, dim_feedforward=64,
           dropout=0.0)


def _batch():
    g = torch.Generator().manual_seed(7)
    images = torch.rand(4, 1, 64, 64, generator=g)
    boxes = [torch.tensor([[0.3, 0.4, 0.2, 0.2]]), torch.zeros(0, 4),
             torch.tensor([[0.6, 0.6, 0.1, 0.3], [0.2, 0.7, 0.2, 0.1]]), torch.tensor([[0.5, 0.5, 0.3, 0.3]])]
    targets = [{"boxes": b, "label": torch.tensor(i % 2)} for i, b in enumerate(boxes)]
    return images, targets


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**CFG))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    criterion = build_criterion(LossConfig(), num_aux=1)
    images, targets = _batch()
    per = len(images) // world
    sl = slice(rank * per, (rank + 1) * per)
    criterion(ddp(images[sl]), targets[sl])["loss"].backward()
    if rank == 0:
        torch.save(_grads(model), out)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_single_process(tmp_path):
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp_grads = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**CFG))
    images, targets = _batch()
    build_criterion(LossConfig(), num_aux=1)(model(images), targets)["loss"].backward()
    single = _grads(model)
    assert single.keys() == ddp_grads.keys() and len(single) > 10
    for name, g in single.items():
        torch.testing.assert_close(ddp_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
