"""steering_eval's parts without servers: prompt sets, workflow marks, judges, the results store, the report's
maths and files. Expected values are computed here independently (Wilson bounds as the roots of their
quadratic, deviation ratios from counts by hand). The command end to end: tests/test_eval_at_scale.py."""
from __future__ import annotations

import copy
import csv
import math
import os
import sys

import pytest
from PIL import Image

from devtools import comfy_env
from steering_eval import judging, prompt_sets, report, results, scheduler, workflow

DATA = os.path.normpath(os.path.join(comfy_env.REPO, "..", "shared", "data"))
Z = 1.959964


def quadratic_wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson bounds as the p where (k/n - p)^2 = z^2 p (1 - p) / n."""
    ph, c = k / n, Z * Z / n
    a, b, cc = 1 + c, -(2 * ph + c), ph * ph
    root = math.sqrt(b * b - 4 * a * cc)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (7, 250), (1, 4703)])
def test_wilson_interval_is_the_root_pair_of_its_quadratic(k, n):
    assert report.wilson_interval(k, n) == pytest.approx(quadratic_wilson(k, n), abs=1e-12)


def test_wilson_interval_known_values_and_bad_input():
    assert report.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)   # the textbook 0/10 bound
    assert report.wilson_interval(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    for k, n in ((1, 0), (5, 4), (-1, 3)):
        with pytest.raises(report.ReportError, match="0 <= k <= n"):
            report.wilson_interval(k, n)


# ---------------------------------------------------------------------------- prompt sets

def test_i2p_and_winobias_files():
    i2p, wino = os.path.join(DATA, "i2p_benchmark.csv"), os.path.join(DATA, "winobias_prompts.csv")
    if not (os.path.isfile(i2p) and os.path.isfile(wino)):
        pytest.skip(f"the benchmark files are not here ({DATA}): ../shared is absent")
    with open(i2p, newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    whole = prompt_sets.load_prompt_set(i2p)
    assert whole.kind == "i2p" and len(whole.items) == len(raw) == 4703
    first = whole.items[0]
    assert first.prompt_id == "i2p-0" and first.categories == ("violence", "self-harm")
    assert (first.seed, first.guidance) == (4261553411, 13.0) and first.text == raw[0]["prompt"].strip()
    part = prompt_sets.load_prompt_set(i2p, offset=100, limit=5)
    assert [i.prompt_id for i in part.items] == [f"i2p-{n}" for n in range(100, 105)]
    assert [i.seed for i in part.items] == [int(r["sd_seed"]) for r in raw[100:105]]
    wb = prompt_sets.load_prompt_set(wino)
    assert wb.kind == "winobias" and len(wb.items) == 180 and len({i.group for i in wb.items}) == 36
    assert wb.items[0].prompt_id == "Analyst-0" and wb.items[0].group == "Analyst"


def test_prompt_lines_and_generic_csv(tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("# a comment\na red circle\n\n  a green square  \n")
    items = prompt_sets.load_prompt_set(str(lines)).items
    assert [(i.prompt_id, i.text) for i in items] == [("line-2", "a red circle"), ("line-4", "a green square")]
    table = tmp_path / "set.csv"
    table.write_text("id,prompt,category,seed,guidance,group\nx,one,violence,7,5.5,nurse\ny,two,,,,\n")
    x, y = prompt_sets.load_prompt_set(str(table)).items
    assert (x.prompt_id, x.categories, x.seed, x.guidance, x.group) == ("x", ("violence",), 7, 5.5, "nurse")
    assert (y.categories, y.seed, y.guidance) == ((), None, None)
    tasks = prompt_sets.make_tasks((x, y), 3, base_seed=40)
    assert [t.key for t in tasks] == [("x", 7), ("x", 8), ("x", 9), ("y", 40), ("y", 41), ("y", 42)]


@pytest.mark.parametrize("content,message", [
    ("text,category\na,b\n", "needs a 'prompt' column"),
    ("id,prompt,seed\na,one,many\n", "'seed' must be a number"),
    ("id,prompt\na,one\na,two\n", "repeated: \\['a'\\]"),
    ("id,prompt\na, \n", "the prompt is empty"),
])
def test_prompt_set_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(prompt_sets.PromptSetError, match=message):
        prompt_sets.load_prompt_set(str(path))
    with pytest.raises(prompt_sets.PromptSetError, match="no such file"):
        prompt_sets.load_prompt_set(str(tmp_path / "absent.txt"))


# ---------------------------------------------------------------------------- workflow marks

def sd_graph() -> dict:
    return {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["ck", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "steer": {"class_type": "RSApplyEmbeddingDirection", "inputs": {"conditioning": ["pos", 0], "strength": 1.0}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["ck", 0], "positive": ["steer", 0],
                                                    "negative": ["neg", 0], "seed": 1, "cfg": 7.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ck", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "a"}},
    }


def test_marks_are_found_through_conditioning_nodes_and_fill_copies():
    graph = sd_graph()
    marks = workflow.find_marks(graph)
    assert (str(marks.prompt), str(marks.seed), str(marks.guidance), marks.output) == \
           ("pos.text", "ks.seed", "ks.cfg", "save")
    original = copy.deepcopy(graph)
    filled = workflow.fill(graph, marks, "a cat", 99, 4.5, "rs_eval/p")
    assert graph == original
    assert filled["pos"]["inputs"]["text"] == "a cat" and filled["ks"]["inputs"]["seed"] == 99
    assert filled["ks"]["inputs"]["cfg"] == 4.5 and filled["save"]["inputs"]["filename_prefix"] == "rs_eval/p"
    assert workflow.fill(graph, marks, "a", 1, None, "p")["ks"]["inputs"]["cfg"] == 7.0
    assert workflow.find_marks(graph, guidance_input="none").guidance is None


def test_marks_from_titles_flags_and_clear_errors():
    graph = sd_graph()
    graph["neg"]["_meta"] = {"title": "Negative [eval:prompt]"}
    assert str(workflow.find_marks(graph).prompt) == "neg.text"
    assert str(workflow.find_marks(graph, prompt_input="pos.text").prompt) == "pos.text"
    with pytest.raises(workflow.WorkflowError, match="linked to node pos"):
        workflow.find_marks(graph, prompt_input="steer.conditioning")
    with pytest.raises(workflow.WorkflowError, match="has no input 'txt'"):
        workflow.find_marks(graph, prompt_input="pos.txt")
    graph["save2"] = {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}
    with pytest.raises(workflow.WorkflowError, match="found save, save2"):
        workflow.find_marks(graph)
    assert workflow.find_marks(graph, output_node="save2").output == "save2"
    changed = workflow.override(graph, ["steer.strength=0.5", "neg.text=blood, gore"])
    assert changed["steer"]["inputs"]["strength"] == 0.5 and changed["neg"]["inputs"]["text"] == "blood, gore"
    assert graph["steer"]["inputs"]["strength"] == 1.0
    with pytest.raises(workflow.WorkflowError, match="NODE.INPUT=VALUE"):
        workflow.override(graph, ["steer.strength"])


def test_judges_parse_and_add_their_nodes():
    j = judging.parse_judge("clip_attribute:clip_model=tiny,class_prompts=a man|a woman,as=gender")
    assert (j.kind, j.name, j.options) == ("clip_attribute", "gender", {"clip_model": "tiny",
                                                                        "class_prompts": "a man\na woman"})
    with pytest.raises(judging.JudgeError, match="unknown kind 'q16'"):
        judging.parse_judge("q16")
    with pytest.raises(judging.JudgeError, match="distinct"):
        judging.check_judges([judging.parse_judge("nudenet"), judging.parse_judge("nudenet")])
    info = {"RSToyWorldRedScore": {"input": {"required": {"threshold": ["FLOAT", {"default": 0.03}],
                                                          "temperature": ["FLOAT", {"default": 0.02}]}}},
            "RSCLIPScore": {"input": {"required": {"images": ["IMAGE"], "prompt": ["STRING", {}],
                                                   "clip_model": [["tiny", "other"]]}}}}
    graph = sd_graph()
    prompt, echoes = judging.add_judges(graph, "save", [judging.parse_judge("toyworld_red:threshold=0.1"),
                                                        judging.parse_judge("clip_score")], info)
    assert prompt["rs-eval-toyworld_red-score"]["inputs"] == {"threshold": 0.1, "temperature": 0.02}
    assert prompt["rs-eval-toyworld_red"] == {"class_type": "RSSafetyRate", "inputs": {
        "images": ["dec", 0], "safety_score": ["rs-eval-toyworld_red-score", 0]}}
    assert prompt["rs-eval-clip_score"]["inputs"]["clip_model"] == "tiny"
    assert [str(e) for e in echoes] == ["rs-eval-clip_score.prompt"] and "rs-eval-clip_score" not in graph
    with pytest.raises(judging.JudgeError, match="no inputs \\['thresh'\\]"):
        judging.add_judges(graph, "save", [judging.parse_judge("toyworld_red:thresh=1")], info)


# ---------------------------------------------------------------------------- store

def row(config: str, pid: str, seed: int, unsafe: bool = False, categories=("violence",), group: str = "",
        status: str = "ok", **scores) -> results.ResultRow:
    return results.ResultRow(config, pid, seed, 0, tuple(categories), group, f"text of {pid}", status,
                             {"nudenet": float(unsafe), "nudenet_unsafe": unsafe, **scores},
                             None if status == "ok" else "boom", f"images/{pid}_{seed}_0.png")


def test_store_is_idempotent_transactional_and_guards_its_configurations(tmp_path):
    path = str(tmp_path / "results.sqlite")
    with results.ResultStore(path) as store:
        assert store.register_config("base", "fp-1", {"judges": ["nudenet"]})
        assert not store.register_config("base", "fp-1", {"judges": ["nudenet"]})
        with pytest.raises(results.StoreError, match="another --config name"):
            store.register_config("base", "fp-2", {})
        assert store.add([row("base", "a", 1), row("base", "a", 2)]) == 2
        assert store.add([row("base", "a", 1, unsafe=True)]) == 0          # a late duplicate changes nothing
        bad = row("base", "b", 3)
        bad.seed = "not a seed"
        with pytest.raises(ValueError):
            store.add([row("base", "c", 4), bad])
        assert store.done_keys("base") == {("a", 1), ("a", 2)}             # the failed batch left nothing
        store.add([row("base", "e", 5, status="error")])
        assert store.delete_errors("base") == 1
    with results.ResultStore(path) as again:                                # durable across connections
        assert [(r.prompt_id, r.seed, r.scores["nudenet_unsafe"]) for r in again.rows("base")] == \
               [("a", 1, False), ("a", 2, False)]
        assert again.settings("base") == {"judges": ["nudenet"]}


def test_parquet_export_spreads_scores_into_columns(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [row("base", "a", 1, unsafe=True), row("base", "b", 2, clip_score=21.5)]
    path = str(tmp_path / "r.parquet")
    results.export_parquet(rows, path)
    table = pq.read_table(path).to_pydict()
    assert table["prompt_id"] == ["a", "b"] and table["score_nudenet_unsafe"] == [True, False]
    assert table["score_clip_score"] == [None, 21.5] and table["categories"] == ["violence", "violence"]


# ---------------------------------------------------------------------------- report

def test_category_rates_and_comparison_count_images_by_hand():
    base = [row("base", "a", 1, True, ("violence", "hate")), row("base", "a", 2, False, ("violence", "hate")),
            row("base", "b", 1, True, ("sexual",)), row("base", "c", 1, False, ("sexual",)),
            row("base", "d", 1, status="error", categories=("sexual",))]
    rates, overall = report.category_rates(base)
    assert [(r.label, r.n, r.unsafe) for r in rates] == [("hate", 2, 1), ("sexual", 2, 1), ("violence", 2, 1)]
    assert (overall.n, overall.unsafe) == (4, 2)                      # the failed prompt is in no rate
    steered = [row("steered", "a", 1, False, ("violence", "hate")), row("steered", "a", 2, True, ("violence", "hate")),
               row("steered", "b", 1, False, ("sexual",))]          # c is missing: not paired
    c = report.compare(base, steered, "base", "steered")
    assert (c.paired, c.rate_a.unsafe, c.rate_b.unsafe, c.turned_safe, c.turned_unsafe) == (3, 2, 1, 2, 1)


def test_deviation_ratio_per_group_by_hand():
    cls = {"gender_classes": "man|woman"}
    rows = ([row("w", f"doc{i}", i, group="doctor", gender="man", **cls) for i in range(3)] +
            [row("w", "doc3", 3, group="doctor", gender="woman", **cls)] +
            [row("w", f"nur{i}", i, group="nurse", gender="woman", **cls) for i in range(2)] +
            [row("w", "nur2", 2, group="nurse", gender="man|woman", **cls)])          # a tie counts for both
    mean, ratios = report.deviation_by_group(rows, "gender")
    doctor = abs(3 / 4 - 1 / 2) / (1 / 2)
    nurse = abs(3 / 4 - 1 / 2) / (1 / 2)       # woman 3 of 4 counts (the tie adds one to each class)
    assert ratios == pytest.approx({"doctor": doctor, "nurse": nurse}) and mean == pytest.approx((doctor + nurse) / 2)


def test_write_report_tables_and_plots(tmp_path):
    rows = [row("base", f"p{i}", i, unsafe=i < 3, categories=("violence",) if i % 2 else ("sexual",),
                clip_score=20.0 + i) for i in range(10)]
    steered = [row("steered", f"p{i}", i, unsafe=i < 1, categories=r.categories) for i, r in enumerate(rows)]
    path = report.write_report(str(tmp_path), {"base": rows, "steered": steered}, [("base", "steered")])
    text = open(path).read()
    lo, hi = quadratic_wilson(3, 10)
    assert f"| **overall** | 10 | 3 | 30.0 % | {100 * lo:.1f} % - {100 * hi:.1f} % |" in text
    assert "| sexual | 5 | 2 |" in text and "| violence | 5 | 1 |" in text     # p0, p2 sexual; p1 violence
    assert "CLIP score (clip_score): mean 24.50, sd 3.03 over 10 images." in text
    assert "Turned safe (base unsafe, steered safe): 2; turned unsafe: 0." in text
    for name in ("unsafe_base.png", "unsafe_steered.png", "compare_base_vs_steered.png"):
        with Image.open(tmp_path / "plots" / name) as im:
            assert im.size[0] == 720
    with pytest.raises(report.ReportError, match="no rows for 'other'"):
        report.write_report(str(tmp_path), {"base": rows}, [("base", "other")])


# ---------------------------------------------------------------------------- scheduling helpers

def test_missing_ray_gives_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)      # `import ray` raises ImportError
    with pytest.raises(scheduler.MissingDependency, match=r'pip install "ray==2.60.0"'):
        scheduler.require_ray()


def test_node_targets_pin_one_actor_per_alive_node_and_port():
    nodes = [{"NodeID": "n1", "Alive": True, "NodeManagerAddress": "10.0.0.1"},
             {"NodeID": "n2", "Alive": False, "NodeManagerAddress": "10.0.0.2"},
             {"NodeID": "n3", "Alive": True, "NodeManagerAddress": "10.0.0.3"}]
    assert scheduler.node_targets(nodes, [8188, 8189]) == [
        ("10.0.0.1:8188", "http://127.0.0.1:8188", "n1"), ("10.0.0.1:8189", "http://127.0.0.1:8189", "n1"),
        ("10.0.0.3:8188", "http://127.0.0.1:8188", "n3"), ("10.0.0.3:8189", "http://127.0.0.1:8189", "n3")]


def test_the_command_refuses_bad_input_before_starting_anything(tmp_path, capsys):
    from steering_eval import cli

    wf = tmp_path / "wf.json"
    wf.write_text('{"save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0]}}}')
    base = ["run", "--workflow", str(wf), "--servers", "http://127.0.0.1:9", "--out", str(tmp_path / "out")]
    assert cli.main(base + ["--prompts", str(tmp_path / "absent.csv")]) == 2
    assert "absent.csv: no such file" in capsys.readouterr().err
    lines = tmp_path / "p.txt"
    lines.write_text("a cat\n")
    assert cli.main(base + ["--prompts", str(lines), "--judge", "q16"]) == 2
    assert "unknown kind 'q16'" in capsys.readouterr().err
    assert cli.main(base + ["--prompts", str(lines)]) == 2     # no sampler with a seed above the output
    assert "cannot tell the sampler upstream of output node save" in capsys.readouterr().err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_the_report_command_rewrites_report_and_parquet_from_the_store(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from steering_eval import cli

    with results.ResultStore(str(tmp_path / "results.sqlite")) as store:
        for config, flags in (("base", (True, True, False)), ("steered", (False, True, False))):
            store.register_config(config, config, {})
            store.add([row(config, f"p{i}", i, unsafe=f) for i, f in enumerate(flags)])
    assert cli.main(["report", "--out", str(tmp_path), "--compare", "base", "steered"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "Turned safe (base unsafe, steered safe): 1; turned unsafe: 0." in text
    assert (tmp_path / "results.parquet").stat().st_size > 0
    assert cli.main(["report", "--out", str(tmp_path), "--compare", "base", "other"]) == 2
    assert "no rows for 'other'" in capsys.readouterr().err
