"""One distillation training step, makd against TextBrewer 0.2.1, on the same teacher, student, batch and objective.

    python benchmarks/bench_vs_textbrewer.py            # MiniLM-L6 teacher (cls head), SVD student at 0.5, 16 x 128 RTE
    python benchmarks/bench_vs_textbrewer.py --quick    # tiny-bert preset smoke run (seconds)

TextBrewer is a benchmark-only dependency (not one of the package's): ``.venv/bin/python -m pip install --no-deps
textbrewer==0.2.1.post1`` (it imports only torch, tqdm, numpy and torch.utils.tensorboard, all already installed).

Objectives, the same in both frameworks (makd's weights; TextBrewer's configuration in brackets):

* ``intermediate``: hidden-state MSE on every layer and on the embedding output + attention KL(teacher ‖ student)
  on every layer + 0.5 · t² · KL of the logits at t = 2 + 0.5 · gold CE. makd: preset ``layer-only``.
  [GeneralDistiller, ``hidden_mse`` matches 0..L, ``attention_ce`` matches 0..L-1, ``kd_loss_type='ce'``,
  ``temperature=2``, ``kd_loss_weight=2.0`` (= 0.5 · t²: its KD term has no t² factor), ``hard_label_weight=0.5``.]
* ``logit-kd``: 0.5 · t² · KL + 0.5 · gold CE only. makd: preset ``model-only``. [BasicDistiller, same KD settings.]

TextBrewer's cross-entropy terms equal makd's KL terms plus the teacher's entropy, a constant of the student: the
step-0 loss values differ by exactly that constant (printed and recorded) and the student gradients are the same
(their cosine is recorded). Both sides run one AdamW step (lr 1e-5) per step, on their own copy of the student.

How each side is driven. makd: ``MaKDObjective.captures`` (the teacher once under inference mode, the student
with its graph; :mod:`makd.core.capture`) + :class:`makd.core.objective.MaKDObjective`, as ``bench_step.py`` and
DistillTrainer do; the models keep their default SDPA attention (makd recomputes the attention maps from
the hooked q and k). TextBrewer: its own distiller object and its own
step, ``distiller.train_on_batch(batch, args)`` (teacher forward without grad, student forward, adaptors,
``compute_loss``) then ``write_loss`` (a no-op writer, but it reads every term with ``.item()``), backward and the
optimizer step, which is the body of its ``train_with_num_steps`` loop. The loop itself is not called because it
cannot be stepped once at a time: each ``train()`` call saves a checkpoint (``torch.save`` of the student) at its last
step and wraps the data in tqdm, which would time disk writes instead of distillation. The distiller's context
(``with distiller:``, teacher eval / student train) is entered as its examples do. TextBrewer's attention losses
need the probabilities from the model (``output_attentions=True``), which only eager attention returns, so its
``intermediate`` models run eager attention; its ``logit-kd`` models keep SDPA. ``attention_ce`` applies a softmax to
what it gets, so the adaptor hands it log-probabilities (log p clamped at 1e-12: padded keys have p = 0, and
0 · log 0 would be NaN there; the mask then drops them). transformers returns the probabilities after dropout,
whose log is -inf, so the student's attention dropout is 0 in both frameworks (hidden dropout stays at 0.1).

Step-0 losses and gradients are computed with both students in eval mode (no dropout), from identical weights.
Wall time: median over ``--runs`` steps after ``--warmup``, the four steps interleaved round by round (the order
rotated each round). Peak memory: each step once more in --memory-repeats fresh subprocesses, the median (as
``bench_step.py``: the peak resident-set increase over the RSS before its first step, VmHWM reset through
/proc/self/clear_refs).
Writes benchmarks/results/textbrewer.json (``--out``), with ``makd_over_textbrewer`` = makd's median step time over
TextBrewer's per objective, the load average before and after, threads and versions.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))                     # _memory.py, also under runpy

from _memory import add_run_options, add_step_options, child_memory, peak_rss_delta, start_run  # noqa: E402
import makd  # noqa: E402
from makd.core import factorize as fz  # noqa: E402
from makd.core.capture import capture  # noqa: E402
from makd.core.objective import MaKDObjective  # noqa: E402

PIP = f"{sys.executable} -m pip install --no-deps textbrewer==0.2.1.post1"
OBJECTIVES = {"intermediate": "layer-only", "logit-kd": "model-only"}   # objective -> makd preset
FRAMEWORKS = ("makd", "textbrewer")
T, ALPHA, EPS, LR = 2.0, 0.5, 1e-12, 1e-5


def load_teacher(quick: bool):
    from makd.assets.models import load_model
    torch.manual_seed(0)                                    # minilm-l6's new classification head is random: seed it
    name = "tiny-bert" if quick else "minilm-l6"
    model, tok = load_model(name, head="cls", num_labels=2)
    return model.eval(), tok, ("tiny-bert (random BERT preset, hidden 32, 2 layers)" if quick
                               else "minilm-l6 (embedded all-MiniLM-L6-v2, cls head seeded 0)")


def make_batch(tok, args) -> tuple[dict, str]:
    """``--batch`` x ``--seq`` of real text: RTE dev pairs (seeded pick, truncated / padded to ``--seq``) with their
    gold labels (local GLUE copy, ``$MAKD_DATA_DIR``); without one, the embedded rt-polarity snippets."""
    from makd.tasks.data import TaskDataUnavailableError
    from makd.tasks.glue import load_task
    try:
        task = load_task("rte", source="local", max_dev=args.batch, seed=0)
    except TaskDataUnavailableError:
        task = load_task("rt-polarity", max_dev=args.batch, seed=0)
    rows = task.dev
    enc = tok(*[list(rows[f]) for f in task.text_fields], truncation=True, max_length=args.seq,
              padding="max_length", return_tensors="pt")                       # (B, T) each
    batch = {**enc, "labels": torch.tensor(list(rows["label"]))}               # labels (B,)
    fill = batch["attention_mask"].float().mean().item()
    return batch, f"{task.name} dev, {args.batch} rows (seed 0), {fill:.0%} of the {args.seq} positions are text"


def adaptor(batch, out) -> dict:
    """TextBrewer adaptor: logits, the model's own CE on the gold labels, hidden states, log attention probs."""
    res = {"logits": out.logits, "losses": out.loss, "inputs_mask": batch["attention_mask"]}
    if out.hidden_states is not None:
        res["hidden"] = out.hidden_states                                      # L+1 x (B, T, D)
    if out.attentions is not None:
        res["attention"] = [a.clamp_min(EPS).log() for a in out.attentions]   # L x (B, H, T, T)
    return res


def distiller_for(objective: str, teacher, student, out_dir: str):
    import textbrewer as tb
    n = student.config.num_hidden_layers
    matches = [] if objective == "logit-kd" else (
        [{"layer_T": i, "layer_S": i, "feature": "hidden", "loss": "hidden_mse", "weight": 1} for i in range(n + 1)]
        + [{"layer_T": i, "layer_S": i, "feature": "attention", "loss": "attention_ce", "weight": 1}
           for i in range(n)])
    d_config = tb.DistillationConfig(temperature=T, kd_loss_type="ce", kd_loss_weight=ALPHA * T * T,
                                     hard_label_weight=1 - ALPHA, intermediate_matches=matches)
    t_config = tb.TrainingConfig(device="cpu", log_dir=None, output_dir=out_dir)
    cls = tb.BasicDistiller if objective == "logit-kd" else tb.GeneralDistiller
    args = {} if objective == "logit-kd" else {"output_hidden_states": True, "output_attentions": True}
    return cls(t_config, d_config, teacher, student, adaptor, adaptor), args


def build(args, which=None):
    """Teacher, the student at --layer-ratio, the batch, and the steps (framework, objective) -> (closure, parts)."""
    teacher, tok, source = load_teacher(args.quick)
    teacher.requires_grad_(False)
    student = fz.factorize(teacher, layer_ratio=args.layer_ratio)
    for m in student.modules():                               # TextBrewer needs attention dropout 0; both get it
        if type(m).__name__.endswith("SelfAttention"):
            m.dropout.p = 0.0
    eager_teacher = copy.deepcopy(teacher)
    eager_teacher.set_attn_implementation("eager")
    batch, data = make_batch(tok, args)
    steps, tmp = {}, tempfile.mkdtemp(prefix="bench_tb_")
    for obj, preset in OBJECTIVES.items():
        for fw in FRAMEWORKS:
            if which and which != (fw, obj):
                continue
            s = copy.deepcopy(student).train()
            opt = torch.optim.AdamW(s.parameters(), lr=LR)
            if fw == "makd":
                steps[fw, obj] = (makd_step(MaKDObjective(s.config.num_hidden_layers, preset, temperature=T,
                                                          alpha=ALPHA), teacher, s, batch, opt), s, None)
            else:
                t = eager_teacher if obj == "intermediate" else teacher
                if obj == "intermediate":
                    s.set_attn_implementation("eager")
                dist, kw = distiller_for(obj, t, s, tmp)
                steps[fw, obj] = (tb_step(dist, kw, batch, opt), s, (dist, kw))
    info = {"teacher": source, "data": data, "student_params": fz.count_parameters(student),
            "teacher_params": fz.count_parameters(teacher), "tmp": tmp}
    return teacher, eager_teacher, batch, steps, info


def makd_captures(obj, student, teacher, batch):
    """(student, teacher) captures as DistillTrainer takes them: ``objective.captures`` (the teacher once, in
    inference mode); objectives without that method: :func:`capture` twice, as before."""
    if hasattr(obj, "captures"):
        return obj.captures(student, teacher, batch)
    spec = obj.spec()
    return capture(student, batch, spec, grad=True), capture(teacher, batch, spec, grad=False)


def makd_step(obj, teacher, student, batch, opt):
    def step():
        total, _ = obj(*makd_captures(obj, student, teacher, batch), batch)   # the captures are gone before backward
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    step.objective = obj
    return step


def tb_step(dist, kw, batch, opt):
    def step():
        total, parts = dist.train_on_batch(batch, kw)         # TextBrewer's own step (see the module docstring)
        dist.write_loss(total, 0, parts)
        total.backward()
        opt.step()
        opt.zero_grad()
    return step


def entropies(eager_teacher, batch) -> tuple[float, list[float]]:
    """The teacher's constants: the logits' entropy at t = 2 (mean over examples) and, per layer, the attention
    entropy (sum over valid keys, mean over heads and valid queries), as makd's and TextBrewer's masks count."""
    with torch.no_grad():
        out = eager_teacher(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True)
    p = torch.softmax(out.logits / T, -1)                                      # (B, C)
    h_logits = float(-(p * p.clamp_min(EPS).log()).sum(-1).mean())
    valid = batch["attention_mask"].bool()                                     # (B, T)
    h_attn = []
    for a in out.attentions:                                                   # (B, H, T, T)
        h = -(a * a.clamp_min(EPS).log() * valid[:, None, None, :]).sum(-1)   # (B, H, T)
        q = valid[:, None, :].expand_as(h)
        h_attn.append(float(h[q].mean()))
    return h_logits, h_attn


def step0(obj: str, steps: dict, eager_teacher, teacher, batch) -> dict:
    """Both losses and student gradients before any update (students in eval mode: no dropout), side by side."""
    (_, s_m, _), (_, s_t, (dist, kw)) = steps["makd", obj], steps["textbrewer", obj]
    mo = steps["makd", obj][0].objective
    s_m.eval(), s_t.eval()
    total_m, terms = mo(*makd_captures(mo, s_m, teacher, batch), batch)
    total_m.backward()
    total_t, parts = dist.train_on_batch(batch, kw)
    total_t.backward()
    g_m = torch.cat([p.grad.flatten() for p in s_m.parameters() if p.grad is not None]).double()   # (P,)
    g_t = torch.cat([p.grad.flatten() for p in s_t.parameters() if p.grad is not None]).double()   # (P,)
    for s in (s_m, s_t):
        s.zero_grad(set_to_none=True)
        s.train()
    h_logits, h_attn = entropies(eager_teacher, batch)
    kd_w = dist.d_config.kd_loss_weight
    tb_sum = {f: sum(v.item() for k, v in parts.items() if k.startswith(f"unweighted_{f}_")) for f in
              ("attention", "hidden")}
    rows = [("logit KD (t = 2)", ALPHA * float(terms["kd"]), kd_w * parts["unweighted_kd_loss"].item(), kd_w * h_logits,
             f"TextBrewer's CE = KL + H(teacher at t = 2); weight {kd_w} = 0.5 * t^2 times H = {h_logits:.4f}"),
            ("gold CE", (1 - ALPHA) * float(terms["ce"]), dist.d_config.hard_label_weight
             * parts["unweighted_hard_label_loss"].item(), 0.0, "the same cross-entropy")]
    if obj == "intermediate":
        rows += [("attention, all layers", float(terms["attn"]), tb_sum["attention"], sum(h_attn),
                  "TextBrewer's CE = KL + the teacher's attention entropy, summed over layers: "
                  + " + ".join(f"{h:.4f}" for h in h_attn)),
                 ("hidden MSE, emb + all layers", float(terms["hidn"]), tb_sum["hidden"], 0.0, "the same MSE")]
    rows.append(("total", total_m.item(), total_t.item(), sum(r[3] for r in rows), "sum of the above"))
    cos = float(torch.nn.functional.cosine_similarity(g_m, g_t, dim=0))
    rel = float((g_m - g_t).norm() / g_m.norm())
    return {"terms": [{"term": n, "makd": a, "textbrewer": b, "difference": b - a, "explained_by_entropy": e,
                       "unexplained": b - a - e, "why": why} for n, a, b, e, why in rows],
            "grad_cosine": cos, "grad_rel_diff": rel, "grad_numel": g_m.numel(), "grad_numel_textbrewer": g_t.numel()}


def measure_memory(args) -> dict:
    """Fresh process: two steps of one (framework, objective), peak RSS increase (MiB) as bench_step.py."""
    fw, obj = args.memory.split(":")
    _, _, _, steps, info = build(args, which=(fw, obj))
    step = steps[fw, obj][0]

    def two_steps():
        with (steps[fw, obj][2][0] if fw == "textbrewer" else contextlib.nullcontext()):
            step()
            step()
    try:
        return peak_rss_delta(two_steps, "the step")
    finally:
        shutil.rmtree(info["tmp"], ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(p)
    add_run_options(p, quick="tiny-bert preset, batch 4 x 32, 3 runs", memory="per-step",
                    out=ROOT / "benchmarks" / "results" / "textbrewer.json")
    args = p.parse_args(argv)
    try:
        import textbrewer
    except ImportError:
        print(f"bench_vs_textbrewer.py needs TextBrewer, a benchmark-only dependency; install it with:\n  {PIP}",
              file=sys.stderr)
        return 2
    import transformers
    start_run(args, {"batch": 4, "seq": 32, "runs": 3, "warmup": 1})
    if args.memory:
        print(json.dumps(measure_memory(args)))
        return 0
    load_before = os.getloadavg()
    teacher, eager_teacher, batch, steps, info = build(args)
    checks = {obj: step0(obj, steps, eager_teacher, teacher, batch) for obj in OBJECTIVES}
    for obj, chk in checks.items():
        print(f"step 0, {obj}: {'term':<30} {'makd':>10} {'TextBrewer':>11} {'difference':>10} {'entropy':>10} "
              f"{'rest':>9}")
        for r in chk["terms"]:
            print(f"{'':>{9 + len(obj)}}{r['term']:<30} {r['makd']:10.6f} {r['textbrewer']:11.6f} "
                  f"{r['difference']:10.6f} {r['explained_by_entropy']:10.6f} {r['unexplained']:9.1e}")
        print(f"{'':>{9 + len(obj)}}student gradient cosine {chk['grad_cosine']:.6f} "
              f"(relative difference {chk['grad_rel_diff']:.2e})", flush=True)
    keys = list(steps)
    times: dict = {k: [] for k in keys}
    with steps["textbrewer", "intermediate"][2][0], steps["textbrewer", "logit-kd"][2][0]:
        for k in keys:
            for _ in range(args.warmup):
                steps[k][0]()
        for r in range(args.runs):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:               # order rotated each round
                t0 = time.perf_counter()
                steps[k][0]()
                times[k].append(time.perf_counter() - t0)
    shutil.rmtree(info.pop("tmp"), ignore_errors=True)
    load_after = os.getloadavg()
    objectives = {}
    for obj, preset in OBJECTIVES.items():
        entry = {}
        for fw in FRAMEWORKS:
            ts = times[fw, obj]
            row = {"median_s": statistics.median(ts), "times_s": ts}
            row.update({"preset": preset, "attn_implementation": "sdpa"} if fw == "makd" else
                       {"distiller": type(steps[fw, obj][2][0]).__name__,
                        "attn_implementation": "eager" if obj == "intermediate" else "sdpa"})
            if not args.no_memory:
                row.update(child_memory(__file__, f"{fw}:{obj}", args, ["--batch", str(args.batch), "--seq",
                                                                     str(args.seq), "--layer-ratio",
                                                                     str(args.layer_ratio)]))
            entry[fw] = row
        entry["makd_over_textbrewer"] = entry["makd"]["median_s"] / entry["textbrewer"]["median_s"]
        entry["step0"] = checks[obj]
        objectives[obj] = entry
        mem = {fw: f", +{entry[fw]['peak_rss_delta_mib']:.0f} MiB" if "peak_rss_delta_mib" in entry[fw] else ""
               for fw in FRAMEWORKS}
        print(f"{obj:>13}: makd {entry['makd']['median_s']:.3f} s/step{mem['makd']}, TextBrewer "
              f"{entry['textbrewer']['median_s']:.3f} s/step{mem['textbrewer']}: makd/TextBrewer "
              f"{entry['makd_over_textbrewer']:.2f}", flush=True)
    result = {
        "what": "one distillation step (teacher forward without grad + student forward + loss + backward + AdamW), "
                "makd vs TextBrewer, same teacher / student / batch / objective",
        **info, "student_layer_ratio": args.layer_ratio, "student_attention_dropout": 0.0,
        "batch": args.batch, "seq": args.seq, "runs": args.runs, "warmup": args.warmup, "quick": args.quick,
        "temperature": T, "alpha": ALPHA, "device": "cpu", "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": load_after,
        "versions": {"makd": makd.__version__, "textbrewer": textbrewer.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "platform": platform.platform(), "objectives": objectives,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: round(v["makd_over_textbrewer"], 3) for k, v in objectives.items()}), f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
