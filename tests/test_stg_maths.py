"""STG's maths without ComfyUI (steering/stg.py imports none): one guided step's updates over a batch, several
cross-attention entries and the pooled vector's head, checked against the update written out by hand."""
from __future__ import annotations

import pytest
import torch

from devtools import pure

stg = pure.fixture("steering.stg")


def by_hand(current: torch.Tensor, grad: torch.Tensor, unsafe: list[bool], rho: float, base: torch.Tensor):
    """base_b - rho * g_b / ||g_b|| for the flagged images with a non-zero gradient, current_b for the others."""
    out = current.clone()
    for b, flagged in enumerate(unsafe):
        norm = float(grad[b].pow(2).sum().sqrt())
        if flagged and norm > 0:
            out[b] = base[b] - rho * grad[b] / norm
    return out


@pytest.mark.parametrize("rebase", [False, True])
def test_update_embeddings_moves_each_flagged_image_of_every_entry_and_the_pooled_head(stg, rebase):
    g = torch.Generator().manual_seed(3)
    batch, width = 3, 6
    embeds = [torch.randn(batch, 4, 5, generator=g), torch.randn(batch, 2, 5, generator=g)]
    originals = [torch.randn(batch, 4, 5, generator=g), torch.randn(batch, 2, 5, generator=g)]
    pooled = [torch.randn(batch, 10, generator=g)]
    pooled_originals = [torch.randn(batch, 10, generator=g)]
    grads = [torch.randn(batch, 4, 5, generator=g), torch.randn(batch, 2, 5, generator=g)]
    grads[1][2] = 0.0                                    # image 2's second entry has no gradient
    pooled_grads = [torch.randn(batch, width, generator=g)]
    unsafe = [True, False, True]
    state = stg.STGState(embeds=[e.clone() for e in embeds], originals=originals, pooled=[p.clone() for p in pooled],
                         pooled_originals=pooled_originals)
    settings = stg.STGSettings(rho=0.7, rebase=rebase)

    new_embeds, new_pooled, updated, norms = stg.update_embeddings(state, grads, pooled_grads, torch.tensor(unsafe),
                                                                   settings, width)

    for k in range(2):
        base = originals[k] if rebase else embeds[k]
        torch.testing.assert_close(new_embeds[k], by_hand(embeds[k], grads[k], unsafe, 0.7, base))
    head_base = (pooled_originals[0] if rebase else pooled[0])[:, :width]
    torch.testing.assert_close(new_pooled[0][:, :width], by_hand(pooled[0][:, :width], pooled_grads[0], unsafe, 0.7,
                                                                  head_base))
    assert torch.equal(new_pooled[0][:, width:], pooled[0][:, width:])      # the rest of y is never guided
    assert updated.tolist() == unsafe                    # image 2 moved through its first entry and the pooled head
    assert len(norms) == 3
    torch.testing.assert_close(norms[0], grads[0].flatten(1).norm(dim=1))
    # pure: the state is read, not changed
    assert all(torch.equal(a, b) for a, b in zip(state.embeds, embeds))
    assert torch.equal(state.pooled[0], pooled[0])


def test_update_embeddings_without_a_flagged_image_changes_nothing(stg):
    embeds = [torch.ones(2, 3, 4)]
    state = stg.STGState(embeds=embeds, originals=[torch.zeros(2, 3, 4)])
    new_embeds, new_pooled, updated, _ = stg.update_embeddings(state, [torch.ones(2, 3, 4)], [],
                                                               torch.tensor([False, False]), stg.STGSettings(), None)
    assert torch.equal(new_embeds[0], embeds[0]) and new_pooled is None and not bool(updated.any())


def test_hold_flags_keep_a_flagged_image_until_its_score_falls_to_the_release(stg):
    """Threshold 0.5, margin 0.4: a new image needs a score above 0.5, one flagged at the last guided step stays
    flagged while above 0.1 (written out per image)."""
    scores = torch.tensor([0.7, 0.3, 0.3, 0.05, 0.1, 0.3])
    above = scores > 0.5
    held = torch.tensor([False, True, False, True, True, False])
    # image: 0 above; 1 held and above 0.1; 2 not held; 3 held, below the release; 4 held, at it; 5 not held
    assert stg.hold_flags(scores, above, held, 0.5, 0.4).tolist() == [True, True, False, False, False, False]
    # margin 0 and no previous flags: the paper's flags, whatever the previous ones
    assert stg.hold_flags(scores, above, held, 0.5, 0.0).tolist() == above.tolist()
    assert stg.hold_flags(scores, above, None, 0.5, 0.4).tolist() == above.tolist()
    with pytest.raises(stg.STGError, match=r"held flags \[2\]"):
        stg.hold_flags(scores, above, held[:2], 0.5, 0.4)
    with pytest.raises(stg.STGError, match="hold_margin must be >= 0"):
        stg.STGSettings(hold_margin=-0.1).check()
