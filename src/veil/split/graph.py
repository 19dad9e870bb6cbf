"""Cutting any ``torch.fx``-traceable model in two after one of its modules.

``torch.fx.symbolic_trace`` turns ``forward`` into a graph whose nodes run in execution order; every node
records the stack of module paths it ran inside (``meta["nn_module_stack"]``). The cut after module ``m``
sits right after ``m``'s last node, and is valid when exactly one value computed up to there is still
needed afterwards, that value is ``m``'s output and it is a tensor. Parameters and values computed from
parameters alone are not inputs: the tail re-reads them. The head and tail are ``fx.GraphModule``\\ s that
share the model's submodules and parameters (same objects, same state_dict keys as in the model).

A model that declares its own split points — ``model.split_points()`` and ``model.split(at)`` returning
``(head, tail)``, as FaceBoxes does — is cut where it says instead (the timm-style interface a model
offers when ``forward`` is not traceable); the exactness check is the same.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from veil.errors import InputError, SplitPointError

__all__ = ["cut", "split_points"]

_SHOWN = 8  # how many names an error lists at most
_NOT_TENSOR = "what crosses there is not a tensor"


@dataclass
class _Graph:
    """One trace of ``model`` plus what the example taught about each node."""

    model: nn.Module
    inputs: tuple[Tensor, ...]
    name: str
    gm: fx.GraphModule
    nodes: list[fx.Node]
    modules: list[str]  # named_modules() order, root excluded
    index: dict[fx.Node, int] = field(default_factory=dict)
    last_use: dict[fx.Node, int] = field(default_factory=dict)
    constant: set[fx.Node] = field(default_factory=set)  # needs no input: the tail may recompute it
    tensors: set[fx.Node] | None = None  # the nodes that made a Tensor on the example, once run
    span: dict[str, list[int]] = field(default_factory=dict)  # module path -> its node positions
    calls: dict[str, set[str]] = field(default_factory=dict)  # module path -> its call keys ("a@1", ...)

    def crossing(self, pos: int) -> list[fx.Node]:
        """Values made at or before ``pos`` that something after ``pos`` still needs."""
        return [n for n in self.nodes[: pos + 1] if n not in self.constant and self.last_use.get(n, -1) > pos]

    def is_tensor(self, node: fx.Node) -> bool:
        if self.tensors is None:
            self.tensors = _run_example(self)
        return node in self.tensors

    def tail_is_empty(self, pos: int) -> bool:
        return all(n.op == "output" or n in self.constant for n in self.nodes[pos + 1 :])


def _as_tuple(example: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (example,) if isinstance(example, Tensor) else tuple(example)


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Trace and check in eval mode (inference), then restore each module's own training flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _concrete_args(model: nn.Module, n_inputs: int) -> dict[str, Any]:
    """Parameters of ``forward`` after the example's inputs are fixed to their defaults."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = positional[n_inputs:]
    missing = [p.name for p in rest if p.default is inspect.Parameter.empty]
    if missing:
        raise InputError(
            f"{type(model).__name__}.forward also needs {', '.join(missing)}: "
            "pass every input in the example, as a tuple"
        )
    return {p.name: p.default for p in rest}


def _drop_specialized(gm: fx.GraphModule, n_inputs: int) -> None:
    """Remove the placeholders fx made for defaulted arguments, and the asserts that guard them."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    doomed: set[fx.Node] = set()
    for ph in placeholders[n_inputs:]:
        stack = [ph]
        while stack:
            n = stack.pop()
            if n not in doomed:
                doomed.add(n)
                stack.extend(n.users)
    for n in reversed(list(gm.graph.nodes)):
        if n in doomed:
            gm.graph.erase_node(n)
    gm.recompile()


def _run_example(g: _Graph) -> set[fx.Node]:
    """Run the graph on the example; the nodes whose value was a Tensor."""
    tensors: set[fx.Node] = set()

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, Tensor):
                tensors.add(n)
            return out

    try:
        with _eval(g.model), torch.no_grad():
            _Record(g.gm).run(*g.inputs)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{g.name} fails on the example ({type(e).__name__}: {first})") from None
    return tensors


def _trace(model: nn.Module, example: Tensor | tuple[Tensor, ...]) -> _Graph:
    inputs = _as_tuple(example)
    name = type(model).__name__
    with _eval(model):
        concrete = _concrete_args(model, len(inputs))
        try:
            gm = fx.symbolic_trace(model, concrete_args=concrete or None)
        except Exception as e:  # fx raises many kinds (TraceError, TypeError, NotImplementedError, ...)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise SplitPointError(
                f"torch.fx cannot trace {name} ({type(e).__name__}: {first}); cut it yourself and pass "
                "the parts as veil.protect(head=..., tail=...)"
            ) from None
        if concrete:
            _drop_specialized(gm, len(inputs))
        g = _Graph(model, inputs, name, gm, list(gm.graph.nodes), [p for p, _ in model.named_modules() if p])
    for i, n in enumerate(g.nodes):
        g.index[n] = i
        derived = n.op not in ("placeholder", "output") and all(a in g.constant for a in n.all_input_nodes)
        if (n.op == "get_attr" or derived) and not n.is_impure():
            g.constant.add(n)
        for key, (path, _) in n.meta.get("nn_module_stack", {}).items():
            g.span.setdefault(path, []).append(i)
            g.calls.setdefault(path, set()).add(key)
    for n in g.nodes:
        g.last_use[n] = max((g.index[u] for u in n.users), default=-1)
    return g


def _check(g: _Graph, path: str, run: bool = True) -> tuple[int, fx.Node] | str:
    """(cut position, crossing node) when ``path`` is a valid cut, else why not (a clause).

    ``run=False`` skips running the example to see that what crosses is a tensor (``cut`` sees it).
    """
    if path not in g.span:
        return "it never runs in forward"
    if len(g.calls[path]) > 1:
        return f"it is called {len(g.calls[path])} times (shared weights)"
    pos = max(g.span[path])
    if g.tail_is_empty(pos):
        return "nothing would be left to run in the tail"
    cross = g.crossing(pos)
    if len(cross) != 1:
        own = set(g.span[path])
        earlier = [n for n in cross if g.index[n] not in own]
        why = " (a residual or skip connection)" if earlier and len(cross) > 1 else ""
        return f"{len(cross)} values cross there{why}"
    (node,) = cross
    if g.index[node] not in g.span[path]:
        return f"what crosses there is {node.name!r}, not its output"
    if run and not g.is_tensor(node):
        return _NOT_TENSOR
    return pos, node


def _valid(g: _Graph) -> list[tuple[int, str, fx.Node]]:
    """(position, path, crossing node) of every valid cut, inner modules before the ones they end."""
    order = {p: i for i, p in enumerate(g.modules)}
    found = []
    for path in g.modules:
        r = _check(g, path)
        if not isinstance(r, str):
            found.append((r[0], path, r[1]))
    found.sort(key=lambda t: (t[0], -t[1].count("."), order[t[1]]))
    return found


def split_points(model: nn.Module, example: Tensor | tuple[Tensor, ...]) -> list[str]:
    """Valid split names (module paths from ``model.named_modules()``), in execution order.

    A module's name comes when the module finishes, so ``layer1.1`` comes before ``layer1``.
    A model that declares its split points (``split_points()``) lists them itself.
    """
    if _declares(model):
        return [str(p) for p in model.split_points()]  # type: ignore[operator]
    return [path for _, path, _ in _valid(_trace(model, example))]


def _declares(model: nn.Module) -> bool:
    """Whether ``model`` offers its own cut: ``split_points()`` and ``split(at) -> (head, tail)``."""
    return callable(getattr(model, "split_points", None)) and callable(getattr(model, "split", None))


def _declared_cut(
    model: nn.Module, split: str, example: Tensor | tuple[Tensor, ...]
) -> tuple[nn.Module, nn.Module]:
    points = [str(p) for p in model.split_points()]  # type: ignore[operator]
    name = type(model).__name__
    if split not in points:
        close = difflib.get_close_matches(split, points, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SplitPointError(f"no split point {split!r} in {name}: {hint}it declares {', '.join(points)}")
    head, tail = model.split(split)  # type: ignore[operator]
    inputs = example if isinstance(example, tuple) else (example,)
    with _eval(model), torch.no_grad():
        want = model(*inputs)
        crossing = head(*inputs)
        if not isinstance(crossing, Tensor):
            raise SplitPointError(f"cannot split {name} after {split!r}: {_NOT_TENSOR}")
        got = tail(crossing)
    if not _same(want, got):
        raise SplitPointError(
            f"cannot split {name} after {split!r}: tail(head(x)) differs from model(x) on the example"
        )
    return head, tail


def _closest(names: list[str], wanted: str) -> str:
    """The name sharing most leading path components with ``wanted``; ties go to the first."""

    def shared(n: str) -> int:
        k = 0
        for a, b in zip(n.split("."), wanted.split("."), strict=False):
            if a != b:
                break
            k += 1
        return k

    return max(names, key=lambda n: (shared(n), -names.index(n)))


def _neighbours(valid: list[tuple[int, str, fx.Node]], pos: int, wanted: str) -> list[str]:
    before = [t for t in valid if t[0] <= pos and t[1] != wanted]
    after = [t for t in valid if t[0] > pos]
    out = []
    if before:
        at = before[-1][0]
        out.append(_closest([p for q, p, _ in before if q == at], wanted))
    if after:
        at = after[0][0]
        out.append(_closest([p for q, p, _ in after if q == at], wanted))
    return out


def _summary(valid: list[tuple[int, str, fx.Node]]) -> str:
    """The shallowest valid names (in execution order), then how many deeper ones there are."""
    names = [p for _, p, _ in valid]
    if len(names) <= _SHOWN:
        return ", ".join(names)
    top = min(n.count(".") for n in names)
    shown = [n for n in names if n.count(".") == top][:_SHOWN]
    return f"{', '.join(shown)} (and {len(names) - len(shown)} more)"


def _copy_head(g: _Graph, pos: int, cross: fx.Node) -> fx.Graph:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in g.nodes[: pos + 1]:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[cross])
    return graph


def _copy_tail(g: _Graph, pos: int, cross: fx.Node) -> fx.Graph:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cross: graph.placeholder("x")}

    def arg(a: fx.Node) -> fx.Node:
        if a not in env:  # a constant made in the head: recompute it here (after what it needs)
            env[a] = graph.node_copy(a, arg)
        return env[a]

    for n in g.nodes[pos + 1 :]:
        env[n] = graph.node_copy(n, arg)
    return graph


def _module(g: _Graph, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    gm = fx.GraphModule(g.gm, graph, class_name=class_name)
    gm.graph.eliminate_dead_code()  # the purity check needs the owning module
    gm.recompile()
    return fx.GraphModule(g.gm, gm.graph, class_name=class_name)  # only the attributes still used


def _same(a: Any, b: Any) -> bool:
    leaves_a, spec_a = pytree.tree_flatten(a)
    leaves_b, spec_b = pytree.tree_flatten(b)
    if spec_a != spec_b:
        return False
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if isinstance(x, Tensor) != isinstance(y, Tensor):
            return False
        if isinstance(x, Tensor):
            if x.dtype != y.dtype or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def cut(model: nn.Module, split: str, example: Tensor | tuple[Tensor, ...]) -> tuple[nn.Module, nn.Module]:
    """(head, tail) with ``tail(head(*example)) == model(*example)`` exactly, checked here.

    ``head`` takes the model's inputs and returns the one tensor that crosses the cut; ``tail`` takes
    that tensor and returns the model's own output structure (tensor, tuple, dict). Both are
    ``fx.GraphModule``\\ s sharing ``model``'s submodules and parameters (state_dict keys as in
    ``model``); they are traced in eval mode and work for any batch size. A model that declares its own
    split points is cut by its own ``split(at)``.
    """
    if _declares(model):
        return _declared_cut(model, split, example)
    g = _trace(model, example)
    if split not in g.modules:
        valid = _valid(g)
        close = difflib.get_close_matches(split, [p for _, p, _ in valid], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        listed = _summary(valid) if valid else "none"
        raise SplitPointError(f"no module {split!r} in {g.name}: {hint}valid split points include {listed}")
    r = _check(g, split, run=False)
    if isinstance(r, str):
        _refuse(g, split, r)
    pos, cross = r
    head = _module(g, _copy_head(g, pos, cross), f"{g.name}Head")
    tail = _module(g, _copy_tail(g, pos, cross), f"{g.name}Tail")
    with _eval(model), torch.no_grad():
        want = model(*g.inputs)
        crossing = head(*g.inputs)
        if not isinstance(crossing, Tensor):
            _refuse(g, split, _NOT_TENSOR)
        got = tail(crossing)
    if not _same(want, got):
        raise SplitPointError(
            f"cannot split {g.name} after {split!r}: tail(head(x)) differs from model(x) on the example "
            "(is forward random or stateful?)"
        )
    return head, tail


def _refuse(g: _Graph, split: str, why: str) -> NoReturn:
    pos = max(g.span.get(split, [len(g.nodes)]))
    near = _neighbours(_valid(g), pos, split)
    names = f"nearest valid split points: {', '.join(near)}" if near else "it has no valid split points"
    raise SplitPointError(f"cannot split {g.name} after {split!r}: {why}; {names}")
