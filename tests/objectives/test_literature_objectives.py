"""Known-answer tests of the literature objectives: local alignment, masked image/text
modelling, momentum distillation and description-enhanced training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medvl.data.card import ClassInfo, DatasetCard
from medvl.errors import ConfigError
from medvl.models import create_model
from medvl.objectives import (
    CombinedObjective,
    DescriptionLoss,
    InfoNCELoss,
    LocalAlignmentLoss,
    MaskedImageLoss,
    MaskedTextLoss,
    MomentumDistillationLoss,
    ObjectiveContext,
    TrainingDataInfo,
    build_objective,
)
from medvl.objectives.describe import description_loss
from medvl.objectives.distill import distillation_targets, ema_update
from medvl.objectives.local import local_similarity
from medvl.objectives.masked import (
    masked_patch_loss,
    masked_token_loss,
    patchify,
    random_cell_mask,
    random_word_mask,
    unpatchify,
)

REPORTS = ["small right pneumothorax", "no pleural effusion", "large left pleural effusion",
           "a nodule in the right upper zone", "normal heart size", "cardiomegaly"] * 4


def _tiny_model(**image_kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("clip-tiny", image={"image_size": 32, "kwargs": {"output_stride": 8, **image_kwargs}},
                         text={"width": 32, "layers": 1, "heads": 2, "context_length": 16},
                         embed_dim=32, tokenizer_texts=REPORTS)
    return model.train()


def _context(model: torch.nn.Module, n: int = 4) -> tuple[dict, ObjectiveContext]:
    torch.manual_seed(1)
    images = torch.rand(n, 1, 32, 32)
    tok = model.tokenizer(REPORTS[:n])
    out = model(images, tok["input_ids"], tok["attention_mask"], return_tokens=True)
    return out, ObjectiveContext(model=model, images=images, input_ids=tok["input_ids"],
                                 attention_mask=tok["attention_mask"])


# -- local alignment ------------------------------------------------------------------------------

def _aligned_case(b: int = 4, p: int = 6, words: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image i has patch 0 = e_i (others: shared background e_b); every word of report i is e_i."""
    dim = b + 1
    eye = torch.eye(dim)
    patches = eye[b].repeat(b, p, 1).clone()
    patches[:, 0] = eye[:b]
    tokens = eye[:b].unsqueeze(1).repeat(1, words, 1)
    mask = torch.ones(b, words, dtype=torch.long)
    return patches, tokens, mask


def test_local_similarity_is_one_on_matched_pairs_and_zero_elsewhere() -> None:
    patches, tokens, mask = _aligned_case()
    sim = local_similarity(tokens, mask, patches, attn_temperature=200.0, agg_temperature=5.0)
    # every word of a matched pair agrees perfectly: logsumexp over 3 words of 5*1, divided by 5
    expected_diag = (math.log(3) + 5.0) / 5.0
    assert torch.allclose(sim.diagonal(), torch.full((4,), expected_diag), atol=1e-4)
    off = sim[~torch.eye(4, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, math.log(3) / 5.0), atol=1e-4)


def test_local_loss_known_minimum_and_shuffled_pairs_are_worse() -> None:
    patches, tokens, mask = _aligned_case()
    loss_fn = LocalAlignmentLoss(attn_temperature=200.0, agg_temperature=5.0, scale=10.0)
    out = {"patch_features": patches, "token_features": tokens, "word_mask": mask}
    loss = loss_fn(out)["loss"]
    gap = 10.0 * (5.0 / 5.0)  # scale x (diag - off-diagonal) local score
    assert loss.item() == pytest.approx(math.log(1 + 3 * math.exp(-gap)), rel=1e-3)
    shuffled = dict(out, token_features=tokens.roll(1, dims=0))
    assert loss_fn(shuffled)["loss"].item() > 5.0


def test_local_loss_ignores_padding_and_reports_without_words() -> None:
    patches, tokens, mask = _aligned_case()
    mask = torch.cat([mask, torch.zeros(4, 2, dtype=torch.long)], dim=1)
    noisy = torch.cat([tokens, torch.randn(4, 2, 5)], dim=1)
    a = local_similarity(tokens, mask[:, :3], patches, 200.0, 5.0)
    b = local_similarity(noisy, mask, patches, 200.0, 5.0)
    assert torch.allclose(a, b, atol=1e-5)
    mask[0] = 0
    assert torch.all(local_similarity(noisy, mask, patches, 200.0, 5.0)[:, 0] == 0)


def test_local_loss_needs_token_outputs_and_trains_through_the_model() -> None:
    with pytest.raises(ConfigError, match="return_tokens"):
        LocalAlignmentLoss()({"image_features": torch.zeros(2, 4)})
    model = _tiny_model()
    out, _ = _context(model)
    loss = LocalAlignmentLoss()(out)["loss"]
    loss.backward()
    assert next(model.visual.parameters()).grad is not None
    assert model.text.token_embedding.weight.grad is not None


# -- masked image modelling ----------------------------------------------------------------------

def test_patchify_round_trip_and_grid_order() -> None:
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    cells = patchify(x, (2, 2))
    assert cells.shape == (2, 4, 16)
    assert torch.equal(cells[0, 1], x[0, 0, :4, 4:].reshape(-1))  # row-major: cell 1 = top right
    assert torch.equal(unpatchify(cells, (2, 2), 1), x)
    with pytest.raises(ConfigError, match="divisible"):
        patchify(torch.zeros(1, 1, 9, 8), (2, 2))


def test_masked_patch_loss_counts_masked_cells_only() -> None:
    torch.manual_seed(0)
    target = torch.rand(2, 4, 16)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    assert masked_patch_loss(normed, target, mask).item() == pytest.approx(0.0, abs=1e-10)
    wrong_visible = normed.clone()
    wrong_visible[~mask] += 5.0
    assert masked_patch_loss(wrong_visible, target, mask).item() == pytest.approx(0.0, abs=1e-10)
    wrong_masked = normed.clone()
    wrong_masked[0, 0] += 1.0  # one of 3 masked cells off by 1 in every pixel -> mean 1/3
    assert masked_patch_loss(wrong_masked, target, mask).item() == pytest.approx(1 / 3, rel=1e-5)


def test_random_cell_mask_has_exact_count() -> None:
    m = random_cell_mask(5, 64, 0.6, torch.device("cpu"))
    assert m.sum(1).tolist() == [38] * 5
    assert not torch.equal(m[0], m[1])


def test_mim_objective_binds_to_the_grid_and_learns() -> None:
    model = _tiny_model()
    mim = MaskedImageLoss(mask_ratio=0.5, decoder_width=32)
    mim.bind(model)
    assert mim.grid == (4, 4)
    out, ctx = _context(model)
    opt = torch.optim.Adam(list(model.parameters()) + list(mim.parameters()), lr=3e-3)
    losses = []
    for _ in range(25):
        torch.manual_seed(3)  # the same mask every step: the loss must fall when fitting it
        loss = mim(out, None, context=ctx)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# -- masked report modelling ---------------------------------------------------------------------

def test_masked_token_loss_zero_for_perfect_logits_and_ignores_unmasked() -> None:
    targets = torch.tensor([[2, 5, 7], [1, 1, 3]])
    positions = torch.tensor([[False, True, False], [True, False, True]])
    logits = torch.full((2, 3, 10), -50.0)
    logits.scatter_(2, targets.unsqueeze(-1), 50.0)
    logits[0, 0] = 0.0  # wrong but unmasked: ignored
    assert masked_token_loss(logits, targets, positions).item() == pytest.approx(0.0, abs=1e-6)
    logits[1, 2] = 0.0  # masked and uniform over 10 ids: adds log(10) / 3
    assert masked_token_loss(logits, targets, positions).item() == pytest.approx(math.log(10) / 3, rel=1e-4)


def test_random_word_mask_never_picks_special_tokens_and_picks_at_least_one() -> None:
    words = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    torch.manual_seed(0)
    for _ in range(20):
        pick = random_word_mask(words, 0.15)
        assert not (pick & ~words.bool()).any()
        assert pick[0].any() and pick[1].any() and not pick[2].any()


def test_mlm_objective_masks_words_with_the_mask_token() -> None:
    model = _tiny_model()
    mlm = MaskedTextLoss(mask_ratio=0.3, heads=2)
    mlm.bind(model)
    assert mlm.head is not None and mlm.head[-1].out_features == model.tokenizer.vocab_size
    out, ctx = _context(model)
    result = mlm(out, None, context=ctx)
    assert result["loss"].item() == pytest.approx(math.log(model.tokenizer.vocab_size), rel=0.35)
    result["loss"].backward()
    assert model.text.token_embedding.weight.grad is not None


# -- momentum distillation -----------------------------------------------------------------------

def test_ema_update_formula() -> None:
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    s0, t0 = student.weight.detach().clone(), teacher.weight.detach().clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * t0 + 0.1 * s0)


def test_distillation_targets_mix_soft_and_hard() -> None:
    logits = torch.randn(3, 5)
    t = distillation_targets(logits, 0.4)
    assert torch.allclose(t.sum(1), torch.ones(3))
    expected = 0.4 * torch.softmax(logits, 1)
    expected[:, :3] += 0.6 * torch.eye(3)
    assert torch.allclose(t, expected)


def test_distill_equals_infonce_with_alpha_zero_and_no_queue() -> None:
    model = _tiny_model()
    loss_fn = MomentumDistillationLoss(momentum=0.995, alpha=0.0, queue_size=0)
    loss_fn.bind(model)
    model.eval()  # no dropout: teacher (a copy) and student give the same features
    out, ctx = _context(model)
    got = loss_fn(out, None, context=ctx)["loss"]
    ref = InfoNCELoss()(out)["loss"]
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_distill_teacher_is_frozen_follows_the_student_and_fills_the_queue() -> None:
    model = _tiny_model()
    loss_fn = MomentumDistillationLoss(momentum=0.5, alpha=0.4, queue_size=8)
    loss_fn.bind(model)
    assert all(not p.requires_grad for p in loss_fn.teacher.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = next(loss_fn.teacher.parameters()).detach().clone()
    out, ctx = _context(model)
    loss_fn(out, None, context=ctx)["loss"].backward()
    after = next(loss_fn.teacher.parameters())
    assert torch.allclose(after, 0.5 * before + 0.5 * next(model.parameters()).detach())
    assert int(loss_fn.queue.count) == 4
    state = loss_fn.state_dict()
    assert any(k.startswith("teacher.") for k in state) and "queue.image_queue" in state


# -- description-enhanced training ---------------------------------------------------------------

def test_description_loss_known_answers() -> None:
    pos = F.normalize(torch.eye(4)[:2], dim=-1)        # class embeddings e0, e1
    neg = F.normalize(torch.eye(4)[2:], dim=-1)        # "no class" embeddings e2, e3
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = F.normalize(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]]), dim=-1)
    good = description_loss(image, pos, neg, labels, 50.0, pairs=True)
    assert good.item() < 1e-6
    bad = description_loss(image, pos, neg, 1 - labels, 50.0, pairs=True)
    assert bad.item() == pytest.approx(50.0 / math.sqrt(2), rel=1e-3)
    unknown = torch.full_like(labels, -1.0)
    assert description_loss(image, pos, neg, unknown, 50.0, pairs=True).item() == 0.0
    # multiclass: softmax over the class embeddings
    img = F.normalize(torch.tensor([[1.0, 0.0, 0, 0], [0.0, 1.0, 0, 0]]), dim=-1)
    assert description_loss(img, pos, None, labels, 30.0, pairs=False).item() < 1e-6


def test_describe_objective_reads_the_card_and_requires_one() -> None:
    model = _tiny_model()
    card = DatasetCard(name="t", task="multilabel", classes=[
        ClassInfo(name="pneumothorax", synonyms=["collapsed lung"], descriptions=["air in the pleural space"]),
        ClassInfo(name="pleural effusion", descriptions=["fluid in the pleural space"])])
    loss_fn = DescriptionLoss(prompts_per_class=2)
    with pytest.raises(ConfigError, match="card"):
        loss_fn.bind(model, TrainingDataInfo(classes=["a"], card=None))
    loss_fn.bind(model, TrainingDataInfo(classes=card.class_names, task="multilabel", card=card))
    assert loss_fn.pairs and len(loss_fn.positive) == 2 and len(loss_fn.negative) == 2
    assert loss_fn.positive[0][0].shape[0] == len(card.prompts("pneumothorax"))
    out, ctx = _context(model, n=2)
    loss = loss_fn(out, {"labels": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}, context=ctx)["loss"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    with pytest.raises(ConfigError, match="labels"):
        loss_fn(out, {"labels": torch.zeros(2, 3)}, context=ctx)


# -- combination -----------------------------------------------------------------------------------

def test_combined_objective_routes_context_and_flags() -> None:
    obj = build_objective([{"name": "infonce"}, {"name": "local", "weight": 0.5}, {"name": "mim"}])
    assert isinstance(obj, CombinedObjective)
    assert obj.needs_tokens and obj.needs_model == ["mim"]
    model = _tiny_model()
    obj.bind(model, TrainingDataInfo())
    out, ctx = _context(model)
    with pytest.raises(ConfigError, match="context"):
        obj(out, {})
    res = obj(out, {}, context=ctx)
    assert set(res) >= {"loss", "infonce", "local", "mim", "mim.mask_share"}
    assert res["loss"].item() == pytest.approx(res["infonce"].item() + 0.5 * res["local"].item()
                                               + res["mim"].item(), rel=1e-5)
