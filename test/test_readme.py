"""README.md and docs/ stay in step with the code: launch arguments, CLI subcommands and flags,
relative links, length, and no development history (that lives in CHANGELOG.rst).

Pure text and ``ast`` (launch/launch_ros are not imported); the CLI parsers are built with the CLI's
own ``build_parser`` (its command modules keep torch and rclpy out of import time)."""
from __future__ import annotations

import argparse
import ast
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
MAX_README_LINES = 350


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ----------------------------------------------------------------------------------- markdown helpers
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def _code_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def _inline_code(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", _prose(text))


def _commands(block: str) -> list[str]:
    """Shell lines of a code block with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", block)
    out = []
    for line in joined.splitlines():
        line = " ".join(re.split(r"\s#", " " + line, maxsplit=1)[0].split())
        if line:
            out.append(line)
    return out


def _tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """Markdown tables outside code blocks: (the paragraph introducing the table, rows of cells;
    the header row first, the separator dropped)."""
    found, lines = [], _prose(text).splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1]):
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            start = j
            while start > 0 and lines[start - 1].strip() and not lines[start - 1].startswith("|"):
                start -= 1
            intro = " ".join(lines[start:j + 1])
            rows, k = [], i
            while k < len(lines) and lines[k].startswith("|"):
                if k != i + 1:
                    rows.append([c.strip() for c in lines[k].strip().strip("|").split("|")])
                k += 1
            found.append((intro, rows))
            i = k
        else:
            i += 1
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    h = heading.strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(_text(path)).splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            base = _slug(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


# ------------------------------------------------------------------------------- launch arguments
def _declared_arguments(path: Path) -> set[str]:
    """Names given to DeclareLaunchArgument: string literals, or the keys of the module-level dict
    a ``for name, ... in TABLE.items()`` loop feeds it."""
    tree = ast.parse(_text(path), str(path))
    tables = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            keys = {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            for target in node.targets:
                if isinstance(target, ast.Name):
                    tables[target.id] = keys
    loop_sources = {}  # loop variable -> dict name
    for node in ast.walk(tree):
        if isinstance(node, ast.For):
            it = node.iter
            if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in ("items", "keys"):
                it = it.func.value
            if isinstance(it, ast.Name) and it.id in tables:
                target = node.target
                first = target.elts[0] if isinstance(target, ast.Tuple) else target
                if isinstance(first, ast.Name):
                    loop_sources[first.id] = it.id
    names: set[str] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and node.args
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "DeclareLaunchArgument"):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif isinstance(arg, ast.Name) and arg.id in loop_sources:
                names |= tables[loop_sources[arg.id]]
            else:
                raise AssertionError(f"{_rel(path)}: a DeclareLaunchArgument name this test cannot resolve")
    return names


DECLARED = {p.name: _declared_arguments(p) for p in LAUNCH_FILES}


def _argument_tables() -> dict[str, list[tuple[Path, set[str]]]]:
    """launch file -> [(page, argument names of a table whose introducing paragraph names that file
    first)]."""
    out: dict[str, list[tuple[Path, set[str]]]] = {name: [] for name in DECLARED}
    for page in PAGES:
        for intro, rows in _tables(_text(page)):
            if not rows or rows[0][0].lower() != "argument":
                continue
            named = sorted((intro.index(name), name) for name in DECLARED if name in intro)
            assert named, f"{_rel(page)}: an argument table must follow a paragraph naming its launch file: {intro!r}"
            names = {n for row in rows[1:] for n in re.findall(r"`([a-z_]+)`", row[0])}
            out[named[0][1]].append((page, names))  # the first launch file the paragraph names
    return out


def _linked_pages(page: Path) -> set[Path]:
    found = set()
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(_text(page))):
        path = target.split("#")[0]
        if path and not re.match(r"^[a-z]+:", path):
            found.add((page.parent / path).resolve())
    return found


def test_every_launch_file_declares_arguments_this_test_can_read():
    assert LAUNCH_FILES, "no launch files found"
    for name, names in DECLARED.items():
        assert names, f"{name}: no DeclareLaunchArgument found"
    assert {"image_topic", "method", "device", "use_sim_time"} <= DECLARED["adapt.launch.py"]


def test_every_launch_argument_is_documented_and_every_documented_one_exists():
    tables = _argument_tables()
    reachable = {README.resolve(), *_linked_pages(README)}
    for launch_file, declared in DECLARED.items():
        documented = [(page, names) for page, names in tables[launch_file] if page.resolve() in reachable]
        assert documented, (f"{launch_file}: no argument table in README.md or a docs page README.md "
                            "links to")
        for page, names in tables[launch_file]:
            assert names == declared, (f"{_rel(page)}, {launch_file}: undocumented {sorted(declared - names)}, "
                                       f"not declared {sorted(names - declared)}")


def test_launch_commands_in_code_blocks_use_declared_arguments():
    checked = 0
    for page in PAGES:
        for block in _code_blocks(_text(page)):
            for line in _commands(block):
                m = re.search(r"ros2 launch tta_perception (\S+\.launch\.py)(.*)$", line)
                if not m:
                    continue
                assert m.group(1) in DECLARED, f"{_rel(page)}: no launch file {m.group(1)}"
                for arg in re.findall(r"(?:^|\s)([A-Za-z_]+):=", m.group(2)):
                    assert arg in DECLARED[m.group(1)], f"{_rel(page)}: {m.group(1)} has no argument {arg!r}: {line}"
                    checked += 1
    assert checked >= 10


# ----------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli():
    from tta_perception.cli.main import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {name: {s for action in p._actions for s in action.option_strings} for name, p in sub.choices.items()}
    assert set(flags) == set(COMMANDS)
    return flags


def test_every_subcommand_is_in_the_readme_table_and_every_listed_one_exists(cli):
    text = _text(README)
    section = text[text.index("## Command line"):]
    section = section[:section.index("\n## ", 1)]
    tables = [rows for _, rows in _tables(section) if rows and rows[0][0].lower() == "command"]
    assert len(tables) == 1, "README.md: one command table under '## Command line'"
    listed = {re.fullmatch(r"`([a-z-]+)`", row[0]).group(1) for row in tables[0][1:]}
    assert listed == set(cli), f"README.md: missing {sorted(set(cli) - listed)}, unknown {sorted(listed - set(cli))}"


def _cli_invocations(page: Path) -> list[str]:
    text = _text(page)
    lines = [line for block in _code_blocks(text) for line in _commands(block)]
    lines += [span for span in _inline_code(text) if span.startswith("tta-perception ")]
    out = []
    for line in lines:
        for part in re.split(r"&&|;|\|\||\||>", line):
            # a command: optional VAR=value assignments or a loop's `do`, then the executable
            if re.match(r"^\s*(?:\w+=\S*\s+)*(?:do\s+|then\s+)?tta-perception\s", part):
                out.append(part[part.index("tta-perception"):].strip())
    return out


def test_cli_invocations_in_readme_and_docs_name_real_subcommands_and_flags(cli):
    checked = 0
    for page in PAGES:
        for command in _cli_invocations(page):
            try:
                words = shlex.split(command)
            except ValueError:
                words = command.split()
            assert len(words) >= 2, f"{_rel(page)}: {command}"
            sub = words[1]
            if sub.startswith("<"):  # "tta-perception <command> --help"
                continue
            assert sub in cli, f"{_rel(page)}: no subcommand {sub!r}: {command}"
            for word in words[2:]:
                flag = word.strip("[],").split("=")[0]
                if flag.startswith("--"):
                    assert flag in cli[sub], f"{_rel(page)}: tta-perception {sub} has no {flag}: {command}"
                    checked += 1
    assert checked >= 50, checked


# ------------------------------------------------------------------------------------- links, size
def test_relative_links_point_to_existing_files_and_anchors():
    checked = 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(_text(page))):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page.resolve()
            assert dest.exists(), f"{_rel(page)}: link to a missing file: {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{_rel(page)}: no heading for #{anchor} in {dest.name}"
            checked += 1
    assert checked >= 30


def test_readme_links_every_docs_page_and_every_plot_is_shown():
    linked = _linked_pages(README)
    for page in DOCS:
        assert page.resolve() in linked, f"README.md does not link {_rel(page)}"
    assert (REPO / "CHANGELOG.rst").resolve() in linked
    shown = {(page.parent / t).resolve() for page in PAGES
             for t in re.findall(r"!\[[^\]]*\]\(([^)\s#]+)\)", _prose(_text(page)))}
    for png in sorted((REPO / "docs").glob("*.png")):
        assert png.resolve() in shown, f"{_rel(png)} is shown on no page"


def test_readme_is_short():
    n = len(_text(README).splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}); move details to docs/"


NARRATIVE = re.compile(r"\bissues? ?\d+|(?<!\w)#\d+\b|\bthis session\b|\bsession \d\b|\bearlier code\b"
                       r"|\bearlier READMEs?\b|\bthe brief\b", re.I)


def test_no_issue_numbers_or_development_narrative():
    for page in PAGES:
        for n, line in enumerate(_text(page).splitlines(), 1):
            m = NARRATIVE.search(line)
            assert not m, f"{_rel(page)}:{n}: {m.group(0)!r} (history belongs in CHANGELOG.rst): {line.strip()}"


def test_changelog_follows_the_ros_convention():
    text = _text(REPO / "CHANGELOG.rst")
    lines = text.splitlines()
    assert lines[1] == "Changelog for package tta_perception"
    assert set(lines[0]) == {"^"} and set(lines[2]) == {"^"}
    versions = re.findall(r"^(\d+\.\d+\.\d+) \((\d{4}-\d{2}-\d{2})\)\n-+$", text, re.M)
    assert versions, "no version section like '0.1.0 (2026-12-06)'"
    package_version = re.search(r"<version>([^<]+)</version>", _text(REPO / "package.xml")).group(1)
    assert versions[0][0] == package_version
    assert re.search(r"^\* ", text, re.M)


def test_the_helpers_see_what_they_check():
    """The parsers of this file on a constructed page: a check that finds nothing would pass vacuously."""
    page = ("intro of `adapt.launch.py`:\n\n| argument | default |\n|---|---|\n| `a`, `b` | 1 |\n\n"
            "```bash\ntta-perception bench --task seg \\\n    --stride 10   # comment --nope\n```\n"
            "## A heading (`--x y`)\n")
    assert _tables(page) == [("intro of `adapt.launch.py`:", [["argument", "default"], ["`a`, `b`", "1"]])]
    assert _commands(_code_blocks(page)[0]) == ["tta-perception bench --task seg --stride 10"]
    assert _slug("A heading (`--x y`)") == "a-heading---x-y"
    assert NARRATIVE.search("see issue 14") and NARRATIVE.search("fixes #13")
    assert not NARRATIVE.search("reproduce.md#4-other-streams")
