"""The token-reduction methods, one entry each: the only place that names a method.

An entry holds what every part of the project needs to know about a method: its name and
label, its colour in every figure, its parameter (how it is parsed from text, its default
ladder, how it is checked), where in a block it reduces, the blocks it reduces at by default,
and what its score view shows. The engine (``vit.py``), the pages, the URL, the command line,
the sweeps and the figures all read ``METHODS``; adding a method is one entry here plus its
math (``ats.py`` for pruning by scores, ``merge.py`` for merging and fusing).

docs/algorithm.md is the contract for each method's math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence, Union

from .errors import InputError

if TYPE_CHECKING:
    from .vit import ATSConfig

MAX_K_FACTOR = 16  # K above this many times the patch count is refused: more points pick nothing new
Value = Union[None, int, float, tuple]


@dataclass(frozen=True)
class Param:
    """A method's one tunable number (K, r or the keep rate)."""

    field: str  # the ATSConfig field it sets
    symbol: str  # as people write it: "K", "r", "keep"
    parse: Callable[[str], Value]  # one value (or one per stage) from text
    ladder: str  # the default ladder, spanning about the same GFLOPs for every method
    help: str


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    colour: tuple[int, int, int]  # RGB, in every figure and on every page
    param: Param | None
    # Where a block reduces: "queries" drops query rows inside the attention (ATS and its
    # baselines: A v, projection and MLP see the kept tokens); "tokens" reduces after the
    # attention residual (ToMe, EViT: only the MLP sees fewer tokens); "" never reduces.
    where: str
    default_stages: Callable[[int], tuple[int, ...]]  # blocks that reduce, for a model of this depth
    evidence: str  # what its score view shows per token
    about: str

    def value(self, config: ATSConfig) -> Value:
        return None if self.param is None else getattr(config, self.param.field)

    def plan(self, config: ATSConfig, depth: int, num_patches: int) -> dict[int, int | float]:
        """{block: the stage's number}: K for ATS, top-K and random, r for ToMe, the keep rate
        for EViT. Every check of a setting happens here, before any run."""
        if not self.where:
            return {}
        stages = self.default_stages(depth) if config.stages is None else tuple(config.stages)
        for s in stages:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < depth:
                raise InputError(f"Stage {s!r} is outside this model: its blocks are 0 to {depth - 1}.")
        if len(set(stages)) != len(stages):
            raise InputError(f"Stages {list(stages)} name a block twice.")
        stages = tuple(sorted(stages))
        return _PLANS[self.name](self.value(config), stages, depth, num_patches)


def _ats_stages(depth: int) -> tuple[int, ...]:
    """The ATS paper's stages, blocks 3 to 11 of 12, scaled to other depths."""
    return tuple(range(depth // 4, depth))


def _evit_stages(depth: int) -> tuple[int, ...]:
    """EViT's blocks 3, 6 and 9 of 12, scaled to other depths."""
    q = max(depth // 4, 1)
    return tuple(b for b in (q, 2 * q, 3 * q) if b < depth)


def _every_block(depth: int) -> tuple[int, ...]:
    return tuple(range(depth))


# ---------------------------------------------------------------------------- parsing one value


def _number(text: str, what: str, example: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise InputError(f"{what} '{text}' is not a number: {example}.") from None


def _per_stage(text: str, one: Callable[[str], Value]) -> Value:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        return one("")
    return one(parts[0]) if len(parts) == 1 else tuple(one(p) for p in parts)


def _k(text: str) -> Value:
    """'all' -> None; '98' -> 98; '0.5' -> half the patches; '120, 100, 80' -> one per stage."""
    def one(s: str) -> Value:
        s = s.strip().lower()
        if s in ("", "all"):
            return None
        return _number(s, "K", "write a count (98), a fraction (0.5) or 'all'")
    return _per_stage(text, one)


def _r(text: str) -> Value:
    """'13' -> 13 merges in every block; '16, 16, 12' -> one per stage."""
    def one(s: str) -> Value:
        v = _number(s.strip(), "r", "write the tokens merged per block, such as 13")
        if not isinstance(v, int):
            raise InputError(f"r = {s} is not a whole number of tokens: write one such as 13.")
        return v
    return _per_stage(text, one)


def _keep(text: str) -> Value:
    """'0.7' -> keep 70% of the patch tokens at each stage; '0.9, 0.7, 0.5' -> one per stage."""
    return _per_stage(text, lambda s: _number(s.strip(), "The keep rate", "write a fraction such as 0.7"))


# ---------------------------------------------------------------------------- plans (validation)


def _per_stage_values(value: Value, stages: tuple[int, ...], what: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * len(stages)
    if len(values) != len(stages):
        raise InputError(f"{what} gives {len(values)} values but there are {len(stages)} stages: give one per stage.")
    return values


def budget(k: Value, num_patches: int) -> int:
    """K as a count of sample points: None is every patch, a float a fraction of them."""
    if k is None:
        return num_patches
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise InputError(f"K must be a whole number or a fraction, not {k!r}.")
    if isinstance(k, float):
        if not 0 < k <= 1:
            raise InputError(f"K as a fraction must be in (0, 1]; got {k}. Give a whole number for a count.")
        value = round(k * num_patches)
        if value < 2:
            raise InputError(f"K = {k} of {num_patches} patches is {value} tokens; K must be at least 2.")
        return value
    if k < 2:
        raise InputError(f"K must be at least 2 (got {k}).")
    if k > MAX_K_FACTOR * num_patches:
        raise InputError(f"K = {k} is more than {MAX_K_FACTOR} times the {num_patches} patch tokens; "
                         f"give at most {MAX_K_FACTOR * num_patches}.")
    return k


def _plan_k(k: Value, stages: tuple[int, ...], depth: int, num_patches: int) -> dict[int, int | float]:
    return {s: budget(v, num_patches) for s, v in zip(stages, _per_stage_values(k, stages, "K"))}


def tome_schedule(r: Value, depth: int) -> list[int]:
    """ToMe's r per block: an int for every block, a per-block list (padded with 0), or
    ToMe's (r, inflection) schedule, which shifts merging towards the first (inflection > 0)
    or the last blocks (inflection < 0) at the same total."""
    if isinstance(r, list):
        return list(r) + [0] * (depth - len(r))
    inflect = 0.0
    if isinstance(r, tuple):
        if len(r) != 2:
            raise InputError(f"r = {r!r}: give an int, a per-block list, or (r, inflection).")
        r, inflect = r
    if isinstance(r, bool) or not isinstance(r, int):
        raise InputError(f"r must be a whole number of tokens merged per block, not {r!r}.")
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    step = (hi - lo) / (depth - 1) if depth > 1 else 0.0
    return [int(lo + step * i) for i in range(depth)]


def _plan_r(r: Value, stages: tuple[int, ...], depth: int, num_patches: int) -> dict[int, int | float]:
    # A per-stage tuple from text is one r per stage; the library's (r, inflection) pair is a
    # schedule over every block, told apart by its float.
    if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], float):
        per_block = tome_schedule(r, depth)
        values = [per_block[s] for s in stages]
    elif isinstance(r, list):
        per_block = tome_schedule(r, depth)
        values = [per_block[s] for s in stages]
    else:
        values = _per_stage_values(r, stages, "r")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(f"r = {v!r} is impossible: it counts the tokens merged per block (0 or more).")
    # r above what can merge is capped at run time, as ToMe does (half the unprotected tokens).
    return {s: v for s, v in zip(stages, values) if v > 0}


def _plan_keep(rate: Value, stages: tuple[int, ...], depth: int, num_patches: int) -> dict[int, int | float]:
    out = {}
    for s, v in zip(stages, _per_stage_values(rate, stages, "The keep rate")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise InputError(f"The keep rate {v!r} is impossible: give a fraction in (0, 1], such as 0.7.")
        out[s] = float(v)
    return out


_PLANS = {"ats": _plan_k, "topk": _plan_k, "random": _plan_k, "tome": _plan_r, "evit": _plan_keep}

# ---------------------------------------------------------------------------- the registry

# The default ladders span about 40-75% of the full model's GFLOPs for every method (on the
# shipped model and DeiT-S), so their curves share one axis. ATS's K sets how many points it
# samples, not how many tokens it keeps, so its ladder starts at every patch.
_K_HELP = "'all' (every patch of the input), a count (98), a fraction (0.5) or one value per stage."
_K = Param("k", "K", _k, "all,0.75,0.5,0.25", _K_HELP)
_FIXED_K = Param("k", "K", _k, "0.5,0.35,0.2,0.1", _K_HELP)

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", "full (no pruning)", (44, 160, 44), None, "", _every_block, "",
           "The unmodified model: every block sees every token."),
    Method("ats", "ATS", (214, 39, 40), _K, "queries", _ats_stages, "significance",
           "Adaptive Token Sampling: significance = class attention x value norm; inverse transform "
           "sampling keeps K' <= K tokens, a different number per image."),
    Method("topk", "top-K", (31, 119, 180), _FIXED_K, "queries", _ats_stages, "significance",
           "The K patch tokens of highest significance (ATS's scores, a fixed count)."),
    Method("random", "random", (127, 127, 127), _FIXED_K, "queries", _ats_stages, "significance",
           "K random patch tokens (seeded), whatever their scores."),
    Method("tome", "ToMe", (148, 103, 189),
           Param("r", "r", _r, "8,12,15,17", "Tokens merged in each block (13 halves DeiT-S's 197 tokens "
                 "to 41), or one value per stage."),
           "tokens", _every_block, "similarity",
           "Token Merging: in every block the r most similar pairs (keys, bipartite matching) merge "
           "into their size-weighted mean; attention weighs merged tokens by their size."),
    Method("evit", "EViT", (255, 127, 14),
           Param("keep_rate", "keep", _keep, "0.8,0.6,0.45,0.3", "The fraction of patch tokens kept at each "
                 "stage (EViT: 0.7 at blocks 3, 6, 9), or one value per stage."),
           "tokens", _evit_stages, "class attention",
           "EViT: keep the patch tokens with the highest class attention; the rest fuse into one "
           "token, weighted by their class attention."),
)}
REDUCERS = tuple(name for name, m in METHODS.items() if m.where)  # every method but the full model
SWEEP_DEFAULT = ("ats", "tome", "evit", "topk")  # what a sweep compares unless told: ATS and the strongest rivals


def get(name: str) -> Method:
    """The method called ``name``, or a sentence listing the ones there are."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise InputError(f"Unknown method '{name}': choose one of {', '.join(METHODS)}.") from None


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """Methods such as "ats,topk,tome", in the order given, no repeats."""
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise InputError(f"Unknown method(s) {', '.join(bad)}: choose from {', '.join(METHODS)}.")
    if not names:
        raise InputError(f"Give at least one method ({', '.join(METHODS)}).")
    return list(dict.fromkeys(names))


def parse_stages(text: str) -> tuple[int, ...] | None:
    """'' -> the method's default blocks; '3-11' or '3, 5, 7' -> block indices."""
    text = text.strip()
    if not text or text.lower() == "default":
        return None
    out: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            if "-" in part[1:]:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise InputError(f"Stages '{part}' run backwards: write the first block first, like {b}-{a}.")
                if b - a > 1000:  # checked before expanding: a URL must not exhaust memory
                    raise InputError(f"Stages '{text}' name more blocks than any ViT has.")
                out += range(a, b + 1)
            elif part:
                out.append(int(part))
    except InputError:
        raise
    except ValueError:
        raise InputError(f"Stages '{text}' are not block numbers: write them like 3-11 or 3, 6, 9.") from None
    return tuple(out)


def parse_ladder(method: str, text: str | Sequence) -> list[Value]:
    """A ladder of the method's parameter, such as "all,0.75,0.5" for K or "8,13" for r: in the
    order given, no repeats. Each value is checked when the settings meet a model (``plan``)."""
    m = get(method)
    if m.param is None:
        return [None]
    parts = [str(p).strip() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p for p in parts if p]
    if not parts:
        raise InputError(f"The {m.param.symbol} ladder of {m.label} is empty: give values such as {m.param.ladder}.")
    out: list[Value] = []
    for p in parts:
        v = m.param.parse(p)
        if v not in out:
            out.append(v)
    return out


def format_value(value: Value) -> str:
    """A parameter value as people write it: None is 'all'."""
    if value is None:
        return "all"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    return str(value)  # a float keeps its point: K=1.0 (every patch) is not K=1

