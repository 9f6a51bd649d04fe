"""The token-reduction methods: the registry of reducers, the only place that lists them.

Each method is one ``Reducer`` (``base.py`` says what one is) in its own module: the engine
(``vit.py``), the cost model, the sweeps, timing, the figures, the pages, the URL and the
command line all reach a method through ``METHODS`` and never compare its name. Adding a
method is one module and one entry in ``_ALL`` below.

docs/algorithm.md is the contract for each method's math.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import InputError
from .base import Option, Param, Reducer, Selection, StageInput, Value, Where, format_value
from .merging import EViT, Inflected, PerBlock, ToMe, tome_schedule
from .pitome import PiToMe
from .pruning import ATS, MAX_K_FACTOR, Random, TopK, budget


class Full(Reducer):
    name, label, colour = "full", "full (no pruning)", (44, 160, 44)
    about = "The unmodified model: every block sees every token."

    def default_stages(self, depth: int) -> tuple[int, ...]:
        return tuple(range(depth))


_ALL: tuple[Reducer, ...] = (Full(), ATS(), TopK(), Random(), ToMe(), EViT(), PiToMe())
METHODS: dict[str, Reducer] = {m.name: m for m in _ALL}
REDUCERS = tuple(name for name, m in METHODS.items() if m.reduces)  # every method but the full model
SWEEP_DEFAULT = ("ats", "tome", "evit", "topk")  # what a sweep compares unless told: ATS and the strongest rivals


def get(name: str) -> Reducer:
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


def format_stages(stages: Sequence[int]) -> str:
    """Blocks as people write them, runs shortened: (3, 4, 5, 9) -> '3-5,9'."""
    out, run = [], []
    for s in list(stages) + [None]:
        if run and (s is None or s != run[-1] + 1):
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run = []
        if s is not None:
            run.append(s)
    return ",".join(out)


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


__all__ = ["ATS", "EViT", "Full", "Inflected", "MAX_K_FACTOR", "METHODS", "Option", "Param", "PerBlock", "PiToMe", "REDUCERS", "Random",
           "Reducer", "SWEEP_DEFAULT", "Selection", "StageInput", "ToMe", "TopK", "Value", "Where", "budget",
           "format_stages", "format_value", "get", "parse_ladder", "parse_methods", "parse_stages", "tome_schedule"]
