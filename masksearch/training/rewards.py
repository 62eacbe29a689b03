"""GRPO rewards: each one a TRL reward function ``f(prompts, completions, **kwargs) -> list[float]``.

TRL calls every reward function with the prompts, the decoded completions and, as keyword lists
(one entry per completion), every dataset column plus every extra field our ``rollout_func``
returns.  The fields these functions read (all optional, with a fallback to the completion text):

* ``golden_answers`` – list of gold strings per completion (dataset column or rollout field);
* ``answer_match`` – ``"any"`` (alternatives, best one counts) or ``"all"`` (every string is
  required: RAMP masks, in order; FanoutQA lists, in any order);
* ``mask_count`` – RAMP examples have one; its presence makes ``"all"`` matching ordered;
* ``answer`` – the rollout's final answer (else the last ``<answer>`` of the completion text);
* ``status`` / ``trajectory`` – the rollout's status and the :class:`Trajectory` as a dict;
* ``num_model_tokens`` – tokens the policy generated (environment tokens excluded).

Scoring follows the paper: the answer reward is *token recall* — the fraction of gold tokens
(after SQuAD normalisation) found in the predicted answer.  Multi-span answers (``" | "``) are
compared span by span.  All metrics here are pure functions (``token_recall``, ``f1_score``,
``exact_match``, ``score_answer``) so they can be tested and reused.
"""

from __future__ import annotations

import collections
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from masksearch.protocol import parse_action, split_answer

RewardFunc = Callable[..., list[float]]

# --------------------------------------------------------------------------- normalisation
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str | None) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    if not s:
        return ""
    s = s.lower()
    s = "".join(ch if ch not in _PUNCT else " " for ch in s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _tokens(s: str | None) -> list[str]:
    return normalize_answer(s).split()


def token_recall(pred: str | None, gold: str) -> float:
    """Fraction of the gold answer's tokens that appear in the prediction (multiset)."""
    g = _tokens(gold)
    if not g:
        return 0.0
    p = collections.Counter(_tokens(pred))
    hit = sum(min(c, p[t]) for t, c in collections.Counter(g).items())
    return hit / len(g)


def f1_score(pred: str | None, gold: str) -> float:
    p, g = _tokens(pred), _tokens(gold)
    if not p or not g:
        return float(p == g and bool(g))
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str | None, gold: str) -> float:
    return float(bool(normalize_answer(gold)) and normalize_answer(pred) == normalize_answer(gold))


METRICS: dict[str, Callable[[str | None, str], float]] = {
    "recall": token_recall,
    "f1": f1_score,
    "em": exact_match,
}


def score_answer(
    pred: str | None,
    golds: Sequence[str],
    metric: str = "recall",
    answer_match: str = "any",
    ordered: bool = True,
) -> float:
    """Score one predicted answer against its gold strings.

    * ``answer_match="any"``: the best gold alternative counts.
    * ``answer_match="all"`` with several golds (RAMP masks, FanoutQA lists): the predicted answer
      is split on ``"|"`` into spans.  ``ordered=True`` (RAMP) compares span *i* with gold *i*;
      ``ordered=False`` (FanoutQA) scores each gold against its best predicted span.  The score is
      the mean over golds, except EM, which needs every gold matched.
    """
    fn = METRICS[metric]
    golds = [str(g) for g in golds if str(g).strip()]
    if not golds or pred is None or not str(pred).strip():
        return 0.0
    if answer_match != "all" or len(golds) == 1:
        if answer_match == "all":  # a single required string
            return fn(pred, golds[0])
        return max(fn(pred, g) for g in golds)
    spans = split_answer(pred) or [pred]
    if ordered:
        per = [fn(spans[i] if i < len(spans) else "", g) for i, g in enumerate(golds)]
    else:
        per = [max(fn(s, g) for s in spans) for g in golds]
    if metric == "em":
        return float(all(x == 1.0 for x in per))
    return sum(per) / len(per)


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


def _match(kwargs: dict[str, Any], i: int, n_golds: int) -> tuple[str, bool]:
    match = _field(kwargs, "answer_match", i)
    mask_count = _field(kwargs, "mask_count", i)
    if match is None:
        match = "all" if mask_count else "any"
    return str(match), mask_count is not None


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


def format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for a well-formed rollout that ends in an answer with nothing after it, else 0.0."""
    out = []
    for i, c in enumerate(completions):
        traj = _trajectory(kwargs, i)
        ok = format_ok_trajectory(traj) if traj is not None else format_ok_text(completion_text(c))
        out.append(1.0 if ok else 0.0)
    return out


# --------------------------------------------------------------------------- answer rewards
def _answer_reward(metric: str) -> RewardFunc:
    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        out = []
        for i, c in enumerate(completions):
            golds = _golds(kwargs, i)
            match, ordered = _match(kwargs, i, len(golds))
            out.append(score_answer(final_answer(c, kwargs, i), golds, metric, match, ordered))
        return out

    return reward


recall_reward = _answer_reward("recall")
recall_reward.__name__ = "recall_reward"
recall_reward.__doc__ = "The paper's answer reward: fraction of gold tokens present in the final answer."
f1_reward = _answer_reward("f1")
f1_reward.__name__ = "f1_reward"
f1_reward.__doc__ = "Token-level F1 of the final answer against the gold."
em_reward = _answer_reward("em")
em_reward.__name__ = "em_reward"
em_reward.__doc__ = "Exact match (normalised) of the final answer."


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


# --------------------------------------------------------------------------- model judge
JUDGE_PROMPT = (
    "You judge whether a predicted answer to a question is correct.\n"
    "Question: {question}\nGold answer(s): {gold}\nPredicted answer: {pred}\n"
    "Is the predicted answer correct (it states the same thing as the gold answer; for several gold "
    "answers, all of them)? Reply with exactly one word: yes or no."
)
_VERDICT_RE = re.compile(r"^\W*(yes|no|correct|incorrect)\b\W*$", re.I)


def parse_verdict(text: str | None) -> bool | None:
    """Strict verdict parsing: the reply (after stripping ``<think>`` blocks) must be a single
    yes/no (or correct/incorrect) word.  Anything else is ``None`` (unparseable, scored 0)."""
    if text is None:
        return None
    text = re.sub(r"<think>.*?</think>", " ", str(text), flags=re.S).strip()
    m = _VERDICT_RE.match(text)
    if not m:
        return None
    return m.group(1).lower() in ("yes", "correct")


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


def make_judge_reward(chat_model: Any, prompt: str = JUDGE_PROMPT) -> RewardFunc:
    """A model-based judge over any LangChain chat model (``make_chat_model`` spec or object).

    1.0 when the judge says yes, 0.0 for no, for an unparseable reply, for a failed call or when
    the rollout has no answer.  Calls are sent as one ``batch`` so a batching local model serves
    them in one ``generate``.  ``reward.stats`` counts calls, unparseable replies and errors.
    """
    if isinstance(chat_model, str):
        from masksearch.models import make_chat_model

        chat_model = make_chat_model(chat_model, temperature=0.0)
    stats = JudgeStats()

    def judge_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        out: list[float] = [0.0] * len(completions)
        todo: list[tuple[int, str]] = []
        for i, c in enumerate(completions):
            pred = final_answer(c, kwargs, i)
            golds = _golds(kwargs, i)
            if not pred or not golds:
                continue
            msg = prompt.format(question=_question(prompts[i], kwargs, i), gold=" | ".join(golds), pred=pred)
            todo.append((i, msg))
        if not todo:
            return out
        try:
            replies = chat_model.batch([[("user", m)] for _, m in todo], return_exceptions=True)
        except Exception:  # noqa: BLE001 - a judge outage scores 0, it does not stop training
            stats.errors += len(todo)
            return out
        for (i, _), r in zip(todo, replies):
            stats.calls += 1
            if isinstance(r, Exception):
                stats.errors += 1
                continue
            v = parse_verdict(getattr(r, "content", r))
            if v is None:
                stats.unparseable += 1
            out[i] = 1.0 if v else 0.0
        return out

    judge_reward.stats = stats  # type: ignore[attr-defined]
    return judge_reward


# --------------------------------------------------------------------------- combination
@dataclass
class RewardConfig:
    """Weights of the reward terms (0 drops a term) and the length penalty's shape."""

    weights: dict[str, float] = field(default_factory=lambda: {"format": 0.5, "recall": 1.0})
    length_soft: int = 256
    length_hard: int = 512
    judge_model: Any = None  # spec string or chat model, needed when weights["judge"] > 0


REWARD_NAMES = ("format", "recall", "f1", "em", "length", "judge")


def build_reward_funcs(cfg: RewardConfig) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions with non-zero weight and their weights, in TRL's form
    (``GRPOTrainer(reward_funcs=...)`` and ``GRPOConfig.reward_weights``); TRL logs each term
    as ``rewards/<name>/mean``."""
    funcs: list[RewardFunc] = []
    weights: list[float] = []
    for name, w in cfg.weights.items():
        if name not in REWARD_NAMES:
            raise ValueError(f"unknown reward {name!r}; choose from {', '.join(REWARD_NAMES)}")
        if not w:
            continue
        if name == "format":
            f = format_reward
        elif name == "recall":
            f = recall_reward
        elif name == "f1":
            f = f1_reward
        elif name == "em":
            f = em_reward
        elif name == "length":
            f = make_length_penalty(cfg.length_soft, cfg.length_hard)
        else:
            if cfg.judge_model is None:
                raise ValueError("reward weight 'judge' > 0 needs a judge model (judge_model: SPEC)")
            f = make_judge_reward(cfg.judge_model)
        funcs.append(f)
        weights.append(float(w))
    if not funcs:
        raise ValueError("every reward weight is 0: give at least one reward a weight")
    return funcs, weights


def combine_rewards(funcs: Sequence[RewardFunc], weights: Sequence[float]) -> RewardFunc:
    """One reward function: the weighted sum of several (what TRL computes from ``reward_weights``)."""

    def combined_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        total = [0.0] * len(completions)
        for f, w in zip(funcs, weights):
            for i, r in enumerate(f(prompts, completions, **kwargs)):
                total[i] += w * (r if r is not None else 0.0)
        return total

    return combined_reward
