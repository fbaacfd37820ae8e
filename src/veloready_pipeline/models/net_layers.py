"""Batched network layers: many athletes' small networks as one stacked module.

Training a 3-layer MLP or a small LSTM for one athlete is dominated by Python and
kernel-launch overhead, not arithmetic: the tensors are a few hundred rows. So every
network here has a leading *athlete* dimension ``A``: weights ``[A, in, out]`` run as
one ``torch.bmm`` (`BatchedMLP`), the LSTM runs as one hand-written kernel over
``[A, ...]`` weights (`LSTMSequence`, buffers reused through `LSTMWorkspace`). Masks let
athletes with different row counts share one padded tensor (`Padded`, `pad_stack`).
``unstack(i)`` turns athlete ``i`` into a plain `torch.nn` module (the thing that is
exported to ONNX / Core ML); tests check batched and unstacked predictions agree.

The fit loop over these modules is `models.net_fit`; population tuning and the family
trainer are `models.net_tuning`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

STD_FLOOR = 1e-6


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


class PlainNet(nn.Module):
    """Common surface of a family's plain one-athlete network (the exported module).

    The trainers build, fine-tune and unstack these; a family's class (`ZoneMLP`,
    `InjuryLSTM`) implements the methods. ``init_kwargs`` rebuilds an empty copy
    (`clone_template`); ``x_mean`` / ``x_std`` are the input statistics buffers.
    """

    init_kwargs: dict[str, Any]
    x_mean: torch.Tensor
    x_std: torch.Tensor

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def normalize_x(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def target(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def normalize_y(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward_normalized(self, xn: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class PlainMLP(PlainNet):
    """A plain MLP `BatchedMLP` stacks: its layers in ``net``, inputs anchored (zones)."""

    anchor_index: int | None
    n_ratio: int
    load_index: tuple[int, ...] | None
    net: nn.Sequential


class PlainLSTM(PlainNet):
    """A plain LSTM `BatchedLSTM` stacks: ``lstm``, a linear ``head`` and ``skip`` (injury)."""

    lstm: nn.LSTM
    head: nn.Linear
    skip: nn.Linear


PlainT = TypeVar("PlainT", bound=PlainNet)


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

    def unstack(self, i: int) -> PlainNet:  # pragma: no cover
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

    def __init__(self, plain: Sequence[PlainMLP]) -> None:
        super().__init__()
        self.n_athletes = len(plain)
        # Class and constructor arguments only: registering the module itself would
        # make its (unused) parameters part of the batched model.
        self.template_spec = (type(plain[0]), dict(plain[0].init_kwargs))
        self.anchor = plain[0].anchor_index
        self.n_ratio = plain[0].n_ratio
        self.load_index = plain[0].load_index
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
        return (self.load_index[0], self.load_index[1], self._stat("gain", like))

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

    def unstack(self, i: int) -> PlainNet:
        """Athlete ``i`` as a plain module of the template's class (eval mode)."""
        plain = clone_template(self.template_spec)
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

    def __init__(self, plain: Sequence[PlainLSTM]) -> None:
        super().__init__()
        self.n_athletes = len(plain)
        self.template_spec = (type(plain[0]), dict(plain[0].init_kwargs))
        self.hidden = plain[0].lstm.hidden_size
        # `nn.LSTM` registers its per-layer weights by name at run time (no typed
        # attributes): `get_parameter` returns the same tensors, typed.
        self.w_ih = nn.Parameter(torch.stack(
            [p.lstm.get_parameter("weight_ih_l0").detach() for p in plain]))
        self.w_hh = nn.Parameter(torch.stack(
            [p.lstm.get_parameter("weight_hh_l0").detach() for p in plain]))
        # Both PyTorch biases are kept (summed in the kernel): as two parameters each gets
        # its own Adam step, exactly as in `nn.LSTM`, so batched and naive fits agree.
        self.b_ih = nn.Parameter(torch.stack(
            [p.lstm.get_parameter("bias_ih_l0").detach()[:, None] for p in plain]))
        self.b_hh = nn.Parameter(torch.stack(
            [p.lstm.get_parameter("bias_hh_l0").detach()[:, None] for p in plain]))
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

    def unstack(self, i: int) -> PlainNet:
        """Athlete ``i`` as a plain module with an `nn.LSTM` (eval mode)."""
        plain = clone_template(self.template_spec)
        with torch.no_grad():
            plain.lstm.get_parameter("weight_ih_l0").copy_(self.w_ih[i])
            plain.lstm.get_parameter("weight_hh_l0").copy_(self.w_hh[i])
            plain.lstm.get_parameter("bias_ih_l0").copy_(self.b_ih[i, :, 0])
            plain.lstm.get_parameter("bias_hh_l0").copy_(self.b_hh[i, :, 0])
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


def clone_template(spec: tuple[type[PlainT], dict[str, Any]]) -> PlainT:
    """A fresh plain module from a (class, constructor arguments) template spec."""
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
