"""The training step: host syncs (counted with the CPU profiler), the finiteness check, sync-free logging."""

import pytest
import torch

from mammodetr import LossConfig, ModelConfig, build_criterion, build_model
from mammodetr.config import OptimConfig
from mammodetr.training.distributed import DistInfo
from mammodetr.training.engine import NonFiniteLossError, train_one_epoch
from mammodetr.training.host_syncs import count_host_syncs
from mammodetr.training.loader import collate_skipping
from mammodetr.training.optim import build_optimizer, build_scheduler

TINY = dict(backbone="test_convnext", pretrained="none", d_model=32, nheads=4, dec_layers=3, dim_feedforward=64)


def _batch(seed, size=4):
    """What the loader yields: a collated batch with 0..4 boxes per image (4 is cut to 3)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(size):
        n = (seed + i) % 5
        target = {"boxes_cxcywh": torch.rand(n, 4, generator=g) * 0.5 + 0.2,
                  "box_malignant": torch.randint(0, 2, (n,), generator=g), "label": torch.tensor(int(n > 0)),
                  "file_name": f"{seed}_{i}.png", "orig_size_hw": torch.tensor([64, 64])}
        items.append((torch.rand(1, 64, 64, generator=g), target))
    return collate_skipping(items, max_targets=3)


class _Setup:
    def __init__(self, criterion_wrapper=None):
        torch.manual_seed(0)
        self.model = build_model(ModelConfig(**TINY))
        self.criterion = build_criterion(LossConfig(), num_aux=TINY["dec_layers"] - 1)
        self.optimizer = build_optimizer(self.model, OptimConfig(warmup_epochs=0, backbone_lr_mult=0.1))
        self.scheduler = build_scheduler(self.optimizer, OptimConfig(warmup_epochs=0), 10, 1)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.wrapper = criterion_wrapper

    def epoch(self, loader, accum_steps=1, grad_clip=0.1, **kw):
        criterion = self.wrapper(self.criterion) if self.wrapper else self.criterion
        return train_one_epoch(self.model, criterion, loader, self.optimizer, self.scheduler, self.scaler,
                               device=torch.device("cpu"), epoch=0, accum_steps=accum_steps, grad_clip=grad_clip,
                               precision="fp32", channels_last=False, info=DistInfo(), **kw)


@pytest.mark.parametrize("accum_steps,grad_clip", [(1, 0.1), (2, 0.0)])
def test_a_training_step_makes_at_most_two_host_syncs(accum_steps, grad_clip):
    setup = _Setup()
    setup.epoch([_batch(0)])  # first call: lazy initialisation (optimizer state, matcher tables)
    loader = [_batch(s) for s in range(1, 5)]
    result, syncs = count_host_syncs(lambda: setup.epoch(loader, accum_steps=accum_steps, grad_clip=grad_clip))
    steps = result["optimizer_steps"]
    assert steps == 4 // accum_steps
    # one finiteness check per step + one read of the loss sums at the end of the epoch
    assert syncs.total <= 2 * steps, syncs
    assert syncs.scalar_reads == steps and syncs.transfers == 1 and syncs.data_dependent_shapes == 0, syncs
    # the fused CPU AdamW kernel reads its step counters, CPU tensors (no wait): seen, and set apart
    assert setup.optimizer.defaults["fused"] and syncs.optimizer_counter_reads > 0


def test_the_sync_counter_sees_what_it_must():
    x = torch.rand(8)
    _, syncs = count_host_syncs(lambda: (x.sum().item(), bool(x[0] > 0.5), x[x > 0.5], x.tolist(), x.cpu()))
    assert (syncs.scalar_reads, syncs.data_dependent_shapes, syncs.transfers) == (2, 1, 2)
    # the for-loop AdamW reads its host-side step counter per tensor: seen, and set apart from the step's syncs
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.ones(3)
    _, syncs = count_host_syncs(torch.optim.AdamW([w], fused=False).step)
    assert syncs.total == 0 and syncs.optimizer_counter_reads > 0, syncs


class _Recorder:
    """Wraps the criterion: records each batch's losses, optionally poisons some."""

    def __init__(self, poison=None):
        self.seen, self.poison = [], poison or (lambda call, losses: losses)

    def __call__(self, criterion):
        def run(outputs, targets):
            losses = self.poison(len(self.seen), criterion(outputs, targets))
            self.seen.append({k: v.item() for k, v in losses.items()})
            return losses

        return run


def test_epoch_means_and_progress_read_every_log_every_steps():
    recorder = _Recorder()
    setup = _Setup(recorder)

    class Bar:
        disable, updates, postfixes = False, 0, []

        def update(self, n):
            self.updates += n

        def set_postfix(self, **kw):
            self.postfixes.append(kw)

    bar = Bar()
    loader = [_batch(s) for s in range(5)]
    result, syncs = count_host_syncs(lambda: setup.epoch(loader, progress=bar, log_every=2))
    assert bar.updates == 5 and len(bar.postfixes) == 2  # after steps 2 and 4
    assert syncs.transfers == 3, "two progress reads and one at the end of the epoch"
    for key in recorder.seen[0]:
        want = sum(s[key] for s in recorder.seen) / 5
        assert result[key] == pytest.approx(want, rel=1e-6), key
    assert float(bar.postfixes[1]["loss"]) == pytest.approx(sum(s["loss"] for s in recorder.seen[:4]) / 4, abs=1e-3)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_nan_in_an_accumulated_micro_batch_stops_before_the_weights_change():
    before = {}

    def nan_in_first(call, losses):
        if call == 2:  # the first micro-batch of the second step: the weights are those after step 1
            before.update(_weights(setup.model))
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    setup = _Setup(_Recorder(nan_in_first))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 1, step 3: loss_cls="):
        setup.epoch([_batch(s) for s in range(4)], accum_steps=2)
    after = _weights(setup.model)
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def test_non_finite_gradient_with_a_finite_loss_also_stops():
    def infinite_gradient(call, losses):
        w = next(iter(setup.model.parameters()))
        losses["loss"] = losses["loss"] + 0.0 * (w - w.detach()).abs().sum().sqrt()  # d sqrt(0) = inf
        return losses

    setup = _Setup(_Recorder(infinite_gradient))
    before = _weights(setup.model)
    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm"):
        setup.epoch([_batch(0)])
    assert all(torch.equal(v, _weights(setup.model)[k]) for k, v in before.items())


def test_model_and_criterion_compile_without_graph_breaks():
    """``--compile`` compiles both; a graph break in the heads or losses would bring syncs and launches back."""
    from mammodetr.training.engine import to_model_targets

    setup = _Setup()
    images, targets, _ = _batch(3)
    padded = to_model_targets(targets, torch.device("cpu"))
    for fn, args in ((setup.model, (images,)), (setup.criterion, (setup.model(images), padded))):
        explained = torch._dynamo.explain(fn)(*args)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    # fullgraph=True fails on any break; aot_eager traces forward and backward without a C++ compiler
    compiled = torch.compile(setup.criterion, backend="aot_eager", fullgraph=True)
    torch._dynamo.reset()
    outputs = setup.model(images)
    want, got = setup.criterion(outputs, padded), compiled(outputs, padded)
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)
    params = [p for p in setup.model.parameters() if p.requires_grad]
    g_want = torch.autograd.grad(want["loss"], params, retain_graph=True, allow_unused=True)
    g_got = torch.autograd.grad(got["loss"], params, allow_unused=True)
    for a, b in zip(g_want, g_got):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
