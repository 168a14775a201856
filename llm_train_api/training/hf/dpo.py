"""Direct Preference Optimization: the loss, the rewards, and the step's objective.

A pair's score under a model is the sum of the log-probabilities of its answer's tokens
(the tokens :mod:`.preference` masks in, nothing of the prompt). With ``pi`` the model
being trained and ``ref`` the starting model, the implicit rewards are
``beta * (log pi(answer) - log ref(answer))`` and the losses are TRL's (``DPOTrainer``,
``f_divergence_type`` reverse KL, no label smoothing, no weighting), checked against it
in the unit tests:

* ``sigmoid``: ``-log sigmoid(beta * margin)``, the DPO paper's loss;
* ``hinge``: ``relu(1 - beta * margin)`` (SLiC);
* ``ipo``: ``(margin_per_token - 1 / (2 beta))^2``, the log-ratios divided by the
  answers' token counts (as TRL does, with the IPO authors' agreement);

where ``margin = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))``.
TRL's loss is written inline in ``DPOTrainer``'s loss method, not callable on its own,
so the few lines are here and our own training loop (exact resume, leases, events) runs them.

The reference needs no second model under LoRA: the same model with its adapters
disabled is the starting model. Full-weight DPO keeps a frozen copy.

The loss of an optimizer step is the mean over its pairs (all micro-batches, all ranks):
a pair is one vote, whatever its length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from llm_train_api.training.hf import data as hfdata
from llm_train_api.training.hf import modeling
from llm_train_api.training.hf.preference import Pair

#: The objective's statistics per micro-batch, summed over a reporting window:
#: loss sum, pairs, chosen reward sum, rejected reward sum, pairs ranked right.
WIDTH = 5


def sequence_logps(model: Any, batch: Mapping[str, torch.Tensor], autocast: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the target tokens' log-probabilities, their count), per sequence."""
    logits, labels = modeling.next_token_logits(model, batch, autocast)
    per_token = -F.cross_entropy(logits.transpose(1, 2), labels,
                                 ignore_index=hfdata.IGNORE, reduction="none")
    return per_token.sum(-1), (labels != hfdata.IGNORE).sum(-1)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *,
             beta: float, loss_type: str, chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen and rejected rewards (detached). ``ipo`` needs the
    answers' token counts."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    margin = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * margin)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * margin)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("loss_type 'ipo' needs the answers' token counts")
        per_token = (chosen_ratio / chosen_tokens.clamp(min=1)
                     - rejected_ratio / rejected_tokens.clamp(min=1))
        losses = (per_token - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"Unknown DPO loss_type {loss_type!r}.")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def adapter_reference(model: Any, autocast: Any) -> Callable[[Mapping[str, torch.Tensor]],
                                                                torch.Tensor]:
    """The reference scores of a peft model: the model with its adapters disabled."""
    def score(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), model.disable_adapter():
            return sequence_logps(model, batch, autocast)[0]
    return score


def frozen_reference(reference: Any, autocast: Any) -> Callable[[Mapping[str, torch.Tensor]],
                                                                  torch.Tensor]:
    """The reference scores of a frozen copy of the starting model (full-weight DPO)."""
    reference.eval()
    for param in reference.parameters():
        param.requires_grad_(False)

    def score(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return sequence_logps(reference, batch, autocast)[0]
    return score


class DPOObjective:
    """One micro-batch of pairs to a loss to backpropagate and the window's statistics."""

    width = WIDTH

    def __init__(self, dpo: Mapping[str, Any], reference: Callable[[Any], torch.Tensor],
                 pad_id: int, device: torch.device, autocast: Any) -> None:
        self.beta, self.loss_type = float(dpo["beta"]), str(dpo["loss_type"])
        self.reference, self.pad_id, self.device = reference, pad_id, device
        self.autocast = autocast

    @staticmethod
    def count(micro: list[Pair]) -> int:
        """What the step's loss is averaged over: pairs."""
        return len(micro)

    def sums(self, model: Any, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the pairs' losses, the statistics row) of this rank's pairs."""
        batch = hfdata.collate([p.chosen for p in pairs] + [p.rejected for p in pairs],
                               self.pad_id, self.device)
        logps, tokens = sequence_logps(model, batch, self.autocast)
        ref = self.reference(batch)
        n = len(pairs)
        losses, chosen, rejected = dpo_loss(
            logps[:n], logps[n:], ref[:n], ref[n:], beta=self.beta,
            loss_type=self.loss_type, chosen_tokens=tokens[:n], rejected_tokens=tokens[n:])
        loss = losses.sum()
        stats = torch.stack([loss.detach(), torch.tensor(float(n), device=loss.device),
                             chosen.sum(), rejected.sum(), (chosen > rejected).sum().float()])
        return loss, stats

    @staticmethod
    def metrics(totals: torch.Tensor, prefix: str = "") -> dict[str, float]:
        """The window's mean loss and rewards; ``prefix`` ``val_`` for a validation."""
        n = max(float(totals[1].item()), 1.0)
        chosen, rejected = float(totals[2].item()) / n, float(totals[3].item()) / n
        loss = {f"{prefix or 'train_'}loss": float(totals[0].item()) / n}
        if prefix:
            return {**loss, f"{prefix}rewards/margins": chosen - rejected,
                    f"{prefix}rewards/accuracies": float(totals[4].item()) / n}
        return {**loss, "rewards/chosen": chosen, "rewards/rejected": rejected,
                "rewards/margins": chosen - rejected,
                "rewards/accuracies": float(totals[4].item()) / n}


def reference_scorer(model: Any, hp: Mapping[str, Any], load_copy: Callable[[], Any],
                     autocast: Any) -> Callable[[Any], torch.Tensor]:
    """The reference of a run: the adapters disabled (LoRA), or a frozen copy loaded with
    ``load_copy`` (full weights)."""
    if hp["dpo"]["full_weights"]:
        return frozen_reference(load_copy(), autocast)
    return adapter_reference(model, autocast)


__all__ = ["DPOObjective", "dpo_loss", "reference_scorer", "sequence_logps"]
