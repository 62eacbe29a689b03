"""``masksearch train sft|grpo`` and ``masksearch distill``.

Every flag after the subcommand goes to TRL's ``TrlParser`` (``--config YAML`` plus overrides of
our fields or of any ``SFTConfig``/``GRPOConfig`` field), so TRL options work without being
re-declared here.
"""

from __future__ import annotations

import argparse

_TRL_HELP = ("all flags go to TRL's parser: --config YAML, then overrides of our fields or of any "
             "trl.SFTConfig field, e.g. --max_steps 50 --learning_rate 1e-4 --use_lora true")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train the student: SFT on teacher trajectories, or GRPO in the student graph")
    tsub = t.add_subparsers(dest="train_command", metavar="STAGE")
    s = tsub.add_parser("sft", help="supervised fine-tuning with TRL SFTTrainer (configs/sft.yaml)",
                        description="Train the student on teacher trajectories. " + _TRL_HELP, add_help=False)
    s.set_defaults(func=cmd_sft, accepts_extra=True)
    g = tsub.add_parser("grpo", help="GRPO with TRL GRPOTrainer; rollouts are the student graph (configs/grpo.yaml)",
                        description="Reinforcement learning in the student graph. " + _TRL_HELP.replace("SFTConfig", "GRPOConfig"),
                        add_help=False)
    g.set_defaults(func=cmd_grpo, accepts_extra=True)
    t.set_defaults(func=lambda a: (t.print_help(), 2)[1])

    d = sub.add_parser("distill", help="self-evolving distillation: teacher data -> SFT -> student data -> SFT ...",
                       description="Round 0: the configured teacher solves RAMP questions; each round trains "
                                   "the student on the union of accepted runs, measures held-out answer recall, "
                                   "and the trained student solves new RAMP questions whose judged runs join the "
                                   "data. Resumable. " + _TRL_HELP.replace("use_lora true", "rounds 2"),
                       add_help=False)
    d.set_defaults(func=cmd_distill, accepts_extra=True)


def _extra(args: argparse.Namespace) -> list[str]:
    return list(getattr(args, "extra", []) or [])


def _check_config(argv: list[str]) -> None:
    from pathlib import Path

    from masksearch.cli import UserError

    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a YAML file, e.g. --config configs/sft.yaml")
        if not Path(argv[i + 1]).exists():
            raise UserError(f"config file not found: {argv[i + 1]} (see configs/ in the project)")


def cmd_sft(args: argparse.Namespace) -> int:
    argv = _extra(args)
    _check_config(argv)
    from masksearch.training.sft import main

    return main(argv)


def cmd_grpo(args: argparse.Namespace) -> int:
    argv = _extra(args)
    _check_config(argv)
    from masksearch.training.grpo import main

    return main(argv) or 0


def cmd_distill(args: argparse.Namespace) -> int:
    argv = _extra(args)
    _check_config(argv)
    from masksearch.training.distill import main

    return main(argv)
