"""A network that corrects a helix step: the residual propagator.

The reference model learns the whole next state from min-max-normalized absolute coordinates and
ends up a hundred times worse than physics. Here the physics is built in: a float64 helix step
(:func:`tracklstm.physics.helix_prior.helix_step`) from the window's last state to the next plane is
the prior, and the network only learns the correction ``truth - prior`` for x, y, px, py, pz (the
field's deviation from the nominal helix field, its radial part at the magnet's ends, the mean
energy loss). Its inputs are relative: the last state's position, direction and momentum, the step
of the prior, and the differences between consecutive states of the window.

Everything the model needs at run time is a registered buffer (the field and plane tables and
the training-split statistics set by :meth:`ResidualPropagator.fit_statistics`), so it travels
in the state dict and inside TorchScript, ONNX and torch.export files. Input and output are in
physical units, float32, like ``PhysicalModel``: ``(batch, 7, 6) -> (batch, 6)`` in cm, GeV/c.
The output z is the next plane's z from ``constants.PLANE_Z`` (as float32), not learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tracklstm.constants import N_FEATURES, PLANE_Z
from tracklstm.models.covariance_head import (
    CovarianceHead,
    calibrated_covariance,
    momentum_direction,
    register_calibration,
    scale_at,
)
from tracklstm.physics.helix_prior import field_tables, helix_step
from tracklstm.settings import defaults

#: The corrected features: x, y, px, py, pz (z is the plane's, not learned).
CORRECTED: tuple[int, ...] = (0, 1, 3, 4, 5)
#: The per-step features of the window: differences of x, y, z, px, py, pz between states.
N_STEP_FEATURES: int = N_FEATURES
#: Names of the per-window features (see ``ResidualPropagator.encode``).
STATIC_FEATURES: tuple[str, ...] = (
    "x",
    "y",
    "r",
    "z",
    "dz",
    "px",
    "py",
    "pz",
    "pt",
    "inv_pz",
    "tx",
    "ty",
    "prior_dx",
    "prior_dy",
    "prior_dpx",
    "prior_dpy",
)
BODIES: tuple[str, ...] = ("mlp", "lstm", "gru")
#: The settings of the residual kind (config ``model:``; the other keys are the reference's).
RESIDUAL_KEYS: tuple[str, ...] = (
    "body",
    "hidden_sizes",
    "head_sizes",
    "history",
    "field",
    "covariance",
    "dropout",
)
#: Hidden layers of the covariance head (``CovarianceHead``).
COVARIANCE_HIDDEN: tuple[int, ...] = (32, 32)
#: Their defaults: the config schema's ``model`` section, the one place they are written (the
#: ``residual`` variant of config.yaml sets the sizes that measured best, MLP 128-128).
DEFAULTS: dict[str, Any] = {k: v for k, v in defaults("model").items() if k in RESIDUAL_KEYS}


class MLPBody(nn.Module):
    """Fully connected layers on the last ``history`` steps (flattened) and the window features."""

    def __init__(
        self, n_static: int, history: int, hidden_sizes: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        self.history = history
        sizes = [n_static + history * N_STEP_FEATURES, *hidden_sizes]
        layers: list[nn.Module] = []
        for i in range(len(hidden_sizes)):
            layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.SiLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(sizes[-1], len(CORRECTED)))
        self.net = nn.Sequential(*layers)

    def forward(self, steps: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """``steps`` (B, S, 6), ``static`` (B, F) -> scaled correction (B, 5)."""
        if self.history == 0:
            return self.net(static)
        recent = steps[:, steps.shape[1] - self.history :].flatten(1)
        return self.net(torch.cat([recent, static], dim=1))


class RNNBody(nn.Module):
    """Stacked LSTM or GRU layers over the step differences; its last output and the window
    features go through a fully connected head."""

    def __init__(
        self,
        cell: str,
        n_static: int,
        history: int,
        hidden_sizes: Sequence[int],
        head_sizes: Sequence[int],
        dropout: float,
    ) -> None:
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.history = history
        sizes = [N_STEP_FEATURES, *hidden_sizes]
        self.layers = nn.ModuleList(
            rnn(sizes[i], sizes[i + 1], batch_first=True) for i in range(len(hidden_sizes))
        )
        self.dropout = nn.Dropout(dropout)
        self.head = MLPBody(sizes[-1] + n_static, 0, head_sizes, dropout)

    def forward(self, steps: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """``steps`` (B, S, 6), ``static`` (B, F) -> scaled correction (B, 5)."""
        x = steps[:, steps.shape[1] - self.history :]
        for layer in self.layers:
            x, _ = layer(x)
            x = self.dropout(x)
        return self.head(steps, torch.cat([x[:, -1], static], dim=1))


class ResidualPropagator(nn.Module):
    """Next-plane state = float64 helix step of the last state + a learned, scaled correction.

    Call :meth:`fit_statistics` once on the training split before training; train on
    :meth:`loss_pair` (or on :meth:`encode` + ``body`` for speed). ``forward`` takes
    ``(batch, window, 6)`` physical float32 states and returns ``(batch, 6)`` float32.
    """

    def __init__(
        self,
        body: str = DEFAULTS["body"],
        hidden_sizes: Sequence[int] = tuple(DEFAULTS["hidden_sizes"]),
        *,
        head_sizes: Sequence[int] = tuple(DEFAULTS["head_sizes"]),
        history: int = DEFAULTS["history"],
        window: int = 7,
        field: Sequence[Sequence[float]] = tuple(map(tuple, DEFAULTS["field"])),
        dropout: float = DEFAULTS["dropout"],
        covariance: bool = DEFAULTS["covariance"],
    ) -> None:
        super().__init__()
        if body not in BODIES:
            raise ValueError(f"residual.body: {body!r} is not one of {', '.join(BODIES)}")
        if not 0 <= history <= window - 1:
            raise ValueError(f"residual.history: expected 0..{window - 1}, got {history}")
        if body != "mlp" and history < 1:
            raise ValueError(f"residual.history: a {body} body needs at least 1 step")
        field_z, field_qbz = field_tables(field)
        self.register_buffer("field_z", field_z)
        self.register_buffer("field_qbz", field_qbz)
        self.register_buffer("plane_z", torch.tensor(PLANE_Z, dtype=torch.float64))
        n_static = len(STATIC_FEATURES)
        f64 = torch.float64
        self.register_buffer("step_mean", torch.zeros(N_STEP_FEATURES, dtype=f64))
        self.register_buffer("step_std", torch.ones(N_STEP_FEATURES, dtype=f64))
        self.register_buffer("static_mean", torch.zeros(n_static, dtype=f64))
        self.register_buffer("static_std", torch.ones(n_static, dtype=f64))
        self.register_buffer("corr_mean", torch.zeros(len(CORRECTED), dtype=f64))
        self.register_buffer("corr_std", torch.ones(len(CORRECTED), dtype=f64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("corrected", torch.tensor(CORRECTED, dtype=torch.long))
        self.window = window
        self.body: nn.Module
        if body == "mlp":
            self.body = MLPBody(n_static, history, hidden_sizes, dropout)
        else:
            self.body = RNNBody(body, n_static, history, hidden_sizes, head_sizes, dropout)
        # The covariance head (trained after the body, on its errors: train.covariance), and
        # the buffers of its calibration
        self.has_covariance = bool(covariance)
        if self.has_covariance:
            self.cov_head = CovarianceHead(n_static, COVARIANCE_HIDDEN)
            register_calibration(self)

    def prior(self, states: torch.Tensor) -> torch.Tensor:
        """Float64 helix step from the window's last state to the next plane: (B, 6).

        The next plane is the one after the plane nearest the last state's z (the last plane
        is its own next: a zero step). Its z is the plane table's value, exactly.
        """
        last = states[:, -1].to(torch.float64)
        gap = torch.abs(last[:, 2].unsqueeze(1) - self.plane_z.unsqueeze(0))
        nearest = torch.argmin(gap, dim=1)
        following = torch.clamp(nearest + 1, max=self.plane_z.shape[0] - 1)
        return helix_step(last, self.plane_z[following], self.field_z, self.field_qbz)

    def _raw_features(
        self, states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unscaled float64 step differences (B, S, 6), window features (B, F), prior (B, 6)."""
        s = states.to(torch.float64)
        prior = self.prior(states)
        last = s[:, -1]
        x, y, z = last[:, 0], last[:, 1], last[:, 2]
        px, py, pz = last[:, 3], last[:, 4], last[:, 5]
        inv_pz = 1.0 / pz
        static = torch.stack(
            [
                x,
                y,
                torch.sqrt(x * x + y * y),
                z,
                prior[:, 2] - z,
                px,
                py,
                pz,
                torch.sqrt(px * px + py * py),
                inv_pz,
                px * inv_pz,
                py * inv_pz,
                prior[:, 0] - x,
                prior[:, 1] - y,
                prior[:, 3] - px,
                prior[:, 4] - py,
            ],
            dim=1,
        )
        steps = s[:, 1:] - s[:, :-1]
        return steps, static, prior

    def encode(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scaled float32 network inputs (steps (B, S, 6), static (B, F)) and the float64 prior.

        Training can encode the split once and then train ``body`` on the encoded tensors: the
        encoding has no learned part.
        """
        steps, static, prior = self._raw_features(states)
        steps = (steps - self.step_mean) / self.step_std
        static = (static - self.static_mean) / self.static_std
        return steps.to(torch.float32), static.to(torch.float32), prior

    def scaled_target(self, targets: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """The training target: (truth - prior - mean) / std for x, y, px, py, pz, float32."""
        diff = targets.to(torch.float64)[:, self.corrected] - prior[:, self.corrected]
        return ((diff - self.corr_mean) / self.corr_std).to(torch.float32)

    def _state(
        self, steps: torch.Tensor, static: torch.Tensor, prior: torch.Tensor
    ) -> torch.Tensor:
        """The prior plus the body's correction: the next state (B, 6), float32."""
        corr = self.body(steps, static).to(torch.float64) * self.corr_std + self.corr_mean
        out = prior[:, :2] + corr[:, :2]
        mom = prior[:, 3:] + corr[:, 2:]
        return torch.cat([out, prior[:, 2:3], mom], dim=1).to(torch.float32)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """``states``: (batch, window, 6) in cm, GeV/c -> (batch, 6) at the next plane."""
        steps, static, prior = self.encode(states)
        return self._state(steps, static, prior)

    def forward_with_covariance(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``states`` (batch, window, 6) -> (the state at the next plane (batch, 6) float32, as
        ``forward``; the covariance of its x, y, px, py, pz (batch, 5, 5) float64, cm and GeV/c:
        the scattering and energy-loss noise on the way plus the model's own error)."""
        steps, static, prior = self.encode(states)
        return self._state(steps, static, prior), self._covariance(states, static)

    def _covariance(self, states: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """The calibrated covariance (B, 5, 5) float64 (``covariance_head.calibrated_covariance``)
        of the head's factor in cm and GeV/c at the last state's |p| and direction."""
        factor, u, size = self._head_factor(states, static)
        return self.calibrated(factor, u, size)

    def calibrated(self, factor: torch.Tensor, u: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """The calibrated covariance (B, 5, 5) of the head's ``factor`` L (B, 5, 5) in cm and
        GeV/c at momentum direction ``u`` (B, 5) and |p| ``size`` (B,), with this model's
        calibration's buffers."""
        return calibrated_covariance(
            factor,
            u,
            size,
            self.cov_scale_momentum,
            self.cov_scale,
            self.cov_transform,
            self.cov_loss_variance,
        )

    def _head_factor(
        self, states: torch.Tensor, static: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The head's factor L (B, 5, 5) in cm and GeV/c (its rows times ``corr_std``), the
        momentum's direction u (B, 5) and |p| (B,) of the last state."""
        u, size = momentum_direction(states)
        return self.cov_head(static) * self.corr_std.unsqueeze(1), u, size

    @torch.no_grad()
    def calibration_parts(
        self, states: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What ``train.covariance`` calibrates the head with, float64 in cm and GeV/c: the error
        of the predicted x, y, px, py, pz (B, 5) (from the float64 prediction, before ``forward``
        rounds it to float32), the head's factor L (B, 5, 5), u (B, 5) and |p| (B,)."""
        steps, static, prior = self.encode(states)
        corr = self.body(steps, static).to(torch.float64) * self.corr_std + self.corr_mean
        error = targets.to(torch.float64)[:, self.corrected] - prior[:, self.corrected] - corr
        return error, *self._head_factor(states, static)

    def covariance_scale(self, momentum: torch.Tensor) -> torch.Tensor:
        """The calibrated scale of the covariance's spread (B, 5) at |p| ``momentum`` (B,)."""
        return scale_at(self.cov_scale_momentum, self.cov_scale, momentum)

    def head_error(
        self, states: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The body's error in the scaled correction (B, 5) float64, held fixed (no gradient),
        and the head's Cholesky factor L (B, 5, 5) in the same units: what the head is fit on
        (``covariance_nll``)."""
        steps, static, prior = self.encode(states)
        with torch.no_grad():
            error = self.scaled_target(targets, prior) - self.body(steps, static)
        return error.to(torch.float64), self.cov_head(static)

    def covariance_nll(
        self,
        states: torch.Tensor,
        targets: torch.Tensor,
        mean: bool = True,
        dof: float | None = None,
    ) -> torch.Tensor:
        """Mean negative log-likelihood (constants dropped) of the scaled correction's error
        under the head's L L^T (``mean=False``: each window's): Gaussian, or with ``dof`` a
        Student t of that many degrees of freedom and scale matrix L L^T, whose heavy tails
        leave the rare large errors little pull on L. The body's prediction is held fixed (no
        gradient)."""
        error, factor = self.head_error(states, targets)
        white = torch.linalg.solve_triangular(factor, error.unsqueeze(2), upper=False).squeeze(2)
        log_det = torch.log(torch.diagonal(factor, dim1=1, dim2=2)).sum(1)
        chi2 = (white * white).sum(1)
        if dof is None:
            nll = 0.5 * chi2 + log_det
        else:
            nll = 0.5 * (dof + error.shape[1]) * torch.log1p(chi2 / dof) + log_det
        return nll.mean() if mean else nll

    def loss_pair(
        self, states: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted, target) scaled corrections (B, 5) for the training loss."""
        if not bool(self.fitted):
            raise RuntimeError("ResidualPropagator: call fit_statistics on the training split")
        steps, static, prior = self.encode(states)
        return self.body(steps, static), self.scaled_target(targets, prior)

    @torch.no_grad()
    def fit_statistics(
        self, states: torch.Tensor, targets: torch.Tensor, chunk: int = 65536
    ) -> None:
        """Set the scaling buffers from the training split (physical float32 tensors).

        Means and standard deviations of the network inputs and of the correction
        ``truth - prior``, in float64, over all windows (in chunks: bounded memory). A
        feature with no spread gets std 1.
        """
        expected = (states.shape[0], N_FEATURES)
        if states.ndim != 3 or states.shape[2] != N_FEATURES or targets.shape != expected:
            raise ValueError(
                f"fit_statistics: expected (n, window, 6) and (n, 6), got "
                f"{tuple(states.shape)} and {tuple(targets.shape)}"
            )
        if states.shape[1] != self.window:
            raise ValueError(f"fit_statistics: windows of {states.shape[1]}, not {self.window}")
        # Chunk by chunk: count, mean and sum of squared deviations, merged (Chan et al.), so
        # that a feature far from 0 with a small spread (z: ~250 +- 45 cm) keeps its precision.
        stats: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
        for start in range(0, states.shape[0], chunk):
            steps, static, prior = self._raw_features(states[start : start + chunk])
            diff = targets[start : start + chunk].to(torch.float64)[:, self.corrected]
            diff = diff - prior[:, self.corrected]
            for key, value in (
                ("step", steps.reshape(-1, N_STEP_FEATURES)),
                ("static", static),
                ("corr", diff),
            ):
                n_b, mean_b = value.shape[0], value.mean(0)
                m2_b = ((value - mean_b) ** 2).sum(0)
                if key not in stats:
                    stats[key] = (n_b, mean_b, m2_b)
                    continue
                n_a, mean_a, m2_a = stats[key]
                n_ab = n_a + n_b
                delta = mean_b - mean_a
                stats[key] = (
                    n_ab,
                    mean_a + delta * (n_b / n_ab),
                    m2_a + m2_b + delta * delta * (n_a * n_b / n_ab),
                )
        for key, (n, mean, m2) in stats.items():
            std = torch.sqrt(m2 / n)
            std = torch.where(std > 1e-12 * (1.0 + mean.abs()), std, torch.ones_like(std))
            getattr(self, f"{key}_mean").copy_(mean)
            getattr(self, f"{key}_std").copy_(std)
        self.fitted.fill_(True)


def _int_list(key: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
    if (
        isinstance(value, int | str)
        or not isinstance(value, Sequence)
        or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in value)
        or (not allow_empty and not value)
    ):
        raise ValueError(f"residual.{key}: expected a list of integers >= 1, got {value!r}")
    return tuple(value)


def build_residual(settings: dict[str, Any], window: int = 7) -> ResidualPropagator:
    """The residual propagator described by ``settings`` (missing keys: ``DEFAULTS``), for
    windows of ``window`` states (it sees the last ``history`` differences between them).

    Raises ``ValueError`` naming the key (``residual.<key>``) for an unknown key or a bad value.
    """
    unknown = sorted(set(settings) - set(RESIDUAL_KEYS))
    if unknown:
        raise ValueError(
            f"residual.{unknown[0]}: not a residual setting (known: {', '.join(RESIDUAL_KEYS)})"
        )
    s = {**DEFAULTS, **settings}
    if s["body"] not in BODIES:
        raise ValueError(f"residual.body: {s['body']!r} is not one of {', '.join(BODIES)}")
    hidden = _int_list("hidden_sizes", s["hidden_sizes"], allow_empty=s["body"] == "mlp")
    head = _int_list("head_sizes", s["head_sizes"], allow_empty=True)
    history = s["history"]
    if isinstance(history, bool) or not isinstance(history, int) or not 0 <= history <= 6:
        raise ValueError(f"residual.history: expected an integer in 0..6, got {history!r}")
    if history > window - 1:
        raise ValueError(
            f"residual.history: {history} differences need windows of {history + 1} states or "
            f"more, not {window} (windows.length)"
        )
    if s["body"] != "mlp" and history < 1:
        raise ValueError(f"residual.history: a {s['body']} body needs at least 1, got {history}")
    dropout = s["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"residual.dropout: expected a number in [0, 1), got {dropout!r}")
    try:
        field = [(float(z), float(b)) for z, b in s["field"]]
        field_tables(field)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"residual.field: expected a list of [z_from, qbz] with increasing z_from, "
            f"got {s['field']!r} ({err})"
        ) from None
    return ResidualPropagator(
        s["body"],
        hidden,
        head_sizes=head,
        history=history,
        window=window,
        field=field,
        dropout=float(dropout),
        covariance=bool(s["covariance"]),
    )
