"""The protocol every token-reduction method implements, and the parsing they share.

A method is one ``Reducer``: it says where in a block it acts (``Where``), which blocks it
reduces at by default, how a setting is checked and planned for a model, how it reduces one
stage, how many patch tokens leave a stage (the one rule the engine and the cost model
share), and its parameter: how it is parsed from text, shown and laddered. The engine
(``vit.py``) calls a reducer at its place in the block and knows nothing else of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, Union

from torch import Tensor

from ..errors import InputError

if TYPE_CHECKING:
    from ..merge import Reduced

Value = Union[None, int, float, tuple, list, Any]


class ATSConfig(Protocol):
    """What a reducer reads of a setting (``setting.ATSConfig``, which knows the registry, so it
    is named here by its shape): the method, the stages, and its own fields by name."""

    method: str
    stages: tuple[int, ...] | None


class Where(enum.Enum):
    """Where a method reduces inside a block."""

    NOWHERE = "nowhere"  # the full model
    # Inside the attention, after the scores: the dropped query rows are never computed, so
    # A v, the projection and the MLP see the kept tokens alone (ATS, top-K, random).
    QUERIES = "queries"
    # After the attention residual, before the MLP: only the MLP sees fewer tokens (ToMe, EViT).
    TOKENS = "tokens"


@dataclass(frozen=True)
class Param:
    """A method's one tunable number (K, r or the keep rate)."""

    field: str  # the ATSConfig field it sets
    symbol: str  # as people write it: "K", "r", "keep"
    parse: Callable[[str], Value]  # one value (or one per stage) from text
    ladder: str  # the default ladder, spanning about the same GFLOPs for every method
    help: str
    default: Any = None  # what the field means when left at None (methods sharing a field differ)


@dataclass(frozen=True)
class Option:
    """A setting's field other than the parameter that changes what a method does (EViT's
    fusion, the random baseline's seed). ``tag`` names a non-default value in the setting's
    id and label ("unfused", "seed=3"); ``choices`` (value -> words) make it a choice in the app."""

    field: str
    label: str
    default: Any
    tag: Callable[[Any], str]
    choices: dict | None = None


@dataclass(frozen=True)
class StageInput:
    """What a reducing block hands its reducer: the attention's tensors and the tokens' state."""

    block: int
    depth: int  # blocks in the model
    q: Tensor  # B x H x N x head_dim, after the q norm
    k: Tensor  # B x H x N x head_dim, after the k norm
    v: Tensor  # B x H x N x head_dim
    scale: float
    key_mask: Tensor | None  # B x 1 x 1 x N bool, False for padded keys; None: no padding
    valid: Tensor  # B x P bool: False for padding
    pos: Tensor  # B x P long: each patch token's index on the original grid (pruning methods)
    size: Tensor | None  # B x N x 1: patches each token holds (merging), None until the first merge
    num_prefix: int
    num_patches: int  # of the original grid
    single: bool  # one image with no padding, where the cost per operation dominates
    trace: bool  # whether the run keeps a trace: where not, a reducer computes only what the forward needs


@dataclass
class Selection:
    """A query-side stage's choice: the evidence and the patch tokens that survive."""

    scores: Tensor | None  # B x P: the method's evidence per entering patch token (None: no trace, and not needed)
    kept: Tensor | None  # B x P bool (None: no trace, and ``index`` or ``order`` says it)
    index: Tensor | None = None  # for a single image, the kept indices ascending (saves a nonzero)
    order: Tensor | None = None  # B x K, the kept indices ascending, where every image keeps K (fixed rates)


class Reducer:
    """One token-reduction method. Subclasses set the class attributes and override the
    methods of their ``where``: ``select`` (queries) or ``reduce`` (tokens)."""

    name: str
    label: str
    colour: tuple[int, int, int]  # RGB, in every figure and on every page
    param: Param | None = None
    options: tuple[Option, ...] = ()
    where: Where = Where.NOWHERE
    evidence: str = ""  # what its score view shows per token
    about: str = ""
    groups: bool = False  # its stages merge tokens, so its view tints each merged group
    # Merged tokens weigh as many keys as the patches they hold (ToMe's proportional attention).
    proportional: bool = False
    samples: bool = False  # it samples from a CDF, so its stage has a sampling picture

    @property
    def reduces(self) -> bool:
        return self.where is not Where.NOWHERE

    @property
    def adaptive(self) -> bool:
        """Token counts depend on the image (else they follow from the setting alone)."""
        return False

    def default_stages(self, depth: int) -> tuple[int, ...]:
        return ()

    def value(self, config: ATSConfig) -> Value:
        return None if self.param is None else getattr(config, self.param.field)

    def canonical(self, value: Value) -> Value:
        """The parameter in its one stored form (so equal settings compare and hash equal): a
        list is a tuple, and one value given as a tuple of one is that value."""
        value = tuple(value) if isinstance(value, list) else value
        return value[0] if isinstance(value, tuple) and len(value) == 1 else value

    def plan(self, config: ATSConfig, depth: int, num_patches: int) -> dict[int, Any]:
        """{block: the stage's number}. Every check of a setting happens here, before any run."""
        if not self.reduces:
            return {}
        stages = self.default_stages(depth) if config.stages is None else tuple(config.stages)
        for s in stages:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < depth:
                raise InputError(f"Stage {s!r} is outside this model: its blocks are 0 to {depth - 1}.")
        if len(set(stages)) != len(stages):
            raise InputError(f"Stages {list(stages)} name a block twice.")
        stages = tuple(sorted(stages))
        return dict(zip(stages, self.stage_values(self.value(config), stages, depth, num_patches)))

    def stage_values(self, value: Value, stages: tuple[int, ...], depth: int, num_patches: int) -> list:
        """The parameter's value at each stage, checked (InputError with a sentence)."""
        raise NotImplementedError

    def tokens_out(self, patches: int, value: Any, config: ATSConfig) -> int | None:
        """Patch tokens leaving a stage that ``patches`` enter; None where the image decides."""
        return patches

    def candidates(self, num_patches: int) -> list:
        """Every value worth trying when matching a cost (fixed-rate methods)."""
        return []

    def select(self, inp: StageInput, value: Any, config: ATSConfig) -> Selection:
        raise NotImplementedError

    def reduce(self, inp: StageInput, x: Tensor, value: Any, config: ATSConfig) -> Reduced:
        raise NotImplementedError


# ---------------------------------------------------------------------------- parsing


def number(text: str, what: str, example: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise InputError(f"{what} '{text}' is not a number: {example}.") from None


def per_stage_text(text: str, one: Callable[[str], Value]) -> Value:
    """One value, or a comma-separated value per stage (a tuple); '' or 'default' is None
    (the method's own default)."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts or parts == ["default"]:
        return None
    return one(parts[0]) if len(parts) == 1 else tuple(one(p) for p in parts)


def fraction_text(what: str, example: str) -> Callable[[str], Value]:
    """A parser of fractions (a keep rate), one value or one per stage."""
    return lambda text: per_stage_text(text, lambda s: number(s, what, f"write a fraction such as {example}"))


def per_stage_values(value: Value, stages: Sequence[int], what: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * len(stages)
    if len(values) != len(stages):
        raise InputError(f"{what} gives {len(values)} values but there are {len(stages)} stages: give one per stage.")
    return values


def format_value(value: Value) -> str:
    """A parameter value as people write it: None is 'all'."""
    if value is None:
        return "all"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    return str(value)  # a float keeps its point: K=1.0 (every patch) is not K=1
