"""Train many athletes' small networks together, one personal set of weights each.

Training a 3-layer MLP or a small LSTM for one athlete is dominated by Python and
kernel-launch overhead, not arithmetic: the tensors are a few hundred rows. So every
network here has a leading *athlete* dimension ``A``: weights ``[A, in, out]`` run as
one ``torch.bmm``, the LSTM runs as one hand-written kernel over ``[A, ...]`` weights
(`LSTMSequence`), and a single optimizer step updates every athlete at once. The loss
is the **sum over athletes of each athlete's own masked mean loss**, and Adam/AdamW
are element-wise, so each athlete's weights follow exactly the trajectory they would
follow if trained alone (up to float rounding) - batching changes the cost, not the
model (`fit_single` is that one-athlete reference; tests compare the two).

A rider has ~50-120 training rows and, for injuries, one to three events: too little
for a network on its own. Each trial therefore first fits a **population network**
on all athletes of the batch (one per architecture, cached across trials), copies it
to every athlete and **fine-tunes it per athlete** with an L2 pull towards the
population weights (``prior_strength``): a personal model that leans on the
population where the athlete's data are thin. The starting weights are a candidate
too, so "no personalisation" wins when the athlete's validation rows say so.

Around that core:

* masks let athletes with different row counts share one padded tensor;
* per-athlete early stopping keeps each athlete's best-validation snapshot and stops
  updating it once that athlete ran out of patience, as a one-athlete loop would;
  stopped athletes leave the batch (it is rebuilt smaller once they are a quarter of
  it), so they cost no more epochs;
* `tune_batched` runs Optuna where one trial = one hyper-parameter setting applied to
  the whole batch (objective: mean validation loss, pruned per epoch chunk); every
  athlete's validation loss is recorded in every trial and, with
  ``tuning.net_pick = "athlete"``, each athlete keeps its own best trial (default
  ``"batch"``: the best mean - far less noisy with 10-20 validation rows per rider);
* ``unstack(i)`` turns athlete ``i`` into a plain `torch.nn` module (the thing that is
  exported to ONNX / Core ML); tests check batched and unstacked predictions agree;
* `replay_naive` replays a batched study's trials one athlete at a time, and
  `tune_single` is the plain per-athlete loop (its own study, every trial a network
  fitted alone from scratch): the two naive references of the benchmarks.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import optuna
import torch
from torch import nn
from torch.nn import functional as F

from veloready_pipeline.config import Settings
from veloready_pipeline.features_nets import NetDataset
from veloready_pipeline.tuning import derive_seed, n_trials_for, new_study, suggest

LossKind = Literal["mse", "bce"]
STD_FLOOR = 1e-6


# --------------------------------------------------------------------------- results


@dataclass
class FamilyResult:
    """One athlete's network of one family: the model, how it was chosen, how it scores.

    ``status`` is ``trained`` when a model exists (it may still fail its gate) and
    ``skipped`` when the athlete had too little labelled data (``reason`` says why).
    Metrics are computed on the untouched test part; baselines on the same rows.
    """

    athlete_id: str
    family: str
    status: Literal["trained", "skipped", "failed"]
    reason: str = ""
    model: nn.Module | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    feature_names: list[str] = field(default_factory=list)
    test_dates: list[str] = field(default_factory=list)
    test_y: np.ndarray | None = None
    test_pred: np.ndarray | None = None
    test_baseline: np.ndarray | None = None
    test_X: np.ndarray | None = None
    data_window: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ normalisation


def normalisation_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over every axis but the last, NaN-safe, std floored at 1.

    A constant column (std ~ 0, e.g. a sensor the athlete does not have) gets std 1 so
    it normalises to 0 instead of blowing up.
    """
    flat = np.asarray(values, dtype=np.float64).reshape(-1, values.shape[-1])
    with np.errstate(all="ignore"):
        mean = np.nanmean(flat, axis=0) if len(flat) else np.zeros(flat.shape[1])
        std = np.nanstd(flat, axis=0) if len(flat) else np.ones(flat.shape[1])
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > STD_FLOOR), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


# ------------------------------------------------------------------ batched modules


def anchored_features(x: torch.Tensor, anchor: int | None, n_ratio: int) -> torch.Tensor:
    """The first ``n_ratio`` inputs as shares of the anchor input (any leading dims).

    Zone nets see best powers relative to the last tested FTP, so one network shape
    fits riders of 150 W and of 400 W. ``anchor=None`` leaves the inputs as they are.
    """
    if anchor is None or n_ratio == 0:
        return x
    a = x[..., anchor : anchor + 1]
    return torch.cat([x[..., :n_ratio] / a, x[..., n_ratio:]], dim=-1)


LoadAnchor = tuple[int, int, torch.Tensor] | None  # (change index, level index, gain)


def anchor_value(x: torch.Tensor, anchor: int, load: LoadAnchor = None) -> torch.Tensor:
    """The watts a zone output is relative to, ``[..., 1]``.

    Without ``load``: the anchor input (the last tested FTP). With ``load`` =
    (change index, level index, gain): the training-load response anchor
    ``last test x (1 + gain x change / (level - change))``, i.e. the last test scaled
    by the relative change since that test of the smoothed CTL (Banister: performance
    follows fitness). ``gain`` broadcasts (``[1]`` plain, ``[A, 1, 1]`` batched).
    """
    a = x[..., anchor : anchor + 1]
    if load is None:
        return a
    ci, li, gain = load
    change = x[..., ci : ci + 1]
    at_test = (x[..., li : li + 1] - change).clamp(min=1.0)
    return a * (1.0 + gain * change / at_test)


def anchored_target(x: torch.Tensor, y: torch.Tensor, anchor: int | None,
                    shares: torch.Tensor, load: LoadAnchor = None) -> torch.Tensor:
    """Outputs as relative change from ``anchor x share`` (identity without an anchor)."""
    if anchor is None:
        return y
    return y / anchor_value(x, anchor, load) - shares


def anchored_output(x: torch.Tensor, r: torch.Tensor, anchor: int | None,
                    shares: torch.Tensor, load: LoadAnchor = None) -> torch.Tensor:
    """Inverse of `anchored_target`: watts from the predicted relative change."""
    if anchor is None:
        return r
    return anchor_value(x, anchor, load) * (shares + r)


class BatchedModule(nn.Module):
    """Common surface of the batched networks (athlete dimension first)."""

    n_athletes: int

    def forward_normalized(self, xn: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def prepare(self, xn: torch.Tensor) -> torch.Tensor:
        """Normalised inputs in the layout `forward_prepared` wants (done once per fit)."""
        return xn

    def forward_prepared(self, xp: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(xp)

    def _stat(self, name: str, like: torch.Tensor) -> torch.Tensor:
        stat = getattr(self, name)
        return stat.view((self.n_athletes,) + (1,) * (like.dim() - 2) + (stat.shape[-1],))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def normalize_x(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        return (z - self._stat("x_mean", z)) / self._stat("x_std", z)

    def normalize_y(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def unstack(self, i: int) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def select(self, idx: torch.Tensor) -> BatchedModule:
        """A new batched module of athletes ``idx`` only (copied weights and statistics)."""
        memo: dict[int, Any] = {}
        if isinstance(getattr(self, "workspace", None), LSTMWorkspace):
            memo[id(self.workspace)] = LSTMWorkspace()  # buffers are per shape: start afresh
        sub = copy.deepcopy(self, memo)
        for module in sub.modules():
            for name, p in module._parameters.items():
                if p is not None:
                    module._parameters[name] = nn.Parameter(p.detach()[idx].clone(),
                                                            requires_grad=p.requires_grad)
            for name, b in module._buffers.items():
                if b is not None:
                    module._buffers[name] = b[idx].clone()
        sub.n_athletes = len(idx)
        return sub


class BatchedMLP(BatchedModule):
    """A stack of MLPs (ReLU hidden layers), one per athlete, run with ``torch.bmm``.

    Weights are kept as ``[A, in, out]`` (the transpose of `nn.Linear.weight`) so a
    layer is one ``baddbmm``. Inputs are raw features ``[A, N, in]``; ``forward``
    applies each athlete's stored transform and statistics, exactly like the plain
    module (see `anchored_features` / `anchored_output`), and returns ``[A, N, out]``.
    """

    def __init__(self, plain: Sequence[nn.Module]) -> None:
        super().__init__()
        self.n_athletes = len(plain)
        # Class and constructor arguments only: registering the module itself would
        # make its (unused) parameters part of the batched model.
        self.template_spec = (type(plain[0]), dict(plain[0].init_kwargs))
        self.anchor = plain[0].anchor_index
        self.n_ratio = plain[0].n_ratio
        self.load_index = getattr(plain[0], "load_index", None)
        linears = [[m for m in p.net if isinstance(m, nn.Linear)] for p in plain]
        n_layers = len(linears[0])
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([ls[k].weight.detach().T.contiguous() for ls in linears]))
            for k in range(n_layers)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([ls[k].bias.detach()[None, :] for ls in linears]))
            for k in range(n_layers)
        )
        self.buffer_names = ["x_mean", "x_std", "y_mean", "y_std", "shares"]
        if self.load_index is not None:
            self.buffer_names.append("gain")
        for name in self.buffer_names:
            self.register_buffer(name, torch.stack([getattr(p, name).detach() for p in plain]))

    def _load(self, like: torch.Tensor) -> LoadAnchor:
        if self.load_index is None:
            return None
        return (*self.load_index, self._stat("gain", like))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return anchored_features(x, self.anchor, self.n_ratio)

    def normalize_y(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = anchored_target(x, y, self.anchor, self._stat("shares", y), self._load(y))
        return (t - self._stat("y_mean", t)) / self._stat("y_std", t)

    def forward_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        h = xn
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if k < last:
                h = torch.relu(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_normalized(self.normalize_x(x))
        r = out * self._stat("y_std", out) + self._stat("y_mean", out)
        return anchored_output(x, r, self.anchor, self._stat("shares", r), self._load(r))

    def unstack(self, i: int) -> nn.Module:
        """Athlete ``i`` as a plain module of the template's class (eval mode)."""
        plain = _clone_template(self.template_spec)
        linears = [m for m in plain.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[i].T)
                lin.bias.copy_(b[i, 0])
            for name in self.buffer_names:
                getattr(plain, name).copy_(getattr(self, name)[i])
        return plain.eval()


class BatchedLSTM(BatchedModule):
    """A stack of one-layer LSTMs + linear heads, one per athlete (`LSTMSequence`),
    plus each module's linear skip term on the last day's inputs (`InjuryLSTM`).

    Matches `torch.nn.LSTM` exactly (gate order i, f, g, o; both biases). Raw inputs
    ``[A, N, T, F]``; ``forward`` returns risk 0-100 ``[A, N]``, ``forward_normalized``
    the logits.
    """

    def __init__(self, plain: Sequence[nn.Module]) -> None:
        super().__init__()
        self.n_athletes = len(plain)
        self.template_spec = (type(plain[0]), dict(plain[0].init_kwargs))
        self.hidden = plain[0].lstm.hidden_size
        self.w_ih = nn.Parameter(torch.stack([p.lstm.weight_ih_l0.detach() for p in plain]))
        self.w_hh = nn.Parameter(torch.stack([p.lstm.weight_hh_l0.detach() for p in plain]))
        # Both PyTorch biases are kept (summed in the kernel): as two parameters each gets
        # its own Adam step, exactly as in `nn.LSTM`, so batched and naive fits agree.
        self.b_ih = nn.Parameter(torch.stack([p.lstm.bias_ih_l0.detach()[:, None] for p in plain]))
        self.b_hh = nn.Parameter(torch.stack([p.lstm.bias_hh_l0.detach()[:, None] for p in plain]))
        self.w_head = nn.Parameter(torch.stack([p.head.weight.detach() for p in plain]))
        self.b_head = nn.Parameter(torch.stack([p.head.bias.detach()[:, None] for p in plain]))
        # Injury: a linear term on the last day's inputs beside the LSTM (`InjuryLSTM`).
        self.w_skip = nn.Parameter(torch.stack([p.skip.weight.detach() for p in plain]))
        for name in ("x_mean", "x_std"):
            self.register_buffer(name, torch.stack([getattr(p, name).detach() for p in plain]))
        self.workspace = LSTMWorkspace()

    def prepare(self, xn: torch.Tensor) -> torch.Tensor:
        """``[A, N, T, F]`` -> the kernel's time-major layout ``[T, A, F, N]`` (once per fit)."""
        return xn.permute(2, 0, 3, 1).contiguous()

    def forward_prepared(self, xp: torch.Tensor) -> torch.Tensor:
        h = LSTMSequence.apply(xp, self.w_ih, self.w_hh, self.b_ih + self.b_hh, self.workspace)
        out = torch.baddbmm(self.b_head, self.w_head, h)
        return torch.baddbmm(out, self.w_skip, xp[-1]).squeeze(1)  # + skip(last day)

    def forward_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        return self.forward_prepared(self.prepare(xn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Risk 0-100 per sequence, ``[A, N]`` (same scale as the plain module)."""
        return torch.sigmoid(self.forward_normalized(self.normalize_x(x))) * 100.0

    def unstack(self, i: int) -> nn.Module:
        """Athlete ``i`` as a plain module with an `nn.LSTM` (eval mode)."""
        plain = _clone_template(self.template_spec)
        with torch.no_grad():
            plain.lstm.weight_ih_l0.copy_(self.w_ih[i])
            plain.lstm.weight_hh_l0.copy_(self.w_hh[i])
            plain.lstm.bias_ih_l0.copy_(self.b_ih[i, :, 0])
            plain.lstm.bias_hh_l0.copy_(self.b_hh[i, :, 0])
            plain.head.weight.copy_(self.w_head[i])
            plain.head.bias.copy_(self.b_head[i, :, 0])
            plain.skip.weight.copy_(self.w_skip[i])
            for name in ("x_mean", "x_std"):
                getattr(plain, name).copy_(getattr(self, name)[i])
        return plain.eval()


class LSTMWorkspace:
    """Reusable LSTM buffers, one set per shape.

    Fresh multi-MB tensors every epoch cost page faults that were ~half the run time.
    A buffer set is reused by the next forward of the same shape; `check` makes a
    backward through an *older* forward fail loudly instead of reading overwritten
    activations.
    """

    def __init__(self) -> None:
        self.store: dict[tuple[Any, ...], list[Any]] = {}

    @staticmethod
    def allocate(key: tuple[Any, ...]) -> tuple[torch.Tensor, ...]:
        """Activated gates, cell states, tanh(cell) and hidden states for one shape."""
        t_len, a, g4, n, dtype = key
        hd = g4 // 4
        return (
            torch.empty(t_len, a, g4, n, dtype=dtype),
            torch.empty(t_len + 1, a, hd, n, dtype=dtype),
            torch.empty(t_len, a, hd, n, dtype=dtype),
            torch.empty(t_len + 1, a, hd, n, dtype=dtype),
        )

    def take(self, key: tuple[Any, ...]) -> tuple[tuple[torch.Tensor, ...], int]:
        """The buffer set for ``key`` and its new use count."""
        entry = self.store.get(key)
        if entry is None:
            entry = self.store[key] = [self.allocate(key), 0]
        entry[1] += 1
        return entry[0], entry[1]

    def check(self, bufs: tuple[torch.Tensor, ...], use: int) -> None:
        """Raise if ``bufs`` were handed out again since use ``use``."""
        for bufs_, use_ in self.store.values():
            if bufs_ is bufs and use_ != use:
                raise RuntimeError(
                    "LSTM workspace was reused by a later forward before this backward"
                )


class LSTMSequence(torch.autograd.Function):
    """A whole one-layer LSTM over stacked athletes, with a hand-written BPTT.

    Autograd over a per-step Python loop spent most of its time on bookkeeping copies
    (``chunk``/``cat``/``select`` backward) and on allocating fresh multi-MB buffers
    every epoch. Here the forward writes into a reusable `LSTMWorkspace`, the backward
    walks time in reverse writing gate gradients in place, and ``tanh`` is computed
    as ``2 sigmoid(2z) - 1`` (about 3x cheaper on this CPU build). Checked against
    autograd (``gradcheck``) and against `nn.LSTM` in the tests.

    Layout is time-major and feature-major so every step is one contiguous block:
    ``x [T, A, F, N]``, weights in `nn.LSTM`'s own layout ``w_ih [A, 4H, F]``,
    ``w_hh [A, 4H, H]`` (gate order i, f, g, o), one bias ``b [A, 4H, 1]``. Output:
    the last hidden state ``[A, H, N]``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                b: torch.Tensor, ws: LSTMWorkspace | None) -> torch.Tensor:
        t_len, a, _, n = x.shape
        g4 = w_ih.shape[1]
        hd = g4 // 4
        need_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if ws is not None:
            bufs, use = ws.take((t_len, a, g4, n, x.dtype))
        else:
            bufs, use = LSTMWorkspace.allocate((t_len, a, g4, n, x.dtype)), 0
        acts, cs, tcs, hs = bufs
        cs[0].zero_()
        hs[0].zero_()
        for t in range(t_len):
            g = acts[t]
            torch.bmm(w_ih, x[t], out=g)
            g.add_(b)
            if t > 0:
                g.baddbmm_(w_hh, hs[t])
            gg = g[:, 2 * hd : 3 * hd]
            gg.mul_(2.0)
            g.sigmoid_()
            gg.mul_(2.0).sub_(1.0)  # tanh(z) = 2 sigmoid(2z) - 1: sigmoid is ~3x cheaper here
            i, f, o = g[:, :hd], g[:, hd : 2 * hd], g[:, 3 * hd :]
            c = cs[t + 1]
            torch.mul(f, cs[t], out=c)
            c.addcmul_(i, gg)
            tc = tcs[t]
            torch.mul(c, 2.0, out=tc)
            tc.sigmoid_().mul_(2.0).sub_(1.0)
            torch.mul(o, tc, out=hs[t + 1])
        if need_grad:
            ctx.bufs, ctx.ws, ctx.use = bufs, ws, use
            ctx.save_for_backward(x, w_ih, w_hh)
        return hs[t_len].clone()

    @staticmethod
    def backward(ctx: Any, dh_last: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w_ih, w_hh = ctx.saved_tensors
        if ctx.ws is not None:
            ctx.ws.check(ctx.bufs, ctx.use)
        acts, cs, tcs, hs = ctx.bufs
        t_len, a, g4, n = acts.shape
        hd = g4 // 4
        d = torch.empty(a, g4, n, dtype=acts.dtype)
        dh = dh_last.contiguous().clone()
        dc = torch.zeros_like(dh)
        tmp = torch.empty_like(dh)
        dw_ih = torch.zeros_like(w_ih)
        dw_hh = torch.zeros_like(w_hh)
        db = torch.zeros(a, g4, 1, dtype=acts.dtype)
        w_hh_t = w_hh.transpose(1, 2)
        for t in range(t_len - 1, -1, -1):
            g = acts[t]
            i, f, gg, o = g[:, :hd], g[:, hd : 2 * hd], g[:, 2 * hd : 3 * hd], g[:, 3 * hd :]
            tc = tcs[t]
            di, df, dg, do = d[:, :hd], d[:, hd : 2 * hd], d[:, 2 * hd : 3 * hd], d[:, 3 * hd :]
            # dc += dh * o * (1 - tc^2)
            torch.mul(tc, tc, out=tmp)
            tmp.neg_().add_(1.0).mul_(o).mul_(dh)
            dc.add_(tmp)
            # do = dh * tc * o * (1 - o)
            torch.mul(o, o, out=tmp)
            torch.sub(o, tmp, out=do)
            do.mul_(dh).mul_(tc)
            # di = dc * gg * i * (1 - i)
            torch.mul(i, i, out=tmp)
            torch.sub(i, tmp, out=di)
            di.mul_(dc).mul_(gg)
            # df = dc * c_prev * f * (1 - f)
            torch.mul(f, f, out=tmp)
            torch.sub(f, tmp, out=df)
            df.mul_(dc).mul_(cs[t])
            # dg = dc * i * (1 - gg^2)
            torch.mul(gg, gg, out=tmp)
            tmp.neg_().add_(1.0)
            torch.mul(tmp, i, out=dg)
            dg.mul_(dc)
            dc.mul_(f)
            dw_ih.baddbmm_(d, x[t].transpose(1, 2))
            db.add_(d.sum(dim=2, keepdim=True))
            if t > 0:
                dw_hh.baddbmm_(d, hs[t].transpose(1, 2))
                torch.bmm(w_hh_t, d, out=dh)
        return None, dw_ih, dw_hh, db, None


def _clone_template(spec: tuple[type[nn.Module], dict[str, Any]]) -> nn.Module:
    cls, kwargs = spec
    return cls(**kwargs)


# ------------------------------------------------------------------ padded data


@dataclass
class Padded:
    """Athletes' rows padded to a common length, with a mask of the real rows."""

    x: torch.Tensor  # [A, N, ...] raw features (NaN-free)
    y: torch.Tensor  # [A, N, k] or [A, N]
    mask: torch.Tensor  # [A, N] float 0/1

    @property
    def counts(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


def pad_stack(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> Padded:
    """Pad every athlete's (X, y) to the longest; the mask marks the real rows.

    Padding repeats the athlete's last row rather than zeros, so transforms such as a
    division by the last-test FTP stay finite (NaN x 0 would still poison the loss).
    """
    n_max = max(1, max(len(x) for x in xs))
    a = len(xs)
    x = np.zeros((a, n_max, *xs[0].shape[1:]), dtype=np.float32)
    y = np.zeros((a, n_max, *ys[0].shape[1:]), dtype=np.float32)
    mask = np.zeros((a, n_max), dtype=np.float32)
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        n = len(xi)
        if n == 0:
            raise ValueError(f"athlete #{i} has no rows to train or validate on")
        x[i, :n] = xi
        y[i, :n] = yi
        x[i, n:] = xi[-1]
        y[i, n:] = yi[-1]
        mask[i, :n] = 1.0
    return Padded(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask))


def per_athlete_loss(
    out_n: torch.Tensor, target_n: torch.Tensor, mask: torch.Tensor, kind: LossKind
) -> torch.Tensor:
    """Each athlete's mean loss over its real rows, shape ``[A]``.

    ``out_n``/``target_n`` are in normalised units for ``mse`` (so FTP and the three
    anchors weigh equally) and logits / 0-1 labels for ``bce``.
    """
    if kind == "mse":
        row = ((out_n - target_n) ** 2).mean(dim=-1)
    else:
        row = F.binary_cross_entropy_with_logits(out_n, target_n, reduction="none")
    return (row * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


# ------------------------------------------------------------------ fitting


@dataclass
class FitConfig:
    """Optimisation settings shared by the batched and the naive path."""

    lr: float
    weight_decay: float
    max_epochs: int
    patience: int  # epochs without validation improvement before an athlete stops
    eval_every: int  # epochs per chunk (validation check and pruning report)
    loss: LossKind
    prior_strength: float = 0.0  # L2 pull towards the starting (population) weights


@dataclass
class FitOutcome:
    """Per-athlete result of one batched fit."""

    best_state: dict[str, torch.Tensor]  # batched parameter tensors at each best epoch
    best_val: np.ndarray  # [A]
    best_epoch: np.ndarray  # [A]; 0 = the starting weights were never beaten
    epochs_run: int
    pruned: bool


def _adamw(params: Any, cfg: FitConfig) -> torch.optim.AdamW:
    # The fused CPU kernel: one pass over every parameter tensor instead of a chain of
    # element-wise ops per tensor (~4x cheaper a step for these small stacked weights).
    # Same update rule; the batched and the naive path both use it.
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _target_normalized(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       kind: LossKind) -> torch.Tensor:
    return model.normalize_y(x, y) if kind == "mse" else y


def _prior_penalty(params: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
                   strength: float) -> torch.Tensor | float:
    # Sum over athletes of each athlete's squared distance from its starting weights:
    # element-wise, so every athlete's gradient is still its own.
    if strength <= 0:
        return 0.0
    return strength * sum(((p - start[k]) ** 2).sum() for k, p in params.items())


def fit_batched(
    model: BatchedModule,
    train: Padded,
    val: Padded,
    cfg: FitConfig,
    report: Callable[[int, float], bool] | None = None,
) -> FitOutcome:
    """Full-batch AdamW on every athlete at once with per-athlete early stopping.

    The starting weights are scored on validation first, so an athlete whose
    validation loss never improves keeps them (for a fine-tune from the population
    network that means "no personalisation helped"). ``cfg.prior_strength`` adds an
    L2 pull towards the starting weights.

    Athletes that ran out of patience are dropped from the computation once they are
    at least a quarter of the athletes still computed (`COMPACT_SHARE`): the rest go
    on in a smaller batch (weights, AdamW moments and rows copied over). Every athlete's
    update depends on its own weights and rows only, so this changes no athlete's fit;
    on realistic zone data half of all athlete-epochs were spent on stopped athletes.

    Args:
        report: called after each chunk of ``eval_every`` epochs with (chunk index,
            mean best validation loss over athletes); returning True stops the fit
            (an Optuna pruning decision). The best snapshots so far are kept.
    """
    a = model.n_athletes
    params = dict(model.named_parameters())
    start = {k: v.detach().clone() for k, v in params.items()}
    best_state = {k: v.clone() for k, v in start.items()}
    fit = _FitBatch.of(model, train, val, cfg, start)
    with torch.no_grad():
        v0 = fit.val_loss(cfg)
    best_val = torch.nan_to_num(v0, nan=math.inf)
    best_epoch = torch.zeros(a, dtype=torch.long)
    stale = torch.zeros(a, dtype=torch.long)
    active = torch.ones(a, dtype=torch.bool)
    epoch = 0
    pruned = False
    chunk = 0
    while epoch < cfg.max_epochs and bool(active.any()):
        fit.model.train()
        for _ in range(min(cfg.eval_every, cfg.max_epochs - epoch)):
            fit.step(cfg)
            epoch += 1
        with torch.no_grad():
            v = torch.full((a,), math.inf)
            v[fit.rows] = torch.nan_to_num(fit.val_loss(cfg), nan=math.inf)
            improved = active & (v < best_val)
            if bool(improved.any()):
                best_val = torch.where(improved, v, best_val)
                best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch), best_epoch)
                local = improved[fit.rows]
                for k, p in fit.params.items():
                    best_state[k][fit.rows[local]] = p.detach()[local]
            stale = torch.where(improved, torch.zeros_like(stale), stale + cfg.eval_every)
            active = active & (stale < cfg.patience)
        if report is not None:
            finite = best_val[torch.isfinite(best_val)]
            score = float(finite.mean()) if len(finite) else math.inf
            if report(chunk, score):
                pruned = True
                break
        chunk += 1
        n_active = int(active.sum())
        if 0 < n_active <= (1.0 - COMPACT_SHARE) * len(fit.rows):
            fit = fit.compact(active[fit.rows], train, val, cfg, start)
    return FitOutcome(best_state, best_val.numpy().copy(), best_epoch.numpy().copy(), epoch,
                      pruned)


COMPACT_SHARE = 0.25  # drop stopped athletes once they are this share of the batch


@dataclass
class _FitBatch:
    """The athletes `fit_batched` still computes: their module, rows and optimiser."""

    rows: torch.Tensor  # original athlete indices, [A'] long
    model: BatchedModule
    params: dict[str, torch.Tensor]
    start: dict[str, torch.Tensor]
    opt: torch.optim.Optimizer
    xtr: torch.Tensor
    ytr: torch.Tensor
    mtr: torch.Tensor
    xva: torch.Tensor
    yva: torch.Tensor
    mva: torch.Tensor

    @classmethod
    def of(cls, model: BatchedModule, train: Padded, val: Padded, cfg: FitConfig,
           start: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> _FitBatch:
        if rows is None:
            rows = torch.arange(model.n_athletes)
            tr, va = train, val
        else:
            tr = Padded(train.x[rows], train.y[rows], train.mask[rows])
            va = Padded(val.x[rows], val.y[rows], val.mask[rows])
        params = dict(model.named_parameters())
        sub_start = start if len(rows) == len(next(iter(start.values()))) else {
            k: v[rows] for k, v in start.items()}
        return cls(
            rows=rows, model=model, params=params, start=sub_start,
            opt=_adamw(params.values(), cfg),
            xtr=model.prepare(model.normalize_x(tr.x)),
            ytr=_target_normalized(model, tr.x, tr.y, cfg.loss), mtr=tr.mask,
            xva=model.prepare(model.normalize_x(va.x)),
            yva=_target_normalized(model, va.x, va.y, cfg.loss), mva=va.mask,
        )

    def step(self, cfg: FitConfig) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = per_athlete_loss(self.model.forward_prepared(self.xtr), self.ytr, self.mtr,
                                cfg.loss)
        (loss.sum() + _prior_penalty(self.params, self.start, cfg.prior_strength)).backward()
        self.opt.step()

    def val_loss(self, cfg: FitConfig) -> torch.Tensor:
        return per_athlete_loss(self.model.forward_prepared(self.xva), self.yva, self.mva,
                                cfg.loss)

    def compact(self, keep: torch.Tensor, train: Padded, val: Padded, cfg: FitConfig,
                start: dict[str, torch.Tensor]) -> _FitBatch:
        """The same fit on the athletes ``keep`` (a mask over `rows`) only."""
        local = torch.nonzero(keep).flatten()
        sub = self.model.select(local)
        out = _FitBatch.of(sub, train, val, cfg, start, rows=self.rows[local])
        n = len(self.rows)
        for name, p in self.params.items():
            state = self.opt.state.get(p)
            if not state:
                continue
            out.opt.state[out.params[name]] = {
                key: (v[local].clone() if torch.is_tensor(v) and v.dim() > 0
                      and v.shape[0] == n else (v.clone() if torch.is_tensor(v) else v))
                for key, v in state.items()}
        return out


def fit_single(
    module: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: FitConfig,
    max_epochs: int | None = None,
    report: Callable[[int, float], bool] | None = None,
    batch_rows: int = 0,
    seed: int = 0,
) -> tuple[nn.Module, float, int]:
    """The naive path: one athlete, one plain module, same optimiser and stopping rule.

    Returns the module restored to its best-validation weights, that loss and the
    best epoch. ``max_epochs`` caps the run (to replay a trial the batched study
    pruned after that many epochs); ``report`` is the pruning callback of
    `fit_batched` (chunk index, best validation loss so far). The benchmark and the
    equivalence tests use it. ``batch_rows`` > 0 makes each epoch a pass of shuffled
    mini-batches of that many rows (seeded by ``seed``) instead of one full-batch step.
    """
    x_tr = torch.as_tensor(x_train, dtype=torch.float32)
    x_va = torch.as_tensor(x_val, dtype=torch.float32)
    xtr, xva = module.normalize_x(x_tr), module.normalize_x(x_va)
    ytr = _target_normalized(module, x_tr, torch.as_tensor(y_train, dtype=torch.float32),
                             cfg.loss)
    yva = _target_normalized(module, x_va, torch.as_tensor(y_val, dtype=torch.float32),
                             cfg.loss)
    params = dict(module.named_parameters())
    start = {k: v.detach().clone() for k, v in params.items()}
    opt = _adamw(params.values(), cfg)

    def loss_of(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if cfg.loss == "mse":
            return ((out - y) ** 2).mean()
        return F.binary_cross_entropy_with_logits(out, y)

    with torch.no_grad():
        best_val = float(loss_of(module.forward_normalized(xva), yva))
    best = {k: t.detach().clone() for k, t in module.state_dict().items()}
    best_epoch = 0
    stale = 0
    epoch = 0
    chunk = 0
    cap = cfg.max_epochs if max_epochs is None else min(cfg.max_epochs, max_epochs)
    n_rows = len(xtr)
    gen = torch.Generator().manual_seed(seed)
    while epoch < cap and stale < cfg.patience:
        module.train()
        for _ in range(min(cfg.eval_every, cap - epoch)):
            if 0 < batch_rows < n_rows:
                parts = torch.randperm(n_rows, generator=gen).split(batch_rows)
            else:
                parts = (slice(None),)
            for idx in parts:
                opt.zero_grad(set_to_none=True)
                loss = loss_of(module.forward_normalized(xtr[idx]), ytr[idx])
                (loss + _prior_penalty(params, start, cfg.prior_strength)).backward()
                opt.step()
            epoch += 1
        with torch.no_grad():
            v = float(loss_of(module.forward_normalized(xva), yva))
        if v < best_val:
            best_val, best_epoch, stale = v, epoch, 0
            best = {k: t.detach().clone() for k, t in module.state_dict().items()}
        else:
            stale += cfg.eval_every
        if report is not None and math.isfinite(best_val) and report(chunk, best_val):
            break
        chunk += 1
    module.load_state_dict(best)
    return module.eval(), best_val, best_epoch


# ------------------------------------------------------------------ tuning


@dataclass
class NetFamily:
    """How a family builds its plain network and which loss it trains with."""

    name: str
    make_plain: Callable[[dict[str, Any], int, int], nn.Module]  # (params, n_in, n_out)
    batched_cls: type[BatchedModule]
    loss: LossKind
    n_out: int
    pooled_stats: bool = True  # normalise with the batch's pooled training statistics
    population_lr: float = 3e-3
    population_weight_decay: float = 1e-4


@dataclass
class TrainData:
    """One athlete's train/validation arrays (already split, NaN-free)."""

    athlete_id: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # x_mean/x_std/y_mean/y_std
    # Per-athlete buffer values of its personal module (zones: the load anchor's
    # ``gain``); the population module gets their mean.
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    # False: too few validation rows to pick a fine-tune on; the athlete keeps the
    # population network (`tune_batched`).
    personal: bool = True


@dataclass
class TunedAthlete:
    """The per-athlete pick over every trial of a batched study."""

    athlete_id: str
    model: nn.Module
    params: dict[str, Any]
    val_loss: float
    trial: int
    best_epoch: int
    val_by_trial: list[float]


@dataclass
class TrialRecord:
    """What one trial of a batched study ran (the benchmark replays it naively)."""

    number: int
    params: dict[str, Any]
    epochs_run: int
    pruned: bool
    objective: float


# Population networks are fitted with fixed, conservative settings per family
# (`NetFamily.population_lr` / ``population_weight_decay``): they only have to be a
# sensible prior, and fixing them lets one fit per architecture serve every trial
# (the tuned lr / prior strength act on the personal fine-tune).
POPULATION_ID = "__population__"


def fit_config(settings: Settings, family: str, params: dict[str, Any],
               loss: LossKind) -> FitConfig:
    """Optimiser settings for one trial's personal fine-tune."""
    nets = settings.tuning
    return FitConfig(
        lr=float(params.get("lr", 0.01)),
        weight_decay=float(params.get("weight_decay", 0.0)),
        max_epochs=int(getattr(nets, f"{family}_max_epochs")),
        patience=int(nets.net_patience),
        eval_every=int(nets.net_eval_every),
        loss=loss,
        prior_strength=float(params.get("prior_strength", 0.0)),
    )


def init_plain(family: NetFamily, params: dict[str, Any], n_in: int, seed: int,
               athlete_id: str, trial: int) -> nn.Module:
    """A freshly initialised plain network, seeded per (run seed, id, family, trial)."""
    torch.manual_seed(derive_seed(seed, athlete_id, family.name, str(trial)))
    return family.make_plain(params, n_in, family.n_out)


def attach_stats(family: NetFamily, athletes: Sequence[TrainData]) -> None:
    """Normalisation statistics from training rows only, stored on each `TrainData`.

    Pooled over every athlete of the batch when the family asks for it (both network
    families do: relative power, FTP change, load and HRV change mean the same thing
    for every rider, and the population network needs one scale); per athlete
    otherwise. The statistics become buffers of each exported module, so the phone
    applies the same scaling.
    """
    template = family.make_plain({}, athletes[0].x_train.shape[-1], family.n_out)

    def transformed(data: TrainData) -> tuple[np.ndarray, np.ndarray | None]:
        _set_stats(template, data.buffers)
        with torch.no_grad():
            x = torch.as_tensor(data.x_train, dtype=torch.float32)
            z = template.features(x).numpy()
            t = None
            if family.loss == "mse":
                y = torch.as_tensor(data.y_train, dtype=torch.float32)
                t = template.target(x, y).numpy()
        return z, t

    parts = [transformed(a) for a in athletes]
    if family.pooled_stats:
        z_all = np.concatenate([z.reshape(-1, z.shape[-1]) for z, _ in parts])
        pooled = dict(zip(("x_mean", "x_std"), normalisation_stats(z_all), strict=True))
        if family.loss == "mse":
            t_all = np.concatenate([t for _, t in parts if t is not None])
            pooled |= dict(zip(("y_mean", "y_std"), normalisation_stats(t_all), strict=True))
        for a in athletes:
            a.stats = dict(pooled)
        return
    for a, (z, t) in zip(athletes, parts, strict=True):
        a.stats = dict(zip(("x_mean", "x_std"), normalisation_stats(z), strict=True))
        if t is not None:
            a.stats |= dict(zip(("y_mean", "y_std"), normalisation_stats(t), strict=True))


def _set_stats(module: nn.Module, stats: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        for name, value in stats.items():
            getattr(module, name).copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)))


def _set_batched_buffers(model: BatchedModule, athletes: Sequence[TrainData]) -> None:
    """Each athlete's own `TrainData.buffers` into its slot of a batched module."""
    if not athletes or not athletes[0].buffers:
        return
    with torch.no_grad():
        for name in athletes[0].buffers:
            getattr(model, name).copy_(torch.stack([
                torch.as_tensor(np.asarray(a.buffers[name], dtype=np.float32))
                for a in athletes]))


def _mean_buffers(athletes: Sequence[TrainData]) -> dict[str, np.ndarray]:
    if not athletes or not athletes[0].buffers:
        return {}
    return {name: np.mean([np.asarray(a.buffers[name], dtype=np.float32) for a in athletes],
                          axis=0) for name in athletes[0].buffers}


def fit_population(family: NetFamily, athletes: Sequence[TrainData], params: dict[str, Any],
                   settings: Settings) -> tuple[nn.Module, float]:
    """One network on every athlete's training rows together (the personal prior).

    Early-stopped on all validation rows together. Needs pooled statistics (the
    athletes' ``stats`` must be identical), which `attach_stats` provides.
    """
    pooled = TrainData(
        POPULATION_ID,
        np.concatenate([a.x_train for a in athletes]),
        np.concatenate([a.y_train for a in athletes]),
        np.concatenate([a.x_val for a in athletes]),
        np.concatenate([a.y_val for a in athletes]),
        stats=athletes[0].stats,
    )
    module = init_plain(family, params, pooled.x_train.shape[-1], settings.seed,
                        POPULATION_ID, int(params.get("hidden", 0)))
    _set_stats(module, pooled.stats | _mean_buffers(athletes))
    cfg = fit_config(settings, family.name, {"lr": family.population_lr,
                                             "weight_decay": family.population_weight_decay},
                     family.loss)
    cfg.max_epochs = settings.tuning.population_max_epochs
    if settings.tuning.population_batch_rows > 0:
        # Mini-batches: many more optimiser steps per pass over the pooled rows.
        module, val, _ = fit_single(
            module, pooled.x_train, pooled.y_train, pooled.x_val, pooled.y_val, cfg,
            batch_rows=settings.tuning.population_batch_rows,
            seed=derive_seed(settings.seed, family.name, POPULATION_ID))
        return module, val
    model = family.batched_cls([module])
    outcome = fit_batched(model, pad_stack([pooled.x_train], [pooled.y_train]),
                          pad_stack([pooled.x_val], [pooled.y_val]), cfg)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(outcome.best_state[k])
    return model.unstack(0), float(outcome.best_val[0])


def _valid_params(params: Mapping[str, Any], space: Mapping[str, list[Any]]) -> dict[str, Any]:
    # Last week's parameters that still fit this week's space (a changed choice list or
    # range must not make the enqueued trial fail).
    out: dict[str, Any] = {}
    for name, values in space.items():
        if name not in params:
            continue
        v = params[name]
        is_range = len(values) == 2 and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in values)
        if (is_range and isinstance(v, int | float) and values[0] <= v <= values[1]) or (
                not is_range and v in values):
            out[name] = v
    return out


def _pruner(n_trials: int) -> optuna.pruners.BasePruner:
    # Prune a trial whose mean validation loss after a chunk is worse than the median of
    # earlier trials at the same chunk; wait for a few complete trials and chunks first.
    # A fine-tune starts from the population network, so its first chunk already says
    # whether the setting helps: one chunk of warm-up is enough (measured on 50 realistic
    # athletes, injury: 40 % fewer trial epochs, same pooled test AUROC).
    return optuna.pruners.MedianPruner(
        n_startup_trials=max(2, min(5, n_trials // 4)), n_warmup_steps=1
    )


def tune_batched(
    family: NetFamily,
    athletes: Sequence[TrainData],
    settings: Settings,
    batch_key: str = "",
    warm_start: Sequence[dict[str, Any]] = (),
) -> tuple[list[TunedAthlete], dict[str, Any]]:
    """Optuna over a whole batch of athletes; per-athlete pick of the best trial.

    Each trial draws an architecture (``hidden``) and fine-tuning settings (``lr``,
    ``prior_strength``). Its architecture's population network (fitted once per
    architecture on every athlete's training rows, then cached) is copied to every
    athlete and fine-tuned on that athlete's own rows, all athletes at once, with an
    L2 pull towards the population weights: a personal model that leans on the
    population where the athlete's own data are thin. Objective: mean best
    validation loss over athletes, reported per epoch chunk for pruning. Every
    athlete's validation loss is recorded in every trial (pruned ones included: their
    snapshots are valid, just less trained) and each athlete keeps its own best trial.

    Returns:
        the per-athlete picks and a summary (trials, pruned, population fits, timings,
        and the trial records the naive benchmark replays).
    """
    space = settings.tuning.spaces[family.name].params
    n_trials = n_trials_for(settings.tuning, space)
    seed = derive_seed(settings.seed, family.name, batch_key)
    study = new_study(settings.tuning, space, seed, pruner=_pruner(n_trials))
    if settings.tuning.warm_start and settings.tuning.sampler == "tpe":
        for params in warm_start:
            study.enqueue_trial(_valid_params(params, space))
    attach_stats(family, athletes)
    train = pad_stack([a.x_train for a in athletes], [a.y_train for a in athletes])
    val = pad_stack([a.x_val for a in athletes], [a.y_val for a in athletes])
    a_count = len(athletes)
    best_val = np.full(a_count, math.inf)
    best_trial = np.full(a_count, -1)
    best_epoch = np.zeros(a_count, dtype=int)
    val_by_trial: list[np.ndarray] = []
    epochs_by_trial: list[np.ndarray] = []
    kept: dict[int, tuple[BatchedModule, dict[str, Any]]] = {}
    populations: dict[Any, tuple[nn.Module, float]] = {}
    records: list[TrialRecord] = []
    batch_best: tuple[tuple[bool, float], int] | None = None
    started = time.perf_counter()
    pop_seconds = 0.0
    for number in range(n_trials):
        trial = study.ask()
        params = suggest(trial, space)
        arch = params.get("hidden")
        if arch not in populations:
            t0 = time.perf_counter()
            populations[arch] = fit_population(family, athletes, params, settings)
            pop_seconds += time.perf_counter() - t0
        model = family.batched_cls([populations[arch][0]] * a_count)
        _set_batched_buffers(model, athletes)
        cfg = fit_config(settings, family.name, params, family.loss)

        def report(step: int, value: float, trial: optuna.Trial = trial) -> bool:
            if not math.isfinite(value):
                return False
            trial.report(value, step)
            return trial.should_prune()

        outcome = fit_batched(model, train, val, cfg, report)
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(outcome.best_state[k])
        val_by_trial.append(outcome.best_val)
        epochs_by_trial.append(outcome.best_epoch)
        better = outcome.best_val < best_val
        best_val = np.where(better, outcome.best_val, best_val)
        best_trial = np.where(better, number, best_trial)
        best_epoch = np.where(better, outcome.best_epoch, best_epoch)
        kept[number] = (model, params)
        if settings.tuning.net_pick == "athlete":
            kept = {t: kept[t] for t in set(best_trial.tolist()) | {number} if t >= 0}
        else:  # keep only the best trial so far by the batch objective
            finite_now = outcome.best_val[np.isfinite(outcome.best_val)]
            score = (outcome.pruned, float(finite_now.mean()) if len(finite_now) else math.inf)
            if batch_best is None or score < batch_best[0]:
                if batch_best is not None:
                    kept.pop(batch_best[1], None)
                batch_best = (score, number)
            else:
                kept.pop(number, None)
        finite = outcome.best_val[np.isfinite(outcome.best_val)]
        objective = float(finite.mean()) if len(finite) else math.inf
        records.append(TrialRecord(number, dict(params), outcome.epochs_run, outcome.pruned,
                                   objective))
        if outcome.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, objective)
    if settings.tuning.net_pick == "batch":
        # One setting for the whole batch: the trial with the best mean validation loss
        # (complete trials first). A rider's 10-20 validation rows are too few to pick
        # among trials reliably; the mean over the batch is not.
        order = sorted(records, key=lambda r: (r.pruned, r.objective))
        chosen = order[0].number
        best_trial[:] = chosen
        best_val = val_by_trial[chosen].copy()
        best_epoch = epochs_by_trial[chosen].copy()
    picks = []
    for i, data in enumerate(athletes):
        t = int(best_trial[i])
        if t < 0:  # every trial diverged for this athlete: keep the last trial
            t = max(kept)
        model, params = kept[t]
        plain, val_i, epoch_i = model.unstack(i), float(best_val[i]), int(best_epoch[i])
        if not data.personal:
            # Too little validation evidence to choose a fine-tune over the population
            # network: the athlete gets the population network (with its own buffers).
            plain = copy.deepcopy(populations[params.get("hidden")][0])
            _set_stats(plain, data.buffers)
            plain.eval()
            val_i, epoch_i = _val_loss(plain, data, family.loss), 0
        picks.append(
            TunedAthlete(
                athlete_id=data.athlete_id,
                model=plain,
                params=dict(params),
                val_loss=val_i,
                trial=t,
                best_epoch=epoch_i,
                val_by_trial=[float(v[i]) for v in val_by_trial],
            )
        )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary = {
        "n_trials": n_trials,
        "n_pruned": sum(r.pruned for r in records),
        "sampler": settings.tuning.sampler,
        "seconds": time.perf_counter() - started,
        "population_seconds": pop_seconds,
        "population_fits": len(populations),
        "population_val_loss": {str(k): v[1] for k, v in populations.items()},
        "batch_best_params": dict(study.best_params) if complete else {},
        "n_athletes": a_count,
        "share_kept_population": float(np.mean(best_epoch == 0)),
        "trials": records,
    }
    return picks, summary


def _val_loss(module: nn.Module, data: TrainData, kind: LossKind) -> float:
    """One plain module's mean validation loss on its athlete's validation rows."""
    with torch.no_grad():
        x = torch.as_tensor(data.x_val, dtype=torch.float32)[None]
        y = torch.as_tensor(data.y_val, dtype=torch.float32)[None]
        out = module.forward_normalized(module.normalize_x(x))
        target = _target_normalized(module, x, y, kind)
        return float(per_athlete_loss(out, target, torch.ones(x.shape[:2]), kind)[0])


def replay_naive(
    family: NetFamily,
    athletes: Sequence[TrainData],
    settings: Settings,
    records: Sequence[TrialRecord],
    only: Sequence[int] | None = None,
) -> tuple[list[TunedAthlete], dict[str, float]]:
    """The naive loop on the same trials: population fits, then one athlete at a time.

    Replays a batched study's trials (same parameters; a pruned trial runs the same
    number of epochs) with plain modules and `fit_single`, so the benchmark compares
    batching alone - same data, same initial weights, same stopping rule. Statistics
    and population networks use every athlete given (as the batched path did); the
    per-athlete loop runs over ``only`` (indices; default all) so a sample can be
    timed.

    Returns:
        the picks of the looped athletes and the seconds spent on population fits and
        on the per-athlete loop.
    """
    attach_stats(family, athletes)
    looped = [athletes[i] for i in (range(len(athletes)) if only is None else only)]
    populations: dict[Any, nn.Module] = {}
    best: list[TunedAthlete | None] = [None] * len(looped)
    history: list[list[float]] = [[] for _ in looped]
    chosen_picks: list[list[TunedAthlete]] = [[] for _ in looped]
    pop_s = loop_s = 0.0
    for rec in records:
        arch = rec.params.get("hidden")
        if arch not in populations:
            t0 = time.perf_counter()
            populations[arch] = fit_population(family, athletes, rec.params, settings)[0]
            pop_s += time.perf_counter() - t0
        cfg = fit_config(settings, family.name, rec.params, family.loss)
        t0 = time.perf_counter()
        for i, data in enumerate(looped):
            module = _clone_template((type(populations[arch]),
                                      dict(populations[arch].init_kwargs)))
            module.load_state_dict(populations[arch].state_dict())
            _set_stats(module, data.buffers)
            module, val, epoch = fit_single(module, data.x_train, data.y_train, data.x_val,
                                            data.y_val, cfg, max_epochs=rec.epochs_run)
            history[i].append(val)
            tuned = TunedAthlete(data.athlete_id, module, dict(rec.params), val, rec.number,
                                 epoch, [])
            if settings.tuning.net_pick == "batch":
                chosen_picks[i].append(tuned)
            current = best[i]
            if current is None or val < current.val_loss:
                best[i] = tuned
        loop_s += time.perf_counter() - t0
    if settings.tuning.net_pick == "batch":
        # Same rule as the batched path: the trial with the best mean validation loss.
        def objective(k: int) -> tuple[bool, float]:
            vals = np.array([h[k] for h in history])
            finite = vals[np.isfinite(vals)]
            return (records[k].pruned, float(finite.mean()) if len(finite) else math.inf)

        chosen = min(range(len(records)), key=objective)
        best = [chosen_picks[i][chosen] for i in range(len(looped))]
    picks = []
    for pick, hist in zip(best, history, strict=True):
        assert pick is not None
        pick.val_by_trial = hist
        picks.append(pick)
    return picks, {"population_seconds": pop_s, "loop_seconds": loop_s}


def tune_single(family: NetFamily, data: TrainData, settings: Settings) -> TunedAthlete:
    """The naive loop's unit: one athlete's own Optuna study, one plain network per trial.

    What a per-athlete Python loop does without batching: the same search space,
    sampler, trial budget and pruner as `tune_batched`, but a study per athlete and
    every trial a plain `nn.Module` trained alone from a fresh initialisation (there is
    no population network to start from) for up to ``population_max_epochs`` epochs
    with the same early stopping; normalisation from the athlete's own training rows.
    The benchmarks time it against the batched path on the same athletes.
    """
    space = settings.tuning.spaces[family.name].params
    n_trials = n_trials_for(settings.tuning, space)
    study = new_study(settings.tuning, space,
                      derive_seed(settings.seed, family.name, data.athlete_id, "naive"),
                      pruner=_pruner(n_trials))
    attach_stats(family, [data])
    best: TunedAthlete | None = None
    history: list[float] = []
    for number in range(n_trials):
        trial = study.ask()
        params = suggest(trial, space)
        module = init_plain(family, params, data.x_train.shape[-1], settings.seed,
                            data.athlete_id, number)
        _set_stats(module, data.stats | data.buffers)
        cfg = fit_config(settings, family.name, params, family.loss)
        cfg.max_epochs = settings.tuning.population_max_epochs
        pruned = False

        def report(step: int, value: float, trial: optuna.Trial = trial) -> bool:
            nonlocal pruned
            trial.report(value, step)
            pruned = trial.should_prune()
            return pruned

        module, val, epoch = fit_single(module, data.x_train, data.y_train, data.x_val,
                                        data.y_val, cfg, report=report)
        history.append(val)
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, val if math.isfinite(val) else math.inf)
        if best is None or val < best.val_loss:
            best = TunedAthlete(data.athlete_id, module, dict(params), val, number, epoch, [])
    assert best is not None
    best.val_by_trial = history
    return best


# ------------------------------------------------------------------ family driver


def train_data(ds: NetDataset) -> TrainData:
    """The arrays the batched trainer needs from a split dataset."""
    return TrainData(ds.athlete_id, ds.X[ds.train_idx], ds.y[ds.train_idx],
                     ds.X[ds.val_idx], ds.y[ds.val_idx])


def _skipped(family: str, ds: NetDataset) -> FamilyResult:
    return FamilyResult(
        ds.athlete_id, family, "skipped", reason=ds.skip_reason,
        feature_names=list(ds.feature_names), n_train=len(ds.train_idx),
        n_val=len(ds.val_idx), n_test=len(ds.test_idx), notes=list(ds.notes),
    )


def _warm_params(batch: Sequence[NetDataset],
                 warm_starts: Mapping[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
    # Last week's per-athlete picks, de-duplicated: each distinct setting is tried once
    # for the whole batch (at most 3, so warm starts never eat the trial budget).
    seen: list[dict[str, Any]] = []
    for ds in batch:
        params = (warm_starts or {}).get(ds.athlete_id)
        if params and params not in seen:
            seen.append(params)
    return seen[:3]


Evaluator = Callable[[NetDataset, nn.Module],
                     tuple[dict[str, float], dict[str, float], np.ndarray]]


def train_family(
    family: NetFamily,
    datasets: Mapping[str, NetDataset],
    settings: Settings,
    warm_starts: Mapping[str, dict[str, Any]] | None,
    evaluate: Evaluator,
    prepare: Callable[[Sequence[NetDataset]], list[TrainData]] | None = None,
) -> dict[str, FamilyResult]:
    """Batch, tune, unstack and evaluate every athlete of one network family.

    Athletes with a ``skip_reason`` get a ``skipped`` result. The others are trained
    in batches of ``settings.execution.chunk_size`` (bounded memory); ``evaluate``
    scores each unstacked module on its athlete's untouched test part. ``prepare``
    turns a batch's datasets into the rows trained on (default `train_data`: every
    training/validation row). A pick whose best epoch is 0 kept the population network
    (no fine-tune beat it on the athlete's validation rows): ``params["source"]`` says
    ``population`` or ``personal``.
    """
    torch.set_num_threads(settings.execution.torch_threads)
    results: dict[str, FamilyResult] = {}
    ready = [ds for ds in datasets.values() if not ds.skip_reason]
    for ds in datasets.values():
        if ds.skip_reason:
            results[ds.athlete_id] = _skipped(family.name, ds)
    size = settings.execution.chunk_size
    for start in range(0, len(ready), size):
        batch = ready[start : start + size]
        key = f"{batch[0].athlete_id}..{batch[-1].athlete_id}:{len(batch)}"
        data = prepare(batch) if prepare is not None else [train_data(ds) for ds in batch]
        picks, summary = tune_batched(family, data, settings,
                                      batch_key=key,
                                      warm_start=_warm_params(batch, warm_starts))
        summary["trials"] = [asdict(r) for r in summary["trials"]]  # JSON-friendly
        for ds, pick in zip(batch, picks, strict=True):
            metrics, baselines, pred = evaluate(ds, pick.model)
            metrics["val_loss"] = pick.val_loss
            te = ds.test_idx
            results[ds.athlete_id] = FamilyResult(
                athlete_id=ds.athlete_id,
                family=family.name,
                status="trained",
                model=pick.model,
                params=pick.params | {"trial": pick.trial, "best_epoch": pick.best_epoch,
                                      "source": ("population" if pick.best_epoch == 0
                                                 else "personal"),
                                      "n_trials": summary["n_trials"],
                                      "sampler": summary["sampler"]},
                metrics=metrics,
                baselines=baselines,
                n_train=len(ds.train_idx),
                n_val=len(ds.val_idx),
                n_test=len(te),
                feature_names=list(ds.feature_names),
                test_dates=[str(d) for d in ds.dates[te]],
                test_y=ds.y[te],
                test_pred=pred,
                test_baseline=ds.baseline[te],
                test_X=ds.X[te],
                data_window=ds.data_window(),
                notes=list(ds.notes),
                extra={"batch": summary, "val_by_trial": pick.val_by_trial},
            )
    return {aid: results[aid] for aid in datasets if aid in results}
