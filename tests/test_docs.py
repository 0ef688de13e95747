"""The docs site builds strictly (a broken link, a missing anchor or a page outside the nav fails it), its
generated references cover every config field and every command and flag, README.md stays a front page,
and no page reads like a lab notebook."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "scripts"))
import gen_docs  # noqa: E402  (scripts/ is not a package)


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=root, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    p = _build(ROOT, out)
    assert p.returncode == 0, p.stderr
    assert "WARNING" not in p.stderr, p.stderr
    return out


def _page(site: Path, page: str) -> str:
    return (site / page.removesuffix(".md") / "index.html").read_text()


def test_site_builds_strictly_with_every_page(site):
    for md in DOCS.rglob("*.md"):
        rel = md.relative_to(DOCS).as_posix()
        html = site / ("index.html" if rel == "index.md" else rel.removesuffix(".md") + "/index.html")
        assert html.is_file(), f"{rel} was not built"
    for page in gen_docs.GENERATED:  # generated at build time, never committed
        assert not (DOCS / page).exists(), f"docs/{page} is generated: remove the committed copy"
        assert _page(site, page)
    for html in site.rglob("index.html"):  # an escaped pipe in a table's code span shows its backslash
        assert "\\|" not in html.read_text(), f"{html.relative_to(site)}: a literal \\| on the page"


@pytest.mark.slow
def test_strict_build_fails_on_a_broken_link_a_missing_anchor_and_a_page_outside_the_nav(tmp_path):
    """The validation settings in mkdocs.yml are what make these errors: build a copy with each defect."""
    for name in ("mkdocs.yml", "docs", "scripts", "deploy"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    with open(tmp_path / "docs" / "tutorial.md", "a") as f:
        f.write("\n[gone](no-such-page.md) and [lost](concepts.md#no-such-heading)\n")
    (tmp_path / "docs" / "stray.md").write_text("# Not in the nav\n")
    p = _build(tmp_path, tmp_path / "site")
    assert p.returncode != 0
    assert "stray.md" in p.stderr
    assert "no-such-page.md" in p.stderr
    assert "no-such-heading" in p.stderr


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    # the two commands, first thing on the page
    head = "\n".join(readme.splitlines()[:8])
    assert "./dev.sh run" in head and "./dev.sh test" in head
    assert "DDP" in "\n".join(readme.splitlines()[:40])  # why over DDP, and when not: on the first screen


NOTEBOOK = [re.compile(p, re.IGNORECASE) for p in (
    r"\bissue \d+", r"(?<![\w&])#\d+\b", r"\bthis session\b", r"\blast session\b",
    r"\b(?:earlier|previous|next|development|past) sessions?\b", r"\bsession'?s (?:code|work|changes)\b",
)]


def _user_docs() -> dict[str, str]:
    pages = {p.relative_to(ROOT).as_posix(): p.read_text() for p in DOCS.rglob("*.md")}
    pages["README.md"] = (ROOT / "README.md").read_text()
    pages["deploy/README.md"] = (ROOT / "deploy" / "README.md").read_text()
    pages.update({f"generated {k}": gen_docs.generate(k) for k in gen_docs.GENERATED})
    return pages


def test_no_page_reads_like_a_notebook():
    found = [f"{name}: {m.group(0)!r}" for name, text in _user_docs().items() for rx in NOTEBOOK
             for m in rx.finditer(text)]
    assert not found, found


def test_the_notebook_check_catches_what_it_should_and_passes_legit_text():
    bad = ["as in issue 15", "fixed in #15.", "this session measured", "last session's code", "earlier sessions"]
    good = ["a worker session credential", "`bad-session`", "issue the command", "see #threat-models",
            "[a](#section-2)", "color: #ff0000", "in a session of its own (setsid)"]
    assert all(any(rx.search(t) for rx in NOTEBOOK) for t in bad)
    assert not [t for t in good if any(rx.search(t) for rx in NOTEBOOK)]


def _schema_keys(schema: dict, node: dict, prefix: str = "") -> set[str]:
    """Every dotted key of the job config, walked through pydantic's JSON schema (not gen_docs' walk)."""
    keys = set()
    for name, prop in node.get("properties", {}).items():
        key = prefix + name
        keys.add(key)
        for ref in re.findall(r'"\$ref": "#/\$defs/(\w+)"', str(prop).replace("'", '"')):
            keys |= _schema_keys(schema, schema["$defs"][ref], key + ".")
    return keys


def test_config_reference_lists_every_field(site):
    from dcoord.config import JobConfig

    schema = JobConfig.model_json_schema(by_alias=True)
    keys = _schema_keys(schema, schema)
    assert {"coding.stragglers", "coding.lambda", "token.graph.kind", "privacy.clip", "runtime.data_port"} <= keys
    html = _page(site, "reference/config.md")
    missing = sorted(k for k in keys if f"<code>{k}</code>" not in html)
    assert not missing, f"config fields missing from the config reference: {missing}"


def test_cli_reference_lists_every_command_and_flag(site):
    from dcoord import launch
    from dcoord.cli import build_parser

    html = _page(site, "reference/cli.md")
    top = build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    commands = {f"dcoord {name}": p for name, p in subs.choices.items()}
    commands["python -m dcoord.launch"] = launch.build_parser()
    assert {"dcoord run", "dcoord coordinator", "dcoord worker", "dcoord status", "dcoord tune"} <= set(commands)
    sections = re.split(r"<h2 id=", html)
    for cmd, parser in commands.items():
        section = next((s for s in sections if f"<code>{cmd}</code>" in s.split("</h2>", 1)[0]), None)
        assert section is not None, f"no section for {cmd}"
        flags = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
        missing = [f for f in flags if f"<code>{f}</code>" not in section]
        assert not missing, f"{cmd}: flags missing from the CLI reference: {missing}"


def _shell_lines(text: str) -> list[str]:
    """The command lines of every ```bash block (continuation lines joined)."""
    lines = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def test_every_dcoord_command_in_the_docs_parses():
    """A renamed or removed flag breaks the docs that show it: every `dcoord ...` line in a shell block of
    README.md and docs/ must be accepted by the CLI parser."""
    from dcoord import launch
    from dcoord.cli import build_parser

    checked = 0
    for name, text in _user_docs().items():
        if name.startswith("generated"):
            continue
        for line in _shell_lines(text):
            argv = shlex.split(line, comments=True)
            argv = argv[: argv.index("&")] if "&" in argv else argv
            if argv[:1] == ["dcoord"]:
                parser, args = build_parser(), argv[1:]
            elif "dcoord.launch" in argv and argv[argv.index("dcoord.launch") - 1] == "-m":
                parser, args = launch.build_parser(), argv[argv.index("dcoord.launch") + 1:]
            else:
                continue
            try:
                parser.parse_args(args)
            except SystemExit as exc:
                if exc.code not in (0, None):  # --help / --version exit 0
                    pytest.fail(f"{name}: `{line.strip()}` is refused by the CLI parser (exit {exc.code})")
            checked += 1
    assert checked >= 20


def test_extending_guide_scheme_runs_in_the_simulator():
    """The complete scheme printed in docs/extending.md is a working scheme (it matches tests/toy_scheme.py)."""
    import numpy as np

    from dcoord.coding import base
    from dcoord.coding.registry import make_scheme
    from dcoord.sim import SimulateConfig, make_delay_source, simulate

    page = (DOCS / "extending.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "class ToyUncoded" in b)
    before = dict(base._REGISTERED)
    try:
        ns: dict = {}
        exec(compile(code, "docs/extending.md", "exec"), ns)
        toy = make_scheme("toy-uncoded", 5, jobs=6)
        assert np.isclose(toy.part_fractions().sum(), 1.0)
        sim = SimulateConfig(jobs=6)
        source = make_delay_source(5, sim, None, 3)
        ours = simulate(toy, source, sim)
        ref = simulate(make_scheme("uncoded", 5, jobs=6), source, sim)
        assert ours.runtime_s == ref.runtime_s and ours.load == ref.load
    finally:
        base._REGISTERED.clear()
        base._REGISTERED.update(before)


def test_deploy_page_is_deploy_readme(site):
    """deploy/README.md stays beside the manifests and is the site's deploy page, not a copy of it."""
    assert "Secret" in _page(site, "deploy.md") and "kubectl apply -k deploy/overlays/cpu" in gen_docs.deploy_page()


def test_deploy_readme_run_again_is_what_the_coordinator_job_does(tmp_path):
    """deploy/README.md's "Run again": the manifests applied again as they are resume a stopped run, else
    start the next one beside a finished run (the coordinator's --resume-or-new, which the page names),
    and never name a checkpoint file runs do not write."""
    import yaml

    from dcoord.cli import build_parser
    from dcoord.cli.options import out_and_mode

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH (it renders the kustomizations)")
    readme = (ROOT / "deploy" / "README.md").read_text()
    section = readme.split("### Run again", 1)[1].split("\n## ", 1)[0]
    assert "checkpoint.pt" not in readme and "--resume-or-new" in section
    assert "kubectl apply -k deploy/overlays/cpu" in section
    rendered = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "overlays" / "cpu")],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    job = next(d for d in yaml.safe_load_all(rendered)
               if d and d["kind"] == "Job" and d["metadata"]["name"] == "dcoord-coordinator")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    out = next(a.split("=", 1)[1] for a in args if a.startswith("--out="))
    assert f"`--out={out} --resume-or-new`" in section
    # the same args, on a volume here: new, then beside the finished run, then resuming a stopped one
    local = [a.replace(f"--out={out}", f"--out={tmp_path / 'q'}") for a in args]

    class Cfg:
        name = "quickstart"

    def chosen():
        where, mode = out_and_mode(build_parser().parse_args(local), Cfg)
        return where.name, mode

    assert chosen() == ("q", "new")
    (tmp_path / "q" / "checkpoints").mkdir(parents=True)
    (tmp_path / "q" / "summary.json").write_text("{}")
    assert chosen() == ("q-2", "new")
    (tmp_path / "q-2" / "checkpoints").mkdir(parents=True)
    (tmp_path / "q-2" / "checkpoints" / "ckpt-00000010.pt").write_bytes(b"")
    assert chosen() == ("q-2", "resume")
    assert f"{out}-2" in section


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (the anchors the site gets)."""
    import unicodedata

    text = unicodedata.normalize("NFKD", re.sub(r"[`*]", "", heading)).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def test_readme_links_resolve():
    """README.md is read on the repository page, outside the site's link check: its relative links and their
    anchors must exist too."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README links to {path}, which does not exist"
        if anchor:
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", target.read_text(), re.M)}
            assert anchor in slugs, f"README links to {link}: no such heading in {path}"


def test_cited_result_files_exist():
    """Benchmark numbers are quoted from bench/results/*: every file a page cites is there."""
    cited = {m for text in _user_docs().values() for m in re.findall(r"bench/results/[\w.-]+\.(?:json|png)", text)}
    assert "bench/results/local_stragglers.json" in cited
    # NAME: the pattern of the file names; *_gpu.json: written by bench/gpu_check.sh on a machine with a GPU
    missing = sorted(c for c in cited if not (ROOT / c).is_file() and "NAME" not in c and "_gpu" not in c)
    assert not missing, missing


def test_the_precision_table_is_the_stored_worst_case_the_cli_goes_by():
    """The docs' decode-precision table is generated from the stored searched worst cases
    (dcoord/coding/data/worst_case.json, written by scripts/worst_case.py; ``--markdown`` prints the table),
    and the figure `dcoord run` prints for a stored size is that same worst case. (The table once came from
    64 sampled survivor sets and said gc-cyclic met 1e-5 at float32 where its worst set is 100x over.)"""
    from dcoord.coding.precision import markdown_table, precision_for, stored_worst_cases

    page = (DOCS / "benchmarks.md").read_text()
    assert markdown_table() in page, "docs/benchmarks.md: paste python scripts/worst_case.py --markdown"
    for (code, n, s), wc in stored_worst_cases().items():
        if code == "gc-cyclic" and n <= 64:
            p = precision_for({"scheme": code, "stragglers": s, "payload_dtype": "float32"}, n)
            assert p.worst_rel_error == wc.worst_rel_error["float32"], (code, n, s)
