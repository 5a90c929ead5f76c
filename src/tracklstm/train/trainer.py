"""The training step and epoch: ``Trainer`` holds a model's optimizer, schedule, loss scaler and
running metric sums on one device (one rank of DDP), and runs steps, epochs and evaluation.

The loss is L1 (the mean over the whole global batch), the metrics are MAE and MSE in normalized
units. Running sums stay on the device, so that no step waits for it; ``global_sums`` reads them
once per epoch. On CUDA the whole step may be captured as a CUDA graph (``cuda_graphs``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tracklstm.settings import defaults
from tracklstm.train.data import Batch, WindowSource
from tracklstm.train.runtime import Dist, all_reduce, epoch_seed, stop_requested

if TYPE_CHECKING:
    from tracklstm.train.jacobian import JacobianTerm

log = logging.getLogger("tracklstm.train")

#: Under DDP the ranks agree on a stop request every this many steps (one small all-reduce).
STOP_SYNC_STEPS = 16


def make_optimizer(model: nn.Module, cfg: dict[str, Any], device: torch.device) -> torch.optim.Adam:
    """Adam as the settings say; fused on CUDA (no host sync with a loss scaler)."""
    lr = float(cfg["learning_rate"])
    if device.type != "cuda":
        return torch.optim.Adam(model.parameters(), lr=lr)
    graphs = bool(cfg["cuda_graphs"])
    # Under a CUDA graph the learning rate must be a device tensor that the scheduler updates
    # in place; a Python float would be frozen into the captured graph.
    return torch.optim.Adam(
        model.parameters(),
        lr=torch.tensor(lr, device=device) if graphs else lr,
        fused=True,
        capturable=graphs,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The learning-rate schedule: ``plateau`` (the reference), ``cosine`` or ``constant``."""
    sch = cfg["scheduler"]
    if sch["kind"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=float(sch["factor"]),
            patience=int(sch["patience"]),
            threshold=float(sch["threshold"]),
            threshold_mode="abs",  # Keras' min_delta is absolute
            min_lr=float(sch["min_lr"]),
        )
    if sch["kind"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=int(cfg["epochs"]), eta_min=float(sch["min_lr"])
        )
    return None


class TrainingView(nn.Module):
    """What the loss compares, for either kind of model: ``(prediction, target)``.

    The reference model's output against the normalized next state; a model with ``loss_pair``
    (the residual propagator) gives its scaled correction and the scaled ``truth - prior``.
    The trainer (and DDP) runs this module, so gradients flow through the same forward either
    way.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.pairs = hasattr(model, "loss_pair")
        # the corrected features (x, y, px, py, pz), or the six normalized ones
        self.n_outputs = int(model.corrected.numel() if self.pairs else model.head.out_features)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pairs:
            return self.model.loss_pair(x, y)
        return self.model(x), y


class Trainer:
    """One model's training steps, epochs and evaluation on a device (one rank of DDP)."""

    def __init__(
        self,
        model: nn.Module,
        cfg: dict[str, Any],
        device: torch.device,
        dist: Dist | None = None,
        runtime: dict[str, Any] | None = None,
        jacobian: JacobianTerm | None = None,
    ) -> None:
        """``cfg``: the ``training`` settings; ``runtime``: the ``runtime`` ones (missing keys:
        the schema's defaults); ``jacobian``: the Jacobian term of the loss (``train.jacobian``)
        when ``training.jacobian_weight`` asks for one."""
        self.model, self.cfg, self.device = model, cfg, device
        self.runtime = rt = {**defaults("runtime"), **(runtime or {})}
        self.dist = dist or Dist()
        cuda = device.type == "cuda"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(rt["precision"])
        if self.amp_dtype is not None and not cuda:
            log.warning("runtime.precision %s is for CUDA GPUs; using fp32", rt["precision"])
            self.amp_dtype = None
        self.graphs = bool(rt["cuda_graphs"]) and cuda
        if rt["cuda_graphs"] and not cuda:
            log.warning("runtime.cuda_graphs is for CUDA GPUs; running without")
        if self.graphs and self.dist.world > 1:
            log.warning("runtime.cuda_graphs is not used with several processes (DDP)")
            self.graphs = False
        self.jacobian = jacobian
        if self.graphs and jacobian is not None:
            log.warning("runtime.cuda_graphs is not used with training.jacobian_weight")
            self.graphs = False
        self.precision = rt["precision"] if self.amp_dtype is not None else "fp32"
        self.view = TrainingView(model)
        self.net: nn.Module = self.view
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if cuda else None
            self.net = DistributedDataParallel(self.view, device_ids=ids)
        self.optimizer = make_optimizer(model, {**cfg, "cuda_graphs": self.graphs}, device)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = cfg["grad_clip_value"]
        self.batch = int(cfg["batch_size"])
        self.loss = cfg.get("loss", "l1")
        self.n_features = self.view.n_outputs
        self.abs_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.sq_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_failed = False
        self._warmup_left = 3
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- one step -----------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype, cache_enabled=not self.graphs)

    def _compute(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        scale: float,
        live: bool,
        jacobian_rows: torch.Tensor | None = None,
    ) -> None:
        """Forward, backward, clip, optimizer step and running sums; no host sync."""
        with self._autocast():
            pred, target = self.net(x, y)
        err = pred.float() - target
        abs_total = err.abs().sum()
        sq_total = err.square().sum()
        loss = (sq_total if self.loss == "mse" else abs_total) * scale
        if self.jacobian is not None and jacobian_rows is not None and live:
            loss = loss + self.jacobian.loss(self.model.body, jacobian_rows)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.clip is not None:
            nn.utils.clip_grad_value_(self.params, float(self.clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if live:
            with torch.no_grad():
                self.abs_sum += abs_total.detach()
                self.sq_sum += sq_total.detach()

    def step(self, batch: Batch, jacobian_rows: torch.Tensor | None = None) -> None:
        """One optimizer step on ``batch`` (the loss is the mean over the whole global batch),
        with the Jacobian term on ``jacobian_rows`` of its windows if there is one."""
        full = batch.live and batch.n_global == self.batch and len(batch.x) == self.batch
        if self.graphs and full and not self._graph_failed:
            self._graph_step(batch.x, batch.y)
            return
        scale = self.dist.world / (batch.n_global * self.n_features) if batch.live else 0.0
        self.optimizer.zero_grad(set_to_none=True)
        self._compute(batch.x, batch.y, scale, batch.live, jacobian_rows)

    def _graph_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The whole step as one CUDA graph: captured after 3 eager warm-up steps, then replayed."""
        if self._graph is None:
            scale = 1.0 / (self.batch * self.n_features)
            if self._warmup_left > 0:  # warm-up runs on a side stream, as capture requires
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._compute(x, y, scale, True)
                torch.cuda.current_stream(self.device).wait_stream(side)
                self._warmup_left -= 1
                return
            self._static = (x.clone(), y.clone())
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._compute(*self._static, scale, True)
            except RuntimeError as err:
                log.warning("CUDA graph capture failed (%s); running without graphs", err)
                self._graph_failed = True
                self.optimizer.zero_grad(set_to_none=True)
                self._compute(x, y, scale, True)
                return
            self._graph = graph
            log.info("captured the training step as a CUDA graph")
        assert self._static is not None
        self._static[0].copy_(x)
        self._static[1].copy_(y)
        self._graph.replay()

    # -- epochs -------------------------------------------------------------------------------

    def set_sums(self, abs_sum: float = 0.0, sq_sum: float = 0.0) -> None:
        """Reset the running sums in place (a captured graph keeps adding into them)."""
        self.abs_sum.fill_(abs_sum)
        self.sq_sum.fill_(sq_sum)

    def global_sums(self) -> tuple[float, float]:
        """The running sums over all ranks (one host sync)."""
        both = torch.stack([self.abs_sum, self.sq_sum])
        return tuple(all_reduce(both, self.dist).tolist())  # type: ignore[return-value]

    def stop_agreed(self, local: bool, step: int | None = None) -> bool:
        """Whether to stop: the ``local`` request, agreed over the ranks.

        Under DDP the ranks compare their requests at every ``STOP_SYNC_STEPS``-th ``step`` and
        at the end of an epoch (``step`` None), so that all of them stop at the same step.
        """
        if self.dist.world == 1:
            return local
        if step is not None and step % STOP_SYNC_STEPS:
            return False
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        return bool(all_reduce(flag, self.dist, "max").item())

    def train_epoch(
        self,
        source: WindowSource,
        epoch: int,
        *,
        seed: int,
        skip: int = 0,
        progress: bool = False,
        check_stop: bool = True,
    ) -> int | None:
        """Run epoch ``epoch`` from step ``skip``; None when done, else the step it stopped at."""
        self.model.train()
        gen = torch.Generator(device=self.device).manual_seed(epoch_seed(seed, epoch))
        n_steps = math.ceil(source.n / self.batch)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=n_steps,
                initial=skip,
                desc=f"epoch {epoch}/{self.cfg['epochs']}",
                unit="batch",
                leave=False,
            )
        step = skip
        term = self.jacobian
        order = term.order(seed, epoch) if term is not None else None
        try:
            for batch in source.train_batches(self.batch, gen, self.dist, skip):
                rows = None if term is None else term.rows(order, step, n_steps, self.dist)
                self.step(batch, rows)
                step += 1
                if bar is not None:
                    bar.update(1)
                local = stop_requested(tick=True)
                if check_stop and step < n_steps and self.stop_agreed(local, step):
                    return step
        finally:
            if bar is not None:
                bar.close()
        return None

    @torch.no_grad()
    def evaluate(self, source: WindowSource) -> tuple[float, float]:
        """Mean absolute and squared error on ``source`` in the loss's units (normalized states,
        or scaled corrections), fp32, all ranks."""
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for x, y in source.eval_batches(int(self.runtime["eval_batch_size"]), self.dist):
            pred, target = self.view(x, y)
            err = pred - target
            sums[0] += err.abs().sum()
            sums[1] += err.square().sum()
        n_values = source.n * self.n_features
        mae, mse = (all_reduce(sums, self.dist) / n_values).tolist()
        return mae, mse

    @property
    def graphs_used(self) -> bool:
        """Whether the steps run as a CUDA graph (asked for, possible, and captured)."""
        return self.graphs and not self._graph_failed

    def lr(self) -> float:
        """The learning rate of the next step."""
        return float(self.optimizer.param_groups[0]["lr"])

    def schedule(self, val_mae: float) -> None:
        """Step the learning-rate schedule after an epoch (``plateau`` watches ``val_mae``)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_mae)
        elif self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's, schedule's and loss scaler's states (keys of the checkpoint)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (from a checkpoint)."""
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # keep the lr's kind (tensor under graphs)
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=self.device) if self.graphs else lr
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
