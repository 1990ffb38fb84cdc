"""Parametric activations for SAFS: ``y = alpha * op(beta * x)`` with per-layer scalar alpha and beta.

Convention (the SAFS paper's, Eq. 5-6): ``alpha`` scales the output and ``beta`` the input. The few
operators whose reference definition places the scalars differently keep that definition and say so in
their formula string (swish, tanhsoft1/2, srs, acon, falu, prelu, srelu).

Every operator is written with torch primitives that ONNX and TFLite have (Sigmoid, Tanh, Exp, Log, Abs,
Sign, Mul, Add, Min/Max, Erf, Softplus, Where), so an exported graph needs no custom op. ``bake()`` turns
a trained activation into a :class:`BakedActivation` holding plain Python floats: export then sees
constants, not parameters.

Stage 1 of SAFS freezes every scalar at its default (alpha = beta = 1); stage 2 unfreezes them.

Example:
    >>> act = ParametricActivation("symlog")
    >>> act(torch.tensor([0.0, 1.0])).tolist()  # doctest: +ELLIPSIS
    [0.0, 0.693...]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# symexp grows like exp(|x|): clamp its argument so fp32 (and fp16 / int8 runtimes) never overflow.
SYMEXP_CLAMP = 10.0

OpFn = Callable[[Tensor, Mapping[str, Tensor | float]], Tensor]


@dataclass(frozen=True)
class ActivationOp:
    """One unary operator of the search space.

    ``params`` maps every scalar the operator takes to its default value (alpha and beta are always
    present); ``fuses`` is True when runtimes fold the op into the preceding conv / linear (ReLU,
    ReLU6), which makes it free in latency terms.
    """

    name: str
    fn: OpFn
    formula: str
    params: Mapping[str, float] = field(default_factory=lambda: {"alpha": 1.0, "beta": 1.0})
    fuses: bool = False
    primitives: int = 1  # elementwise primitive ops after lowering: the per-element cost proxy

    def __post_init__(self) -> None:
        if "alpha" not in self.params or "beta" not in self.params:
            raise ValueError(f"operator {self.name} must declare alpha and beta, got {sorted(self.params)}")


def _sig(z: Tensor) -> Tensor:
    return torch.sigmoid(z)


def _swish(z: Tensor) -> Tensor:
    return z * torch.sigmoid(z)


def _softplus(z: Tensor) -> Tensor:
    # log(1 + exp(z)) written stably: max(z, 0) + log(1 + exp(-|z|)); every piece is an ONNX primitive.
    return torch.clamp(z, min=0.0) + torch.log(1.0 + torch.exp(-torch.abs(z)))


def _elu(z: Tensor) -> Tensor:
    return torch.where(z > 0, z, torch.exp(torch.clamp(z, max=0.0)) - 1.0)


def _relu6(z: Tensor) -> Tensor:
    return torch.clamp(z, min=0.0, max=6.0)


def _hardswish(z: Tensor) -> Tensor:
    return z * _relu6(z + 3.0) / 6.0


def _gelu(z: Tensor) -> Tensor:
    return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))


def _falu_d1(t: Tensor, a: Tensor | float) -> Tensor:
    s = _swish(t)
    return s + a * _sig(t) * (1.0 - s)


def _op_falu(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    alpha, beta = p["alpha"], p["beta"]
    t = beta * x
    d1_one = _falu_d1(t, 1.0)
    d2 = d1_one + (alpha - 1.0) * _sig(t) * (1.0 - 2.0 * d1_one)
    d1 = _falu_d1(t, alpha)
    cond = torch.as_tensor(alpha) >= 1.0
    return torch.where(cond, d2, d1)


def _op_srelu(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    t_l, a_l, t_r, a_r = p["t_l"], p["a_l"], p["t_r"], p["a_r"]
    z = p["beta"] * x
    right = t_r + a_r * (z - t_r)
    left = t_l + a_l * (z - t_l)
    y = torch.where(z >= t_r, right, torch.where(z <= t_l, left, z))
    return p["alpha"] * y


def _scaled(inner: Callable[[Tensor], Tensor]) -> OpFn:
    def fn(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
        return p["alpha"] * inner(p["beta"] * x)

    return fn


def _op_symlog(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    z = p["beta"] * x
    return p["alpha"] * torch.sign(z) * torch.log(torch.abs(z) + 1.0)


def _op_symexp(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    z = torch.clamp(p["beta"] * x, -SYMEXP_CLAMP, SYMEXP_CLAMP)
    return p["alpha"] * torch.sign(z) * (torch.exp(torch.abs(z)) - 1.0)


def _op_swish(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    return p["alpha"] * x * torch.sigmoid(p["beta"] * x)


def _op_tanhsoft1(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    return torch.tanh(p["alpha"] * x) * _softplus(p["beta"] * x)


def _op_tanhsoft2(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    return x * torch.tanh(p["alpha"] * torch.exp(torch.clamp(p["beta"] * x, max=SYMEXP_CLAMP)))


def _op_srs(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    # x / (x/alpha + exp(-x/beta)); the denominator is >= 1 at alpha = beta = 1 (min of z + e^-z).
    return x / (x / p["alpha"] + torch.exp(-x / p["beta"]))


def _op_acon(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    # ACON-C: (p1 - p2) x * sigmoid(beta (p1 - p2) x) + p2 x with p1 = alpha (p2 defaults to 0).
    d = (p["alpha"] - p["p2"]) * x
    return d * torch.sigmoid(p["beta"] * d) + p["p2"] * x


def _op_prelu(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    z = p["beta"] * x
    return p["alpha"] * torch.where(z >= 0, z, p["slope"] * z)


def _op_linear(x: Tensor, p: Mapping[str, Tensor | float]) -> Tensor:
    return p["alpha"] * (p["beta"] * x)


def _elish(z: Tensor) -> Tensor:
    return torch.where(z >= 0, _swish(z), (torch.exp(torch.clamp(z, max=0.0)) - 1.0) * _sig(z))


def _hard_elish(z: Tensor) -> Tensor:
    hs = torch.clamp((z + 1.0) / 2.0, 0.0, 1.0)
    return torch.where(z >= 0, z * hs, (torch.exp(torch.clamp(z, max=0.0)) - 1.0) * hs)


def _mish(z: Tensor) -> Tensor:
    return z * torch.tanh(_softplus(z))


def _selu(z: Tensor) -> Tensor:
    a, s = 1.6732632423543772, 1.0507009873554805
    return s * torch.where(z > 0, z, a * (torch.exp(torch.clamp(z, max=0.0)) - 1.0))


_AB = {"alpha": 1.0, "beta": 1.0}

OPS: dict[str, ActivationOp] = {
    op.name: op
    for op in (
        ActivationOp("relu", _scaled(torch.relu), "alpha*max(0, beta*x)", fuses=True, primitives=1),
        ActivationOp("relu6", _scaled(_relu6), "alpha*min(max(0, beta*x), 6)", fuses=True, primitives=1),
        ActivationOp("hardswish", _scaled(_hardswish), "alpha*h(beta*x), h(z)=z*relu6(z+3)/6", primitives=4),
        ActivationOp("swish", _op_swish, "alpha*x*sigmoid(beta*x)", primitives=3),
        ActivationOp("tanhsoft1", _op_tanhsoft1, "tanh(alpha*x)*softplus(beta*x)", primitives=7),
        ActivationOp("tanhsoft2", _op_tanhsoft2, "x*tanh(alpha*exp(beta*x))", primitives=5),
        ActivationOp(
            "acon",
            _op_acon,
            "(alpha-p2)*x*sigmoid(beta*(alpha-p2)*x) + p2*x (ACON-C, p1=alpha)",
            params={"alpha": 1.0, "beta": 1.0, "p2": 0.0},
            primitives=6,
        ),
        ActivationOp("gelu", _scaled(_gelu), "alpha*GELU(beta*x) (erf form)", primitives=6),
        ActivationOp("srs", _op_srs, "x/(x/alpha + exp(-x/beta))", primitives=5),
        ActivationOp("elu", _scaled(_elu), "alpha*ELU(beta*x)", primitives=4),
        ActivationOp("selu", _scaled(_selu), "alpha*SELU(beta*x)", primitives=5),
        ActivationOp("tanh", _scaled(torch.tanh), "alpha*tanh(beta*x)", primitives=3),
        ActivationOp("softplus", _scaled(_softplus), "alpha*softplus(beta*x)", primitives=6),
        ActivationOp(
            "logsigmoid", _scaled(lambda z: -_softplus(-z)), "alpha*log(sigmoid(beta*x))", primitives=7
        ),
        ActivationOp("symlog", _op_symlog, "alpha*sign(beta*x)*log(|beta*x|+1)", primitives=6),
        ActivationOp(
            "symexp", _op_symexp, "alpha*sign(z)*(exp(|z|)-1), z=clip(beta*x, -10, 10)", primitives=7
        ),
        ActivationOp("mish", _scaled(_mish), "alpha*mish(beta*x)", primitives=9),
        ActivationOp("elish", _scaled(_elish), "alpha*ELiSH(beta*x)", primitives=8),
        ActivationOp("hard_elish", _scaled(_hard_elish), "alpha*HardELiSH(beta*x)", primitives=8),
        ActivationOp("sigmoid", _scaled(torch.sigmoid), "alpha*sigmoid(beta*x)", primitives=2),
        ActivationOp("linear", _op_linear, "alpha*beta*x", primitives=1),
        ActivationOp(
            "prelu",
            _op_prelu,
            "alpha*(z if z>=0 else slope*z), z=beta*x",
            params={"alpha": 1.0, "beta": 1.0, "slope": 0.25},
            primitives=3,
        ),
        ActivationOp(
            "falu", _op_falu, "FALU: D2(beta*x, alpha-1) if alpha>=1 else D1(beta*x, alpha)", primitives=12
        ),
        ActivationOp(
            "srelu",
            _op_srelu,
            "alpha*SReLU(beta*x; t_l, a_l, t_r, a_r), per-layer scalars",
            params={"alpha": 1.0, "beta": 1.0, "t_l": 0.0, "a_l": 0.0, "t_r": 6.0, "a_r": 1.0},
            primitives=7,
        ),
    )
}
"""Every operator by name (a closed set: plain dict literal, no registration side effects)."""

# The 13-operator list the SAFS reference code searches over (reference A.4), plus relu so that the
# dense default stays reachable. Periodic ops and ops with x=0 / y=0 asymptotes are excluded on purpose.
SEARCH_SPACE: tuple[str, ...] = (
    "relu",
    "relu6",
    "hardswish",
    "swish",
    "tanhsoft1",
    "acon",
    "gelu",
    "srs",
    "elu",
    "tanh",
    "softplus",
    "logsigmoid",
    "symlog",
    "symexp",
)


def get_op(name: str) -> ActivationOp:
    """The operator called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(OPS))}") from None


class ParametricActivation(nn.Module):
    """``alpha * op(beta * x)`` with per-layer scalar parameters (one ``nn.Parameter`` per scalar).

    Args:
        op: operator name from :data:`OPS`.
        learnable: whether the scalars receive gradients (stage 2) or are frozen (stage 1).
        **values: initial values overriding the operator's defaults (e.g. ``alpha=0.5``).
    """

    def __init__(self, op: str = "relu", *, learnable: bool = False, **values: float) -> None:
        super().__init__()
        self.op_name = get_op(op).name
        spec = get_op(op)
        unknown = set(values) - set(spec.params)
        if unknown:
            raise ValueError(
                f"operator {op} has no parameter(s) {sorted(unknown)}; it takes {sorted(spec.params)}"
            )
        self.scalars = nn.ParameterDict(
            {k: nn.Parameter(torch.tensor(float(values.get(k, v)))) for k, v in spec.params.items()}
        )
        self.set_learnable(learnable)

    @property
    def op(self) -> ActivationOp:
        return get_op(self.op_name)

    def set_learnable(self, learnable: bool) -> None:
        """Freeze (stage 1) or unfreeze (stage 2) every scalar of this activation."""
        for p in self.scalars.values():
            p.requires_grad_(learnable)

    def values(self) -> dict[str, float]:
        """The current scalar values as plain floats."""
        return {k: float(v.detach()) for k, v in self.scalars.items()}

    def forward(self, x: Tensor) -> Tensor:
        return self.op.fn(x, dict(self.scalars.items()))

    def bake(self) -> BakedActivation:
        """A parameter-free copy with the scalars as Python constants (for export)."""
        return BakedActivation(self.op_name, self.values())

    def extra_repr(self) -> str:
        vals = ", ".join(f"{k}={v:.4g}" for k, v in self.values().items())
        return f"{self.op_name}, {vals}"


class BakedActivation(nn.Module):
    """An activation with its scalars baked in as constants: what the RUN folder and export see."""

    def __init__(self, op: str, values: Mapping[str, float] | None = None) -> None:
        super().__init__()
        spec = get_op(op)
        self.op_name = spec.name
        merged = dict(spec.params)
        merged.update(values or {})
        self.consts = {k: float(v) for k, v in merged.items()}

    def forward(self, x: Tensor) -> Tensor:
        return get_op(self.op_name).fn(x, self.consts)

    def extra_repr(self) -> str:
        vals = ", ".join(f"{k}={v:.4g}" for k, v in self.consts.items())
        return f"{self.op_name}, {vals}"


def reference(name: str, x: Tensor) -> Tensor:
    """Textbook form of each operator at its default scalars, written independently of :data:`OPS`
    (torch.nn.functional where it exists). Used by the tests as the ground truth."""
    refs: dict[str, Callable[[Tensor], Tensor]] = {
        "relu": F.relu,
        "relu6": F.relu6,
        "hardswish": F.hardswish,
        "swish": F.silu,
        "tanhsoft1": lambda t: torch.tanh(t) * F.softplus(t),
        "tanhsoft2": lambda t: t * torch.tanh(torch.exp(t)),
        "acon": F.silu,  # ACON-C with p1 = 1, p2 = 0, beta = 1 is Swish
        "gelu": F.gelu,
        "srs": lambda t: t / (t + torch.exp(-t)),
        "elu": F.elu,
        "selu": F.selu,
        "tanh": torch.tanh,
        "softplus": F.softplus,
        "logsigmoid": F.logsigmoid,
        "symlog": lambda t: torch.sign(t) * torch.log1p(t.abs()),
        "symexp": lambda t: torch.sign(t) * torch.expm1(t.abs().clamp(max=SYMEXP_CLAMP)),
        "mish": F.mish,
        "elish": lambda t: torch.where(t >= 0, t * torch.sigmoid(t), torch.expm1(t) * torch.sigmoid(t)),
        "hard_elish": lambda t: torch.where(t >= 0, t, torch.expm1(t)) * ((t + 1) / 2).clamp(0, 1),
        "sigmoid": torch.sigmoid,
        "linear": lambda t: t,
        "prelu": lambda t: F.prelu(t, torch.tensor([0.25])),
        "falu": lambda t: t * torch.sigmoid(t) + torch.sigmoid(t) * (1 - t * torch.sigmoid(t)),
        "srelu": lambda t: torch.where(t >= 6.0, t, F.relu(t)),
    }
    return refs[name](x)
