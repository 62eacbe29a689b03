"""``masksearch pipeline``: run (or resume) a multi-stage training recipe (configs/two_stage.yaml)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="RAMP SFT -> downstream SFT -> GRPO (+ evals) from one YAML recipe",
                       description="Run (or resume) a stage recipe: a stage whose checkpoint and stage.json "
                                   "exist is skipped; see masksearch/pipelines/two_stage.py.")
    p.add_argument("--config", required=True, help="YAML recipe, e.g. configs/two_stage.yaml")
    p.add_argument("--out", default=None, help="run folder (overrides the recipe's out)")
    p.add_argument("--only", default="", help="comma-separated stage/eval names (with the stages they start from)")
    p.add_argument("--skip-evals", action="store_true", help="train only")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json

    from masksearch.pipelines.two_stage import run_pipeline

    only = [x.strip() for x in args.only.split(",") if x.strip()] or None
    state = run_pipeline(args.config, only=only, skip_evals=args.skip_evals, out=args.out)
    print(json.dumps({"out": state["config"]["out"], "stages": state.get("stages", {}),
                      "evals": state.get("evals", {})}, default=str))
    return 0
