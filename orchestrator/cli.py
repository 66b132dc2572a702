"""The ``mtl`` command: run (or plan), resume and check studies, report results, list plug-ins, print
the spec reference."""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from typing import List, Optional

from orchestrator.plots import add_plot_parser, plot_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl", description="Multi-task learning studies on Ray.",
                                **_examples("mtl run                          # the quickstart study",
                                            "mtl report mtl_runs/quickstart   # its table again",
                                            "mtl resume quickstart            # continue a run stopped by Ctrl-C",
                                            "mtl list                         # plug-ins and presets",
                                            "mtl run --help                   # a command's options and examples"))
    p.add_argument("--version", action="version", version=f"mtl {version()}")
    sub = p.add_subparsers(dest="command", required=True)

    run = _command(sub, "run", "run a study (a preset name or a YAML spec); default: quickstart",
                   "mtl run                                  # the quickstart preset, ~3 minutes on 2 CPUs",
                   "mtl run quickstart --dry-run             # the plan: trials, cached baselines, trial-epochs",
                   "mtl run balancing_synthetic --smoke      # any preset shrunk to a minute or so",
                   "mtl run survey_nyud --data-root /data/NYUD_MT --gpus-per-worker 1 --storage /nfs/mtl_runs")
    run.add_argument("study", nargs="?", default="quickstart", help="preset name or path to a spec .yaml")
    run.add_argument("--smoke", action="store_true", help="shrink data, epochs and grid: same code, ~2 minutes")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (trials, baselines cached or missing, trial-epochs) and exit; "
                          "nothing is trained, Ray is not started")
    run.add_argument("--storage", default=None, help="results root (default ./mtl_runs; an NFS path or "
                                                     "s3://bucket/prefix, gs://... on a cluster)")
    run.add_argument("--data-root", default=None, help="dataset root on disk (real datasets)")
    run.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    run.add_argument("--workers-per-trial", type=int, default=None, help="data-parallel workers per trial")
    run.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Train worker (0 on CPU)")
    run.add_argument("--amp", choices=("off", "bf16", "fp16"), default=None,
                     help="override train.amp: mixed precision (bf16 on CPUs or GPUs, fp16 on GPUs only)")
    run.add_argument("--channels-last", action="store_true", default=None,
                     help="set train.channels_last: NHWC model and images (GPU tensor cores)")
    run.add_argument("--cudnn-benchmark", action="store_true", default=None,
                     help="set train.cudnn_benchmark: cuDNN autotuning (GPUs only)")
    run.add_argument("--loader-workers", type=int, default=None, metavar="N",
                     help="override train.loader_workers: DataLoader worker processes per trial worker")
    run.add_argument("--pin-memory", action="store_true", default=None,
                     help="set train.pin_memory: page-locked batches (GPUs only)")
    run.add_argument("--verbose", action="store_true", help="Tune's own status tables too")

    rep = _command(sub, "report", "print the survey-style table of a results file or study dir",
                   "mtl report mtl_runs/quickstart                             # markdown, as after a run",
                   "mtl report mtl_runs/quickstart --format latex > table.tex  # booktabs, compiles as printed",
                   "mtl report mtl_runs/quickstart --format csv > table.csv    # numbers at full precision",
                   "mtl report mtl_runs/quickstart/results.parquet --times     # training time per run")
    rep.add_argument("results", help="results.parquet or a study directory")
    rep.add_argument("--format", default="markdown", choices=("markdown", "csv", "latex"))
    rep.add_argument("--times", action="store_true",
                     help="the training-time table instead (IAL Table II: seconds per run, x the single-task networks)")
    rep.add_argument("--all-runs", action="store_true",
                     help="read interrupted, killed and failed runs too (default: finished runs only)")

    res = _command(sub, "resume", "continue a study's latest interrupted or killed run in its own folder",
                   "mtl resume quickstart                     # after a Ctrl-C of mtl run quickstart",
                   "mtl resume survey_nyud --storage /nfs/mtl_runs")
    res.add_argument("study", help="the study's name (its folder under --storage), a preset or a spec .yaml")
    res.add_argument("--storage", default=None, help="results root (default ./mtl_runs)")
    res.add_argument("--verbose", action="store_true", help="Tune's own status tables too")

    stat = _command(sub, "status", "the latest run of a study, from its files (Ray is not started)",
                    "mtl status quickstart", "mtl status survey_nyud --storage /nfs/mtl_runs")
    stat.add_argument("study", help="the study's name (its folder under --storage), a preset or a spec .yaml")
    stat.add_argument("--storage", default=None, help="results root (default ./mtl_runs)")
    add_plot_parser(sub)

    models = _command(sub, "models", "every model of a study with #P and FLOPS at its real input size "
                                     "(nothing is trained; paper columns when the preset reproduces a table)",
                      "mtl models quickstart", "mtl models survey_nyud                   # beside the paper's columns")
    models.add_argument("study", help="preset name or path to a spec .yaml")

    group = _command(sub, "group", "run only a study's task-grouping searches (training the single-task "
                                   "baselines they need): affinities, trees, #P / FLOPS, PNGs",
                     "mtl group survey_cityscapes_synthetic --smoke",
                     "mtl group survey_cityscapes --data-root /data/cityscapes --storage /nfs/mtl_runs")
    group.add_argument("study", help="preset name or path to a spec .yaml")
    group.add_argument("--smoke", action="store_true", help="shrink data and epochs like mtl run --smoke")
    group.add_argument("--storage", default=None, help="results root (default ./mtl_runs)")
    group.add_argument("--data-root", default=None, help="dataset root on disk (real datasets)")

    data = _command(sub, "data", "dataset tools", "mtl data check --dataset synthetic")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    chk = _command(data_sub, "check", "check a dataset on disk; prints a JSON summary",
                   "mtl data check --dataset synthetic      # renders the synthetic cache once, then checks it",
                   "mtl data check --dataset nyud --root /data/NYUD_MT")
    chk.add_argument("--dataset", required=True, help="registered dataset name (mtl list dataset)")
    chk.add_argument("--root", default=None, help="the dataset's root folder")
    chk.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="dataset parameter")

    lst = _command(sub, "list", "list registered plug-ins (and presets)",
                   "mtl list", "mtl list balancer", "mtl list preset")
    lst.add_argument("kind", nargs="?", default=None,
                     help="dataset, task, backbone, head, architecture, balancer, grouping, preset")

    _command(sub, "spec-doc", "print the study spec reference (every field, type, default, meaning) as markdown",
             "mtl spec-doc > docs/spec.md")
    return p


def _examples(*lines: str) -> dict:
    """argparse keywords that end a --help with ``lines`` as examples, printed as written."""
    return {"epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def _command(sub, name: str, text: str, *examples: str) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with ``text`` and ends with ``examples``."""
    return sub.add_parser(name, help=text, description=text, **_examples(*examples))


def version() -> str:
    """The installed package's version, else pyproject.toml's (a checkout that is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("mtl-orchestrator")
    except metadata.PackageNotFoundError:
        pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
        with open(pyproject) as fh:
            found = re.search(r'^version\s*=\s*"([^"]+)"', fh.read(), re.MULTILINE)
        return found.group(1) if found else "unknown"


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
             "gpus_per_worker": "resources.gpus_per_worker", "amp": "train.amp", "channels_last": "train.channels_last",
             "cudnn_benchmark": "train.cudnn_benchmark", "loader_workers": "train.loader_workers",
             "pin_memory": "train.pin_memory"}


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


def check_storage(storage: str, study: str) -> None:
    """Before Ray starts: the study's folder under ``storage`` can be created and written, else
    one ``SpecError`` line naming the path (a read-only or non-creatable ``--storage``). Nothing is
    left behind: an unnamed temporary file in the deepest folder of the path that exists."""
    from orchestrator.spec import SpecError

    from orchestrator.storage import is_uri

    if is_uri(storage):  # an object store: the study's prepare checks access, in its own words
        return
    folder = os.path.join(os.path.abspath(os.path.expanduser(storage)), study)
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise SpecError(f"--storage {storage!r}: cannot create or write the study's folder {folder} "
                        f"({err.strerror}); give a folder this user can write (--storage)") from None


def study_folder(storage: str, study: str) -> str:
    """The study's local folder under ``storage``; for an object store, its staging copy, pulled
    first (without Tune's state), so ``mtl resume`` / ``mtl status`` read what the store holds."""
    from orchestrator.storage import stage_study

    return os.path.join(stage_study(storage, study)[0], study)


def cmd_run(args) -> int:
    from orchestrator.study import DEFAULT_STORAGE

    def run():
        spec = _override(_load(args.study), args)
        if args.dry_run:
            print(dry_run(spec, args.storage or DEFAULT_STORAGE, args.smoke))
            return None
        return spec, False

    return _run_or_resume("run", run, args)


def cmd_resume(args) -> int:
    import json

    from orchestrator.runs import latest_unfinished
    from orchestrator.spec import SpecError, load_spec
    from orchestrator.study import DEFAULT_STORAGE

    def resume():
        results_dir = os.path.join(study_folder(args.storage or DEFAULT_STORAGE, _study_name(args.study)), "results")
        run_dir = latest_unfinished(results_dir)
        if run_dir is None:
            raise SpecError(f"no interrupted or killed run to resume under {results_dir} (mtl status shows the latest)")
        with open(os.path.join(run_dir, "spec.json")) as fh:  # the run's own spec, already shrunk if --smoke
            return load_spec(json.load(fh)), True

    return _run_or_resume("resume", resume, args)


def _run_or_resume(command: str, make, args) -> int:
    """``mtl run`` / ``mtl resume``: ``make()`` gives (spec, resume) or None when there is nothing to
    run; the exit status: 0, 1 (a baseline failed), 2 (a bad spec or dataset), 130 (Ctrl-C)."""
    from orchestrator.baselines import BaselineFailed
    from orchestrator.spec import SpecError
    from orchestrator.study import DEFAULT_STORAGE, run_study
    from trainables.datasets.readers import DataCheckError

    storage = args.storage or DEFAULT_STORAGE
    name = None
    try:
        made = make()
        if made is None:
            return 0
        spec, resume = made
        name = spec.name
        check_storage(storage, spec.name)
        run_study(spec, storage=storage, smoke_run=getattr(args, "smoke", False) and not resume,
                  verbose=1 if args.verbose else 0, resume=resume)
    except SpecError as err:
        print(f"mtl {command}: invalid study spec: {err}", file=sys.stderr)
        return 2
    except DataCheckError as err:
        print(f"mtl {command}: dataset check failed: {err}", file=sys.stderr)
        return 2
    except BaselineFailed as err:
        print(f"mtl {command}: study stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the run is marked interrupted (runs.StudyInterrupted) unless Ray had not started
        print(f"mtl {command}: interrupted; continue with: mtl resume {name or args.study} --storage {storage}",
              file=sys.stderr)
        return 130  # what a shell reports for a command ended by SIGINT (128 + 2)
    return 0


def _study_name(study: str) -> str:
    """A study's folder name: ``study`` itself, or the name in the preset / spec file it names."""
    from search_spaces import PRESETS

    if study in PRESETS or os.path.isfile(study):
        return _load(study).name
    return study


def cmd_status(args) -> int:
    from orchestrator.runs import summary
    from orchestrator.spec import SpecError
    from orchestrator.study import DEFAULT_STORAGE

    try:
        study_dir = study_folder(args.storage or DEFAULT_STORAGE, _study_name(args.study))
    except SpecError as err:
        print(f"mtl status: invalid study spec: {err}", file=sys.stderr)
        return 2
    if not os.path.isdir(study_dir):
        print(f"mtl status: no study folder {study_dir} (--storage?)", file=sys.stderr)
        return 2
    print("\n".join(summary(study_dir)))
    return 0


def dry_run(spec, storage: str, smoke_run: bool) -> str:
    """``mtl run --dry-run``: the plan of ``spec`` - each experiment's settings x seeds = trials, the
    single-task baselines cached or missing under ``storage``, the trial-epochs to train.

    Validates like a run (registries, plug-in pairs) but reads no data and starts no Ray.
    """
    import dataclasses
    import glob

    from orchestrator.baselines import load_cached
    from orchestrator.plan import expand, smoke, validate

    if smoke_run:
        spec = smoke(spec)
    info = validate(spec)
    storage = os.path.abspath(os.path.expanduser(storage))
    cache_dir = os.path.join(storage, "_cache", "baselines")  # where orchestrator/study.py's prepare keeps it
    data_root = os.path.abspath(os.path.expanduser(spec.dataset.root)) if spec.dataset.root else None
    single, multi = expand(spec, info, data_root)
    label_files: List[Optional[str]] = [None]
    out = [f"study {spec.name!r}{' [smoke]' if smoke_run else ''}: dry run - nothing is trained, Ray is not started",
           f"  dataset {spec.dataset.name}, tasks {', '.join(spec.tasks)}; {spec.train.epochs} epoch(s) per trial; "
           f"{len(single[0].settings)} grid setting(s) x {len(spec.train.seeds)} seed(s) per model"]
    labels = dict(spec.dataset.labels or {})
    if labels:  # a baseline's cache key holds the study's label file, written on the first run
        stem = labels.get("setting") or os.path.splitext(os.path.basename(str(labels.get("weights_file"))))[0]
        label_files = sorted(glob.glob(os.path.join(storage, spec.name, "labels",
                                                    re.sub(r"[^A-Za-z0-9_.-]", "_", stem) + "-*.npz")))
        out.append(f"  partial labels {labels}: baselines looked up under {len(label_files)} label file(s) of "
                   "earlier runs" + ("" if label_files else " (none yet: every baseline is missing)"))
    out.append(f"single-task baselines (cache {cache_dir}):")
    missing = 0
    for exp in single:
        configs = exp.trial_configs()
        cached = sum(any(load_cached(cache_dir, dataclasses.replace(c, label_file=f)) is not None for f in label_files)
                     for c in configs)
        missing += len(configs) - cached
        state = "cached" if cached == len(configs) else "missing" if not cached else f"partly cached ({cached} cached)"
        out.append(f"  {exp.name:<30} {len(configs)} trial(s): {state}")
    out.append("experiments:")
    trials = 0
    for i, exp in enumerate(multi, 1):
        what = f"{exp.base.model.architecture.name} + {exp.base.balancer.name}"
        n = exp.num_trials
        if exp.weight_search:
            plan = f"Optuna over the task weights, {n} trial(s) on seed {exp.seeds[0]}"
        else:
            plan = f"{len(exp.settings)} setting(s) x {len(exp.seeds)} seed(s) = {n} trial(s)"
        trials += n
        grouping = f"; first a grouping search {exp.grouping.name} (not counted below)" if exp.grouping else ""
        out.append(f"  {i}/{len(multi)} {exp.name} ({what}): {plan}{grouping}")
    epochs = spec.train.epochs
    bound = " at most (ASHA stops some trials early)" if spec.search.asha else ""
    out.append(f"estimated trial-epochs: {(missing + trials) * epochs}{bound} = {missing} missing baseline trial(s) "
               f"x {epochs} + {trials} experiment trial(s) x {epochs}")
    return "\n".join(out)


def cmd_report(args) -> int:
    import json

    from orchestrator.report import render, render_times, rows_for

    rows = rows_for("report", args.results, all_runs=args.all_runs)
    if rows is None:
        return 2
    primary = next((r for r in rows if r["role"] == "multi_task"), None)
    primary_task = json.loads(primary["config_json"]).get("primary_task") if primary else None
    text = render_times(rows) if args.times else render(rows, fmt=args.format, primary_task=primary_task)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_spec_doc(args) -> int:
    from orchestrator.spec_doc import render

    sys.stdout.write(render())
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
    from orchestrator.baselines import BaselineFailed
    from orchestrator.spec import SpecError
    from orchestrator.study import DEFAULT_STORAGE, group_study
    from trainables.datasets.readers import DataCheckError

    try:
        spec = _override(_load(args.study), args)
        check_storage(args.storage or DEFAULT_STORAGE, spec.name)
        found = group_study(spec, storage=args.storage or DEFAULT_STORAGE, smoke_run=args.smoke)
    except (SpecError, DataCheckError) as err:
        print(f"mtl group: invalid study spec: {err}", file=sys.stderr)
        return 2
    except BaselineFailed as err:
        print(f"mtl group: stopped: {err}", file=sys.stderr)
        return 1
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
    commands = {"run": cmd_run, "resume": cmd_resume, "status": cmd_status, "report": cmd_report,
                "models": cmd_models, "group": cmd_group, "data": cmd_data,
                "list": cmd_list, "plot": plot_main, "spec-doc": cmd_spec_doc}
    try:
        args = _parser().parse_args(argv)
        code = commands[args.command](args)
        sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's own flush at exit
        return code
    except BrokenPipeError:  # the reader went away (mtl report ... | head -1): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail again
        return 141  # what a shell reports for a command ended by SIGPIPE (128 + 13)


if __name__ == "__main__":
    sys.exit(main())
