"""The optimizer contract (design.md §4), written once for every optimizer and gradient transform.

An optimizer is an object with three methods over a flat container of parameter arrays (a dict of
arrays keyed by name, or a list/tuple of arrays)::

    state = opt.init(params)                          # a NamedTuple: `step` + per-parameter arrays
    params, state = opt.update(params, grads, state)  # pure: new arrays, the inputs untouched
    opt.update_(params, grads, state)                 # in place: params' and state's arrays mutated

Both updates compute the same numbers bit for bit: `update_` runs the same per-element function
and writes its results into the arrays it was given. That function is where a fused kernel plugs in
(see `Optimizer.update_`): one pass over memory, params in, params out.

Every check runs before anything is computed or mutated (design.md §9), so a refused call leaves
params and state exactly as they were.

A subclass supplies four things:

- `state_type`: its state NamedTuple, with `step` first, then one field per per-parameter slot;
- `_slots()`: which slot fields are allocated (e.g. no momentum buffer when momentum is 0);
- `_coefficients(step)`: every per-step scalar (learning rate from its schedule, bias corrections),
  computed once per step in Python floats and checked;
- `_math(xp, p, g, slots, k)`: the update of one parameter, pure: elementwise, or with
  per-tensor norms (LAMB's and LARS' trust ratios read the whole tensor);

and may override `_per_parameter(checked, k)`, which gives each parameter its own coefficients
(a per-tensor option such as LARS' and LAMB's masks); by default every parameter shares `k`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from normref import _checks, _xp, registry
from normref._dispatch import kernels_for

__all__ = [
    "Params",
    "Schedule",
    "Hyper",
    "Optimizer",
    "GradientTransform",
    "EmptyState",
    "STATE_TYPES",
    "register_state",
    "flatten",
    "rebuild",
    "Checked",
    "params_and_grads",
    "params_only",
    "betas_of",
    "l2_gradient",
    "PeerVariant",
    "peer_variant",
]

Params = dict[str, Any] | list[Any] | tuple[Any, ...]
Schedule = Callable[[int], float]  # step (updates already taken, 0-based) -> hyperparameter value

# Every state NamedTuple normref defines, by class name: what `load` may rebuild from a file.
STATE_TYPES: dict[str, type] = {}


def register_state(cls: type) -> type:
    """Class decorator: make a state NamedTuple known to `normref.optim.load`."""
    STATE_TYPES[cls.__name__] = cls
    return cls


@register_state
class EmptyState(NamedTuple):
    """The state of a stateless gradient transform (clipping)."""


# ---------------------------------------------------------------------------------------------
# Containers: params, grads and every per-parameter state field share one flat structure.


def flatten(op: str, name: str, tree: Any) -> tuple[tuple[Any, ...] | None, list[Any]]:
    """(keys, arrays) of a dict of arrays (keys in the dict's order) or a list/tuple (keys None)."""
    if isinstance(tree, dict):
        keys = tuple(tree)
        return keys, [tree[k] for k in keys]
    if isinstance(tree, (list, tuple)):
        return None, list(tree)
    got = type(tree).__name__
    raise TypeError(f"{op}: {name} must be a dict of arrays or a list/tuple of arrays, got {got}")


def rebuild(like: Any, leaves: list[Any]) -> Any:
    """A container of `like`'s kind (a dict with its keys, list, tuple, NamedTuple) of `leaves`."""
    if isinstance(like, dict):
        return dict(zip(like, leaves))
    if isinstance(like, tuple):
        return type(like)(*leaves) if hasattr(type(like), "_fields") else tuple(leaves)
    return list(leaves)


def _label(name: str, keys: tuple[Any, ...] | None, i: int) -> str:
    return f"{name}[{keys[i]!r}]" if keys is not None else f"{name}[{i}]"


def _matched(op: str, name: str, tree: Any, keys: tuple[Any, ...] | None, n: int) -> list[Any]:
    """The arrays of `tree` in the order of the params (`keys`, or `n` positions); `tree` must have
    the params' container kind, the same keys or the same count."""
    tree_keys, leaves = flatten(op, name, tree)
    if keys is None:
        if tree_keys is not None:
            raise TypeError(f"{op}: {name} must be a list/tuple like params, got a dict")
        if len(leaves) != n:
            raise ValueError(f"{op}: params has {n} arrays but {name} has {len(leaves)}")
        return leaves
    if tree_keys is None:
        raise TypeError(f"{op}: {name} must be a dict like params, got {type(tree).__name__}")
    if set(tree_keys) != set(keys):
        missing = [k for k in keys if k not in tree]
        extra = [k for k in tree_keys if k not in set(keys)]
        raise ValueError(
            f"{op}: {name} must have the keys of params; missing {missing}, unexpected {extra}"
        )
    return [tree[k] for k in keys]


class Checked(NamedTuple):
    """params and grads after the checks: one namespace, arrays in the params' order."""

    xp: Any
    keys: tuple[Any, ...] | None
    params: list[Any]
    grads: list[Any]


def params_and_grads(op: str, params: Any, grads: Any) -> Checked:
    """Check that params and grads are floating arrays of one library, in the same container with
    the same keys (or count), each grad of its param's shape and dtype."""
    keys, ps = flatten(op, "params", params)
    if not ps:
        raise ValueError(f"{op}: params is empty; there is nothing to update")
    gs = _matched(op, "grads", grads, keys, len(ps))
    xp = _xp.namespace(*ps, *gs)
    for i, (p, g) in enumerate(zip(ps, gs)):
        _checks.floating(op, _label("params", keys, i), p, xp)
        _checks.floating(op, _label("grads", keys, i), g, xp)
        _checks.same_shape(op, _label("grads", keys, i), g, _label("params", keys, i), p)
        _checks.same_dtype(op, _label("grads", keys, i), g, _label("params", keys, i), p)
    return Checked(xp, keys, ps, gs)


def params_only(op: str, params: Any) -> Checked:
    """Check a container of floating arrays of one library (params at init, or grads alone)."""
    keys, ps = flatten(op, "params", params)
    if not ps:
        raise ValueError(f"{op}: params is empty; there is nothing to update")
    xp = _xp.namespace(*ps)
    for i, p in enumerate(ps):
        _checks.floating(op, _label("params", keys, i), p, xp)
    return Checked(xp, keys, ps, [])


# ---------------------------------------------------------------------------------------------
# Hyperparameters: a number, or a schedule read at the step being taken.


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: a number checked once, or a schedule `step -> number` whose value is
    checked each time it is read (a schedule that goes negative fails before anything moves)."""

    op: str
    name: str
    value: float | Schedule
    check: Callable[[str, str, Any], float]

    @classmethod
    def of(cls, op: str, name: str, value: Any, check: Callable[[str, str, Any], float]) -> Hyper:
        if callable(value):
            return cls(op, name, value, check)
        return cls(op, name, check(op, name, value), check)

    @property
    def scheduled(self) -> bool:
        return callable(self.value)

    def at(self, step: int) -> float:
        """The value for the update that follows `step` updates already taken (0-based)."""
        if not callable(self.value):
            return self.value
        return self.check(self.op, f"{self.name} (its schedule at step {step})", self.value(step))


def betas_of(op: str, betas: Any) -> tuple[Hyper, Hyper]:
    """(b1, b2) of a `betas` pair: each a decay rate in [0, 1) or a schedule of one."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{op}: betas must be a pair (b1, b2), got {betas!r}")
    return (
        Hyper.of(op, "betas[0]", betas[0], _checks.decay_rate),
        Hyper.of(op, "betas[1]", betas[1], _checks.decay_rate),
    )


def l2_gradient(p: Any, g: Any, k: Any) -> Any:
    """g with PyTorch's maximize and L2 weight decay applied, in its order: g = -g, then
    g = g + weight_decay * p (`k`: the step's coefficients, with `maximize` and `weight_decay`)."""
    if k.maximize:
        g = -g
    if k.weight_decay != 0:
        g = g + k.weight_decay * p
    return g


def _step_of(op: str, state: Any) -> int:
    """state.step as a Python int: a 0-d integer array (what init makes) or a Python int."""
    step = state.step
    dtype = getattr(step, "dtype", None)
    try:
        integral = np.issubdtype(dtype, np.integer) if dtype is not None else type(step) is int
    except TypeError:  # a dtype NumPy does not know (another library's)
        integral = False
    if not integral or getattr(step, "shape", ()) != ():
        raise TypeError(
            f"{op}: state.step must be an integer (the 0-d int64 array init makes), got {step!r}"
        )
    value = int(step)
    if value < 0:
        raise ValueError(f"{op}: state.step must be >= 0, got {value}")
    return value


def _new_step(value: int) -> Any:
    """The step counter: a 0-d int64 NumPy array, on the host whatever the params' library (as
    PyTorch keeps its step on the CPU), mutable so that `update_` can advance it in place."""
    return np.asarray(value, dtype=np.int64)


# ---------------------------------------------------------------------------------------------


class Optimizer:
    """Base of every optimizer: the contract's three methods around a subclass's per-element math.

    Subclasses set `name` (the registry name), `kernel` (the fused kernel's stem, shared by
    variants of one algorithm, e.g. adam and adamw), `state_type` and implement `_slots`,
    `_coefficients` and `_math`.
    """

    name: str = "optimizer"
    kernel: str | None = "optimizer"
    state_type: type = EmptyState

    def __init__(self, hyperparams: dict[str, Any]) -> None:
        self.hyperparams = dict(hyperparams)  # as given, for repr and the registry

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{self.name}({args})"

    # -- what a subclass provides --------------------------------------------------------------

    def _slots(self) -> tuple[bool, ...]:
        """Which per-parameter state fields (after `step`) this configuration allocates."""
        raise NotImplementedError

    def _coefficients(self, step: int) -> Any:
        """The per-step scalars (Python floats), hyperparameters read from their schedules."""
        raise NotImplementedError

    def _math(self, xp: Any, p: Any, g: Any, slots: tuple[Any, ...], k: Any) -> tuple[Any, tuple]:
        """(new p, new slots) for one parameter; p, g and slots in the accumulation dtype. Pure."""
        raise NotImplementedError

    def _per_parameter(self, checked: Checked, k: Any) -> list[Any]:
        """The coefficients of each parameter, in the params' order: `k` for every one unless an
        optimizer treats tensors differently (masks). Runs after every check and before anything
        is written, so it may still refuse the call."""
        return [k] * len(checked.params)

    # -- the contract --------------------------------------------------------------------------

    @property
    def _slot_fields(self) -> tuple[str, ...]:
        return self.state_type._fields[1:]

    def init(self, params: Params) -> Any:
        """The state before the first update: step 0, every slot zeros in the accumulation dtype
        (float32 for 16-bit params, else the params' dtype), in the params' container."""
        checked = params_only(self.name, params)
        xp = checked.xp
        fields = []
        for enabled in self._slots():
            if not enabled:
                fields.append(None)
                continue
            zeros = [
                xp.zeros_like(p, dtype=_xp.accumulation_dtype(xp, p.dtype)) for p in checked.params
            ]
            fields.append(rebuild(params, zeros))
        return self.state_type(_new_step(0), *fields)

    def update(self, params: Params, grads: Params, state: Any) -> tuple[Params, Any]:
        """One update; returns (new params, new state) and leaves every input untouched."""
        checked, slots, step = self._checked(params, grads, state)
        ks = self._per_parameter(checked, self._coefficients(step))
        new_params, new_slots = [], [[] for _ in self._slot_fields]
        for i, (p, g) in enumerate(zip(checked.params, checked.grads)):
            own = tuple(None if s is None else s[i] for s in slots)
            p_new, own_new = self._one(checked.xp, p, g, own, ks[i])
            new_params.append(p_new)
            for column, old, new in zip(new_slots, own, own_new):
                # a slot the math left as it was is copied: the new state shares no array with the
                # old one, so a later update_ of either cannot change the other
                column.append(
                    checked.xp.asarray(old, copy=True) if new is old and old is not None else new
                )
        fields = [
            rebuild(params, column) if enabled else None
            for enabled, column in zip(self._slots(), new_slots)
        ]
        return rebuild(params, new_params), self.state_type(_new_step(step + 1), *fields)

    def update_(self, params: Params, grads: Params, state: Any, *, backend: str | None = None):
        """One update in place: every array of params and of state is overwritten with the values
        `update` would return (bit for bit), and state.step advances. Returns None.

        `backend` (None: the `normref.use_backend` context) picks a fused kernel through
        `normref._dispatch.kernels_for` and the registry entry's `kernels`, parameter by
        parameter: "auto" sends each NumPy (CuPy) array whose dtype the entry's Numba (CUDA)
        kernels take to them and every other one to the reference; "numba"/"cuda" refuse the
        whole call, before anything is written, if one parameter is not theirs; "reference" never
        uses a kernel. Both paths give the same bits. Torch users pass `p.detach()` tensors: they
        share the parameters' storage, and autograd forbids in-place writes to leaves that require
        grad.
        """
        checked, slots, step = self._checked(params, grads, state)
        if not isinstance(state.step, np.ndarray) or not state.step.flags.writeable:
            raise TypeError(
                f"{self.name}: update_ advances state.step in place, so it must be the writable "
                f"0-d int64 NumPy array init made, got {type(state.step).__name__}"
            )
        for i, p in enumerate(checked.params):
            if _xp.is_numpy(p) and not p.flags.writeable:
                raise ValueError(f"{self.name}: {_label('params', checked.keys, i)} is read-only")
        ks = self._per_parameter(checked, self._coefficients(step))
        # One kernel (or None: the reference) per parameter, since params may mix dtypes
        # (float32 weights next to float16 ones) and a kernel module takes the dtypes it lists;
        # looked up once per (dtype, empty), not once per tensor (params share one library).
        fused: list[Any] = [None] * len(checked.params)
        if self.kernel is not None:  # None: a peer's convention, reference arithmetic only
            info, found = registry.OPTIMIZERS[self.name], {}
            for i, p in enumerate(checked.params):
                key = (p.dtype, p.size == 0)
                if key not in found:
                    kernels = kernels_for(info, p, backend)
                    found[key] = (
                        None if kernels is None else getattr(kernels, f"{self.kernel}_update_")
                    )
                fused[i] = found[key]
        # Nothing has been written above this line: every refusal leaves params and state intact.
        for i, (p, g) in enumerate(zip(checked.params, checked.grads)):
            own = tuple(None if s is None else s[i] for s in slots)
            if fused[i] is not None:
                # A fused kernel reads p, g and the slots once and writes p and the slots once,
                # computing exactly `_math`'s expression with the same coefficients.
                fused[i](p, g, *own, ks[i])
                continue
            p_new, own_new = self._one(checked.xp, p, g, own, ks[i])
            p[...] = p_new
            for old, new in zip(own, own_new):
                if old is not None and new is not old:
                    old[...] = new
        state.step[...] = step + 1

    # -- shared machinery ----------------------------------------------------------------------

    def _one(self, xp: Any, p: Any, g: Any, slots: tuple[Any, ...], k: Any) -> tuple[Any, tuple]:
        """One parameter's update in the accumulation dtype (design.md §6: 16-bit params are
        computed in float32 against float32 state and rounded once), cast back to p's dtype."""
        acc = _xp.accumulation_dtype(xp, p.dtype)
        p_acc = xp.astype(p, acc, copy=False)
        g_acc = xp.astype(g, acc, copy=False)
        p_new, slots_new = self._math(xp, p_acc, g_acc, slots, k)
        return xp.astype(p_new, p.dtype, copy=False), slots_new

    def _state_fields(self, state: Any) -> list[Any]:
        return [getattr(state, f) for f in self._slot_fields]

    def _checked(self, params: Any, grads: Any, state: Any) -> tuple[Checked, list, int]:
        """Every check of an update, before anything is computed: the state's kind and step, the
        params and grads, and each state array against its parameter."""
        op = self.name
        if not isinstance(state, self.state_type):
            raise TypeError(
                f"{op}: state must be a {self.state_type.__name__} (from {op}(...).init), "
                f"got {type(state).__name__}"
            )
        step = _step_of(op, state)
        checked = params_and_grads(op, params, grads)
        xp, keys, ps = checked.xp, checked.keys, checked.params
        slots = []
        for field, enabled, tree in zip(
            self._slot_fields, self._slots(), self._state_fields(state)
        ):
            if not enabled:
                slots.append(None)
                continue
            name = f"state.{field}"
            if tree is None:
                raise ValueError(
                    f"{op}: {name} is None but this configuration needs it; "
                    "was the state made by an optimizer with other settings?"
                )
            arrays = _matched(op, name, tree, keys, len(ps))
            for i, (s, p) in enumerate(zip(arrays, ps)):
                label = _label(name, keys, i)
                try:
                    same_library = _xp.namespace(s, p) is xp
                except TypeError:
                    same_library = False
                if not same_library:
                    raise TypeError(
                        f"{op}: {label} must be an array of the params' library, "
                        f"got {type(s).__name__}"
                    )
                _checks.same_shape(op, label, s, _label("params", keys, i), p)
                acc = _xp.accumulation_dtype(xp, p.dtype)
                if s.dtype != acc:
                    acc_name = _xp.dtype_name(p.dtype) if acc == p.dtype else "float32"
                    raise TypeError(
                        f"{op}: {label} must have dtype {acc_name} (the accumulation dtype of "
                        f"{_label('params', keys, i)}), got {_xp.dtype_name(s.dtype)}"
                    )
            slots.append(arrays)
        return checked, slots, step


class PeerVariant:
    """Mixin put before an optimizer class: that optimizer under one named convention of a peer
    (`variant`), for the conformance diagnosis; its `_math` is written for clarity, not speed."""

    kernel = None  # never a fused kernel: those compute the reference formula only

    def __init__(self, variant: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variant = variant
        self.hyperparams["variant"] = variant


def peer_variant(
    op: str,
    variant: str,
    known: Any,
    factory: Callable[..., Optimizer],
    hyperparams: dict,
    cls: type,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """`cls(variant, *args, **h, **kwargs)`, h the hyperparameters `factory(**hyperparams)` keeps
    (the factory checks them and supplies the defaults; their names are `cls`'s arguments), once
    `variant` is found among `known`: the body of each `<optimizer>_variant`."""
    if variant not in known:
        raise ValueError(f"{op}: unknown variant {variant!r}; known: {', '.join(known)}")
    h = factory(**hyperparams).hyperparams
    return cls(variant, *args, **h, **kwargs)


class GradientTransform:
    """Base of a transform that maps gradients to gradients (clipping) and goes in front of an
    optimizer in `chain`. `transform` is pure; `init` gives its state (EmptyState when it has
    none)."""

    name: str = "gradient_transform"
    needs_params: bool = False  # whether transform reads the weights (AGC does)

    def __init__(self, hyperparams: dict[str, Any]) -> None:
        self.hyperparams = dict(hyperparams)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{self.name}({args})"

    def init(self, params: Params) -> Any:
        params_only(self.name, params)
        return EmptyState()

    def transform(
        self, grads: Params, state: Any, params: Params | None = None
    ) -> tuple[Params, Any]:
        """(new grads, new state): new arrays; grads, state and params are left untouched.

        `params` may be left out by a transform that does not read the weights (needs_params
        False); given, they are checked against the grads like an optimizer's."""
        if not isinstance(state, EmptyState):
            raise TypeError(
                f"{self.name}: state must be the EmptyState from init, got {type(state).__name__}"
            )
        if params is None:
            if self.needs_params:
                raise ValueError(f"{self.name}: needs params (it reads the weights)")
            only = params_only(self.name, grads)
            checked, like = Checked(only.xp, only.keys, [], only.params), grads
        else:
            checked, like = params_and_grads(self.name, params, grads), params
        return rebuild(like, self._transform(checked)), state

    def _transform(self, checked: Checked) -> list[Any]:
        """The new gradients, one per parameter, in params' order. Pure."""
        raise NotImplementedError
