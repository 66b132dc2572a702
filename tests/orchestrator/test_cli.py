"""The mtl command line: --version, examples in every --help that run as written, run --dry-run
without Ray, a closed pipe, and the spec reference generated from the spec dataclasses."""
import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.baselines import cache_key
from orchestrator.cli import main
from orchestrator.plan import expand, validate
from orchestrator.results import write_rows
from orchestrator.spec import StudySpec
from orchestrator.spec_doc import field_docs, render, sections
from tests.orchestrator.test_report_formats import results_rows

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT_VERSION = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"mtl {PYPROJECT_VERSION}\n"


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch):
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli.version() == PYPROJECT_VERSION


def commands(parser, words=()):
    """(command words, parser) of the top level and every subcommand, nested ones too."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, words + (name,))


def examples(parser):
    """Each example of a --help as argv: the comment and a '> file' redirection left out."""
    assert parser.epilog and parser.epilog.startswith("examples:\n"), parser.prog
    lines = parser.epilog.splitlines()[1:]
    assert lines
    argvs = []
    for line in lines:
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "mtl"
        argvs.append(argv[1:argv.index(">")] if ">" in argv else argv[1:])
    return argvs


def runs_here(argv):
    """Examples quick on a laptop without data: the others need Ray, a dataset or minutes."""
    return argv[0] in ("report", "list", "spec-doc") or "--dry-run" in argv or argv == ["models", "quickstart"]


def test_every_help_ends_with_examples_that_parse():
    for words, parser in commands(cli._parser()):
        help_text = parser.format_help()
        assert "\nexamples:\n  mtl " in help_text, words
        for argv in examples(parser):
            assert tuple(argv[:len(words)]) == words, (words, argv)
            if "--help" in argv:
                continue
            cli._parser().parse_args(argv)  # argparse exits on a bad example


def test_examples_run_as_written(tmp_path, monkeypatch, capsys):
    """From a folder holding the quickstart's results where ``mtl run`` writes them (./mtl_runs)."""
    monkeypatch.chdir(tmp_path)
    write_rows(results_rows("quickstart"), str(tmp_path / "mtl_runs" / "quickstart" / "results.parquet"))
    ran = []
    for _, parser in commands(cli._parser()):
        for argv in filter(runs_here, examples(parser)):
            assert main(argv) == 0, argv
            assert capsys.readouterr().out, argv
            ran.append(argv[0])
    assert set(ran) == {"report", "list", "spec-doc", "run", "models"}


def test_dry_run_prints_the_plan_without_ray(tmp_path):
    """One baseline trial is already cached; the plan says so and counts the rest. In a fresh
    interpreter, so that 'ray' not being imported means something."""
    spec = cli._load("quickstart")
    single, _ = expand(spec, validate(spec), None)
    entry = tmp_path / "_cache" / "baselines" / cache_key(single[0].trial_configs()[0])
    entry.mkdir(parents=True)
    (entry / "result.json").write_text("{}")
    code = "import sys; from orchestrator.cli import main; c = main(sys.argv[1:]); print('ray:', 'ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code, "run", "quickstart", "--dry-run", "--storage", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert lines[-1] == ["ray:", "False"]
    assert ["single_task/semseg", "2", "trial(s):", "partly", "cached", "(1", "cached)"] in lines
    assert ["single_task/depth", "2", "trial(s):", "missing"] in lines
    assert "1/1 mtl_baseline (mtl_baseline + fixed): 2 setting(s) x 1 seed(s) = 2 trial(s)".split() in lines
    # (4 tasks x 2 + 1) missing baseline trials and 2 model trials, 6 epochs each
    assert "estimated trial-epochs: 66 = 9 missing baseline trial(s) x 6 + 2 experiment trial(s) x 6".split() in lines


def test_dry_run_counts_a_weight_search_and_a_smoke_run():
    text = cli.dry_run(cli._load("balancing_synthetic"), "unused_storage", smoke_run=True)
    assert "[smoke]" in text and "1 grid setting(s) x 1 seed(s) per model" in text
    assert "7/7 fixed_tpe (mtl_baseline + fixed): Optuna over the task weights, 2 trial(s) on seed 0" in text
    assert text.endswith("estimated trial-epochs: 22 = 3 missing baseline trial(s) x 2 + 8 experiment trial(s) x 2")


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``mtl report ... | head -1``: the reader is gone before the table is written."""
    write_rows(results_rows(), str(tmp_path / "results.parquet"))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "report", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 141 and err == ""


def test_spec_reference_is_in_sync():
    assert (ROOT / "docs" / "spec.md").read_text() == render(), \
        "docs/spec.md is stale: python -m orchestrator.spec_doc > docs/spec.md"


def test_every_spec_field_is_documented():
    found = sections()
    assert found[0] is StudySpec
    assert {c.__name__ for c in found} == {"StudySpec", "ExperimentSpec", "DatasetSpec", "SearchSpec", "TrainSpec",
                                            "ResourcesSpec", "ReferenceTable", "LossWeightSearch", "ReferenceRow"}
    for cls in found:
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(field_docs(cls)) == names, cls.__name__  # every field, in order, and nothing stale


def test_spec_reference_rows_give_type_default_and_meaning(capsys):
    text = render()
    assert "| `seeds` | list of integer | `[0]` | every setting is trained once per seed;" in text
    assert "| `experiments` | list of [ExperimentSpec](#experimentspec) | required |" in text
    assert "| `backbone` | plug-in or null | `null` |" in text
    assert "| `rows` | mapping of name to [ReferenceRow](#referencerow) | `{}` |" in text
    assert main(["spec-doc"]) == 0 and capsys.readouterr().out == text
