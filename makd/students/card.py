"""The model card (``README.md``) of a saved student, in the Hugging Face Hub's conventions.

YAML metadata first (``library_name``, ``pipeline_tag``, ``tags``, and where they are known ``base_model``,
``license``, ``datasets``, ``metrics``), then: how to load it, the teacher, the student's size (parameters, layer
ratio, ranks per role), the objective and its weights, the data (``proxy`` where it is one), the scores with their
metric names, the exact command and the run record. Nothing is invented: every number comes from the folder
(``makd_factorization.json``, ``config.json``, the weights) or from the run's metrics dict passed in (what
``metrics.json`` holds, paths already portable); a field that is not known is left out.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import safetensors

from makd.assets.builders import EMBEDDED, TINY
from makd.assets.registry import ASSETS
from makd.core.budget import EMBED
from makd.core.checkpoint import META, WEIGHTS, teacher_config
from makd.core.families import num_layers
from makd.core.objective import PRESETS, MaKDObjective

REPO = "path/to/student"          # where the card says to load from; replaced by the hub id when one is given
# makd's embedded teachers: the hub model each one was taken from, and the registry asset that records its licence
HUB_ORIGIN = {"minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "minilm-l6"),
              "minilm-l3": ("sentence-transformers/paraphrase-MiniLM-L3-v2", "minilm-l3-onnx"),
              "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct-gguf")}
LICENCE_IDS = ("apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-3.0", "llama3.2", "gpl-3.0")
# the hub datasets of the task families makd reads (makd.tasks.glue.GLUE_HUB, makd.tasks.squad_data.SQUAD_HUB)
TASK_DATASETS = {"glue": "nyu-mll/glue", "squad-v1.1": "rajpurkar/squad", "squad-v2.0": "rajpurkar/squad_v2"}
GLUE = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli-mm", "qnli", "rte")
NOT_SCORES = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "total", "main", "features")
PIPELINES = (("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
             ("ForQuestionAnswering", "question-answering", "AutoModelForQuestionAnswering"),
             ("ForCausalLM", "text-generation", "AutoModelForCausalLM"),
             ("LMHeadModel", "text-generation", "AutoModelForCausalLM"),
             ("Model", "feature-extraction", "AutoModel"))


def pipeline_of(architecture: str) -> tuple[str, str]:
    """(pipeline tag, auto class) of a transformers architecture name (``BertForSequenceClassification``)."""
    for suffix, tag, auto in PIPELINES:
        if architecture.endswith(suffix):
            return tag, auto
    raise ValueError(f"no pipeline known for architecture {architecture!r}")


def teacher_name(name: str | None) -> str | None:
    """A teacher as the card names it: a local folder by its name only (no machine path in a card)."""
    if not name or not Path(name).is_absolute():
        return name
    return Path(name).name


def teacher_origin(name: str | None) -> dict[str, str]:
    """What makd knows of a teacher name: ``description``, ``base_model`` (a hub id) and ``license`` when known."""
    if not name:
        return {}
    out: dict[str, str] = {}
    if name in EMBEDDED or name in TINY:
        out["description"] = EMBEDDED.get(name) or TINY[name]
    if name in HUB_ORIGIN:
        out["base_model"], asset = HUB_ORIGIN[name]
        licence = ASSETS[asset].licence.split()[0].rstrip(";,").lower()
        if licence in LICENCE_IDS:
            out["license"] = licence
    elif name not in TINY and "/" in name and not name.startswith(("/", ".", "~", "$", "<")):
        out["base_model"] = name                         # a hub id (org/name); its licence is not known here
    return out


def weight_count(folder: Path) -> int:
    """Parameters stored in the weights file (tied weights are stored once)."""
    with safetensors.safe_open(str(folder / WEIGHTS), framework="pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def ranks_table(meta: dict[str, Any]) -> list[str]:
    """Markdown rows: per role, the matrices, their ranks (min / median / max) and layers."""
    by_role: dict[str, list[tuple[int, int]]] = {}
    for name, rank in meta["ranks"].items():
        layer, role = meta.get("roles", {}).get(name, [-1, "?"])
        by_role.setdefault(role, []).append((layer, int(rank)))
    rows = ["| role | matrices | rank min | rank median | rank max |", "|---|---|---|---|---|"]
    for role, items in by_role.items():
        ranks = [r for _, r in items]
        rows.append(f"| {'embedding' if role == EMBED else role} | {len(items)} | {min(ranks)} | "
                    f"{statistics.median(ranks):g} | {max(ranks)} |")
    return rows


def _yaml(meta: dict[str, Any]) -> list[str]:
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, list):
            lines += [f"{key}:"] + [f"- {json.dumps(v)}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return lines + ["---"]


def _scores(run: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Markdown rows of the teacher's and the student's scores, and the metric names."""
    teacher, student = run.get("teacher", {}).get("metrics", {}), run.get("student", {}).get("metrics", {})
    names = [k for k, v in student.items() if k not in NOT_SCORES and isinstance(v, (int, float))]
    rows = ["| metric | teacher | student |", "|---|---|---|"]
    for k in names:
        t = teacher.get(k)
        rows.append(f"| {k} | {'' if t is None else f'{t:.4g}'} | {student[k]:.4g} |")
    return rows, names


def _objective(run: dict[str, Any], config: dict[str, Any], n_layers: int) -> list[str]:
    name = run.get("objective")
    if name in (None, "none", "teacher"):
        return ["Not trained: the truncated-SVD student as factorised from the teacher."]
    lines = [f"Preset `{name}`" + (f": {PRESETS[name]}." if name in PRESETS else ".")]
    try:
        obj = MaKDObjective(n_layers, name, weights=config.get("weights"), split=config.get("split"),
                            temperature=config.get("temperature", 2.0), alpha=config.get("alpha", 0.5))
    except (TypeError, ValueError):
        obj = None
    if obj is not None:
        lines += ["", "| aspect | weight | layers |", "|---|---|---|"]
        lines += [f"| {a} | {w:g} | {obj.assignment[a] or 'model output'} |" for a, w in obj.weights.items()]
    given = {k: config[k] for k in ("weights", "split", "temperature", "alpha", "teacher_forcing", "mse")
             if config.get(k) is not None}
    if given:
        lines += ["", "Objective options of the run: `" + json.dumps(given) + "`."]
    return lines


def _data(run: dict[str, Any]) -> list[str]:
    task = run.get("task")
    lines = [f"Task `{task}`" + (" — a **proxy** dataset, not the benchmark itself" if run.get("is_proxy") else "")
             + (f", read from `{run['source']}`." if run.get("source") else ".")]
    lines += [f"- {note}" for note in run.get("notes", [])]
    files = run.get("record", {}).get("data_files_sha256", {})
    lines += [f"- `{path}` sha256 `{digest}`" for path, digest in files.items()]
    return lines


def datasets_of(run: dict[str, Any]) -> list[str]:
    """Hub dataset ids of the run's data, where it is a known benchmark read locally or from the hub."""
    task, source = run.get("task"), str(run.get("source", ""))
    if run.get("is_proxy") or not task:
        return []
    if source.startswith("hub:"):
        return [source[4:]]
    key = "glue" if task in GLUE else task
    return [TASK_DATASETS[key]] if key in TASK_DATASETS else []


def model_card(folder: str | Path, run: dict[str, Any] | None = None, command: str | None = None) -> str:
    """The card of the student in ``folder``; ``run``: the run's metrics dict (portable paths), if there is one;
    ``command``: the command that made it, when the run record does not hold it."""
    folder, run = Path(folder), run or {}
    meta = json.loads((folder / META).read_text())
    config = teacher_config(folder)
    arch = meta["architecture"]
    tag, auto = pipeline_of(arch)
    record = run.get("record", {})
    run_config = record.get("config", {})
    command = run_config.get("command") or command
    teacher = teacher_name(run.get("teacher", {}).get("id") or run_config.get("teacher") or meta.get("teacher"))
    origin = teacher_origin(teacher)
    score_rows, metric_names = _scores(run) if "student" in run else ([], [])
    yaml: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": tag,
                            "tags": ["makd", "low-rank", "truncated-svd", "knowledge-distillation", "custom_code"]}
    yaml.update({k: origin[k] for k in ("base_model", "license") if k in origin})
    if datasets_of(run):
        yaml["datasets"] = datasets_of(run)
    if metric_names:
        yaml["metrics"] = metric_names
    params = run.get("student", {}).get("params") or weight_count(folder)
    t_params = run.get("teacher", {}).get("params") or meta.get("teacher_params")
    size = {k: meta.get(k) for k in ("layer_ratio", "budget", "rank") if meta.get(k) is not None}
    lines = _yaml(yaml) + ["", f"# Low-rank student of `{teacher}`" if teacher else "# Low-rank student", "",
                           f"A truncated-SVD student made with makd ({meta.get('family')} "
                           f"family, `{arch}`): every factorised matrix W is two thin factors A·B.", "",
                           "## Use", "", "```python", f"from transformers import {auto}, AutoTokenizer",
                           f'model = {auto}.from_pretrained("{REPO}", trust_remote_code=True)',
                           f'tokenizer = AutoTokenizer.from_pretrained("{REPO}", trust_remote_code=True)', "```", "",
                           "`trust_remote_code=True` runs `modeling_makd.py` of this folder (torch and transformers "
                           "only). `python -m makd export FOLDER --merge --out DIR` multiplies the factors out into "
                           "a plain checkpoint of the teacher's architecture (not smaller).", "", "## Teacher", ""]
    lines.append(f"`{teacher}`" + (f": {origin['description']}" if "description" in origin else "")
                 + (f" (hub: `{origin['base_model']}`)" if "base_model" in origin else "") + ".")
    if t_params:
        lines.append(f"Parameters: {t_params:,}.")
    lines += ["", "## Student size", "", f"- parameters: {params:,}"
              + (f" ({params / t_params:.1%} of the teacher's {t_params:,})" if t_params else "")]
    if run.get("student", {}).get("layer_ratio") is not None:
        lines.append(f"- layer ratio (factor parameters / dense matrix parameters): "
                     f"{run['student']['layer_ratio']:.4f}")
    lines.append(f"- size requested: `{json.dumps(size)}`; weighting `{meta.get('weighting')}`, rank rule "
                 f"`{meta.get('rank_rule', 'uniform')}`, embeddings factorised: {meta.get('factorize_embeddings')}")
    lines += ["", *ranks_table(meta)]
    if run:
        lines += ["", "## Objective", "", *_objective(run, run_config, num_layers(config))]
        lines += ["", "## Data", "", *_data(run)]
    if score_rows:
        main = run.get("metric")
        lines += ["", "## Scores", "", (f"Main metric `{main}`; " if main else "") + "the run's evaluation scores "
                  f"(teacher fine-tuned on the task; student after objective `{run.get('objective')}`).", "",
                  *score_rows]
        if run.get("relative_to_teacher") is not None:
            lines += ["", f"Student / teacher on `{main}`: {run['relative_to_teacher']:.4f}."]
    if command:
        lines += ["", "## Command", "", "```bash", command, "```"]
    if record:
        kept = {k: v for k, v in record.items() if k != "config"} | {"config": run_config}
        lines += ["", "## Run record", "", "<details><summary>record (config, seed, commit, versions, data and "
                  "teacher hashes)</summary>", "", "```json", json.dumps(kept, indent=1, default=str), "```", "",
                  "</details>"]
    return "\n".join(lines) + "\n"


def write_card(folder: str | Path, run: dict[str, Any] | None = None, command: str | None = None) -> Path:
    """Write ``README.md`` (:func:`model_card`) into the student folder."""
    path = Path(folder) / "README.md"
    path.write_text(model_card(folder, run, command))
    return path
