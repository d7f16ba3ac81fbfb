"""The README is a landing page with docs/ behind it: every relative link and picture resolves, and the
first lines hold the two commands CI and a new user run."""

import glob
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
TARGET = re.compile(r"\]\(([^)\s]+)\)|<img[^>]*\bsrc=\"([^\"]+)\"")


def targets(path):
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold commands, not links
    for match in TARGET.finditer(text):
        target = match.group(1) or match.group(2)
        if not re.match(r"[a-z]+:|#", target):
            yield target.split("#")[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_and_picture_exists(page):
    found = list(targets(page))
    missing = [t for t in found if not os.path.exists(os.path.join(os.path.dirname(page), t))]
    assert missing == []
    if page.endswith("README.md"):
        assert len(found) > 10  # the landing page links its docs and pictures


def test_the_readme_is_a_landing_page_that_links_every_doc():
    readme = open(PAGES[0], encoding="utf-8").read()
    assert len(readme.splitlines()) <= 220
    assert all(f"docs/{os.path.basename(p)}" in readme for p in PAGES[1:]) and len(PAGES) >= 6


def test_the_first_lines_are_the_main_job_and_the_test_command_ci_runs():
    readme = open(PAGES[0], encoding="utf-8").read().splitlines()
    block = readme[readme.index("```bash") + 1: readme.index("```bash") + 3]
    assert block[0].endswith("minifcn demo --out runs/demo")
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert block[1] in ci
