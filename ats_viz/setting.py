"""One setting of one method, and its one identity.

A setting is typed (``ATSConfig``: the method, its parameter, the stages, its own options)
and has one stable ``id``, written to be read: "ats K=0.5", "evit keep=0.7 unfused",
"random K=0.5 seed=3", "tome r=13 stages=0-5". Runs, the disk cache, timing, session state
and every CSV key a setting by its id, so two settings that differ in anything that changes
a run (stages included) never share one. Fields the method does not read are reset to their
defaults on construction (and a one-value tuple is that value, stages are sorted), so equal
ids mean equal settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .methods import Value, format_stages, format_value, get, parse_stages


@dataclass(frozen=True)
class ATSConfig:
    """Where and how to reduce tokens: one setting of one method (see ``methods.METHODS``).

    method: a name in the registry ("ats", "topk", "random", "tome", "evit", "pitome"; "full":
       no reduction); an unknown name is refused with a sentence.
    stages: the blocks (0-based) that reduce; None means the method's own default (ATS and its
       baselines: depth // 4 to the end; ToMe: every block; EViT: blocks 3, 6, 9 of 12).
    k: ATS, top-K and random's budget per stage: None (all patch tokens of the input), an int,
       a float fraction of the input's patch tokens, or one such value per stage.
    r: ToMe's tokens merged per block: an int, one per stage, a per-block list (``methods.PerBlock``),
       or ToMe's (r, inflection) schedule (``methods.Inflected``, or the pair with a float
       inflection); None is ToMe's 13.
    keep_rate: EViT's fraction of the patch tokens kept at each stage, or PiToMe's in each
       block (or one per stage); None is the method's own default (EViT 0.7, PiToMe 0.9125).
    fuse_token: EViT fuses the tokens it drops into one (EViT's default) or drops them.
    seed: the seed of the "random" baseline.
    """

    stages: tuple[int, ...] | None = None
    k: Value = None
    method: str = "ats"
    seed: int = 0
    r: Value = None
    keep_rate: Value = None
    fuse_token: bool = True

    def __post_init__(self) -> None:
        m = get(self.method)
        own = {o.field for o in m.options} | ({m.param.field} if m.param else set())
        for f in dataclasses.fields(self):
            if f.name in ("method", "stages"):
                continue
            value = getattr(self, f.name)
            if f.name not in own:
                value = f.default
            elif m.param is not None and f.name == m.param.field:
                value = m.canonical(m.param.default if value is None else value)
            object.__setattr__(self, f.name, value)
        if self.stages is not None:  # in block order: (5, 3) and (3, 5) are one setting
            stages = tuple(self.stages)
            object.__setattr__(self, "stages", tuple(sorted(stages)) if all(
                isinstance(s, int) and not isinstance(s, bool) for s in stages) else stages)

    def _words(self, name: str) -> str:
        m = get(self.method)
        parts = [name]
        if m.param is not None:
            parts.append(f"{m.param.symbol}={format_value(m.value(self))}")
        parts += [tag for o in m.options if (tag := o.tag(getattr(self, o.field)))]
        if self.stages is not None:
            parts.append(f"stages={format_stages(self.stages)}")
        return " ".join(parts)

    @property
    def id(self) -> str:
        """The setting's one identity, stable across runs and machines: "ats K=0.5"."""
        return self._words(self.method)

    def label(self) -> str:
        """What people read in legends and titles, the method by its name: "ATS K=0.5"."""
        return self._words(get(self.method).label)

    @property
    def value(self) -> Value:
        """The method's parameter (K, r, the keep rate), None for the full model."""
        return get(self.method).value(self)


FULL = ATSConfig(method="full")


def from_text(method: str, stages: str = "", value: str = "", **options: Any) -> ATSConfig:
    """One setting from what a person typed: the method's name, its stages ('' for its own,
    '3-11'), its parameter as text ('0.5', '13:-0.5') and its options; an InputError says
    what is wrong."""
    m = get(method)
    extra = {m.param.field: m.param.parse(value)} if m.param is not None else {}
    return ATSConfig(method=method, stages=parse_stages(stages), **extra, **options)


def resolve(config: ATSConfig, depth: int, num_patches: int) -> dict[int, Any]:
    """The plan {block: the stage's number} for a model of this depth and an input of
    num_patches; the one place a setting is checked (it raises InputError with a sentence)."""
    return get(config.method).plan(config, depth, num_patches)
