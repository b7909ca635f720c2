"""``pyro-vae report`` and ``pyro_vae.report`` (issue 33): one self-contained HTML page of a run or a comparison.

Parsed with :mod:`html.parser`: every image is a ``data:`` URI of a PNG, nothing points at the network (no http(s)
``src`` or ``href``, no script, no external style sheet), the tables hold every run. Rendered in headless Chromium
(Debian's ``chromium`` package; skipped with the reason where it is missing) with the network cut off: every image
loads and no request leaves the machine (a control page that does make requests proves the check can fail)."""

from __future__ import annotations

import base64
import html
import html.parser
import json
import re
import shutil
import socketserver
import subprocess
import threading
from pathlib import Path

import pytest

import pyro_vae
from pyro_vae.pipeline import compare_runs, evaluate_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Page(html.parser.HTMLParser):
    """The tags and attributes of a page, and the text of its table cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def all(self, tag: str) -> list[dict[str, str]]:
        return [attrs for t, attrs in self.tags if t == tag]


def _self_contained(page: _Page) -> None:
    images = page.all("img")
    assert images, "the page has no figure"
    for img in images:
        assert img["src"].startswith("data:image/png;base64,"), img["src"][:60]
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert img.get("alt")
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "action", "data"):
            value = attrs.get(name) or ""
            assert not re.match(r"\s*(https?:)?//", value), f"<{tag} {name}={value!r}> points at the network"
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    csp = [m for m in page.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"] and "img-src data:" in csp[0]["content"]
    assert any(m.get("name") == "viewport" for m in page.all("meta"))  # readable on a phone


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two small runs (one 2-D, evaluated) and their comparison."""
    root = tmp_path_factory.mktemp("report")
    quiet = lambda *a, **k: None  # noqa: E731
    pyro_vae.pipeline.train_run({"dataset": "digits", "latent_dim": 2, "hidden_dims": "16", "epochs": 2,
                                 "batch_size": 200}, root / "a", progress=False, say=quiet)
    pyro_vae.pipeline.train_run({"dataset": "digits", "latent_dim": 4, "hidden_dims": "16", "epochs": 1,
                                 "batch_size": 200}, root / "b", progress=False, say=quiet)
    evaluate_run(root / "a", num_particles=20, num=30, device="cpu", progress=False)
    compare_runs([root / "a", root / "b"], root / "cmp", num_particles=20, num=30, device="cpu", progress=False)
    return root / "a", root / "b", root / "cmp"


def test_a_runs_page_is_self_contained_and_holds_what_the_run_has(runs, tmp_path):
    a, b, _ = runs
    path = pyro_vae.report(a, tmp_path / "a.html")
    text = path.read_text()
    page = _Page(text)
    _self_contained(page)
    for heading in ("Settings", "Data", "Training", "Samples and reconstructions", "Evaluation", "train.log",
                    "Resume and evaluate"):
        assert f"<h2>{heading}</h2>" in text, heading
    assert "latent_dim" in page.cells and "data: digits" in text and "<math" in text
    assert "IWAE_20" in page.cells and "ELBO" in page.cells
    # training curves, samples, reconstructions, the 2-D latent space, the K-curve and the k-hat histogram
    assert len(page.all("img")) == 6
    assert f"pyro-vae train --out {a} --resume" in text and f"pyro-vae evaluate {a}" in text
    last = (a / "train.log").read_text().splitlines()[-1]
    assert html.escape(last.split(" ", 2)[-1]) in text  # the last line of train.log
    unevaluated = _Page(pyro_vae.report(b, tmp_path / "b.html").read_text())
    _self_contained(unevaluated)
    assert len(unevaluated.all("img")) == 3  # no latent space (4-D) and no evaluation
    assert "Not evaluated yet" in (tmp_path / "b.html").read_text()


def test_a_comparisons_page_holds_the_table_and_its_figures(runs, tmp_path, run_cli):
    _, _, cmp = runs
    code, out, err = run_cli(["report", cmp, "--out", tmp_path / "cmp.html"])
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'cmp.html'}", err
    text = (tmp_path / "cmp.html").read_text()
    page = _Page(text)
    _self_contained(page)
    comparison = json.loads((cmp / "comparison.json").read_text())
    assert {"a", "b", "IWAE_20", "b − a"} <= set(page.cells)
    for d in comparison["differences"]:
        assert f"{d['mean']:+.3f}" in page.cells and f"{d['stderr']:.3f}" in page.cells
    assert len(page.all("img")) == 2  # the K-curves and the paired differences
    assert pyro_vae.report(cmp / "comparison.json") == cmp / "report.html"  # the file names its folder too


def test_a_source_that_is_neither_is_refused(tmp_path, run_cli):
    code, _, err = run_cli(["report", tmp_path, "--out", tmp_path / "r.html"])
    assert code == 2 and "neither a run" in err and not (tmp_path / "r.html").exists()


# ------------------------------------------------------------------------------------------------ in a browser
def _browse(page: Path, tmp_path: Path, control: bool = False) -> tuple[tuple[int, int, int] | None, list[str]]:
    """Load a copy of ``page`` in headless Chromium with every connection sent to a local recorder that answers 403
    (and no name resolved): ``((images, images loaded, resources the page fetched), requests recorded)``. A probe
    script, allowed by a nonce added to the page's policy, counts the images that loaded and the page's own fetches
    (Resource Timing, ``data:`` URIs aside). ``control`` adds an image and a style sheet from the
    network and drops the policy: what the check must catch."""
    requests: list[str] = []

    class Recorder(socketserver.BaseRequestHandler):
        def handle(self):
            requests.append(self.request.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    text = page.read_text()
    probe = ("<script nonce=\"probe\">addEventListener('load', () => { const i = [...document.images]; "
             "document.body.dataset.images = i.length; "
             "document.body.dataset.loaded = i.filter(m => m.complete && m.naturalWidth > 0).length; "
             "document.body.dataset.fetched = performance.getEntriesByType('resource')"
             ".filter(e => !e.name.startsWith('data:')).length; });</script>")
    text = text.replace("default-src 'none';", "default-src 'none'; script-src 'nonce-probe';")
    text = text.replace("</body>", probe + "</body>")
    if control:
        text = text.replace("</main>", '<img src="http://example.com/x.png" alt="x"><link rel="stylesheet" '
                                       'href="https://cdn.example.org/a.css"></main>')
        text = text.replace('http-equiv="Content-Security-Policy"', 'name="no-policy"')
    copy = tmp_path / ("control.html" if control else "page.html")
    copy.write_text(text)
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
               f"--proxy-server=http://127.0.0.1:{server.server_address[1]}", "--proxy-bypass-list=<-loopback>",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-default-apps",
               "--no-pings", "--dns-prefetch-disable", "--disable-features=NetworkTimeServiceQuerying,"
               "OptimizationHints,MediaRouter,Translate,PreconnectToSearch,NetworkPrediction",
               "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    found = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-loaded="(\d+)"[^>]*data-fetched="(\d+)"', done.stdout)
    return (tuple(int(v) for v in found.groups()) if found else None), requests


def _hosts(requests: list[str]) -> set[str]:
    """The hosts of recorded request lines (``CONNECT host:443`` or ``GET http://host/...``)."""
    return {re.sub(r"^(\w+) (https?://)?([^/: ]+).*$", r"\3", r) for r in requests if r.strip()}


#: the services Chromium itself calls whatever the page, at times of its own (sign-in, network time, updates): its
#: requests to them are the browser's, not the page's (the page's own would show in Resource Timing, and the parsed
#: page is checked to name no host at all)
BROWSER_OWN = re.compile(r"(^|\.)(google\.com|gstatic\.com|googleapis\.com|gvt1\.com)$")


def _page_hosts(requests: list[str], own: list[str]) -> set[str]:
    """The hosts asked for that neither the browser asked with an empty page nor its own services are."""
    return {h for h in _hosts(requests) - _hosts(own) if not BROWSER_OWN.search(h)}


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_the_report_renders_in_a_browser_with_the_network_cut_off(runs, tmp_path):
    a, _, cmp = runs
    # what the browser asks for by itself, whatever the page (its own services), measured on an empty page
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src "
                     "'none'\"></head><body></body></html>")
    _, own = _browse(blank, tmp_path)
    for source in (a, cmp):
        page = pyro_vae.report(source, tmp_path / f"{source.name}.html")
        images, requests = _browse(page, tmp_path)
        assert images is not None and images[0] == images[1] == len(_Page(page.read_text()).all("img")) > 0, images
        assert images[2] == 0 and not _page_hosts(requests, own), f"the page {page} asked the network: {requests}"
    # the check catches a page that does ask the network, and an image that does not load
    images, requests = _browse(tmp_path / "a.html", tmp_path, control=True)
    assert images is not None and images[1] == images[0] - 1 and images[2] >= 1
    assert _page_hosts(requests, own) == {"example.com", "cdn.example.org"}
