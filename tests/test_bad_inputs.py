"""Bad inputs on the command line (issue 18): each is refused with ONE line ``error: <what>. <what to do>``,
exit status 2 (a usage error) or 1 (a runtime one), no traceback, and, for the data files, before any teacher is
fine-tuned (the fine-tuning is replaced by a function that fails the test if it is called).

Most cases run in-process through :func:`makd.cli.main`; a few run ``python -m makd`` in a subprocess to check
that a wrong option is refused in well under 5 s without importing torch.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from makd import cli
from makd.assets.paths import cache_dir, set_hub_offline
from makd.core.losses import check_finite
from makd.experiments import distill, squad_teacher
from makd.tasks import teacher
from makd.tasks.teacher import TeacherAtChanceError

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT / "tests" / "fixtures" / "glue"
SQUAD = ROOT / "tests" / "fixtures" / "squad"
TINY = ["--teacher", "tiny-bert", "--max-length", "32", "--quiet", "--report-to", "none"]


@pytest.fixture(autouse=True, scope="module")
def hub_offline():
    """The hub libraries in offline mode (conftest sets HF_HUB_OFFLINE after they read it): no retries."""
    set_hub_offline()


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``python -m makd ARGV`` run in-process (argparse's SystemExit included)."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_error(code: int, err: str, status: int, *expected: str) -> str:
    """Exit ``status``, exactly one stderr line starting with ``error:``, no traceback, every ``expected`` in it."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == status, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# ------------------------------------------------------------------------ options: refused before any loading
D = ["distill"]
OPTION_ERRORS = [
    (D + ["--lr", "-1"], "lr must be > 0.0, got -1.0"),
    (D + ["--lr", "0"], "lr must be > 0.0"),
    (D + ["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (D + ["--lr", "inf"], "lr must be a finite number"),
    (D + ["--epochs", "-1"], "epochs must be > 0.0"),
    (D + ["--epochs", "nan"], "epochs must be a finite number"),
    (D + ["--teacher-epochs", "-1"], "teacher_epochs must be > 0.0"),
    (D + ["--teacher-lr", "0"], "teacher_lr must be > 0.0"),
    (D + ["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (D + ["--batch-size", "1.5"], "argument --batch-size: invalid int value: '1.5'"),
    (D + ["--grad-accum", "0"], "grad_accum must be >= 1"),
    (D + ["--max-steps", "-2"], "max_steps must be >= -1"),
    (D + ["--seed", "-1"], "seed must be >= 0"),
    (D + ["--save-steps", "0"], "save_steps must be >= 1"),
    (D + ["--logging-steps", "0"], "logging_steps must be >= 1"),
    (D + ["--eval-steps", "-1"], "eval_steps must be >= 0"),
    (D + ["--max-length", "0"], "max_length must be >= 1"),
    (D + ["--max-train", "0"], "max_train must be >= 1"),
    (D + ["--max-dev", "0"], "max_dev must be >= 1"),
    (D + ["--teacher-max-train", "0"], "teacher_max_train must be >= 1"),
    (D + ["--teacher-seed", "-1"], "teacher_seed must be >= 0"),
    (D + ["--alpha", "2"], "alpha must be <= 1.0"),
    (D + ["--alpha", "-0.1"], "alpha must be >= 0.0"),
    (D + ["--temperature", "0"], "temperature must be > 0.0"),
    (D + ["--split", "-1"], "split must be >= 0"),
    (D + ["--weights", "[1,2]"], "weights must be a mapping"),
    (D + ["--weights", '{"foo": 1}'], "unknown aspect(s) ['foo']"),
    (D + ["--weights", '{"mha": "x"}'], "every weight must be a finite number >= 0"),
    (D + ["--weights", "{mha: 0"], "is not valid JSON"),
    (D + ["--objective", "bogus"], "invalid choice: 'bogus'"),
    (D + ["--task", "bogus"], "invalid choice: 'bogus'"),
    (D + ["--weighting", "asvd"], "invalid choice: 'asvd'"),
    (D + ["--mse", "cosine"], "invalid choice: 'cosine'"),
    (D + ["--student", "layers:0"], "K must be an int"),
    (D + ["--student", "layers:x"], "K must be an int"),
    (D + ["--student", ""], "student must be 'svd', 'layers:K'"),
    (D + ["--layer-ratio", "0"], "layer_ratio must be > 0.0"),
    (D + ["--layer-ratio", "1.5"], "layer_ratio must be <= 1.0"),
    (D + ["--budget", "2.0"], "a float is a fraction and must be <= 1"),
    (D + ["--budget", "0"], "budget must be an integer >= 1"),
    (D + ["--budget", "-5"], "budget must be an integer >= 1"),
    (D + ["--budget", "x"], "invalid number value: 'x'"),
    (D + ["--rank", "0"], "rank must be an integer >= 1 (e.g. 64) or a fraction in (0, 1], got 0"),
    (D + ["--rank", "0.0"], "rank must be an integer >= 1"),
    (D + ["--rank", "1.5"], "a float is a fraction"),
    (D + ["--layer-ratio", "0.5", "--budget", "0.5"], "give only one of"),
    (D + ["--bogus-option", "1"], "unrecognized arguments: --bogus-option"),
    (D + ["stray"], "unrecognized arguments: stray"),
    (["squad", "--version", "3.0"], "invalid choice: '3.0'"),
    (["squad", "--stride", "400"], "stride (400) must be smaller than max_length (384)"),
    (["squad", "--max-length", "4"], "max_length must be >= 8"),
    (["squad", "--source", "nowhere"], "invalid choice: 'nowhere'"),
    (["squad", "--split-articles", "0", "10"], "split_articles must be >= 1"),
    (["squad", "--split-articles", "5"], "expected 2 arguments"),
    (["squad", "--n-best", "0"], "n_best must be >= 1"),
    (["squad", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["squad", "--teacher-batch-size", "0"], "teacher_batch_size must be >= 1"),
    (["squad", "--budget", "1.5"], "a float is a fraction"),
    (["decoder", "--decoding", "beam"], "invalid choice: 'beam'"),
    (["decoder", "--methods", "sft", "bogus"], "invalid choice: 'bogus'"),
    (["decoder", "--methods", "sft", "sft"], "methods lists one twice"),
    (["decoder", "--seeds", "-1"], "seeds must be >= 0"),
    (["decoder", "--max-prompt-tokens", "600"], "must leave room for the answer"),
    (["decoder", "--student", "layers:x"], "student must be 'svd' or 'layers:K'"),
    (["decoder", "--eval-set", "bogus"], "invalid choice: 'bogus'"),
    (["decoder", "--train-set", "selfinst"], "invalid choice: 'selfinst'"),
    (["decoder", "--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    (["decoder", "--rank", "0"], "rank must be an integer >= 1"),
    (["subquadratic", "--mixer", "bogus"], "invalid choice: 'bogus'"),
    (["subquadratic", "--mixing-tokens", "0", "--hidden-tokens", "0", "--kd-tokens", "0"], "every stage budget is zero"),
    (["subquadratic", "--teacher", "tiny-llama", "--block-length", "4096"], "above the 128 positions"),
    (["factorize"], "give one of --layer-ratio, --budget, --rank"),
    (["factorize", "--rank", "0"], "rank must be an integer >= 1"),
    (["factorize", "--budget", "2.0"], "a float is a fraction and must be <= 1"),
    (["factorize", "--rank", "4", "--weighting", "asvd"], "invalid choice: 'asvd'"),
    (["factorize", "--rank", "4", "--calibration-text", "/nonexistent/calib.txt"], "is not a file"),
    (["results", "--bogus"], "unrecognized arguments: --bogus"),
    (["grid"], "the following arguments are required"),
    (["stats"], "the following arguments are required"),
    (["reproduce", "--bogus"], "unrecognized arguments: --bogus"),
    (["fetch-assets", "no-such-asset"], "unknown asset(s) ['no-such-asset']"),
    (["export", "some/student"], "give exactly one of --merge, --onnx, --hub-id"),
    (["export", "some/student", "--onnx"], "--onnx needs --out DIR"),
    (["no-such-command"], "unknown command 'no-such-command'"),
]


@pytest.mark.parametrize("argv, message", OPTION_ERRORS, ids=[" ".join(a)[:60] for a, _ in OPTION_ERRORS])
def test_a_wrong_option_is_one_usage_error(argv, message, capsys):
    line = assert_one_error(*run_cli(argv, capsys), 2, message)
    assert "--help" in line or "give" in line or "use " in line, line          # what to do


def test_a_wrong_option_is_refused_in_a_blink_without_torch():
    code = ("import sys\nfrom makd import cli\ntry:\n    rc = cli.main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nheavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
            "print('HEAVY', heavy, 'CODE', rc)\n")
    for argv in (["distill", "--lr", "-1"], ["distill", "--budget", "2.0"], ["factorize", "--rank", "0"],
                 ["squad", "--stride", "400"], ["decoder", "--decoding", "beam"], ["nope"]):
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT,
                              timeout=60)
        assert time.time() - t0 < 5, argv
        assert "HEAVY [] CODE 2" in proc.stdout, proc.stdout + proc.stderr
        assert_one_error(2, proc.stderr, 2)


def test_python_m_makd_shows_one_line_and_the_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "makd", "results", str(tmp_path / "none")], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert_one_error(proc.returncode, proc.stderr, 1, "no folder", "give a folder")


# ------------------------------------------------------------------------- data files: before any fine-tuning
@pytest.fixture
def no_training(monkeypatch):
    """Fine-tuning a teacher fails the test; no teacher folder may appear in the cache."""
    def fail(*args, **kwargs):
        raise AssertionError("a teacher fine-tuning started: the bad input was not refused before it")
    for module, name in ((distill, "finetune_teacher"), (teacher, "finetune_cached"),
                         (squad_teacher, "finetune_cached")):
        monkeypatch.setattr(module, name, fail)
    teachers = cache_dir() / "teachers"
    before = set(teachers.iterdir()) if teachers.is_dir() else set()
    yield
    after = set(teachers.iterdir()) if teachers.is_dir() else set()
    assert after == before, sorted(map(str, after - before))


def glue_dir(tmp_path: Path, folder: str, **files: str) -> Path:
    """A data folder with the fixture files of ``folder``, some replaced by ``files`` (name=text)."""
    root = tmp_path / "data"
    shutil.copytree(GLUE / folder, root / "glue" / folder)
    for name, text in files.items():
        (root / "glue" / folder / f"{name}.tsv").write_text(text)
    return root


RTE_HEAD = "index\tsentence1\tsentence2\tlabel\n"
RTE_ROW = "0\tA man walks.\tSomeone walks.\tentailment\n"
GLUE_BROKEN = [
    ("rte", "RTE", {"train": ""}, ["train.tsv", "the file is empty", "download it again"]),
    ("rte", "RTE", {"dev": RTE_HEAD}, ["dev.tsv", "only a header line, no examples"]),
    ("rte", "RTE", {"train": RTE_HEAD + "\n"}, ["train.tsv", "only a header line"]),
    ("rte", "RTE", {"dev": "index\tsentence1\tsentence2\tgold\n" + RTE_ROW}, ["dev.tsv:1", "missing column(s) ['label']"]),
    ("rte", "RTE", {"dev": RTE_HEAD + RTE_ROW + "1\tA.\tB.\tmaybe\n"}, ["dev.tsv:3", "label 'maybe' is not valid"]),
    ("rte", "RTE", {"train": RTE_HEAD + "0\tonly two\n"}, ["train.tsv:2", "2 columns, expected 4"]),
    ("cola", "CoLA", {"train": "src\t7\t\tA sentence.\n"}, ["train.tsv:1", "label '7' is not valid", "0..1"]),
    ("cola", "CoLA", {"dev": ""}, ["dev.tsv", "the file is empty"]),
    ("stsb", "STS-B", {"dev": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                              "0\tg\tf\ty\t0\ts\ts\tA.\tB.\tabc\n"}, ["dev.tsv:2", "label 'abc'", "a number"]),
]


@pytest.mark.parametrize("task, folder, files, expected", GLUE_BROKEN,
                         ids=[f"{t}-{'-'.join(f)}-{e[1][:20]}" for t, _, f, e in GLUE_BROKEN])
def test_a_broken_glue_file_is_refused_before_the_teacher(task, folder, files, expected, tmp_path, no_training,
                                                         capsys):
    data = glue_dir(tmp_path, folder, **files)
    argv = ["distill", "--task", task, "--data-dir", data, "--out", tmp_path / "out", *TINY]
    assert_one_error(*run_cli(argv, capsys), 1, *expected)


def test_a_bad_mnli_label_names_its_line(tmp_path, no_training, capsys):
    head = (GLUE / "MNLI" / "dev_matched.tsv").read_text().splitlines()[0]
    width = len(head.split("\t"))
    row = ["x"] * width
    row[head.split("\t").index("gold_label")] = "unknown"
    data = glue_dir(tmp_path, "MNLI", dev_matched=head + "\n" + "\t".join(row) + "\n")
    argv = ["distill", "--task", "mnli", "--data-dir", data, "--out", tmp_path / "out", *TINY]
    assert_one_error(*run_cli(argv, capsys), 1, "dev_matched.tsv:2", "label 'unknown'", "'entailment'")


RUNTIME = [
    (["--task", "rte", "--data-dir", "/nonexistent/data"], "data folder /nonexistent/data does not exist"),
    (["--task", "rte", "--data-dir", "{empty}"], "no local copy"),
    (["--task", "qnli", "--data-dir", str(GLUE.parent)], "no train split"),
    (["--task", "rte", "--data-dir", str(GLUE.parent), "--teacher", "/nonexistent/model"], "is not a model folder"),
    (["--task", "rte", "--data-dir", str(GLUE.parent), "--teacher", "no-org/no-such-model"], "no-org/no-such-model"),
    (["--task", "rte", "--data-dir", str(GLUE.parent), "--budget", "100"], "below the floor"),
    (["--task", "rte", "--data-dir", str(GLUE.parent), "--student", "layers:9"], "layers:9"),
]


@pytest.mark.parametrize("options, message", RUNTIME, ids=[m for _, m in RUNTIME])
def test_a_runtime_problem_of_distill_is_one_line(options, message, tmp_path, no_training, capsys):
    (tmp_path / "empty").mkdir()
    options = [o.replace("{empty}", str(tmp_path / "empty")) for o in options]
    argv = ["distill", *TINY, *options, "--out", tmp_path / "out"]      # later options win (--teacher)
    assert_one_error(*run_cli(argv, capsys), 1, message)


SQUAD_BROKEN = [
    ('{"data": [', ["dev-v1.1.json:1", "not valid JSON"]),
    ("", ["dev-v1.1.json:1", "not valid JSON"]),
    ('{"version": "1.1"}', ["no top-level 'data' list"]),
    ('{"data": [{"title": "T", "paragraphs": []}]}', ["no questions"]),
    ('{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "q1", "question": "?"}]}]}]}',
     ["question q1", "missing field(s) ['answers']", "\"answers\": []"]),
    ('{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "q2", "question": "?", '
     '"answers": [{"text": "c"}]}]}]}]}', ["question q2", "['answer_start']"]),
    ('{"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}', ["data[0].paragraphs[0]", "['context']"]),
]


@pytest.mark.parametrize("text, expected", SQUAD_BROKEN, ids=[e[-1][:30] for _, e in SQUAD_BROKEN])
def test_a_broken_squad_file_is_named(text, expected, tmp_path, no_training, capsys):
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "dev-v1.1.json").write_text(text)
    argv = ["squad", "--data-dir", tmp_path, "--split-articles", "1", "1", "--out", tmp_path / "out", *TINY, "--stride", "8"]
    assert_one_error(*run_cli(argv, capsys), 1, "official SQuAD file", *expected)


def test_squad_without_its_data_folder(tmp_path, no_training, capsys):
    argv = ["squad", "--data-dir", tmp_path / "none", "--out", tmp_path / "out", *TINY, "--stride", "8"]
    assert_one_error(*run_cli(argv, capsys), 1, "does not exist", "pass an existing folder")


DECODER = ["decoder", "--teacher", "tiny-llama", "--methods", "sft", "--max-train", "4", "--max-eval", "2",
           "--max-length", "16", "--max-prompt-tokens", "8", "--max-new-tokens", "2", "--quiet"]
SELFINST_BROKEN = [
    ('{"id": "a", "instruction": "x", "instances": [{"input": "", "output": "y"}]}\n{"id": "b", oops}\n',
     ["selfinst-252.jsonl:2", "not valid JSON"]),
    ('{"id": "a", "instruction": "x"}\n', ["selfinst-252.jsonl:1", "missing field(s) ['instances']"]),
    ("\n\n", ["selfinst-252.jsonl", "the file is empty"]),
    ('[1, 2]\n', ["selfinst-252.jsonl:1", "expected a JSON object"]),
    ('{"id": "a", "instruction": "x", "instances": []}\n', ["task 1 (a)", "non-empty list"]),
]


@pytest.mark.parametrize("text, expected", SELFINST_BROKEN, ids=[e[-1] for _, e in SELFINST_BROKEN])
def test_a_broken_instruction_file_is_named(text, expected, tmp_path, capsys):
    (tmp_path / "instruct").mkdir()
    (tmp_path / "instruct" / "selfinst-252.jsonl").write_text(text)
    argv = [*DECODER, "--eval-set", "selfinst", "--data-dir", tmp_path, "--out", tmp_path / "out"]
    assert_one_error(*run_cli(argv, capsys), 1, "selfinst-252.jsonl", *expected)


@pytest.mark.parametrize("options, message", [
    (["--teacher", "tiny-bert"], "needs a decoder"),
    (["--eval-set", "vicuna", "--data-dir", "{empty}"], "vicuna-80.jsonl"),
    (["--data-dir", "{none}"], "does not exist"),
])
def test_a_wrong_decoder_input_is_one_line(options, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    options = [o.format(empty=tmp_path / "empty", none=tmp_path / "none") for o in options]
    assert_one_error(*run_cli([*DECODER, *options, "--out", tmp_path / "out"], capsys), 1, message)


# ------------------------------------------------------------------------- factorize, results, grid, failures
def test_factorize_refuses_an_existing_file_as_out_and_a_folder_that_is_no_model(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert_one_error(*run_cli(["factorize", "--rank", "4", "--out", tmp_path / "file"], capsys), 2,
                     "is an existing file", "give a folder")
    assert_one_error(*run_cli(["factorize", "--rank", "4", "--teacher", tmp_path / "none"], capsys), 1,
                     "is not a model folder")
    assert_one_error(*run_cli(["factorize", "--budget", "100", "--teacher", "tiny-bert"], capsys), 2,
                     "below the floor", "give another --layer-ratio, --budget or --rank")


@pytest.mark.parametrize("command", [["distill"], ["squad"], ["decoder"], ["factorize", "--rank", "4"],
                                     ["distill", "--student"]])
def test_a_folder_that_is_not_a_model_is_a_usage_error(command, tmp_path, capsys):
    flag = [] if command[-1] == "--student" else ["--teacher"]
    code, err = run_cli([*command, *flag, tmp_path], capsys)
    assert_one_error(code, err, 2, "is a folder without config.json", "give a save_pretrained folder")


def test_results_refuses_a_missing_folder_and_a_broken_metrics_file(tmp_path, capsys):
    assert_one_error(*run_cli(["results", tmp_path / "none"], capsys), 1, "no folder", "give a folder")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text('{"task": ')
    assert_one_error(*run_cli(["results", tmp_path], capsys), 1, "metrics.json:1", "not valid JSON",
                     "run it again")


SMOKE = ROOT / "grids" / "smoke.yaml"
GRID = [
    ("tasks: [rte\ncells: []\n", [], ["grid.yaml:", "not valid YAML"]),
    ("tasks: [rte]\nseeds: [0]\nbogus: 1\ncells: [{name: a}]\n", [], ["unknown top-level key(s) ['bogus']"]),
    (None, ["--set", "foo=1"], ["unknown option(s) ['foo']"]),
    (None, ["--set", "lr"], ["use KEY=VALUE"]),
    (None, ["--set", "lr=-1"], ["lr must be > 0.0"]),
    (None, ["--only", "nope"], ["--only ['nope']: not in the grid"]),
]


@pytest.mark.parametrize("text, extra, expected", GRID, ids=[e[-1][:30] for _, _, e in GRID])
def test_a_bad_grid_is_refused_before_any_cell(text, extra, expected, tmp_path, no_training, capsys):
    path = SMOKE
    if text is not None:
        path = tmp_path / "grid.yaml"
        path.write_text(text)
    code, err = run_cli(["grid", path, "--out", tmp_path / "out", *extra], capsys)
    assert_one_error(code, err, 2, *expected)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("metrics.json"))


def test_a_missing_grid_file_and_stats_folder(tmp_path, capsys):
    assert_one_error(*run_cli(["grid", tmp_path / "none.yaml", "--out", tmp_path], capsys), 2, "does not exist",
                     "give a grid file")
    assert_one_error(*run_cli(["stats", tmp_path / "none"], capsys), 2, "no folder", "--out folder")


def test_a_failure_during_a_run_is_one_line(monkeypatch, capsys):
    def nan_loss(cfg, **kw):
        check_finite("pred", torch.tensor(float("nan")), step=3)
    monkeypatch.setattr(distill, "run", nan_loss)
    assert_one_error(*run_cli(["distill"], capsys), 1, "loss term 'pred' is not finite", "Lower the learning rate")

    def chance(cfg, **kw):
        raise TeacherAtChanceError("the fine-tuned teacher scores accuracy=0.5 on rte dev, at chance level. "
                                   "Fine-tune it longer (--teacher-epochs)")
    monkeypatch.setattr(distill, "run", chance)
    assert_one_error(*run_cli(["distill"], capsys), 1, "at chance level", "--teacher-epochs")


@pytest.mark.parametrize("command", ["distill", "squad", "decoder"])
def test_a_missing_data_folder_is_refused_before_torch_is_imported(command, tmp_path):
    env = {**os.environ, "MAKD_DATA_DIR": str(tmp_path / "gone")}
    code = ("import sys, time; t = time.time(); from makd import cli; rc = cli.main([%r]); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(rc, round(time.time() - t, 2))" % command)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rc, seconds = proc.stdout.split()
    assert rc == "1" and float(seconds) < 5
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: data folder") and "unset MAKD_DATA_DIR" in lines[0]
