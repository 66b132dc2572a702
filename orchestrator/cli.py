"""The ``mtl`` command: run studies, report results, list plug-ins."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl", description="Multi-task learning studies on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study (a preset name or a YAML spec); default: quickstart")
    run.add_argument("study", nargs="?", default="quickstart", help="preset name or path to a spec .yaml")
    run.add_argument("--smoke", action="store_true", help="shrink data, epochs and grid: same code, ~2 minutes")
    run.add_argument("--storage", default=None, help="results root (default ./mtl_runs; an NFS path on a cluster)")
    run.add_argument("--data-root", default=None, help="dataset root on disk (real datasets)")
    run.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    run.add_argument("--workers-per-trial", type=int, default=None, help="data-parallel workers per trial")
    run.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Train worker (0 on CPU)")
    run.add_argument("--verbose", action="store_true", help="Tune's own status tables too")

    rep = sub.add_parser("report", help="print the survey-style table of a results file or study dir")
    rep.add_argument("results", help="results.parquet or a study directory")
    rep.add_argument("--format", default="markdown", choices=("markdown", "csv", "latex"))
    rep.add_argument("--times", action="store_true",
                     help="the training-time table instead (IAL Table II: seconds per run, x the single-task networks)")

    models = sub.add_parser("models", help="every model of a study with #P and FLOPS at its real input size "
                                           "(nothing is trained; paper columns when the preset reproduces a table)")
    models.add_argument("study", help="preset name or path to a spec .yaml")

    group = sub.add_parser("group", help="run only a study's task-grouping searches (training the single-task "
                                         "baselines they need): affinities, trees, #P / FLOPS, PNGs")
    group.add_argument("study", help="preset name or path to a spec .yaml")
    group.add_argument("--smoke", action="store_true", help="shrink data and epochs like mtl run --smoke")
    group.add_argument("--storage", default=None, help="results root (default ./mtl_runs)")
    group.add_argument("--data-root", default=None, help="dataset root on disk (real datasets)")

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    chk = data_sub.add_parser("check", help="check a dataset on disk; prints a JSON summary")
    chk.add_argument("--dataset", required=True, help="registered dataset name (mtl list dataset)")
    chk.add_argument("--root", default=None, help="the dataset's root folder")
    chk.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="dataset parameter")

    lst = sub.add_parser("list", help="list registered plug-ins (and presets)")
    lst.add_argument("kind", nargs="?", default=None,
                     help="dataset, task, backbone, head, architecture, balancer, grouping, preset")
    return p


def _load(study: str):
    from orchestrator.spec import SpecError, load_spec
    from search_spaces import PRESETS, preset

    if study in PRESETS:
        return load_spec(preset(study))
    if os.path.exists(study) or study.endswith((".yaml", ".yml")):
        return load_spec(study)
    raise SpecError(f"{study!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a spec file")


# command-line flag (argparse dest) -> the spec field it overrides
OVERRIDES = {"data_root": "dataset.root", "epochs": "train.epochs", "workers_per_trial": "resources.workers_per_trial",
             "gpus_per_worker": "resources.gpus_per_worker"}


def _override(spec, args):
    """``spec`` with the flags given on the command line, checked like the spec itself; an error
    names the spec field and the flag."""
    from orchestrator.spec import SpecError, load_spec

    given = {dest: field for dest, field in OVERRIDES.items() if getattr(args, dest, None) is not None}
    if not given:
        return spec
    data = spec.to_dict()
    for dest, field in given.items():
        section, key = field.split(".")
        data[section][key] = getattr(args, dest)
    try:
        return load_spec(data)
    except SpecError as err:
        flags = [f"--{dest.replace('_', '-')}" for dest, field in given.items() if str(err).startswith(field)]
        raise SpecError(f"{err} (set by {', '.join(flags)})" if flags else str(err)) from None


def cmd_run(args) -> int:
    from orchestrator.spec import SpecError
    from orchestrator.study import DEFAULT_STORAGE, run_study
    from trainables.datasets.readers import DataCheckError

    try:
        spec = _override(_load(args.study), args)
        run_study(spec, storage=args.storage or DEFAULT_STORAGE, smoke_run=args.smoke,
                  verbose=1 if args.verbose else 0)
    except SpecError as err:
        print(f"mtl run: invalid study spec: {err}", file=sys.stderr)
        return 2
    except DataCheckError as err:
        print(f"mtl run: dataset check failed: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_report(args) -> int:
    import json

    from orchestrator.report import render, render_times
    from orchestrator.results import read_rows

    try:
        rows = read_rows(args.results)
    except FileNotFoundError as err:
        print(f"mtl report: {err}", file=sys.stderr)
        return 2
    primary = next((r for r in rows if r["role"] == "multi_task"), None)
    primary_task = json.loads(primary["config_json"]).get("primary_task") if primary else None
    print(render_times(rows) if args.times else render(rows, fmt=args.format, primary_task=primary_task))
    return 0


def cmd_models(args) -> int:
    from orchestrator.sizes import model_sizes, render
    from orchestrator.spec import SpecError

    try:
        spec = _load(args.study)
        print(render(spec, model_sizes(spec)))
    except SpecError as err:
        print(f"mtl models: invalid study spec: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_group(args) -> int:
    from orchestrator.spec import SpecError
    from orchestrator.study import DEFAULT_STORAGE, group_study
    from trainables.datasets.readers import DataCheckError

    try:
        found = group_study(_override(_load(args.study), args), storage=args.storage or DEFAULT_STORAGE,
                            smoke_run=args.smoke)
    except (SpecError, DataCheckError) as err:
        print(f"mtl group: invalid study spec: {err}", file=sys.stderr)
        return 2
    for entry in found:
        print(f"{entry['experiment']}: " + ", ".join(entry["files"]))
    return 0


def cmd_data(args) -> int:
    import json

    from orchestrator.data_check import check_dataset, parse_params
    from trainables.datasets.readers import DataCheckError
    from trainables.registry import RegistryError

    try:
        summary = check_dataset(args.dataset, args.root, parse_params(args.param))
    except (DataCheckError, RegistryError, ValueError, TypeError) as err:
        print(f"mtl data check: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


def cmd_list(args) -> int:
    import trainables  # noqa: F401
    from orchestrator.grouping import GROUPINGS
    from search_spaces import PRESETS
    from trainables.registry import REGISTRIES

    registries = {**REGISTRIES, GROUPINGS.kind: GROUPINGS}
    kinds = list(registries) + ["preset"]
    if args.kind and args.kind not in kinds:
        print(f"mtl list: unknown kind {args.kind!r}; kinds: {', '.join(kinds)}", file=sys.stderr)
        return 2
    for kind in [args.kind] if args.kind else kinds:
        print(f"{kind}:")
        if kind == "preset":
            for name in sorted(PRESETS):
                print(f"  {name:<22} {PRESETS[name].get('description', '')}")
            continue
        registry = registries[kind]
        for name in registry.names():
            print(f"  {name:<22} {registry.summary(name)}")
            print(f"  {'':<22}   {_capabilities(registry.get(name))}")
    return 0


def _capabilities(cls) -> str:
    """A plug-in's parameters and, for balancers and architectures, what it needs / offers
    with its default parameters (from ``info_for``; nothing is built)."""
    from trainables.schema import field_names

    params = getattr(cls, "Params", None)
    text = f"params: {', '.join(field_names(params)) or '(none)'}" if params else "params: (none)"
    if params is not None and hasattr(cls, "info_for"):
        word = "needs" if cls.plugin_kind in ("balancer", "regulariser") else "offers"
        text += f" | {word} (default params): {cls.info_for(cls.params_of({})).summary()}"
    return text


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"run": cmd_run, "report": cmd_report, "models": cmd_models, "group": cmd_group, "data": cmd_data,
                "list": cmd_list}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
