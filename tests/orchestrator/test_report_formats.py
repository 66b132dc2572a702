"""mtl report's formats: LaTeX that compiles as printed, CSV for machines; and a folder with other
Parquet files in it."""
import io
import json
import os
import shutil
import subprocess
from statistics import mean, pstdev

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pylatexenc.latex2text import LatexNodes2Text
from pylatexenc.latexwalker import (
    LatexCharsNode,
    LatexCommentNode,
    LatexEnvironmentNode,
    LatexMacroNode,
    LatexMathNode,
    LatexSpecialsNode,
    LatexWalker,
)

from orchestrator.cli import main
from orchestrator.report import latex_escape, render
from orchestrator.results import write_rows
from trainables.config import TrialConfig

SINGLE_TEXT = "single-task networks, best grid setting on val"
ODD_NAME = "x_&_50%#1"  # an experiment name with LaTeX's special characters
# per experiment: seed -> (semseg miou, depth rmse, test Delta_m); digits beyond the printed two on purpose
MODELS = {
    "mtl_baseline": {0: (45.0 + 1 / 3, 2.2, -7.0 + 1 / 7), 1: (46.0 + 1 / 7, 2.2, -6.0)},
    ODD_NAME: {0: (52.0, 2.5, -3.0), 1: (52.0, 3.5, -4.0 + 1 / 9)},
}
SIZES = {"mtl_baseline": (600_000, 1.1), ODD_NAME: (2_000_000, 4.2)}


def result_row(experiment, role, tasks, seed, test, delta=None, params=1_000_000, flops=2.0, study="my_study#2"):
    """A selected, completed results row of a two-seed study on the synthetic scenes."""
    cfg = TrialConfig(experiment=experiment, tasks=tuple(tasks), seed=seed,
                      model={"architecture": "single_task" if role == "single_task" else "mtl_baseline"},
                      dataset={"name": "synthetic", "params": {"image_size": 32}})
    return dict(study=study, run_id="r", experiment=experiment, role=role, architecture=cfg.model.architecture.name,
                balancer="fixed", tasks=list(tasks), trial_id=f"t{seed}", config_json=json.dumps(cfg.to_dict()),
                config_hash=cfg.config_hash(), setting_hash=cfg.config_hash(exclude=("seed",)), seed=seed,
                val_metrics={}, test_metrics=test, val_delta_m=delta, test_delta_m=delta, delta_baseline=SINGLE_TEXT,
                params=params, flops_g=flops, wall_time_s=1.0, epochs_done=2, status="completed", error="",
                selected=True, cached=False, checkpoint_path="")


def results_rows(study="my_study#2"):
    """Single-task networks (best on depth: 1.95 beats every model, but is never bold) and two models."""
    rows = []
    for seed in (0, 1):
        rows.append(result_row("single_task/semseg", "single_task", ["semseg"], seed, {"semseg/miou": 50.0 + seed},
                               study=study))
        rows.append(result_row("single_task/depth", "single_task", ["depth"], seed, {"depth/rmse": 2.0 - seed / 10},
                               study=study))
        for name, seeds in MODELS.items():
            miou, rmse, delta = seeds[seed]
            rows.append(result_row(name, "multi_task", ["semseg", "depth"], seed,
                                   {"semseg/miou": miou, "depth/rmse": rmse}, delta, *SIZES[name], study=study))
    return rows


def _tabular(nodes):
    """The first tabular environment under ``nodes`` (depth first)."""
    for node in nodes or []:
        if isinstance(node, LatexEnvironmentNode) and node.environmentname == "tabular":
            return node
        found = _tabular(getattr(node, "nodelist", None))
        if found is not None:
            return found
    return None


def _raw_text(nodes):
    """Text outside math of ``nodes`` (not inside macros' arguments): where an unescaped special would land."""
    for node in nodes or []:
        if isinstance(node, LatexCharsNode):
            yield node.chars
        elif not isinstance(node, LatexMathNode):
            yield from _raw_text(getattr(node, "nodelist", None))


def check_latex(text: str) -> list:
    """A strict check of a printed table: parses with no error (balanced braces, math, environments),
    booktabs rules and no \\hline, no stray special character, as many cells per row as the column spec.
    Returns the rows as lists of cell texts (LaTeX source)."""
    assert text.isascii()
    nodes, _, _ = LatexWalker(text, tolerant_parsing=False).get_latex_nodes()
    table = _tabular(nodes)
    assert table is not None
    spec = "".join(n.chars for n in table.nodeargd.argnlist[-1].nodelist)
    assert set(spec) <= set("lrc")
    body = table.nodelist
    macros = [n.macroname for n in body if isinstance(n, LatexMacroNode)]
    assert [m for m in macros if m.endswith("rule")] == ["toprule", "midrule", "bottomrule"]
    assert "hline" not in text
    assert not any(isinstance(n, LatexCommentNode) for n in body)
    for chars in _raw_text(body):
        assert not set(chars) & set("_#^~&%$\\{}"), chars
    rows, cells = [], []
    for node in body:
        if isinstance(node, LatexMacroNode) and node.macroname == "\\":
            rows.append(cells)
            cells = []
        elif isinstance(node, LatexMacroNode) and node.macroname.endswith("rule"):
            cells = []
        else:
            cells.append(node)
    for cells in rows:
        assert sum(isinstance(n, LatexSpecialsNode) and n.specials_chars == "&" for n in cells) == len(spec) - 1
    return [text[c[0].pos:c[-1].pos + c[-1].len].strip().split(" & ") for c in rows]


def test_latex_parses_with_booktabs_and_every_cell_in_place():
    text = render(results_rows(), fmt="latex")
    rows = check_latex(text)
    assert text.splitlines()[0].startswith("%") and "\\usepackage{booktabs}" in text.splitlines()[0]
    assert rows[0] == ["Model", r"semseg (miou) $\uparrow$", r"depth (rmse) $\downarrow$", r"\#P (M)", "FLOPS (G)",
                       r"$\Delta_m$ (\%) $\uparrow$"]
    assert [r[0] for r in rows[1:]] == ["Single task", r"mtl\_baseline", r"x\_\&\_50\%\#1"]
    # mean and population std over the two seeds, in math: a true minus sign
    assert rows[2][1] == f"${mean([45 + 1 / 3, 46 + 1 / 7]):.2f} \\pm {pstdev([45 + 1 / 3, 46 + 1 / 7]):.2f}$"
    assert rows[2][-1] == "$-6.43 \\pm 0.43$" and rows[1][-1] == "$+0.00$"


def test_latex_bolds_the_best_model_of_each_column_by_its_direction():
    rows = check_latex(render(results_rows(), fmt="latex"))
    single, mtl, odd = rows[1:]
    assert odd[1] == r"$\mathbf{52.00} \pm 0.00$" and "mathbf" not in mtl[1]      # miou: higher is better
    assert mtl[2] == r"$\mathbf{2.20} \pm 0.00$" and "mathbf" not in odd[2]       # rmse: lower is better
    assert not any("mathbf" in cell for cell in single)     # 1.95 is the lowest rmse, but a baseline
    assert odd[-1] == r"$\mathbf{-3.44} \pm 0.44$" and "mathbf" not in mtl[-1]    # Delta_m: -3.44 > -6.43
    assert not any("mathbf" in cell for row in rows for cell in row[3:5])        # #P and FLOPS are costs


def test_latex_bold_ties_and_a_lone_model():
    rows = results_rows()
    for r in rows:  # the same rmse for both models: both bold
        if r["role"] == "multi_task":
            r["test_metrics"]["depth/rmse"] = 2.0
    body = check_latex(render(rows, fmt="latex"))[2:]
    assert all(row[2].startswith(r"$\mathbf{2.00}") for row in body)
    lone = [r for r in results_rows() if r["experiment"] != ODD_NAME]
    assert "mathbf" not in render(lone, fmt="latex")  # nothing to compare against


def test_latex_caption_names_the_delta_baseline_the_seeds_and_a_label():
    text = render(results_rows(), fmt="latex")
    caption = text[text.index("\\caption{"):text.index("\\label")]
    assert f"against {SINGLE_TEXT}" in caption and r"mean $\pm$ std over 2 seeds" in caption
    assert r"study my\_study\#2" in caption
    assert "\\label{tab:my-study-2}" in text
    one_seed = [r for r in results_rows() if r["seed"] == 0]
    assert "one seed" in render(one_seed, fmt="latex")


def test_latex_escape_prints_the_text():
    text = "a_b#c%d&e$f{g}h~i\\k"
    assert LatexNodes2Text().latex_to_text(latex_escape(text)) == text
    assert latex_escape("^") == r"\textasciicircum{}" and latex_escape("Δm ±") == r"$\Delta$m $\pm$"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (the parser check above runs)")
def test_latex_compiles_with_pdflatex(tmp_path):
    table = render(results_rows(), fmt="latex")
    doc = "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n" \
          f"{table}\n\\end{{document}}\n"
    (tmp_path / "t.tex").write_text(doc)
    done = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "t.pdf").exists() and "Overfull" not in (tmp_path / "t.log").read_text()


def test_csv_reads_back_as_numbers_equal_to_the_rows():
    text = render(results_rows(), fmt="csv")
    assert text.isascii() and "\r" not in text and text.endswith("\n")
    df = pd.read_csv(io.StringIO(text), index_col="model")
    assert list(df.columns) == ["role", "semseg_miou_mean", "semseg_miou_std", "depth_rmse_mean", "depth_rmse_std",
                                "delta_m_mean", "delta_m_std", "params_m", "gflops", "n_seeds", "delta_baseline"]
    for column in df.columns[1:-1]:
        assert pd.api.types.is_numeric_dtype(df[column]), column
    assert df["n_seeds"].dtype == "int64"
    for name, seeds in MODELS.items():  # full precision: exactly the mean and population std of the rows
        miou, rmse, delta = zip(*seeds.values())
        line = df.loc[name]
        assert (line["semseg_miou_mean"], line["semseg_miou_std"]) == (mean(miou), pstdev(miou))
        assert (line["depth_rmse_mean"], line["delta_m_mean"], line["delta_m_std"]) == (mean(rmse), mean(delta),
                                                                                       pstdev(delta))
        assert (line["params_m"], line["gflops"], line["n_seeds"]) == (SIZES[name][0] / 1e6, SIZES[name][1], 2)
        assert line["delta_baseline"] == SINGLE_TEXT
    single = df.loc["Single task"]
    assert (single["params_m"], single["gflops"], single["delta_m_mean"]) == (2.0, 4.0, 0.0)
    assert single["role"] == "single_task" and pd.isna(single["delta_m_std"])


def test_csv_leaves_missing_numbers_empty_and_std_of_one_seed_empty():
    rows = [r for r in results_rows() if r["seed"] == 0]
    rows.append({**result_row("never_finished", "multi_task", ["semseg", "depth"], 0, {}), "selected": False})
    df = pd.read_csv(io.StringIO(render(rows, fmt="csv")), index_col="model")
    assert df["semseg_miou_std"].isna().all()
    assert df.loc["never_finished"].drop(["role", "n_seeds", "delta_baseline"]).isna().all()
    assert df.loc["never_finished", "n_seeds"] == 0


def _unrelated(path):
    pq.write_table(pa.table({"epoch": [1, 2], "loss": [0.5, 0.4]}), path)


def test_report_skips_parquet_files_that_are_not_results(tmp_path, capsys):
    study = tmp_path / "study"
    (study / "results" / "r1").mkdir(parents=True)
    write_rows(results_rows(), str(study / "results" / "r1" / "models.parquet"))
    _unrelated(study / "curves.parquet")
    (study / "broken.parquet").write_text("not parquet")
    assert main(["report", str(study), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("model,role,semseg_miou_mean") and len(out.splitlines()) == 4
    skipped = err.splitlines()
    assert len(skipped) == 2 and all(line.startswith("mtl report: skipped ") for line in skipped)
    assert "broken.parquet: not a results file" in skipped[0]
    assert "curves.parquet: not a results file (no column study, experiment, role, config_json)" in skipped[1]


def test_report_on_a_folder_without_results_exits_2(tmp_path, capsys):
    _unrelated(tmp_path / "a.parquet")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"mtl report: no results rows in {tmp_path} (every Parquet file there was skipped)"
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path / "a.parquet")]) == 2
    os.remove(tmp_path / "a.parquet")
    assert main(["report", str(tmp_path)]) == 2
    assert "no results .parquet files under" in capsys.readouterr().err
