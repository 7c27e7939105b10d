"""Flow label: the labelling loop with Label Studio (token in LABEL_STUDIO_API_KEY).

    python -m flows.label push             # advise's label_next.csv -> project "<model>: label next"
    python -m flows.label push --review    # suspect_labels.csv -> project "<model>: label next: review"
    python -m flows.label pull             # finished annotations -> data/labels/label_studio.csv (dvc add)
    python -m flows.label pull --retrain   # ... then retrain (python -m flows.retrain run)
"""

from __future__ import annotations

import argparse

from prefect import flow, get_run_logger

from pipeline_lib.config import load_params
from pipeline_lib.locks import exclusive
from pipeline_lib.paths import Paths
from tasks.dvc import track
from tasks.label import connect_task, pull_task, push_task


@flow(name="label-push")
def label_push(root: str | None = None, review: bool = False, new_classes: bool = False) -> dict:
    paths = Paths.for_root(root)
    params = load_params(paths.root)
    client = connect_task(params.label.url)
    result = push_task(params, paths, client, review, new_classes)
    get_run_logger().info("push: %s", result)
    return result


@flow(name="label-pull")
def label_pull(root: str | None = None, new_classes: bool = False, retrain: bool = False) -> dict:
    paths = Paths.for_root(root)
    params = load_params(paths.root)
    with exclusive(paths.label_lock, "label pull"):
        client = connect_task(params.label.url)
        result = pull_task(params, paths, client, new_classes)
        if result["status"] == "written":
            result["dvc_tracked"] = track(paths.root, paths.resolve(result["file"]))
    if retrain and result["status"] == "written":
        from flows.retrain import retrain as retrain_flow

        result["retrain"] = retrain_flow(root=str(paths.root))
    get_run_logger().info("pull: %s", {k: v for k, v in result.items() if k != "round"})
    return result


def _print_push(r: dict) -> None:
    print(f"{r['sent']} new task(s) sent to {r['project']!r} ({r['already_there']} already there, "
          f"{r['already_labelled']} already labelled); answers pre-filled by {r['model_version']}")
    print(f"open: {r['url']}")


def _print_pull(r: dict) -> None:
    print(f"pull: {r['status']}: {r['labels']} new label(s), {r['fixes']} fix(es), {r['confirmed']} confirmed -> {r['file']}")
    for key, what in (("skipped", "skipped or cancelled"), ("disagree", "annotators disagree"),
                      ("unknown_class", "a class the data set does not have (pull --new-classes accepts it)"),
                      ("gone", "the item is no longer in the data")):
        for t in r[key]:
            print(f"  not taken: task {t['task_id']} ({t['project']}): {what}"
                  + (f": {t.get('label') or ', '.join(t.get('answers', []))}" if t.get("label") or t.get("answers") else ""))
    if r["status"] == "written" and "retrain" not in r:
        folder = r["file"].rsplit("/", 1)[0]
        tracked = (f"git add {r['file']}.dvc {folder}/rounds.jsonl {folder}/.gitignore && git commit; "
                   if r.get("dvc_tracked") else "")
        print(f"next: {tracked}dvc repro (or python -m flows.retrain run) trains with them")


if __name__ == "__main__":
    from flows._cli import run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_push = sub.add_parser("push", help="send what to label next (or --review: suspicious labels) to Label Studio")
    p_push.add_argument("--review", action="store_true", help="send reports/suspect_labels.csv to the review project")
    p_push.add_argument("--new-classes", action="store_true", help="accept a project that offers classes the data "
                                                                   "set does not have yet")
    p_pull = sub.add_parser("pull", help="bring finished annotations back as a versioned labels file")
    p_pull.add_argument("--new-classes", action="store_true", help="accept labels of classes the data set does not "
                                                                   "have (a new class needs data.min_per_class labels)")
    p_pull.add_argument("--retrain", action="store_true", help="retrain at once when labels changed")
    args = parser.parse_args()
    if args.command == "push":
        _print_push(run(label_push, review=args.review, new_classes=args.new_classes))
    else:
        _print_pull(run(label_pull, new_classes=args.new_classes, retrain=args.retrain))
