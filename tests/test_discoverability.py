"""How users find and understand the pack's nodes: search aliases, tooltips on every input and
output, a description, a help page per node (served where the frontends look for it), the English
locale generated from the schemas (served at /i18n), error texts that name the node as the user
sees it and say which model to download, and the frontends' node search finding the nodes by
their aliases (both frontends, headless Chromium). Every rule runs over whatever nodes the pack
has: a new node is covered the moment it exists."""
from __future__ import annotations

import json
import os
import urllib.request

import pytest

from devtools import build_locales
from devtools.browser import CHROMIUM
from devtools.comfy_env import REPO
from devtools.sd import encode
from devtools.server import ComfyServer

PACK_MODULE_SUFFIX = "responsible-steering"
DOCS_DIR = os.path.join(REPO, "js", "docs")


def pack_defs(object_info: dict) -> dict:
    return {k: v for k, v in object_info.items() if v.get("python_module", "").endswith(PACK_MODULE_SUFFIX)}


def committed_node_defs() -> dict:
    with open(os.path.join(build_locales.LOCALE_DIR, "nodeDefs.json"), encoding="utf-8") as f:
        return json.load(f)


def help_url(node_def: dict) -> str:
    """Where both frontends fetch a custom node's help page (NodeHelpService: /extensions/<custom node folder>/
    docs/<node>.md, after /docs/<node>/<locale>.md)."""
    module = node_def["python_module"]
    assert module.startswith("custom_nodes."), module
    return f"/extensions/{module.split('.', 1)[1]}/docs/{node_def['name']}.md"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ComfyServer(str(tmp_path_factory.mktemp("discoverability-server"))) as running:
        yield running


@pytest.fixture(scope="module")
def ours(server) -> dict:
    defs = pack_defs(server.object_info())
    assert len(defs) >= 28, sorted(defs)
    return defs


@pytest.fixture(scope="module")
def compat(comfy):
    return comfy.module("steering.comfy_compat")


def supports_search_aliases(compat) -> bool:
    return "search_aliases" in compat.schema_options(search_aliases=["x"])


# ---------------------------------------------------------------------------- schema, as the server sends it

def test_every_input_and_output_has_a_tooltip_and_every_node_a_description(ours):
    for name, node in ours.items():
        assert len(node.get("description") or "") > 30, f"{name} has no description"
        for group in ("required", "optional"):
            for input_name, spec in node["input"].get(group, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert (options.get("tooltip") or "").strip(), f"{name}.{input_name} has no tooltip"
        tooltips = node.get("output_tooltips") or []
        assert len(tooltips) == len(node["output"]), f"{name}: {len(tooltips)} tooltips, {len(node['output'])} outputs"
        missing = [node["output_name"][i] for i, t in enumerate(tooltips) if not (t or "").strip()]
        assert not missing, f"{name}: outputs without a tooltip: {missing}"


def test_schema_options_keep_only_what_this_comfyui_accepts(compat):
    import dataclasses

    from comfy_api.v0_0_2 import io

    fields = {f.name for f in dataclasses.fields(io.Schema)}
    got = compat.schema_options(search_aliases=["nsfw"], description="d", no_such_field=1)
    assert got == {"description": "d", **({"search_aliases": ["nsfw"]} if "search_aliases" in fields else {})}
    io.Schema(node_id="RSProbe", **got)  # accepted as it is


def test_search_aliases_reach_the_frontend(ours, compat):
    """In /object_info where this ComfyUI's schema has the field; in the locale (/i18n) always, where
    js/search_aliases.js takes them from when /object_info has none. Every node is found by "steering"."""
    locale = committed_node_defs()
    for name, node in ours.items():
        aliases = locale[name].get("search_aliases") or []
        assert "steering" in aliases and len(aliases) >= 3, f"{name}: {aliases}"
        if supports_search_aliases(compat):
            assert node.get("search_aliases") == aliases, name
        else:
            assert "search_aliases" not in node, name  # this ComfyUI drops them: the locale carries them


# ---------------------------------------------------------------------------- help pages

def test_every_node_has_a_help_page_that_the_server_serves(server, ours):
    for name, node in ours.items():
        path = os.path.join(DOCS_DIR, f"{name}.md")
        assert os.path.isfile(path), f"no help page js/docs/{name}.md"
        with urllib.request.urlopen(f"{server.url}{help_url(node)}", timeout=30) as response:
            assert response.status == 200
            served = response.read().decode("utf-8")
        with open(path, encoding="utf-8") as f:
            assert served == f.read()
        assert served.startswith(f"# {node['display_name']}\n"), name
        inputs = [*node["input"].get("required", {}), *node["input"].get("optional", {})]
        unnamed = [i for i in inputs if f"`{i}`" not in served]
        assert not unnamed, f"js/docs/{name}.md does not name the inputs {unnamed}"
        unnamed = [o for o in node["output_name"] if f"`{o}`" not in served]
        assert not unnamed, f"js/docs/{name}.md does not name the outputs {unnamed}"


def test_no_help_page_without_a_node(ours):
    pages = {f[:-3] for f in os.listdir(DOCS_DIR) if f.endswith(".md")}
    assert pages - set(ours) == set()


# ---------------------------------------------------------------------------- locales

def test_locale_files_are_generated_from_the_schemas(comfy):
    classes = comfy.module("nodes").all_nodes()
    for path, text in build_locales.locale_files(classes).items():
        with open(path, encoding="utf-8") as f:
            assert f.read() == text, f"{os.path.relpath(path, REPO)} is stale: python -m devtools.build_locales"


def test_server_serves_the_locale(server, ours):
    english = server.get("/i18n")["en"]
    locale = committed_node_defs()
    assert set(locale) == set(ours)
    for name, node in ours.items():
        assert english["nodeDefs"][name] == locale[name]
        entry = locale[name]
        assert entry["display_name"] == node["display_name"] and entry["description"] == node["description"]
        assert [o["tooltip"] for o in entry["outputs"].values()] == node["output_tooltips"]
        assert [o["name"] for o in entry["outputs"].values()] == node["output_name"]
    categories = {part for node in ours.values() for part in node["category"].split("/")}
    assert categories <= set(english["nodeCategories"])


# ---------------------------------------------------------------------------- error texts

def node_class(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]


def test_validation_errors_name_the_node_by_its_display_name(comfy):
    message = node_class(comfy, "RSColourStatisticScore").validate_inputs(statistic="redness", threshold=float("nan"))
    assert message.startswith("Colour Statistic Score: input 'threshold' expects a finite number in [-100.0, 100.0]")
    assert "RSColourStatisticScore" not in message


def test_missing_clip_model_says_what_to_download_and_where(comfy):
    message = node_class(comfy, "RSCLIPScore").validate_inputs(clip_model="no-such-clip", prompt="a cat")
    assert message.startswith("CLIP Score: ")
    assert "'no-such-clip'" in message
    assert message.count("https://huggingface.co/openai/clip-vit-large-patch14") == 1  # said once, not per check
    assert "models/safety_clip/<name>/" in message


def test_missing_nudenet_model_says_what_to_install_and_where(comfy, tmp_path, monkeypatch):
    import importlib.util

    import folder_paths

    folder = tmp_path / "nudenet"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "nudenet", ([str(folder)], {".onnx"}))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no nudenet package either
    with pytest.raises(FileNotFoundError) as info:
        node_class(comfy, "RSNudeNetScore").execute(label_preset="stg_nudity", custom_labels="",
                                                    detection_threshold=0.01, threshold=0.0)
    message = str(info.value)
    assert message.startswith("NudeNet Safety Score: NudeNet detector 320n.onnx not found")
    assert "pip install --no-deps nudenet" in message and "install.py" in message
    assert "https://github.com/notAI-tech/NudeNet/releases" in message and "models/nudenet/" in message
    assert str(folder) in message


def widget_defaults(cls) -> dict:
    return {i.id: i.default for i in cls.define_schema().inputs if getattr(i, "default", None) is not None}


def test_missing_taesd_decoder_says_what_to_download_and_where(comfy, tiny):
    import folder_paths

    assert not [n for n in folder_paths.get_filename_list("vae_approx") if n.startswith("taesd_decoder.")]
    model, _clip, vae = tiny
    positive, negative = encode(comfy, "a cat"), encode(comfy, "")
    guider = node_class(comfy, "RSSTGGuider")
    score = comfy.module("steering.safety").ColourStatisticScore("brightness", threshold=0.0)
    values = {**widget_defaults(guider), "model": model, "positive": positive, "negative": negative, "vae": vae,
              "safety_score": score, "decoder": "taesd"}
    with pytest.raises(FileNotFoundError) as info:
        guider.execute(**values)
    message = str(info.value)
    assert message.startswith("STG Guider: TAESD decoder taesd_decoder.safetensors (or .pth) not found")
    assert "taesd_decoder.pth" in message and "https://github.com/madebyollin/taesd" in message
    assert "models/vae_approx/" in message and "decoder = vae" in message


def test_missing_nudenet_file_in_a_saved_workflow_says_where_to_get_it(comfy):
    score = node_class(comfy, "RSNudeNetScore")
    message = score.validate_inputs(**{**widget_defaults(score), "model_name": "640m.onnx"})
    assert message.startswith("NudeNet Safety Score: input 'model_name' expects one of ")
    assert "https://github.com/notAI-tech/NudeNet/releases" in message and "models/nudenet/" in message


# ---------------------------------------------------------------------------- the frontends' node search

SEARCH_WORDS = ("steering", "safety", "nsfw", "fair", "bias", "censor")
REQUIRED_HITS = {
    "censor": {"RSCensor", "RSDetectUnsafe"},
    "fair": {"RSApplyEmbeddingDirectionFair", "RSApplyHSpaceVectorFair", "RSFairnessDeviation"},
    "bias": {"RSApplyEmbeddingDirectionFair", "RSApplyHSpaceVectorFair", "RSFairnessDeviation"},
    "nsfw": {"RSNudeNetScore", "RSDetectUnsafe", "RSCensor", "RSSTGKSampler", "RSDualLatentKSampler"},
    "safety": {"RSNudeNetScore", "RSCLIPViolenceScore", "RSSTGKSampler", "RSDetectUnsafe", "RSSafetyRate"},
}


def expected_hits(word: str, locale: dict, hidden: set[str] = frozenset()) -> set[str]:
    """Every pack node with an alias containing `word` (all of them for "steering"), and at least the
    nodes a user means by it; not the `hidden` ones (deprecated: the nodes the server's policy inserts,
    which the frontends keep out of the search)."""
    by_alias = {name for name, entry in locale.items() if any(word in a for a in entry.get("search_aliases", []))}
    return (by_alias | REQUIRED_HITS.get(word, set())) - hidden


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs it via apt as root)")
def test_node_search_finds_the_pack_by_its_aliases(frontend):  # noqa: F811
    """The search service the search box calls (same query, same 64-result limit) finds every expected
    pack node for each word, on both frontends."""
    page, server, errors = frontend
    locale = committed_node_defs()
    defs = pack_defs(server.object_info())
    assert set(defs) == set(locale)
    hidden = {name for name, node in defs.items() if node.get("deprecated")}
    found = page.evaluate("""(words) => {
        const pinia = document.getElementById('vue-app').__vue_app__.config.globalProperties.$pinia;
        const service = pinia._s.get('nodeDef').nodeSearchService;
        return Object.fromEntries(words.map(w => [w, service.searchNode(w, [], {limit: 64}).map(d => d.name)]));
    }""", list(SEARCH_WORDS))
    for word in SEARCH_WORDS:
        missing = expected_hits(word, locale, hidden) - set(found[word])
        assert not missing, f"searching {word!r} misses {sorted(missing)}; got {found[word]}"
        assert not hidden & set(found[word]), f"searching {word!r} shows server-only nodes"
    assert len(expected_hits("steering", locale, hidden)) == len(locale) - len(hidden)
    assert hidden == {"RSPolicyOutputGuard", "RSPolicySteer", "RSPolicySafetyScore", "RSPolicyRefusal"}
    assert "RSCensor" not in found["fair"] and "RSFairnessDeviation" not in found["censor"]
    assert not [e for e in errors if "responsible" in e.lower() or "search" in e.lower()], errors


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs it via apt as root)")
def test_search_box_shows_the_pack_nodes_for_each_word(frontend):  # noqa: F811
    """The real search box (opened as the user's shortcut does, the word typed key by key) lists the nodes a
    user means by each word."""
    page, server, _ = frontend
    by_display_name = {v["display_name"]: k for k, v in pack_defs(server.object_info()).items()}
    for _ in range(2):  # dialogs a first start may open (templates, missing models)
        page.keyboard.press("Escape")
    for word, required in REQUIRED_HITS.items():
        page.evaluate("() => app.extensionManager.command.execute('Workspace.SearchBox.Toggle')")
        page.wait_for_selector("input[placeholder]:focus", timeout=10_000)
        page.keyboard.type(word, delay=20)
        page.wait_for_timeout(1_000)  # the box debounces its query
        shown = page.evaluate("""() => [...document.querySelectorAll('[role=option]')]
            .map(e => e.innerText.split('\\n')[0].replace(/\\u00a0/g, ' ').trim()).filter(Boolean)""")
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
        listed = {by_display_name[name] for name in shown if name in by_display_name}
        assert required <= listed, f"the search box shows {shown} for {word!r}; missing {sorted(required - listed)}"
