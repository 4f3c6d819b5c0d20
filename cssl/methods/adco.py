"""AdCo (Hu et al. 2021): momentum key encoder + a bank of adversarial negatives + an estimator.

One step: queries from the online encoder, keys from its EMA copy gathered from all ranks; each query is
scored against ``[k_all | normalize(W)]`` with its own key at column ``global_rank * B + i`` and the network
descends the estimator's loss at ``temperature`` (moco_t). After the network's optimiser step, the bank
ascends the same cross-entropy at ``mem_t`` computed from the pre-step queries and bank (its gradient is
taken during the training step, when both are at hand), and the key encoder takes its EMA step.

Query crops: view 0 against the keys of view 1 (and, with ``symmetric``, view 1 against those of view 0;
the two losses averaged), plus every extra multi-crop view against the keys of view 1, each crop's loss
added (AdCo's multi-crop recipe). The bank's gradient gets the same weights as the losses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from cssl.contrastive import AdversarialBank
from cssl.contrastive.estimators import at_least_fp32
from cssl.core import distributed
from cssl.core.errors import check
from cssl.methods.contrast import ContrastiveMethod
from cssl.methods.target import MomentumTarget

BANK_SIZE = 65536  # AdCo's ImageNet K


class AdCo(MomentumTarget, ContrastiveMethod):
    """Adversarial contrast: negatives are the other images' keys and K learned adversarial vectors.

    Args:
        temperature: moco_t, the temperature of the network's loss.
            The estimator (``infonce`` for AdCo, ``dcl``, ``hcl``) over the keys' and the bank's negatives
            and its parameters are :class:`ContrastiveMethod` arguments.
        bank_size: K, the number of adversarial negatives.
        mem_t: temperature of the bank's (ascended) cross-entropy.
        mem_lr: step size of the bank's ascent.
        mem_momentum: momentum of the bank's ascent, in [0, 1).
        mem_wd: weight decay of the bank.
        bank_init: ``keys`` (columns filled from the first gathered keys), ``random``, or ``official``: AdCo's
            ``init_memory`` pass at the start of training (:meth:`initialise_bank`).
        proj_output_dim: dimension of the projections (queries, keys, negatives).
        symmetric: both views serve as query against the other's keys; the two losses are averaged.
        **kwargs: :class:`MomentumTarget` arguments (momentum, key BN, projector) and the negatives'.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        temperature: float = 0.12,
        bank_size: int = BANK_SIZE,
        mem_t: float = 0.02,
        mem_lr: float = 3.0,
        mem_momentum: float = 0.9,
        mem_wd: float = 1e-4,
        bank_init: str = "keys",
        proj_output_dim: int = 128,
        symmetric: bool = False,
        **kwargs: Any,
    ) -> None:
        check(
            kwargs.get("fnc", "none") != "attract",
            "method.fnc=attract is not defined with AdCo's adversarial bank (its negatives ascend the loss); "
            "use method.fnc=eliminate",
        )
        bank = AdversarialBank(
            proj_output_dim,
            bank_size,
            temperature=mem_t,
            lr=mem_lr,
            momentum=mem_momentum,
            weight_decay=mem_wd,
            init=bank_init,
        )
        super().__init__(backbone, temperature=temperature, proj_output_dim=proj_output_dim, **kwargs)
        self.symmetric = bool(symmetric)
        self.bank = bank

    # -- the step ------------------------------------------------------------------------------------
    def contrast(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        check(len(views) >= 2, f"AdCo needs at least 2 views per image, got {len(views)}")
        b = views[0].shape[0]
        offset = distributed.rank() * b  # global rank: the positives of rank r sit at r*B on every node
        n_main = 2 if self.symmetric else 1
        feats, z = self.encode_views(views[:n_main], self.projector)  # (n_main*B, F), (n_main*B, D)
        queries = list(z.split(b))  # n_main x (B, D)
        for group in _same_size_groups(views[2:]):
            queries.extend(self.encode_views(group, self.projector)[1].split(b))  # len(group) x (B, D)
        local = [self.keys(views[1])]  # (B, D)
        if self.symmetric:
            local.append(self.keys(views[0]))  # (B, D)
        k1 = distributed.gather(local[0])  # (B_g, D)
        keys = [k1]
        if self.symmetric:
            keys.insert(0, distributed.gather(local[1]))  # keys of view 0 pair with queries of view 1
        select = self._selection_inputs(local) if self.negatives.selecting else None
        pairs = [(queries[0], k1, 1.0 / n_main)]
        if self.symmetric:
            pairs.append((queries[1], keys[0], 1.0 / n_main))
        pairs += [(q, k1, 1.0) for q in queries[n_main:]]

        accumulate = self._trainer.accumulate_grad_batches if self._trainer is not None else 1
        loss = feats.new_zeros((), dtype=torch.float32)
        logs: dict[str, Tensor] = {}
        for i, (q, k, weight) in enumerate(pairs):
            z = self._normalize(q)  # (B, D)
            pos, sim, neg_mask = self.bank.similarities(z, k, offset)  # (B,), (B, B_g + K), (B, B_g + K)
            real_mask, selected = neg_mask, None
            if select is not None:  # FNC elimination and the ring; the bank's ascent sees the same mask
                candidates = torch.cat([k, self.bank.directions().T.to(k.dtype)])  # (B_g + K, D)
                selected = neg_mask = self.negatives.select(sim, neg_mask, candidates=candidates, **select).mask
            loss = loss + weight * self.negatives.loss(pos, sim, neg_mask)
            if self.training:
                masked = {} if selected is None else {"neg_mask": selected}
                mem_loss = self.bank.accumulate(z.detach(), k, offset, weight=weight / accumulate, **masked)
                if i == 0:
                    logs = self._diagnostics(pos, sim, real_mask, k, mem_loss)
        if self.training:
            for k in keys:
                self.bank.offer_keys(k)
        return loss, feats[:b], logs

    def _selection_inputs(self, local_keys: list[Tensor]) -> dict[str, Any]:
        """FNC's support set (momentum keys of the image's views and support views) and, when diagnosing,
        the labels of the rows and of the columns (gathered keys: their images'; bank: unknown)."""
        inputs: dict[str, Any] = {}
        if self.negatives.fnc != "none":
            inputs["support"] = self.negatives.support_set(local_keys, self.keys)  # (B, V + S, D)
        y = self.negatives.labels
        if y is not None and self.negatives.diagnose:
            unknown = y.new_full((self.bank.size,), -1)  # (K,)
            inputs.update(labels=y, candidate_labels=torch.cat([distributed.gather(y), unknown]))
        return inputs

    def after_batch(self, stepped: bool = True) -> None:
        """Once per optimiser step: the bank's ascent, then the key encoder's EMA step (the base's).

        Taking the EMA step after the optimiser step rather than before the next key forward (as the official
        loop does) is the same sequence of updates.
        """
        if stepped:
            self.bank.step()
        super().after_batch(stepped)

    # -- bank_init=official: AdCo's init_memory pass ----------------------------------------------------
    def on_train_start(self) -> None:
        """With ``bank_init=official``: AdCo's ``init_memory`` pass over the training batches before the first
        epoch (its steps are not training steps); skipped when a run resumes an initialised bank."""
        if not self.bank.needs_initialisation():
            return
        trainer = self.trainer
        strategy = trainer.strategy
        optimizer = self.optimizers(use_pl_optimizer=False)

        def batches() -> Iterator[list[Tensor]]:
            for batch in trainer.train_dataloader:
                views, _ = strategy.batch_to_device(batch)  # the data module's on-device views
                yield [self._images(v) for v in views]

        steps = self.initialise_bank(
            batches(),
            optimizer,
            step=lambda closure: strategy.optimizer_step(optimizer, closure),
            backward=lambda loss: strategy.backward(loss, optimizer),
            forward_context=trainer.precision_plugin.forward_context,
        )
        rank_zero_info(f"AdCo bank initialised (bank_init=official): {steps} steps, {self.bank.size} columns")

    def initialise_bank(
        self,
        batches: Iterable[list[Tensor]],
        optimizer: torch.optim.Optimizer,
        *,
        step: Callable[[Callable[[], Tensor]], Any] | None = None,
        backward: Callable[[Tensor], None] | None = None,
        forward_context: Callable[[], AbstractContextManager] = nullcontext,
    ) -> int:
        """AdCo's ``init_memory`` (training/train.py:247-305, called at main_worker.py:184-189).

        For each batch until the bank is full (at most one pass): one optimiser step of the network on the
        cross-entropy of ``[q.k | q.d] / moco_t`` against the whole, still random bank (label: the own key;
        :meth:`bank_init_loss`), and the keys gathered from all ranks written into the next bank columns
        (train.py:296-302). The bank itself takes no ascent step. Afterwards the key encoder's parameters are
        set to the online ones (train.py:303-305; BN buffers stay the key encoder's own). Under DDP the
        gradients are averaged over ranks here (the pass runs outside DDP's forward).

        Args:
            batches: the views of each training batch (on the device).
            optimizer: the network's optimiser, at its first learning rate (the official pass runs before
                the first adjust_learning_rate).
            step: runs one optimiser step with a closure (default ``optimizer.step(closure)``).
            backward: backward of the loss (default ``loss.backward()``; Lightning's with mixed precision).
            forward_context: context of the forward pass (autocast under mixed precision).

        Returns:
            The number of steps taken.
        """
        step = step or (lambda closure: optimizer.step(closure))
        backward = backward or (lambda loss: loss.backward())
        column, steps = 0, 0
        for views in batches:
            filled: dict[str, Tensor] = {}

            def closure(views: list[Tensor] = views, filled: dict[str, Tensor] = filled) -> Tensor:
                optimizer.zero_grad()
                with forward_context():
                    loss, filled["keys"] = self.bank_init_loss(views)
                backward(loss)
                self._average_gradients()
                return loss

            step(closure)
            steps += 1
            column = self.bank.write(filled["keys"], column)
            if column >= self.bank.size:
                break
        with torch.no_grad():
            for key_param, param in zip(
                self.key_encoder.encoder.parameters(), self._online().parameters(), strict=True
            ):
                key_param.copy_(param)
        self.bank.initialised.fill_(True)
        return steps

    def bank_init_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Loss of one ``init_memory`` step and the gathered keys that fill the bank.

        As the official forward (model/AdCo.py:126-141, train.py:265-281): the key encoder's EMA step, the
        queries of view 0 and the keys of view 1 (key BN mode as in training); logits ``[q.k | q.d] / moco_t``
        with the rank's own keys only and every bank column; mean cross-entropy with label 0. (AdCo's
        multi-crop init pairs the key crop with the smallest crop; here it is view 0 with view 1 in every mode.)

        Returns:
            loss (scalar) and the keys of all ranks (B_g, D).
        """
        self.key_encoder.update(self._online(), self.current_momentum())
        q = self._normalize(self.projector(self.backbone(views[0])))  # (B, D)
        k = self.keys(views[1])  # (B, D)
        with torch.autocast(device_type=q.device.type, enabled=False):
            pos = (q * k.to(q.dtype)).sum(1, keepdim=True)  # (B, 1)
            logits = torch.cat([pos, q @ self.bank.directions().to(q.dtype)], dim=1) / self.negatives.temperature
            loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        return loss, distributed.gather(k)

    def _average_gradients(self) -> None:
        """Mean of the gradients over ranks (what DDP's reducer does in a training step)."""
        if distributed.world_size() == 1:
            return
        for p in self.parameters():
            if p.grad is not None:
                p.grad.copy_(distributed.all_reduce_mean(p.grad))

    @staticmethod
    def _normalize(q: Tensor) -> Tensor:
        with torch.autocast(device_type=q.device.type, enabled=False):
            return F.normalize(at_least_fp32(q), dim=1)

    def _diagnostics(
        self, pos: Tensor, sim: Tensor, neg_mask: Tensor, keys: Tensor, mem_loss: Tensor
    ) -> dict[str, Tensor]:
        """Every step: the bank's loss; every ``diagnostics.every_n_steps``: the standard ``neg/...`` set over
        the network's negatives (other keys and bank), how far the bank moved in its last step, and how close
        the bank is to the current keys."""
        logs = {"train/mem_loss": mem_loss}
        if not self.diagnose():
            return logs
        logs.update(self.negative_diagnostics(pos, sim, neg_mask))
        logs["neg/bank_filled"] = self.bank.filled.float() / self.bank.size
        if self.bank.drift is not None:
            logs["neg/bank_drift"] = self.bank.drift
        with torch.no_grad():
            key_sim = keys.float() @ self.bank.directions()  # (B_g, K)
            valid = self.bank.valid()
            if valid is not None:
                key_sim = key_sim.masked_fill(~valid, float("nan"))
            logs["neg/bank_key_sim_mean"] = key_sim.nanmean()
            logs["neg/bank_key_sim_max"] = key_sim.nan_to_num(-2.0).max(1).values.mean()
        return logs


def _same_size_groups(views: list[Tensor]) -> list[list[Tensor]]:
    """Consecutive views of equal shape, grouped so that each group takes one forward pass."""
    groups: list[list[Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape == v.shape:
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups
