"""SFT: the label mask token by token, mixing/curriculum, the TRL config parser, a tiny model that
learns, and a saved checkpoint that reloads through the model layer and runs in the student graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masksearch.protocol import STUDENT_CHAT_TEMPLATE
from masksearch.training.config import SFTScriptArguments
from masksearch.training.sft import load_rows, mix_and_order, parse_sft_args, tokenize_row

from test_student_graph import TinyRetriever

RAMP = [
    {"id": "m1", "question": "[mask] is the capital and most populous city of France.", "answers": ["Paris"],
     "masked_passage": "[mask] is the capital and most populous city of France.", "mask_count": 1},
    {"id": "m2", "question": "Berlin is the capital of [mask] and its largest city.", "answers": ["Germany"],
     "masked_passage": "Berlin is the capital of [mask] and its largest city.", "mask_count": 1},
    {"id": "m3", "question": "[mask] is the capital city of [mask].", "answers": ["Rome", "Italy"],
     "masked_passage": "[mask] is the capital city of [mask].", "mask_count": 2},
    {"id": "m4", "question": "Madrid is the capital of [mask].", "answers": ["Spain"],
     "masked_passage": "Madrid is the capital of [mask].", "mask_count": 1},  # not in the corpus: rejected
]


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_model_path)
    t.chat_template = STUDENT_CHAT_TEMPLATE
    return t


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """Real provenance-teacher trajectories over the tiny retriever (accepted and rejected)."""
    from masksearch.training.export import AcceptFilter
    from masksearch.training.provenance import run_provenance

    out = tmp_path_factory.mktemp("teacher") / "trajectories.jsonl"
    filt = AcceptFilter.parse("em")
    with open(out, "w") as f:
        for rec in RAMP:
            t = run_provenance(rec, TinyRetriever(), k=3)
            ok, why = filt.check(t)
            t.metadata.update(accepted=ok, accept_reason=why)
            f.write(t.to_json() + "\n")
    return out


def _spans(text: str, contents: list[str]) -> list[tuple[int, int]]:
    """Character spans of each assistant content + its <|im_end|>, found in order."""
    spans, pos = [], 0
    for c in contents:
        i = text.index("<|im_start|>assistant\n" + c, pos) + len("<|im_start|>assistant\n")
        spans.append((i, i + len(c) + len("<|im_end|>")))
        pos = spans[-1][1]
    return spans


def test_label_mask_token_by_token(tok, teacher_file):
    rows = load_rows([teacher_file], "ramp")
    assert len(rows) == 3 and {r["teacher"] for r in rows} == {"provenance"}
    row = next(r for r in rows if r["id"] == "m3")
    msgs = row["messages"]
    assert [m["role"] for m in msgs][:4] == ["system", "user", "assistant", "user"]
    t = tokenize_row(tok, msgs)
    ids, mask = t["input_ids"], t["assistant_masks"]
    assert len(ids) == len(mask)
    text = tok.decode(ids)
    assert text == tok.apply_chat_template(msgs, tokenize=False)
    spans = _spans(text, [m["content"] for m in msgs if m["role"] == "assistant"])
    pos = 0
    for i, (tid, m) in enumerate(zip(ids, mask)):
        piece = tok.decode([tid])
        start, end = pos, pos + len(piece)
        inside = any(a <= start and end <= b for a, b in spans)
        assert m == int(inside), f"token {i} {piece!r} mask {m}"
        pos = end
    assert pos == len(text)
    # nothing of the system prompt, question or <information> is trained on
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert "<information>" not in trained and msgs[1]["content"] not in trained
    assert msgs[0]["content"][:40] not in trained
    assert trained.count("<|im_end|>") == sum(m["role"] == "assistant" for m in msgs)


def test_trl_builds_labels_from_our_mask(tok, tiny_model_path, teacher_file, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from masksearch.training.sft import build_dataset

    rows = load_rows([teacher_file], "ramp")
    ds = build_dataset(tok, rows)
    cfg = SFTConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", bf16=False, gradient_checkpointing=False, max_length=2048, save_strategy="no")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path), args=cfg,
                         train_dataset=ds, processing_class=tok)
    prepared = trainer.train_dataset
    for i, r in enumerate(rows):
        t = tokenize_row(tok, r["messages"])
        assert prepared[i]["input_ids"] == t["input_ids"]
        assert prepared[i]["labels"] == [x if m else -100 for x, m in zip(t["input_ids"], t["assistant_masks"])]


def test_rejected_runs_are_not_rows(teacher_file):
    from collections import Counter

    stats = Counter()
    rows = load_rows([teacher_file], "ramp", stats=stats)
    assert "m4" not in {r["id"] for r in rows}
    assert stats["rows"] == 3 and sum(v for k, v in stats.items() if k.startswith("rejected")) == 1


def test_mix_and_curriculum_order():
    ramp = [{"id": f"r{i}", "mask_count": c, "teacher": "provenance"} for i, c in enumerate([3, 1, 2, 1, 3, 2])]
    qa = [{"id": f"q{i}", "mask_count": None, "teacher": "graph"} for i in range(6)]
    out = mix_and_order(ramp, qa, qa_ratio=0.5, curriculum="mask_count", seed=1)
    assert len(out) == 9
    counts = [r["mask_count"] for r in out if r["id"].startswith("r")]
    assert counts == sorted(counts)
    qpos = [i for i, r in enumerate(out) if r["id"].startswith("q")]
    assert len(qpos) == 3 and qpos[0] < 3 and qpos[-1] > 5  # spread, not bunched at one end
    shuffled = mix_and_order(ramp, qa, curriculum="none", seed=1)
    assert len(shuffled) == 12 and {r["id"] for r in shuffled} == {r["id"] for r in ramp + qa}
    assert len(mix_and_order(ramp, [], curriculum="mask_count", max_rows=4)) == 4


def test_trl_parser_reads_yaml_and_flags(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("model: smollm2\nramp_files: [a.jsonl, b.jsonl]\nuse_lora: true\n"
                   "output_dir: out/x\nmax_steps: 20\nlearning_rate: 0.0002\nbf16: false\n")
    script, sft = parse_sft_args(["--config", str(cfg), "--max_steps", "7", "--curriculum", "none"])
    assert isinstance(script, SFTScriptArguments)
    assert script.ramp_files == ["a.jsonl", "b.jsonl"] and script.use_lora and script.curriculum == "none"
    assert sft.max_steps == 7 and sft.learning_rate == pytest.approx(2e-4) and sft.output_dir == "out/x"


def test_shipped_config_parses():
    script, sft = parse_sft_args(["--config", str(Path(__file__).parent.parent / "configs" / "sft.yaml"),
                                  "--use_peft", "true", "--lora_r", "8"])
    assert script.model == "smollm2" and sft.max_steps > 0 and sft.save_strategy == "no"
    assert script.model_config.use_peft and script.model_config.lora_r == 8  # TRL's ModelConfig


@pytest.mark.slow
def test_tiny_model_learns_and_checkpoint_runs_in_graph(tiny_model_path, teacher_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from masksearch.data.qa import QAExample
    from masksearch.graphs.student import StudentContext, run_student
    from masksearch.models.local import LocalChatModel
    from masksearch.training.sft import mean_loss, run_sft

    rows = load_rows([teacher_file], "ramp")
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    tok.chat_template = STUDENT_CHAT_TEMPLATE
    before = mean_loss(AutoModelForCausalLM.from_pretrained(tiny_model_path), tok, rows)
    out = tmp_path / "ckpt"
    script = SFTScriptArguments(model=f"hf:{tiny_model_path}", ramp_files=[str(teacher_file)])
    cfg = SFTConfig(output_dir=str(out), max_steps=25, per_device_train_batch_size=3, learning_rate=3e-3,
                    logging_steps=1, save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False, max_length=2048, seed=0,
                    warmup_steps=0, lr_scheduler_type="constant")
    report = run_sft(script, cfg)
    after = mean_loss(AutoModelForCausalLM.from_pretrained(out), tok, rows)
    assert after < before - 1.0, (before, after)
    assert report["steps"] == 25 and report["teachers"] == {"provenance": 3}
    assert report["loss_last"] < report["loss_first"]
    assert (out / "loss.png").stat().st_size > 1000
    assert json.loads((out / "masksearch_sft.json").read_text())["teachers"] == {"provenance": 3}
    # the checkpoint reloads through the model layer, carries the student template, runs in the graph
    model = LocalChatModel.from_spec(f"hf:{out}", max_new_tokens=16)
    assert "{% generation %}" in model.tokenizer.chat_template or "generation" in model.tokenizer.chat_template
    ex = QAExample(id="m1", question=RAMP[0]["question"], golden_answers=["Paris"], answer_match="all")
    traj = run_student(ex, StudentContext(model=model, retriever=TinyRetriever(), max_new_tokens=16, max_turns=2))
    assert traj.status in {"answered", "turn_cap", "malformed", "length"}
    assert traj.completion_ids and len(traj.completion_ids) == len(traj.completion_mask)
    assert sum(traj.completion_mask) > 0


@pytest.mark.slow
def test_lora_checkpoint_is_merged(tiny_model_path, teacher_file, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig, SFTConfig

    from masksearch.training.sft import peft_config_for, run_sft

    out = tmp_path / "lora"
    script = SFTScriptArguments(model=f"hf:{tiny_model_path}", ramp_files=[str(teacher_file)], plot=False)
    # LoRA options come from TRL's ModelConfig (get_peft_config); the old use_lora flag turns it on
    model_args = ModelConfig(use_peft=False, lora_r=4, lora_alpha=8, lora_target_modules=["all-linear"])
    assert peft_config_for(script, model_args) is None
    script.use_lora = True
    peft = peft_config_for(script, model_args)
    assert peft.r == 4 and peft.lora_alpha == 8 and peft.target_modules == "all-linear"
    cfg = SFTConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                    save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False, max_length=2048)
    report = run_sft(script, cfg, model_args=model_args)
    assert report["lora"] and not (out / "adapter_config.json").exists()
    m = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    names = {n for n, _ in m.named_parameters()}
    assert not any("lora" in n for n in names) and names == {n for n, _ in base.named_parameters()}
