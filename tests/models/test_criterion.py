import math

import pytest
import torch

from mammodetr import LossConfig, build_criterion
from mammodetr.models.criterion import focal_loss, limit_targets


def test_focal_loss_hand_computation():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    labels = torch.tensor([1, 0])
    p0 = math.exp(-1.0) / (math.exp(2.0) + math.exp(-1.0))  # prob of class 1 in row 0
    p1 = math.exp(0.5) / (math.exp(0.5) + math.exp(0.3))  # prob of class 0 in row 1
    want = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    assert focal_loss(logits, labels, gamma=2.0) == pytest.approx(want, rel=1e-6)
    want_alpha = (-0.25 * (1 - p0) ** 2 * math.log(p0) - 0.75 * (1 - p1) ** 2 * math.log(p1)) / 2
    assert focal_loss(logits, labels, gamma=2.0, alpha=0.25) == pytest.approx(want_alpha, rel=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert focal_loss(logits, labels, gamma=0.0) == pytest.approx(ce.item(), rel=1e-6)


def test_single_logit_focal_equals_sigmoid_form():
    z = torch.tensor([[0.7], [-1.2]])
    labels = torch.tensor([1, 0])
    p = torch.sigmoid(z[:, 0])
    pt = torch.where(labels == 1, p, 1 - p)
    want = (-(1 - pt) ** 2 * pt.log()).mean()
    assert focal_loss(z, labels) == pytest.approx(want.item(), rel=1e-6)


def test_limit_targets_keeps_malignant_then_largest():
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.05, 0.05]])
    malignant = torch.tensor([0, 0, 0, 1])
    assert limit_targets(boxes, malignant, 3).tolist() == [1, 2, 3]
    assert limit_targets(boxes, None, 2).tolist() == [1, 2]
    assert limit_targets(boxes, None, None).tolist() == [0, 1, 2, 3]


def _outputs(B=2, K=3, aux=2, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(B, K, 4, generator=g).mul(0.3).add(0.2).requires_grad_(requires_grad)
    obj = torch.randn(B, K, generator=g).requires_grad_(requires_grad)
    return {
        "image_logits": torch.randn(B, 2, generator=g).requires_grad_(requires_grad),
        "pred_boxes": boxes,
        "pred_obj_logits": obj,
        "aux_outputs": [{"pred_boxes": boxes * 0.9, "pred_obj_logits": obj * 0.5} for _ in range(aux)],
    }


def test_total_is_weighted_sum_and_all_names_present():
    crit = build_criterion(LossConfig(), num_aux=2)
    out = _outputs()
    targets = [
        {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]]), "label": torch.tensor(1)},
        {"boxes": torch.zeros(0, 4), "label": torch.tensor(0)},
    ]
    losses = crit(out, targets)
    names = {"loss_cls", "loss_bbox", "loss_giou", "loss_obj"}
    assert names | {f"{n}_{i}" for n in names - {"loss_cls"} for i in range(2)} | {"loss"} == set(losses)
    w = crit.weight_dict
    assert w["loss_bbox"] == 5.0 and w["loss_giou"] == 2.0 and w["loss_obj"] == 1.0 and w["loss_cls"] == 1.0
    manual = sum(w[k] * v for k, v in losses.items() if k != "loss")
    torch.testing.assert_close(losses["loss"], manual)


def test_images_without_lesions_push_objectness_down_and_give_no_box_loss():
    crit = build_criterion(LossConfig(), num_aux=0)
    out = _outputs(aux=0)
    targets = [{"boxes": torch.zeros(0, 4), "label": torch.tensor(0)} for _ in range(2)]
    losses = crit(out, targets)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    want_obj = torch.nn.functional.binary_cross_entropy_with_logits(
        out["pred_obj_logits"], torch.zeros(2, 3), reduction="sum"
    )  # normalised by max(num_boxes, 1) = 1
    torch.testing.assert_close(losses["loss_obj"], want_obj)
    losses["loss"].backward()
    assert (out["pred_obj_logits"].grad > 0).all(), "gradient must lower every objectness logit"
    assert out["pred_boxes"].grad is None or out["pred_boxes"].grad.abs().sum() == 0


def test_matched_box_losses_against_hand_values():
    crit = build_criterion(LossConfig(max_targets=None), num_aux=0)
    out = {
        "image_logits": torch.zeros(1, 2),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05], [0.9, 0.9, 0.1, 0.1]]]),
        "pred_obj_logits": torch.zeros(1, 3),
    }
    target = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    losses = crit(out, [{"boxes": target, "label": torch.tensor(1)}])
    assert losses["loss_bbox"].item() == pytest.approx(0.2, abs=1e-6)
    # pred [0.4,0.4,0.6,0.6] inside target [0.4,0.3,0.6,0.7]: IoU = 0.04/0.08 = 0.5, hull = union -> GIoU 0.5
    assert losses["loss_giou"].item() == pytest.approx(0.5, abs=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.zeros(3), torch.tensor([1.0, 0, 0]), reduction="sum"
    )
    assert losses["loss_obj"].item() == pytest.approx(bce.item(), rel=1e-6)


def test_ce_option_and_queries_normalisation():
    out = _outputs(aux=0)
    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]]), "label": torch.tensor(1)}] * 2
    ce = build_criterion(LossConfig(cls_loss="ce", obj_normalization="queries"), num_aux=0)(out, targets)
    expected = torch.nn.functional.cross_entropy(out["image_logits"], torch.tensor([1, 1]))
    torch.testing.assert_close(ce["loss_cls"], expected)
    with pytest.raises(ValueError, match="cls_loss"):
        build_criterion(LossConfig(cls_loss="hinge"), num_aux=0)


def _random_batch(seed, B=6, K=3, aux=5, max_boxes=5):
    """Outputs of L = aux + 1 layers and targets with 0..max_boxes boxes per image (some degenerate)."""
    g = torch.Generator().manual_seed(seed)

    def layer():
        return {"pred_boxes": torch.rand(B, K, 4, generator=g).mul(0.6).add(0.05).requires_grad_(),
                "pred_obj_logits": torch.randn(B, K, generator=g).mul(2).requires_grad_()}

    out = {"image_logits": torch.randn(B, 2, generator=g).requires_grad_(), **layer(),
           "aux_outputs": [layer() for _ in range(aux)]}
    targets = []
    for _ in range(B):
        n = int(torch.randint(0, max_boxes + 1, (1,), generator=g))
        boxes = torch.rand(n, 4, generator=g) * 0.5 + 0.1
        if n and torch.rand(1, generator=g) < 0.3:
            boxes[0, 2] = 0.0  # a zero-width box
        targets.append({"boxes": boxes, "label": torch.tensor(int(n > 0)),
                        "box_malignant": torch.randint(-1, 2, (n,), generator=g)})
    return out, targets


def _leaves(out):
    return [out["image_logits"], out["pred_boxes"], out["pred_obj_logits"],
            *[t for a in out["aux_outputs"] for t in (a["pred_boxes"], a["pred_obj_logits"])]]


@pytest.mark.parametrize("config", [
    LossConfig(), LossConfig(obj_loss="focal"), LossConfig(obj_normalization="queries", cls_loss="ce"),
    LossConfig(max_targets=None), LossConfig(max_targets=2, focal_alpha=0.25), LossConfig(weight_bbox=3.0),
], ids=["default", "obj_focal", "queries_ce", "all_targets", "two_targets", "weights"])
def test_batched_losses_and_gradients_equal_the_reference_implementation(config):
    from tests.models.reference_criterion import build_reference

    for seed in range(5):
        out, targets = _random_batch(seed)
        new = build_criterion(config, num_aux=5)(out, targets)
        grads_new = torch.autograd.grad(new["loss"], _leaves(out))
        ref = build_reference(config, num_aux=5)(out, targets)
        grads_ref = torch.autograd.grad(ref["loss"], _leaves(out))
        assert list(new) == list(ref), "same names in the same order"
        for k in ref:
            torch.testing.assert_close(new[k], ref[k], rtol=1e-5, atol=1e-6, msg=f"seed {seed}: {k}")
        for a, b in zip(grads_new, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_padded_packed_and_list_targets_give_the_same_losses():
    from mammodetr.models.targets import pack_targets, pad_targets

    crit = build_criterion(LossConfig(), num_aux=5)
    out, targets = _random_batch(11)
    padded = pad_targets([t["boxes"] for t in targets], torch.stack([t["label"] for t in targets]),
                         [t["box_malignant"] for t in targets], max_targets=3)
    from_list = crit(out, targets)
    for form in (padded, {"packed": pack_targets(padded)}):
        got = crit(out, form)
        for k in from_list:
            torch.testing.assert_close(got[k], from_list[k], rtol=0, atol=0, msg=k)
    # padded without the limit applied (5 slots): the criterion applies it itself
    unlimited = pad_targets([t["boxes"] for t in targets], torch.stack([t["label"] for t in targets]),
                            [t["box_malignant"] for t in targets])
    assert unlimited["boxes"].shape[1] == 5
    torch.testing.assert_close(crit(out, unlimited)["loss"], from_list["loss"], rtol=0, atol=0)


def test_uneven_layer_weights_are_applied_per_layer():
    out, targets = _random_batch(3, aux=2)
    crit = build_criterion(LossConfig(), num_aux=2)
    crit.weight_dict["loss_giou_0"] = 7.0
    del crit.weight_dict["loss_obj_1"]
    losses = crit(out, targets)
    manual = sum(crit.weight_dict[k] * v for k, v in losses.items() if k in crit.weight_dict)
    torch.testing.assert_close(losses["loss"], manual)
