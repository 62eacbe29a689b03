"""GRPO rewards: each one a TRL reward function ``f(prompts, completions, **kwargs) -> list[float]``.

TRL calls every reward function with the prompts, the decoded completions and, as keyword lists
(one entry per completion), every dataset column plus every extra field our ``rollout_func``
returns.  The fields these functions read (all optional, with a fallback to the completion text):

* ``golden_answers`` – list of gold strings per completion (dataset column or rollout field);
* ``answer_match`` – ``"any"`` (alternatives, best one counts), ``"all"`` (every string, any
  order: FanoutQA) or ``"ordered"`` (every string, in order: RAMP masks);
* ``mask_count`` – RAMP examples have one; a RAMP record that says ``"all"`` is ``"ordered"``;
* ``answer`` – the rollout's final answer (else the last ``<answer>`` of the completion text);
* ``status`` / ``trajectory`` – the rollout's status and the :class:`Trajectory` as a dict;
* ``num_model_tokens`` – tokens the policy generated (environment tokens excluded).

Every answer score comes from :mod:`masksearch.scoring` (the project's one scorer, shared with the
teacher's acceptance verdict and the evaluation metrics), under the question's match rule
(:func:`masksearch.scoring.match_rule`: ``any`` / ``all`` / ``ordered``).  The paper's answer reward
is token recall; :func:`recall_reward` caps it by the answer's precision
(:func:`masksearch.scoring.capped_recall`), so listing candidates or hedging does not earn the
full reward.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from masksearch.agents.judge import LLMJudge
from masksearch.agents.judge import parse_verdict as parse_verdict  # re-exported: the one judge parser
from masksearch.errors import MaskSearchError
from masksearch.protocol import parse_action
from masksearch.scoring import capped_recall, match_rule, score
from masksearch.scoring import exact_match as exact_match  # re-exported pairwise metrics
from masksearch.scoring import f1 as f1_score
from masksearch.scoring import token_recall as token_recall

RewardFunc = Callable[..., list[float]]


class RewardSpecError(MaskSearchError, ValueError):
    """An unknown reward name, a dotted path that does not import, or weights that do not fit."""

# score_answer's metric names -> keys of masksearch.scoring.score
_METRIC_KEYS = {"recall": "token_recall", "f1": "f1", "em": "em"}


def score_answer(
    pred: str | None,
    golds: Sequence[str],
    metric: str = "recall",
    answer_match: str = "any",
    ordered: bool | None = None,
) -> float:
    """One metric (``recall``, ``f1``, ``em``) of a predicted answer, from :func:`masksearch.scoring.score`,
    under the match rule ``answer_match`` (``any``, ``all`` or ``ordered``), as everywhere else.

    ``ordered`` overrides ``all``: ``True`` makes it ``ordered`` (span *i* against gold *i*),
    ``False`` keeps ``all`` (each gold against its best predicted span).
    """
    if metric not in _METRIC_KEYS:
        raise ValueError(f"unknown metric {metric!r}: use recall, f1 or em")
    rule = match_rule(answer_match)
    if rule in ("all", "ordered") and ordered is not None:
        rule = "ordered" if ordered else "all"
    return score(pred, golds, rule)[_METRIC_KEYS[metric]]


# --------------------------------------------------------------------------- the registry
@dataclass
class RewardOptions:
    """What a parametrised reward (a registered *factory*) is built from; set in the GRPO YAML."""

    length_soft: int = 256
    length_hard: int = 512
    judge_model: Any = None  # spec string or chat model, needed by the "judge" reward
    recall_min_precision: float = 2 / 3  # 0: the paper's plain token recall


@dataclass(frozen=True)
class RegisteredReward:
    fn: Callable[..., Any]
    factory: bool  # fn(options) -> reward function, else fn is the reward function
    weight: float  # the weight used when GRPOConfig.reward_weights is not given


_REGISTRY: dict[str, RegisteredReward] = {}


def register_reward(name: str, *, factory: bool = False, weight: float = 1.0) -> Callable[[Callable], Callable]:
    """Decorator: make a reward available by name in ``reward_funcs``.

    A reward is a TRL reward function ``f(prompts, completions, **kwargs) -> list[float]``; with
    ``factory=True`` the decorated function instead takes a :class:`RewardOptions` and returns
    one.  ``weight`` is its default weight when ``GRPOConfig.reward_weights`` is not set.
    """

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise RewardSpecError(f"a reward named {name!r} is already registered")
        _REGISTRY[name] = RegisteredReward(fn, factory, float(weight))
        return fn

    return deco


def reward_names() -> list[str]:
    """The registered reward names, in registration order."""
    return list(_REGISTRY)


def _import_reward(path: str) -> Callable[..., Any]:
    """``pkg.mod:attr`` or ``pkg.mod.attr`` (the longest importable module prefix) -> the object."""
    if ":" in path:
        mod_name, _, attr = path.partition(":")
        candidates = [(mod_name, attr)]
    else:
        parts = path.split(".")
        candidates = [(".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)]
    error: Exception | None = None
    for mod_name, attr in candidates:
        if not mod_name or not attr:
            continue
        try:
            obj: Any = importlib.import_module(mod_name)
        except ImportError as e:
            error = error or e
            continue
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise RewardSpecError(f"reward {path!r}: module {mod_name!r} has no {attr!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise RewardSpecError(f"reward {path!r} is not callable")
        return obj
    if error is None:
        raise RewardSpecError(f"reward {path!r} is not a dotted path: write pkg.module:function or pkg.module.function")
    raise RewardSpecError(f"reward {path!r}: cannot import module ({error})") from error


def get_reward(spec: str | Callable[..., Any], options: RewardOptions | None = None) -> RewardFunc:
    """A reward function from a registered name (``format``, ``recall``, ...), a dotted import path
    (``pkg.mod:func`` or ``pkg.mod.func``, TRL's convention) or a callable (returned as is)."""
    if callable(spec):
        return spec
    name = str(spec).strip()
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry.fn(options or RewardOptions()) if entry.factory else entry.fn
    if ":" in name or "." in name:
        return _import_reward(name)
    raise RewardSpecError(f"unknown reward {name!r}; choose from {', '.join(_REGISTRY)} "
                          f"or give a dotted import path (pkg.module:function)")


def build_rewards(specs: Sequence[str | Callable[..., Any]], weights: Sequence[float] | None = None,
                  options: RewardOptions | None = None) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions for ``GRPOTrainer(reward_funcs=...)`` and their weights for
    ``GRPOConfig.reward_weights``.  Without ``weights`` each reward gets its registered default
    weight (``format`` 0.5, the others 1.0; 1.0 for an imported one)."""
    if not specs:
        raise RewardSpecError("no reward functions: give reward_funcs, e.g. [format, recall]")
    if weights is not None and len(weights) != len(specs):
        raise RewardSpecError(f"reward_weights has {len(weights)} entries but reward_funcs has {len(specs)}: "
                              "give one weight per reward")
    funcs = [get_reward(s, options) for s in specs]
    if weights is None:
        weights = [_REGISTRY[str(s).strip()].weight if not callable(s) and str(s).strip() in _REGISTRY else 1.0
                   for s in specs]
    return funcs, [float(w) for w in weights]


# --------------------------------------------------------------------------- field access
_INFO_RE = re.compile(r"<information>.*?</information>", re.S)
_SPECIAL_RE = re.compile(r"<\|im_(?:start|end)\|>|<\|endoftext\|>")
_ROLE_LINE_RE = re.compile(r"^[ \t]*(?:user|assistant|system)[ \t]*$", re.M)


def _strip_glue(s: str) -> str:
    return _ROLE_LINE_RE.sub("", _SPECIAL_RE.sub("", s)).strip()


def completion_text(completion: Any) -> str:
    """A TRL completion (plain string or list of chat messages) as text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in completion)
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion or "")


def _field(kwargs: dict[str, Any], name: str, i: int, default: Any = None) -> Any:
    vals = kwargs.get(name)
    if vals is None:
        return default
    if isinstance(vals, (list, tuple)):
        return vals[i] if i < len(vals) else default
    return vals


def _trajectory(kwargs: dict[str, Any], i: int) -> dict[str, Any] | None:
    t = _field(kwargs, "trajectory", i)
    if t is None:
        return None
    return t if isinstance(t, dict) else getattr(t, "to_dict", lambda: None)()


def final_answer(completion: Any, kwargs: dict[str, Any], i: int) -> str | None:
    """The rollout's final answer, else the last ``<answer>`` in the completion text."""
    if "answer" in kwargs:
        return _field(kwargs, "answer", i)
    text = _INFO_RE.sub(" ", completion_text(completion))
    found = re.findall(r"<answer>(.*?)</answer>", text, re.S)
    return found[-1].strip() if found else None


def _golds(kwargs: dict[str, Any], i: int) -> list[str]:
    g = _field(kwargs, "golden_answers", i)
    if g is None:
        g = _field(kwargs, "answers", i)
    if g is None:
        return []
    if isinstance(g, str):
        return [g]
    return [str(x) for x in g]


def _match(kwargs: dict[str, Any], i: int) -> str:
    """The completion's match rule (``any`` / ``all`` / ``ordered``) from its fields."""
    return match_rule(_field(kwargs, "answer_match", i), _field(kwargs, "mask_count", i))


# --------------------------------------------------------------------------- format
def turn_is_well_formed(raw: str, expect: str) -> bool:
    a = parse_action(raw)
    return a.kind == expect and not a.trailing.strip()


def format_ok_text(text: str) -> bool:
    """Format check on a plain transcript: each segment between ``<information>`` blocks is one
    search turn, the last is an answer, and nothing follows the answer (template glue ignored)."""
    segments = [_strip_glue(s) for s in _INFO_RE.split(text)]
    if not segments or not segments[-1]:
        return False
    for seg in segments[:-1]:
        if not turn_is_well_formed(seg, "search"):
            return False
    return turn_is_well_formed(segments[-1], "answer")


def format_ok_trajectory(traj: dict[str, Any]) -> bool:
    """Every search turn parses as a search, the run ended with an answer (not cut by the turn cap
    or the token budget), and the answer turn has no text after ``</answer>``."""
    if traj.get("status") != "answered" or traj.get("answer") is None:
        return False
    for step in traj.get("steps", []):
        if step.get("error") and not step.get("queries"):  # a malformed turn recorded as a step
            return False
        raw = step.get("raw") or ""
        if raw and not turn_is_well_formed(raw, "search"):
            return False
    final = traj.get("final_raw") or ""
    return turn_is_well_formed(final, "answer") if final else True


@register_reward("format", weight=0.5)
def format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for a well-formed rollout that ends in an answer with nothing after it, else 0.0."""
    out = []
    for i, c in enumerate(completions):
        traj = _trajectory(kwargs, i)
        ok = format_ok_trajectory(traj) if traj is not None else format_ok_text(completion_text(c))
        out.append(1.0 if ok else 0.0)
    return out


# --------------------------------------------------------------------------- answer rewards
def _scores(completions: list[Any], kwargs: dict[str, Any], fn: Callable[[Any, list[str], str], float]) -> list[float]:
    return [fn(final_answer(c, kwargs, i), _golds(kwargs, i), _match(kwargs, i)) for i, c in enumerate(completions)]


def make_recall_reward(min_precision: float = 2 / 3) -> RewardFunc:
    """The answer's token recall, capped by its precision (:func:`masksearch.scoring.capped_recall`):
    ``recall * min(1, precision / min_precision)``.  ``min_precision=0`` is the paper's plain recall."""

    def recall_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return _scores(completions, kwargs, lambda p, g, m: capped_recall(p, g, m, min_precision))

    return recall_reward


recall_reward = make_recall_reward()
recall_reward.__doc__ = ("The paper's answer reward, token recall, capped by precision so that a hedge or a list "
                         "of candidates does not earn it in full.")


@register_reward("recall", factory=True)
def _recall(options: RewardOptions) -> RewardFunc:
    return make_recall_reward(options.recall_min_precision)


@register_reward("f1")
def f1_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Token-level F1 of the final answer against the gold."""
    return _scores(completions, kwargs, lambda p, g, m: score(p, g, m)["f1"])


@register_reward("em")
def em_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Exact match (normalised) of the final answer: every span, for multi-span answers."""
    return _scores(completions, kwargs, lambda p, g, m: score(p, g, m)["em"])


# --------------------------------------------------------------------------- length
def _num_model_tokens(completion: Any, kwargs: dict[str, Any], i: int) -> int:
    n = _field(kwargs, "num_model_tokens", i)
    if n is not None:
        return int(n)
    ids = _field(kwargs, "completion_ids", i)
    if ids is not None:
        return len(ids)
    return len(completion_text(completion).split())


def make_length_penalty(soft: int = 256, hard: int = 512, cut_penalty: float = 1.0) -> RewardFunc:
    """A penalty in ``[-1, 0]``: 0 up to ``soft`` model tokens, growing linearly to -1 at ``hard``;
    a rollout cut by the token budget (status ``"length"``) gets ``-cut_penalty``."""
    if hard <= soft:
        raise ValueError("length penalty needs hard > soft")

    def length_penalty(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        out = []
        for i, c in enumerate(completions):
            if _field(kwargs, "status", i) == "length":
                out.append(-float(cut_penalty))
                continue
            n = _num_model_tokens(c, kwargs, i)
            out.append(-min(1.0, max(0.0, (n - soft) / (hard - soft))))
        return out

    return length_penalty


length_penalty = make_length_penalty()


@register_reward("length", factory=True)
def _length(options: RewardOptions) -> RewardFunc:
    return make_length_penalty(options.length_soft, options.length_hard)


# --------------------------------------------------------------------------- model judge
def _question(prompt: Any, kwargs: dict[str, Any], i: int) -> str:
    q = _field(kwargs, "question", i)
    if q:
        return str(q)
    if isinstance(prompt, list) and prompt:
        return str(prompt[-1].get("content", "")) if isinstance(prompt[-1], dict) else str(prompt[-1])
    return str(prompt)


@dataclass
class JudgeStats:
    calls: int = 0
    unparseable: int = 0
    errors: int = 0


def make_judge_reward(chat_model: Any, max_new_tokens: int = 128) -> RewardFunc:
    """The project's LLM judge (:class:`masksearch.agents.judge.LLMJudge`: one prompt, one strict
    parser) over any LangChain chat model (``make_chat_model`` spec or object), as a reward.

    1.0 when the judge's verdict is correct; 0.0 for incorrect, for no clear verdict, for a failed
    call or when the rollout has no answer.  The calls go out as one ``batch`` so a batching local
    model serves them in one ``generate``.  ``reward.stats`` counts calls, replies without a clear
    verdict and errors.
    """
    judge = LLMJudge(chat_model, max_new_tokens=max_new_tokens)
    stats = JudgeStats()

    def judge_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        out: list[float] = [0.0] * len(completions)
        items, where = [], []
        for i, c in enumerate(completions):
            pred, golds = final_answer(c, kwargs, i), _golds(kwargs, i)
            if pred and str(pred).strip() and golds:
                items.append((_question(prompts[i], kwargs, i), golds, pred, _match(kwargs, i)))
                where.append(i)
        if not items:
            return out
        try:
            verdicts = judge.judge_batch(items)
        except Exception:  # noqa: BLE001 - a judge outage scores 0, it does not stop training
            stats.errors += len(items)
            return out
        for i, v in zip(where, verdicts):
            stats.calls += 1
            if isinstance(v, Exception):
                stats.errors += 1
                continue
            if v.correct is None:
                stats.unparseable += 1
            out[i] = 1.0 if v.correct else 0.0
        return out

    judge_reward.stats = stats  # type: ignore[attr-defined]
    return judge_reward


@register_reward("judge", factory=True)
def _judge(options: RewardOptions) -> RewardFunc:
    if options.judge_model is None:
        raise RewardSpecError("the 'judge' reward needs a judge model (judge_model: SPEC)")
    return make_judge_reward(options.judge_model)


# --------------------------------------------------------------------------- combination
@dataclass
class RewardConfig(RewardOptions):
    """Rewards by name with their weights (0 drops a term), plus the options of parametrised ones;
    the Python face of ``reward_funcs`` + ``reward_weights``."""

    weights: dict[str, float] = field(default_factory=lambda: {"format": 0.5, "recall": 1.0})


def build_reward_funcs(cfg: RewardConfig) -> tuple[list[RewardFunc], list[float]]:
    """The rewards of ``cfg.weights`` with a non-zero weight, and their weights (TRL's form:
    ``GRPOTrainer(reward_funcs=...)`` and ``GRPOConfig.reward_weights``); TRL logs each term as
    ``rewards/<name>/mean``."""
    for name in cfg.weights:
        if name not in _REGISTRY and ":" not in name and "." not in name:
            get_reward(name)  # raises: unknown reward, with the registered names
    items = [(name, w) for name, w in cfg.weights.items() if w]
    if not items:
        raise RewardSpecError("every reward weight is 0: give at least one reward a weight")
    return build_rewards([n for n, _ in items], [w for _, w in items], cfg)


def combine_rewards(funcs: Sequence[RewardFunc], weights: Sequence[float]) -> RewardFunc:
    """One reward function: the weighted sum of several (what TRL computes from ``reward_weights``)."""

    def combined_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        total = [0.0] * len(completions)
        for f, w in zip(funcs, weights):
            for i, r in enumerate(f(prompts, completions, **kwargs)):
                total[i] += w * (r if r is not None else 0.0)
        return total

    return combined_reward
