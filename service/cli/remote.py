"""The CLI against a running service: `submit`, `status`, and `front` / `export` with --server
(or MERGEOPT_SERVER). Progress goes to stderr, results to stdout, so a pipeline can capture them."""

from __future__ import annotations

import argparse
import json
import sys

from service.cli.help import examples

RECOMMENDED = "recommended"
SUBMIT = examples(
    ("mergeopt submit study.yaml --server http://gpu-box:8000", "create the study, print its id, return"),
    ("mergeopt submit study.yaml --wait", "follow it to the end (MERGEOPT_SERVER), print the verdict"),
    ("mergeopt submit study.yaml --wait --export merged/ --json", "pipeline step: the recommended merge in merged/"),
)
STATUS = examples(
    ("mergeopt status --server http://gpu-box:8000", "every study on the server"),
    ("mergeopt status recycle-demo", "one study (MERGEOPT_SERVER), or locally: a YAML / name with --storage"),
)


def server_of(args: argparse.Namespace) -> str | None:
    """--server, else MERGEOPT_SERVER; None: local mode (the study's own storage)."""
    from service.client.settings import ClientSettings

    return getattr(args, "server", None) or ClientSettings().server or None


def trial_ref(text: str) -> int | str:
    """TRIAL: a trial number, or 'recommended' (the verdict's recommended merge)."""
    if text == RECOMMENDED:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a trial number nor '{RECOMMENDED}'") from None


def add_server_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="URL", help="a running `mergeopt serve` (default MERGEOPT_SERVER; neither: "
                                                   "read the study's storage here); token: MERGEOPT_TOKEN")


def _client(args: argparse.Namespace):
    from service.client import Client

    return Client(server_of(args))


def _recommended_number(client, key: str) -> int:
    from service.client import MergeoptError

    best = client.recommended_trial(key)
    if best is None:
        raise MergeoptError(f"study '{key}' has no completed trial yet")
    return best.number


# ---------------------------------------------------------------- front / export / status
def front(args: argparse.Namespace) -> int:
    from optimizer.records import TrialRow
    from service.studies.report import front_table

    with _client(args) as c:
        out = c.front(args.study, args.split)
        if args.json:
            print(json.dumps(out.model_dump(mode="json"), indent=2))
            return 0
        rows = [TrialRow(**t.model_dump()) for t in c.trials(args.study)]
    # The same table as local mode: front_table reads the stored front's shape.
    stored = {"split": out.split, "tasks": out.tasks, "hypervolume": out.hypervolume,
              "reference_point": out.reference_point, "hypervolume_skips": out.hypervolume_skips,
              "trials": [e.trial for e in out.front]}
    print(front_table(rows, stored, out.verdict))
    return 0


def export(args: argparse.Namespace) -> int:
    with _client(args) as c:
        number = _recommended_number(c, args.study) if args.trial == RECOMMENDED else args.trial
        out = c.export(args.study, number, args.out_dir)
    print(f"wrote trial {number} to {out} (load with AutoModelForCausalLM.from_pretrained; "
          f"mergekit: {out / 'mergekit_config.yml'})")
    return 0


def _study_line(s) -> str:
    p = s.progress
    r = s.recommended  # the headline is on validation documents; the search best only labelled
    best = (f"; recommended trial {r.trial} ({r.label}): validation {r.validation['value']:.4f} "
            f"[{r.validation['lo']:.4f}, {r.validation['hi']:.4f}]" if r else
            f"; search best {s.best.objective:.4f} (trial {s.best.trial}, search documents)" if s.best else "")
    error = f"; error: {s.error}" if s.error else ""
    return (f"{s.name}: {s.state}, {p.completed}/{p.budget} trials completed, {p.running} running, "
            f"{p.failed} failed{best}{error}")


def status(args: argparse.Namespace) -> int:
    if server_of(args) is None:
        return _local_status(args)
    with _client(args) as c:
        studies = [c.study(args.study)] if args.study else c.studies()
        if args.json:
            print(json.dumps([s.model_dump(mode="json") for s in studies], indent=2))
            return 0
        for s in studies:
            print(_study_line(s))
            if args.study:
                v = c.verdict(s.name)
                if v is not None and v.text:
                    print(v.text)
        if not studies:
            print(f"no studies on {c.server}")
    return 0


def _local_status(args: argparse.Namespace) -> int:
    from optimizer.records import trial_rows
    from optimizer.verdict import study_verdict
    from service.cli.local import stored_url
    from service.studies.runs import open_study

    if not args.study:
        print("error: status without --server (or MERGEOPT_SERVER) needs a STUDY (YAML, or a name with --storage)",
              file=sys.stderr)
        return 2
    study, spec = open_study(args.study, stored_url(args.study, args.storage))
    rows = trial_rows(study)
    count = {s: sum(r.state == s for r in rows) for s in ("COMPLETE", "RUNNING", "FAIL")}
    verdict = study_verdict(study, rows)
    if args.json:
        print(json.dumps({"name": spec.name, "budget": spec.search.n_trials, "completed": count["COMPLETE"],
                          "running": count["RUNNING"], "failed": count["FAIL"], "verdict": verdict}, indent=2))
        return 0
    print(f"{spec.name}: {count['COMPLETE']}/{spec.search.n_trials} trials completed, {count['RUNNING']} running, "
          f"{count['FAIL']} failed")
    if verdict is not None and verdict.get("text"):
        print(verdict["text"])
    return 0


# ---------------------------------------------------------------- submit
def _progress(budget: int, quiet: bool):
    done = [0]

    def show(event) -> None:
        d = event.data
        if event.type == "trial_finished":
            done[0] += 1
            score = "" if d.get("objective") is None else f": search objective {d['objective']:.4f}"
            line = f"[{done[0]}/{budget}] trial {d['trial']} ({d.get('label', '')}) finished{score}"
        elif event.type in ("trial_failed", "trial_pruned"):
            line = f"trial {d['trial']} {event.type.removeprefix('trial_')}" + (f": {d['error']}" if d.get("error") else "")
        elif event.type == "state":
            line = f"study {d['state']}" + (f": {d['error']}" if d.get("error") else "")
        else:
            return
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    return show


def submit(args: argparse.Namespace) -> int:
    from service.client import StudyFailed

    args.wait = args.wait or bool(args.export)
    with _client(args) as c:
        study = c.create_study(args.study, priority=args.priority)
        print(f"submitted study '{study.name}' (id {study.id}) to {c.server}: {study.state}", file=sys.stderr)
        if not args.wait:
            if args.json:
                print(json.dumps(study.model_dump(mode="json"), indent=2))
            return 0
        try:
            final = c.wait(study.name, timeout=args.timeout, on_event=_progress(study.progress.budget, args.quiet))
        except StudyFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        verdict = c.verdict(final.name)
        number = verdict.recommended if verdict is not None and verdict.recommended is not None \
            else _recommended_number(c, final.name)
        exported = str(c.export(final.name, number, args.export)) if args.export else None
    if args.json:
        print(json.dumps({"study": final.model_dump(mode="json"), "recommended": number,
                          "pick": verdict.pick if verdict else None,
                          "search_paid": verdict.search_paid if verdict else None,
                          "verdict": verdict.text if verdict else None, "exported": exported}, indent=2))
        return 0
    print(verdict.text if verdict is not None and verdict.text else f"recommended merge: trial {number}")
    if exported:
        print(f"wrote the recommended merge (trial {number}) to {exported}")
    return 0


def add_parsers(command, formatter) -> None:
    """`submit` and `status`; ``command(name, what, epilog)`` makes a subparser (main.build_parser)."""
    s = command("submit", "create a study on a running service from a study YAML; --wait follows it", SUBMIT)
    s.add_argument("study", metavar="STUDY.yaml", help="study spec YAML (relative paths: from its folder; the "
                                                       "server must see the same paths)")
    add_server_option(s)
    s.add_argument("--priority", type=int, help="higher first (default 0)")
    s.add_argument("--wait", action="store_true", help="follow the study to its end; exit 1 if it fails or "
                                                      "is cancelled, else print the verdict")
    s.add_argument("--timeout", type=float, metavar="SECONDS", help="with --wait: give up after this long")
    s.add_argument("--export", metavar="OUT_DIR", help="download the recommended merge here once it completes (implies --wait)")
    s.add_argument("--json", action="store_true", help="print the result as JSON (stdout)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    s.set_defaults(func=submit)

    s = command("status", "state and progress of studies on a server (or of one local study)", STATUS)
    s.add_argument("study", metavar="STUDY", nargs="?", help="study name or id (local mode: YAML or name)")
    add_server_option(s)
    s.add_argument("--storage", metavar="URL", help="local mode: storage URL (default: the YAML's)")
    s.add_argument("--json", action="store_true", help="JSON instead of lines")
    s.set_defaults(func=status)
