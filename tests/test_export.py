"""Students outside makd (issue 20): folders transformers loads itself (AutoModel*, pipeline, generate), the model
card, the merged dense checkpoint, ONNX, and the folder for the Hub — on tiny random models, plus the embedded
MiniLM-L6 and SmolLM2-135M students (slow)."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

from conftest import tiny_batch, tiny_model, unfused
from makd import cli
from makd.assets.models import load_model
from makd.assets.paths import set_hub_offline
from makd.core import checkpoint
from makd.core import factorize as fz
from makd.experiments import distill, export_config
from makd.experiments import export as export_cmd
from makd.students import card, hf_export, hf_folder, hf_remote
from makd.tasks.generate import GenerationSettings, generate

ROOT = Path(__file__).resolve().parent.parent
AUTO = {"cls": tf.AutoModelForSequenceClassification, "qa": tf.AutoModelForQuestionAnswering,
        "lm": tf.AutoModelForCausalLM, "base": tf.AutoModel}
CASES = [("bert", "cls"), ("bert", "qa"), ("gpt2", "lm"), ("gpt2", "cls"), ("llama", "lm"), ("llama", "cls")]


@pytest.fixture(autouse=True, scope="module")
def hub_offline():
    set_hub_offline()


def perturbed_student(teacher, **size):
    """A factorised student whose factors differ from a fresh SVD, as after training."""
    student = fz.factorize(teacher, **(size or {"layer_ratio": 0.5}))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return student.eval()


def outputs(model, batch) -> dict[str, torch.Tensor]:
    return hf_export.main_outputs(model, batch)


def assert_same(loaded: dict[str, torch.Tensor], student_model, batch) -> None:
    """Outputs of a loaded student (the loading code, load_student: both unfused): bit for bit those of the unfused
    student, within float rounding of the fused one."""
    plain, fused = outputs(unfused(student_model), batch), outputs(student_model, batch)
    assert loaded.keys() == plain.keys() and all(torch.equal(plain[k], loaded[k]) for k in plain)
    for k in plain:
        torch.testing.assert_close(fused[k], loaded[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family, head", CASES, ids=[f"{f}-{h}" for f, h in CASES])
def test_automodel_with_trust_remote_code_is_the_student(family, head, tmp_path):
    torch.manual_seed(0)
    teacher = tiny_model(family, head=head, **({"pad_token_id": 0} if family == "gpt2" else {}))
    student = perturbed_student(teacher, layer_ratio=0.5, factorize_embeddings=family == "bert" and head == "cls")
    hf_folder.save_student(student, tmp_path / "s")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["model_type"] == f"makd_{family}" and config["makd_ranks"] == student.makd_factorization["ranks"]
    loaded = AUTO[head].from_pretrained(tmp_path / "s", trust_remote_code=True, attn_implementation="eager").eval()
    assert type(loaded).__name__ == f"LowRank{type(teacher).__name__}"
    assert {n: m.rank for n, m in loaded.named_modules() if hasattr(m, "rank")} == \
        {n: m.rank for n, m in student.named_modules() if isinstance(m, (fz.LowRankLinear, fz.LowRankEmbedding))}
    batch = tiny_batch()
    assert_same(outputs(loaded, batch), student, batch)
    again = checkpoint.load_student(tmp_path / "s", attn_implementation="eager")     # makd reads the new folder too
    assert_same(outputs(again, batch), student, batch)


def test_the_bare_body_loads_from_a_head_folder_and_plain_loading_is_refused(tmp_path):
    student = perturbed_student(tiny_model("bert", head="cls"))
    hf_folder.save_student(student, tmp_path / "s")
    body = tf.AutoModel.from_pretrained(tmp_path / "s", trust_remote_code=True, attn_implementation="eager").eval()
    assert type(body).__name__ == "LowRankBertModel"
    batch = tiny_batch()
    with torch.no_grad():
        got = body(**batch).last_hidden_state
        assert torch.equal(got, unfused(student).bert(**batch).last_hidden_state)
        torch.testing.assert_close(got, student.bert(**batch).last_hidden_state, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="custom code"):       # never a dense BERT with missing weights
        tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "s")


def test_an_old_folder_still_loads_and_is_upgraded_for_the_hub(tmp_path, capsys):
    student = perturbed_student(tiny_model("llama", head="lm"))
    checkpoint.save_student(student, tmp_path / "old")           # the format before the loading code
    assert json.loads((tmp_path / "old" / "config.json").read_text())["model_type"] == "llama"
    batch = tiny_batch()
    assert_same(outputs(checkpoint.load_student(tmp_path / "old", attn_implementation="eager"), batch), student, batch)
    code = cli.main(["export", str(tmp_path / "old"), "--hub-id", "someone/tiny-student"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("error:") == 1 and "offline" in err and "is ready" in err
    hub = tmp_path / "old-hub"                                   # the default folder next to the student
    assert hf_folder.upload_files(hub) == ["README.md", "config.json", "makd_factorization.json",
                                           "model.safetensors", "modeling_makd.py"]
    assert "someone/tiny-student" in (hub / "README.md").read_text()
    loaded = tf.AutoModelForCausalLM.from_pretrained(hub, trust_remote_code=True, attn_implementation="eager")
    assert_same(outputs(loaded.eval(), batch), student, batch)


@pytest.mark.slow   # a fresh interpreter importing transformers: ~20 s on a busy 2-core machine
def test_the_loading_code_imports_only_torch_and_transformers(tmp_path):
    tree = ast.parse(Path(hf_remote.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported == {"__future__", "torch", "transformers"}
    hf_folder.save_student(perturbed_student(tiny_model("gpt2", head="lm")), tmp_path / "s")
    code = ("import sys; sys.modules['makd'] = None\n"           # `import makd` fails in this interpreter
            "import transformers as tf\n"
            f"m = tf.AutoModelForCausalLM.from_pretrained({str(tmp_path / 's')!r}, trust_remote_code=True)\n"
            "print(type(m).__name__, sum(p.numel() for p in m.parameters()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, params = proc.stdout.split()
    assert name == "LowRankGPT2LMHeadModel" and int(params) == fz.count_parameters(
        checkpoint.load_student(tmp_path / "s"))


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny-bert student (real tokenizer), its tokenizer, saved with loading code and card."""
    teacher, tok = load_model("tiny-bert", head="cls")
    student = perturbed_student(teacher, layer_ratio=0.5, factorize_embeddings=True)
    folder = tmp_path_factory.mktemp("bert") / "student"
    hf_folder.save_student(student, folder, tok)
    return folder, student, tok


def test_text_classification_pipeline(bert_folder):
    folder, student, tok = bert_folder
    pipe = tf.pipeline("text-classification", model=str(folder), trust_remote_code=True, top_k=None)
    texts = ["a charming and funny film", "tedious"]
    got = pipe(texts)
    with torch.no_grad():
        probs = student(**tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1)    # (B, labels)
    for row, p in zip(got, probs):
        scores = {d["label"]: d["score"] for d in row}
        assert all(abs(scores[f"LABEL_{i}"] - float(p[i])) < 1e-5 for i in range(len(p)))


def test_question_answering_pipeline(tmp_path):
    if "question-answering" not in tf.pipelines.SUPPORTED_TASKS:
        pytest.skip(f"transformers {tf.__version__} has no question-answering pipeline (removed in v5); the QA "
                    "student loads with AutoModelForQuestionAnswering (test_automodel_..._is_the_student[bert-qa])")
    teacher, tok = load_model("tiny-bert", head="qa")
    hf_folder.save_student(perturbed_student(teacher), tmp_path / "s", tok)
    answer = tf.pipeline("question-answering", model=str(tmp_path / "s"), trust_remote_code=True)(
        question="Where did Alice go?", context="Alice went to Paris in May.")
    assert {"answer", "score", "start", "end"} <= set(answer)


def test_generate_and_the_text_generation_pipeline_match_makd(tmp_path):
    teacher, tok = load_model("tiny-llama", head="lm", attn_implementation="eager")
    student = perturbed_student(teacher)
    hf_folder.save_student(student, tmp_path / "s", tok)
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "s", trust_remote_code=True,
                                                     attn_implementation="eager").eval()
    prompts = ["Hello, how are you?", "Name a colour.", "The capital of France is"]
    settings = GenerationSettings.greedy(max_prompt_tokens=32, max_new_tokens=8, batch_size=2)
    want = generate(student, tok, prompts, settings)
    assert generate(loaded, tok, prompts, settings)["texts"] == want["texts"] and want["new_tokens"] > 0
    ids = tok(prompts[2], return_tensors="pt")
    greedy = dict(do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    tokens = student.generate(**ids, **greedy)
    assert torch.equal(loaded.generate(**ids, **greedy), tokens)
    pipe = tf.pipeline("text-generation", model=str(tmp_path / "s"), trust_remote_code=True)
    text = pipe(prompts[2], return_full_text=False, **greedy)[0]["generated_text"]
    assert text == tok.decode(tokens[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------- the model card
def _yaml(text: str) -> str:
    return text.split("---")[1]


def test_the_card_of_a_distill_run_holds_only_the_runs_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["--task", "sst2", "--data-dir", str(ROOT / "tests" / "fixtures" / "glue"), "--teacher", "tiny-bert",
            "--teacher-epochs", "1", "--force-teacher", "--report-to", "none", "--quiet", "--max-steps", "2",
            "--batch-size", "2", "--lr", "1e-3", "--out", str(tmp_path / "run")]
    assert distill.main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    text = (tmp_path / "run" / "student" / "README.md").read_text()
    head = _yaml(text)
    assert 'library_name: "transformers"' in head and 'pipeline_tag: "text-classification"' in head
    assert '- "nyu-mll/glue"' in head and '- "accuracy"' in head
    assert "base_model" not in head and "license" not in head          # a random tiny teacher: nothing to name
    assert "RANDOM BERT" in text and "## Objective" in text and "Preset `hierarchical`" in text
    for k, v in metrics["student"]["metrics"].items():                # every score row is the run's number
        if k in card.NOT_SCORES:
            continue
        assert re.search(rf"\| {k} \| {metrics['teacher']['metrics'][k]:.4g} \| {v:.4g} \|", text), k
    assert f"{metrics['student']['params']:,}" in text and metrics["record"]["config"]["command"] in text
    assert "python -m makd distill" in text and str(tmp_path) not in text and str(ROOT) not in text
    assert json.loads(text.split("```json")[1].split("```")[0])["seed"] == metrics["record"]["seed"]


def test_the_card_names_a_known_teacher_and_a_proxy_and_omits_what_it_does_not_know(bert_folder, tmp_path):
    folder, _, _ = bert_folder
    committed = json.loads((ROOT / "results" / "glue" / "mrpc" / "makd-hierarchical" / "metrics.json").read_text())
    text = card.model_card(folder, committed)
    head = _yaml(text)
    assert 'base_model: "sentence-transformers/all-MiniLM-L6-v2"' in head and 'license: "apache-2.0"' in head
    assert '- "f1"' in head and '- "accuracy"' in head and '- "nyu-mll/glue"' in head
    assert "| f1 | 0.8543 | 0.8137 |" in text and committed["record"]["config"]["command"] in text
    proxy = {**committed, "task": "rt-polarity", "is_proxy": True, "source": "embedded:rt-polarity"}
    text = card.model_card(folder, proxy)
    assert "**proxy**" in text and "datasets" not in _yaml(text)
    squad = json.loads((ROOT / "results" / "squad-v1.1" / "makd-hierarchical" / "metrics.json").read_text())
    text = card.model_card(folder, squad)
    assert '- "rajpurkar/squad"' in _yaml(text) and "| exact_match | 6 | 6.333 |" in text and "split by article" in text
    bare = card.model_card(folder)                                     # no run: size and ranks only
    assert "## Scores" not in bare and "## Objective" not in bare and "metrics" not in _yaml(bare)
    assert "| embedding | 1 |" in bare and "| q | 2 |" in bare


# ------------------------------------------------------------------------------------------- merge, ONNX, Hub
@pytest.mark.parametrize("family, head", [("bert", "cls"), ("gpt2", "lm"), ("llama", "lm")])
def test_merge_gives_a_plain_checkpoint_of_the_teacher(family, head, tmp_path):
    teacher = tiny_model(family, head=head)
    student = perturbed_student(teacher, layer_ratio=0.5, factorize_embeddings=family == "bert")
    hf_folder.save_student(student, tmp_path / "s")
    with pytest.warns(UserWarning, match="NOT smaller"):
        report = hf_export.merge_dense(tmp_path / "s", tmp_path / "dense")
    assert report["max_abs_diff"] < 1e-5 and report["params_merged"] == fz.count_parameters(teacher)
    dense = AUTO[head].from_pretrained(tmp_path / "dense", attn_implementation="eager").eval()   # no remote code
    assert type(dense) is type(teacher) and not (tmp_path / "dense" / "modeling_makd.py").exists()
    batch = tiny_batch()
    want, got = outputs(student, batch), outputs(dense, batch)
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-5


def test_export_command_merge_and_onnx(bert_folder, tmp_path, capsys):
    folder, _, _ = bert_folder
    assert cli.main(["export", str(folder), "--merge", "--out", str(tmp_path / "dense")]) == 0
    out, err = capsys.readouterr()
    diff = float(re.search(r"max abs diff to the student: (\S+)", out).group(1))
    assert diff < 1e-5 and "warning: the merged checkpoint is NOT smaller" in err
    assert tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "dense").__class__.__name__ == \
        "BertForSequenceClassification"
    assert cli.main(["export", str(folder), "--onnx", "--out", str(tmp_path / "onnx")]) == 0
    out = capsys.readouterr().out
    diff = float(re.search(r"max abs diff to PyTorch \(onnx.reference, batch 3x\d+\): (\S+)", out).group(1))
    assert diff < 1e-4 and (tmp_path / "onnx" / "model.onnx").is_file()


def test_onnx_is_for_encoders_and_a_failed_check_fails_the_command(tmp_path, monkeypatch):
    hf_folder.save_student(perturbed_student(tiny_model("llama", head="lm")), tmp_path / "llama")
    with pytest.raises(ValueError, match="encoder students"):
        hf_export.export_onnx(tmp_path / "llama", tmp_path / "o")
    hf_folder.save_student(perturbed_student(tiny_model("bert", head="qa")), tmp_path / "qa")   # no tokenizer
    report = hf_export.export_onnx(tmp_path / "qa", tmp_path / "o")
    assert report["outputs"] == ["start_logits", "end_logits"] and report["max_abs_diff"] < 1e-4
    monkeypatch.setattr(export_cmd, "export_onnx", lambda *a, **k: {**report, "max_abs_diff": 0.5})
    with pytest.raises(ValueError, match="above --tolerance"):
        export_cmd.export(folder=str(tmp_path / "qa"), onnx=True, out=str(tmp_path / "o2"))


@pytest.mark.parametrize("argv, status, message", [
    (["export"], 2, "give the student folder"),
    (["export", "X", "--merge"], 2, "--merge needs --out DIR"),
    (["export", "X", "--merge", "--onnx", "--out", "O"], 2, "give exactly one of"),
    (["export", "X", "--hub-id", "not a name"], 2, "is not a repository id"),
    (["export", "{tmp}/missing", "--merge", "--out", "{tmp}/o"], 1, "does not exist"),
    (["export", "{tmp}", "--merge", "--out", "{tmp}/o"], 1, "is not a saved makd student"),
])
def test_bad_export_inputs_are_one_line_before_any_model(argv, status, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == status and err.count("error:") == 1 and message in err and "Traceback" not in err, err


def test_an_unwritable_out_folder_is_refused_without_torch(bert_folder, tmp_path):
    folder, _, _ = bert_folder
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = ("import sys; from makd import cli; rc = cli.main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(rc)")
    for out in (blocker / "out", folder / "inside"):
        proc = subprocess.run([sys.executable, "-c", code, "export", str(folder), "--merge", "--out", str(out)],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.stdout.strip() in ("1", "2") and proc.stderr.count("error:") == 1, proc.stderr
    assert export_config.STUDENT_FILES == ("config.json", checkpoint.WEIGHTS, checkpoint.META)


# ------------------------------------------------------------------------------ the embedded students (slow)
@pytest.mark.slow
def test_minilm_l6_student_loads_merges_and_exports_identically(tmp_path):
    teacher, tok = load_model("minilm-l6", head="base", attn_implementation="eager")   # hidden states |h| ~ 6
    student = fz.factorize(teacher, layer_ratio=0.5).eval()
    hf_folder.save_student(student, tmp_path / "s", tok)
    batch = hf_export.sample_inputs(tmp_path / "s")
    loaded = tf.AutoModel.from_pretrained(tmp_path / "s", trust_remote_code=True, attn_implementation="eager").eval()
    assert_same(outputs(loaded, batch), student, batch)
    merged = hf_export.merge_dense(tmp_path / "s", tmp_path / "dense")["max_abs_diff"]      # measured 1.1e-5
    report = hf_export.export_onnx(tmp_path / "s", tmp_path / "onnx")                         # measured 6.1e-6
    print(f"MiniLM-L6 student: merged max abs diff {merged:.2g}, ONNX {report['max_abs_diff']:.2g}")
    assert merged < 1e-4 and report["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_smollm2_student_loads_and_generates_identically(tmp_path):
    teacher, tok = load_model("smollm2-135m-instruct", head="lm", attn_implementation="eager")
    student = fz.factorize(teacher, layer_ratio=0.5).eval()
    del teacher
    hf_folder.save_student(student, tmp_path / "s", tok)
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "s", trust_remote_code=True,
                                                     attn_implementation="eager").eval()
    batch = dict(tok(["The capital of France is"], return_tensors="pt"))
    assert_same(outputs(loaded, batch), student, batch)
    settings = GenerationSettings.greedy(max_prompt_tokens=32, max_new_tokens=6, batch_size=2)
    prompts = ["The capital of France is", "List three colours:"]
    assert generate(loaded, tok, prompts, settings)["texts"] == generate(student, tok, prompts, settings)["texts"]
