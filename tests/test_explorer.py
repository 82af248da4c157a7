"""The attention explorer page (lm.inspect.explorer): self-contained, safe against any token, and, in headless
Chromium (tests/browser.py), drawing, switching, reading out and colouring what the data says; each head's
distance and entropy under its thumbnail; a page of several checkpoints and its slider."""

import json
import math
import random
import re
from contextlib import ExitStack

import numpy as np
import pytest

from browser import explorer_view, launch, open_page
from lm.inspect.attention_maps import head_stats
from lm.inspect.explorer import TEMPLATE, explorer_html, write_explorer

HOSTILE = ["</script><script>alert(1)</script>", "<!--", "-->", "</SCRIPT >", "&amp;", "\u2028", "\\u003c", '"']


# ---- synthetic data: what visualize.py writes, from seeded random softmax rows --------------------------

def softmax_rows(rng, nq, nk, causal, sharpness=2.0):
    rows = []
    for q in range(nq):
        logits = [rng.gauss(0, sharpness) for _ in range(nk)]
        e = [math.exp(x) if not (causal and k > q) else 0.0 for k, x in enumerate(logits)]
        rows.append([v / sum(e) for v in e])
    return rows


def maps(rng, layers, heads, nq, nk, causal=False):
    return [[softmax_rows(rng, nq, nk, causal) for _ in range(heads)] for _ in range(layers)]


def lm_data(tokens=tuple("ROMEO: o\nhi\t!"), layers=2, heads=4, seed=0):
    rng = random.Random(seed)
    n = len(tokens)
    return {"kind": "lm", "tokens": list(tokens),
            "attentions": {"decoder_self": maps(rng, layers, heads, n, n, causal=True)},
            "config": {"task": "lm", "attention": "standard", "pos_encoding": "learned",
                       "num_blocks": layers, "num_heads": heads}}


def seq2seq_data(layers=2, heads=4, seed=1, output="edcba"):
    """A reverse model's example; target: BOS and the output's characters (the decoder inputs)."""
    rng = random.Random(seed)
    source, target = list("abcde"), ["<bos>", *output]
    S, T = len(source), len(target)
    return {"kind": "seq2seq", "tokens": {"source": source, "target": target},
            "attentions": {"encoder_self": maps(rng, layers, heads, S, S),
                           "decoder_self": maps(rng, layers, heads, T, T, causal=True),
                           "cross": maps(rng, layers, heads, T, S)},
            "config": {"task": "reverse", "attention": "standard", "pos_encoding": "rope",
                       "num_blocks": layers, "num_heads": heads},
            "output": output}


def with_stats(data):
    """data with each head's mean attention distance and entropy, as AttentionRecord.to_json() adds them."""
    stats = {}
    for kind, layers in data["attentions"].items():
        distance, entropy = head_stats(np.array(layers))
        stats[kind] = {"distance": distance.tolist(), "entropy": entropy.tolist()}
    return {**data, "stats": stats}


def frames_data(outputs=("e", "edb", "edcba"), steps=(100, 200, 300)):
    """Three checkpoints of one reverse model: each frame its own output, so its own target tokens and maps."""
    frames = []
    for i, (step, output) in enumerate(zip(steps, outputs)):
        frame = with_stats(seq2seq_data(seed=10 + i, output=output))
        frames.append({"step": step, "label": f"step {step} · exact {20 * (i + 1):.1f}%",
                       "checkpoint": f"out/reverse/ckpt/step_{step:06d}.pt", **frame})
    return {"frames": frames, "view": {"layer": 1, "head": 2}}


def signed_data(n=8, layers=1, heads=2, lam=0.8, seed=2):
    """Differential attention: each weight is a - lam * b of two causal softmax maps (rows sum to 1 - lam)."""
    rng = random.Random(seed)
    tokens = list("to be or")[:n]

    def head():
        a, b = softmax_rows(rng, n, n, True, 3.0), softmax_rows(rng, n, n, True, 3.0)
        return [[x - lam * y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]

    return {"kind": "lm", "tokens": tokens,
            "attentions": {"decoder_self": [[head() for _ in range(heads)] for _ in range(layers)]},
            "config": {"task": "lm", "attention": "differential", "pos_encoding": "rope"}}


def embedded(html):
    """The JSON text between the data script's tags."""
    return re.search(r'<script type="application/json" id="attention-data">(.*?)</script>', html, re.S).group(1)


def visible(token):
    return token.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5")


# ---- the HTML, without a browser ---------------------------------------------------------------------

def test_the_page_is_self_contained():
    html = explorer_html(seq2seq_data())
    lower = html.lower()
    for outside in ("http://", "https://", "//cdn", "<link", "@import", "<iframe", "<img", "fetch(", "xmlhttprequest"):
        assert outside not in lower, outside
    assert all(v.startswith("data:") for v in re.findall(r"""src\s*=\s*["']?([^"'\s>]*)""", lower))
    assert all(v.strip("'\" ").startswith("data:") for v in re.findall(r"url\(([^)]*)\)", lower))
    assert re.findall(r"<script[^>]*>", html) == ['<script type="application/json" id="attention-data">', "<script>"]


def test_the_embedded_json_round_trips_exactly():
    data = seq2seq_data()
    data["tokens"]["source"] = ["a", "é", "☃", "\n", "0.1"]
    data["config"]["note"] = {"nested": [1, 2.5, None, True], "float": 0.1 + 0.2}
    assert json.loads(embedded(explorer_html(data))) == data


def test_hostile_tokens_cannot_break_out_of_the_data():
    data = lm_data(tokens=HOSTILE)
    html = explorer_html(data)
    text = embedded(html)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == data
    template = TEMPLATE.read_text(encoding="utf-8")
    for marker in ("<script", "</script", "<!--", "-->"):
        assert html.lower().count(marker) == template.lower().count(marker), marker


def test_maps_that_do_not_match_the_tokens_are_refused():
    data = seq2seq_data()
    data["attentions"]["cross"] = data["attentions"]["encoder_self"]  # source x source, not target x source
    with pytest.raises(ValueError, match="cross"):
        explorer_html(data)
    data = lm_data()
    data["attentions"]["decoder_self"][0][0][0][0] = float("nan")
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        explorer_html(data)


def test_stats_that_do_not_match_the_heads_are_refused():
    data = with_stats(lm_data(layers=2, heads=4))
    data["stats"]["decoder_self"]["entropy"][1].pop()
    with pytest.raises(ValueError, match=r"stats\['decoder_self'\]\['entropy'\] must have one number per layer "
                                         r"and head of decoder_self \(4 \+ 4\)"):
        explorer_html(data)


def test_frames_must_be_of_one_model_with_a_step_and_a_label():
    data = frames_data()
    assert json.loads(embedded(explorer_html(data))) == data  # each frame with its own tokens: allowed
    for change, message in [
        (lambda d: d["frames"].clear(), "frames must be a non-empty list"),
        (lambda d: d["frames"][1].pop("step"), "frame 1 needs a step"),
        (lambda d: d["frames"][2].update(label=None), "frame 2 needs a step .* and a label"),
        (lambda d: d["frames"].append({"step": 400, "label": "step 400", **with_stats(seq2seq_data(heads=2))}),
         r"frame 3 \(step 400\) is not of the same model as frame 0 \(step 100\)"),
        (lambda d: d["frames"].append({"step": 400, "label": "step 400", **lm_data()}), "not of the same model"),
    ]:
        data = frames_data()
        change(data)
        with pytest.raises(ValueError, match=message):
            explorer_html(data)
    data = frames_data()
    data["frames"][1]["attentions"]["cross"] = data["frames"][1]["attentions"]["encoder_self"]
    with pytest.raises(ValueError, match="each cross map must be 4 x 5"):  # every frame checked as one example
        explorer_html(data)


def test_write_explorer_writes_atomically(tmp_path):
    path = tmp_path / "out" / "attention.html"
    write_explorer(lm_data(), path)
    write_explorer(seq2seq_data(), path)  # replaces it
    assert path.read_text(encoding="utf-8") == explorer_html(seq2seq_data())
    assert [p.name for p in path.parent.iterdir()] == ["attention.html"]  # no temporary left


# ---- in headless Chromium ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    with launch() as browser:
        yield browser


@pytest.fixture
def show(chromium, tmp_path):
    """show(data, name): the page of data, written to tmp_path/name and opened (tests/browser.py)."""
    with ExitStack() as pages:
        def show(data, name="attention.html"):
            write_explorer(data, tmp_path / name)
            return pages.enter_context(open_page(tmp_path / name, chromium))

        yield show


def geometry(page):
    return page.evaluate("window.explorer")


def pixels(page):
    return page.evaluate("document.getElementById('heatmap').toDataURL()")


def cell_colour(page, q, k):
    """The RGB of the middle of cell (q, k) of the heatmap."""
    return page.evaluate("""([q, k]) => {
        const e = window.explorer, r = e.pixelRatio;
        const x = (e.originX + (k + 0.5) * e.cellSize) * r, y = (e.originY + (q + 0.5) * e.cellSize) * r;
        return Array.from(document.getElementById('heatmap').getContext('2d')
                          .getImageData(Math.floor(x), Math.floor(y), 1, 1).data).slice(0, 3);
    }""", [q, k])


def hover_cell(page, q, k):
    box, g = page.locator("#heatmap").bounding_box(), geometry(page)
    page.mouse.move(box["x"] + g["originX"] + (k + 0.5) * g["cellSize"],
                    box["y"] + g["originY"] + (q + 0.5) * g["cellSize"])


@pytest.mark.slow
def test_the_page_loads_offline_and_draws_the_map(show):
    data = lm_data()
    opened = show(data)
    page, n = opened.page, len(data["tokens"])
    g = geometry(page)
    assert (g["kind"], g["layer"], g["head"]) == ("decoder_self", 0, 0)
    assert g["rows"] == g["cols"] == data["tokens"]
    assert g["cellSize"] >= 12
    size = page.evaluate("(() => { const c = document.getElementById('heatmap'); "
                         "return [c.clientWidth, c.clientHeight]; })()")
    assert g["originX"] + n * g["cellSize"] <= size[0] <= g["originX"] + n * g["cellSize"] + 20
    assert g["originY"] + n * g["cellSize"] <= size[1] <= g["originY"] + n * g["cellSize"] + 20
    assert cell_colour(page, 0, 0) != [255, 255, 255]  # weight 1: drawn dark
    assert cell_colour(page, 0, 1) == [255, 255, 255]  # above the diagonal: 0, white
    labelled = page.evaluate("""(() => {  // dark pixels left of the grid: the row labels
        const e = window.explorer, c = document.getElementById('heatmap'), r = e.pixelRatio;
        const d = c.getContext('2d').getImageData(0, e.originY * r, (e.originX - 2) * r, 40 * r).data;
        let dark = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) dark++; return dark; })()""")
    assert labelled > 20
    assert not page.locator("#kind").is_visible()  # one kind only: no choice to offer
    assert not page.locator("#step").is_visible()  # one example: no checkpoints to slide through
    assert not page.locator("#output").is_visible()  # an lm has no output to show
    assert page.locator("#summary").inner_text().startswith("language model")
    assert "2 layers × 4 heads" in page.locator("#summary").inner_text()
    assert (page.inner_text("#legend-min"), page.inner_text("#legend-max")) == ("0.0000", "1.0000")
    opened.assert_clean()


def test_choosing_head_layer_and_kind_redraws(show):
    opened = show(seq2seq_data())
    page = opened.page
    assert [o for o in page.eval_on_selector_all("#kind option", "os => os.map(o => o.value)")] == \
        ["encoder_self", "decoder_self", "cross"]
    assert page.inner_text("#output") == "model output: edcba"
    first = pixels(page)
    page.select_option("#head", "1")
    assert pixels(page) != first
    page.select_option("#head", "0")
    assert pixels(page) == first
    page.select_option("#layer", "1")
    assert pixels(page) != first and geometry(page)["layer"] == 1
    page.select_option("#layer", "0")
    assert pixels(page) == first

    tokens = seq2seq_data()["tokens"]
    assert (geometry(page)["rows"], geometry(page)["cols"]) == (tokens["source"], tokens["source"])
    page.select_option("#kind", "cross")
    g = geometry(page)
    assert (g["kind"], g["rows"], g["cols"]) == ("cross", tokens["target"], tokens["source"])
    assert "queries (target tokens)" in page.inner_text("#axes") and "keys (source tokens)" in page.inner_text("#axes")
    page.select_option("#kind", "decoder_self")
    assert (geometry(page)["rows"], geometry(page)["cols"]) == (tokens["target"], tokens["target"])
    opened.assert_clean()


def test_hovering_a_cell_reads_it_out(show):
    data = seq2seq_data()
    opened = show(data)
    page = opened.page
    page.select_option("#kind", "cross")
    page.select_option("#layer", "1")
    page.select_option("#head", "3")
    source, target = data["tokens"]["source"], data["tokens"]["target"]
    for q, k in [(3, 1), (0, 4), (5, 0)]:
        hover_cell(page, q, k)
        w = data["attentions"]["cross"][1][3][q][k]
        assert page.inner_text("#readout") == f'query {q} "{target[q]}" → key {k} "{source[k]}": {w:.4f}'
    box = page.locator("#heatmap").bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)  # on the canvas, in the labels' corner: no cell
    assert page.inner_text("#readout") == ""
    hover_cell(page, 1, 1)
    assert page.inner_text("#readout") != ""
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] + 200)  # off the heatmap
    assert page.inner_text("#readout") == ""
    opened.assert_clean()


def test_whitespace_is_made_visible_in_the_readout(show):
    data = lm_data()
    opened = show(data)
    page = opened.page
    tokens, rows = data["tokens"], data["attentions"]["decoder_self"][0][0]
    q = tokens.index("\n")
    k = tokens.index(" ")
    hover_cell(page, q, k)
    assert page.inner_text("#readout") == f'query {q} "↵" → key {k} "␣": {rows[q][k]:.4f}'
    q = tokens.index("\t")
    hover_cell(page, q, q)
    assert page.inner_text("#readout") == f'query {q} "⇥" → key {q} "⇥": {rows[q][q]:.4f}'
    opened.assert_clean()


def test_all_heads_are_shown_and_a_click_opens_one(show):
    opened = show(seq2seq_data())
    page = opened.page
    thumbs = page.locator("#all-heads .head-thumb")
    assert thumbs.count() == 4
    assert page.locator("#all-heads .head-thumb canvas").count() == 4
    assert [thumbs.nth(h).inner_text() for h in range(4)] == [f"head {h}" for h in range(4)]
    first = pixels(page)
    thumbs.nth(2).click()
    assert page.input_value("#head") == "2" and geometry(page)["head"] == 2
    assert pixels(page) != first
    assert "selected" in thumbs.nth(2).get_attribute("class")
    assert "selected" not in thumbs.nth(0).get_attribute("class")
    page.select_option("#head", "0")
    assert pixels(page) == first
    opened.assert_clean()


def test_signed_weights_get_a_diverging_scale(show):
    data = signed_data()
    head = data["attentions"]["decoder_self"][0][0]
    top = max(abs(w) for layer in data["attentions"]["decoder_self"] for m in layer for row in m for w in row)
    cells = [(w, q, k) for q, row in enumerate(head) for k, w in enumerate(row)]
    (lo, ql, kl), (hi, qh, kh) = min(cells), max(cells)
    assert lo < -0.3 * top and hi > 0.3 * top  # the data has strongly negative and positive weights
    opened = show(data)
    page = opened.page
    r, g, b = cell_colour(page, ql, kl)
    assert b > r + 60, (r, g, b)  # negative: blue
    r, g, b = cell_colour(page, qh, kh)
    assert r > b + 60, (r, g, b)  # positive: red
    assert min(cell_colour(page, 0, 5)) >= 245  # zero (above the diagonal): white
    assert float(page.inner_text("#legend-min")) == pytest.approx(-top, abs=1e-4)
    assert float(page.inner_text("#legend-max")) == pytest.approx(top, abs=1e-4)
    hover_cell(page, ql, kl)
    assert page.inner_text("#readout").endswith(f": {lo:.4f}") and lo < 0
    opened.assert_clean()


def test_hostile_tokens_are_shown_as_text(show):
    data = lm_data(tokens=HOSTILE, heads=1, layers=1)
    opened = show(data)
    page = opened.page
    assert page.evaluate("document.scripts.length") == 2  # the data and the page's own: nothing injected
    assert geometry(page)["rows"] == HOSTILE
    hover_cell(page, 0, 0)
    assert page.inner_text("#readout") == f'query 0 "{HOSTILE[0]}" → key 0 "{HOSTILE[0]}": 1.0000'
    opened.assert_clean()


def test_long_sequences_keep_a_sensible_size(show):
    tokens = [chr(ord("a") + i % 26) for i in range(256)]
    opened = show(lm_data(tokens=tokens, layers=1, heads=2))
    page = opened.page
    g = geometry(page)
    assert 2 <= g["cellSize"] <= 4
    width, height = page.evaluate("(() => { const c = document.getElementById('heatmap'); "
                                  "return [c.clientWidth, c.clientHeight]; })()")
    assert 256 * 2 < width < 1100 and 256 * 2 < height < 1100
    hover_cell(page, 200, 100)
    assert page.inner_text("#readout").startswith('query 200 "s" → key 100 "w": ')
    for h in range(2):
        assert page.locator("#all-heads .head-thumb canvas").nth(h).bounding_box()["width"] <= 130
    opened.assert_clean()


def thumb_stats(page):
    """(distance, entropy) of each thumbnail's caption, "dist 1.23 · H 0.45"."""
    captions = page.eval_on_selector_all("#all-heads .head-stats", "ss => ss.map(s => s.textContent)")
    out = []
    for caption in captions:
        match = re.fullmatch(r"dist (\d+\.\d\d) · H (\d+\.\d\d)", caption)
        assert match, caption
        out.append((float(match.group(1)), float(match.group(2))))
    return out


def test_each_thumbnail_shows_its_heads_distance_and_entropy(show):
    data = with_stats(seq2seq_data())
    opened = show(data)
    page = opened.page
    page.select_option("#kind", "cross")
    page.select_option("#layer", "1")
    stats = data["stats"]["cross"]
    shown = thumb_stats(page)
    assert len(shown) == 4
    for h, (distance, entropy) in enumerate(shown):
        assert distance == pytest.approx(stats["distance"][1][h], abs=0.0051)
        assert entropy == pytest.approx(stats["entropy"][1][h], abs=0.0051)
    assert page.locator("#all-heads .head-thumb").nth(0).locator("span").first.inner_text() == "head 0"
    opened.assert_clean()


def test_the_slider_moves_between_checkpoints(show):
    data = frames_data()
    frames = data["frames"]
    opened = show(data)
    page = opened.page

    assert page.locator("#step").is_visible()
    assert page.get_attribute("#step", "type") == "range" and page.get_attribute("#step", "max") == "2"
    at = explorer_view(page)  # the last checkpoint, at the view's layer and head
    assert (at["frame"], at["step"], at["drawn"], at["layer"], at["head"]) == (2, 300, "2", 1, 2)
    assert page.inner_text("#step-label") == frames[2]["label"]
    assert "3 checkpoints" in page.inner_text("#summary")
    page.select_option("#kind", "cross")
    last = pixels(page)
    last_stats = thumb_stats(page)
    page.fill("#step", "0")
    at = explorer_view(page)
    assert (at["frame"], at["step"], at["drawn"]) == (0, 100, "0")
    assert (at["kind"], at["layer"], at["head"]) == ("cross", 1, 2)  # what is shown stays
    assert at["rows"] == frames[0]["tokens"]["target"] == ["<bos>", "e"]  # the frame's own tokens
    assert pixels(page) != last
    assert page.inner_text("#step-label") == frames[0]["label"]
    assert page.inner_text("#output") == "model output: e"
    assert "target 2 tokens" in page.inner_text("#summary")
    assert thumb_stats(page) != last_stats
    for h, (distance, _) in enumerate(thumb_stats(page)):  # the thumbnails are the frame's own
        assert distance == pytest.approx(frames[0]["stats"]["cross"]["distance"][1][h], abs=0.0051)
    hover_cell(page, 1, 3)
    w = frames[0]["attentions"]["cross"][1][2][1][3]
    assert page.inner_text("#readout") == f'query 1 "e" → key 3 "d": {w:.4f}'
    page.fill("#step", "2")
    assert explorer_view(page)["frame"] == 2 and pixels(page) == last  # and back
    opened.assert_clean()


def graph_data(layers=1, heads=2, seed=3):
    """A graph model's example (as lm.inspect.attention_maps.record_graph writes it): the path 0-1-2-3, its mask
    the adjacency plus self-loops, each row a softmax over its allowed keys only (0 elsewhere)."""
    rng = random.Random(seed)
    mask = [[int(abs(q - k) <= 1) for k in range(4)] for q in range(4)]

    def head():
        rows = []
        for q in range(4):
            e = [math.exp(rng.gauss(0, 2)) * mask[q][k] for k in range(4)]
            rows.append([v / sum(e) for v in e])
        return rows

    return {"kind": "graph", "tokens": ["0*", "1", "2", "3"], "mask": mask,
            "attentions": {"encoder_self": [[head() for _ in range(heads)] for _ in range(layers)]},
            "config": {"task": "graph", "graph_op": "distance", "attention": "standard", "pos_encoding": "none"},
            "output": "0:0 1:1 2:2 3:3"}


def test_a_graph_page_needs_a_mask_of_its_nodes():
    data = graph_data()
    explorer_html(data)
    with pytest.raises(ValueError, match="mask must be 4 x 4"):
        explorer_html({**data, "mask": data["mask"][:3]})
    with pytest.raises(ValueError, match="a graph page shows some of"):
        explorer_html({**data, "attentions": {"cross": data["attentions"]["encoder_self"]}})


@pytest.mark.slow
def test_a_graph_page_draws_masked_cells_grey(show):
    data = graph_data()
    opened = show(data)
    page = opened.page
    g = geometry(page)
    assert g["rows"] == g["cols"] == data["tokens"]
    for q in range(4):
        for k in range(4):
            colour = cell_colour(page, q, k)
            assert (colour == [190, 190, 190]) == (not data["mask"][q][k]), (q, k, colour)
    assert "4 nodes (grey: no edge, masked)" in page.locator("#summary").inner_text()
    assert page.locator("#output").inner_text() == "model output: 0:0 1:1 2:2 3:3"
    opened.assert_clean()
