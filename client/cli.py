"""`quarry` (or `python -m client`): the Quarry command line on top of `QuarryClient`.

    quarry ingest PATH... --collection C [--wait]      (bulk upload, waits, reports failures)
    quarry ask "question" --top-k 5 [--collection C]
    quarry jobs JOB_ID [--wait]
    quarry jobs list [--state S] [--kind K] [--collection C] [--limit N]
    quarry jobs watch JOB_ID                            (each change as it happens, until the job ends)
    quarry collections

Human output by default, `--json` for scripts. `QUARRY_URL` and `QUARRY_API_KEY` set the defaults.
`make` installs the command into the project's virtualenv; `pip install -e .` elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import requests
from tqdm import tqdm

from client.bulk import main as bulk_load
from client.http import Job, QuarryClient, QuarryError

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def connection_options(top_level: bool) -> argparse.ArgumentParser:
    """--url, --api-key, --json: defaults at the top level; after the command they only override."""
    defaults: dict[str, Any] = {
        "url": os.environ.get("QUARRY_URL", "http://127.0.0.1:8000"),
        "api_key": os.environ.get("QUARRY_API_KEY"),
        "json": False,
    }
    if not top_level:
        defaults = dict.fromkeys(defaults, argparse.SUPPRESS)
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", default=defaults["url"], help="or $QUARRY_URL")
    options.add_argument("--api-key", default=defaults["api_key"], help="or $QUARRY_API_KEY")
    options.add_argument("--json", action="store_true", default=defaults["json"], help="output for scripts")
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quarry", description=__doc__.splitlines()[0], parents=[connection_options(top_level=True)]
    )
    common = connection_options(top_level=False)
    sub = parser.add_subparsers(dest="command", required=True)
    # Everything after `ingest` is the bulk loader's (main passes it on), `--help` included
    sub.add_parser("ingest", help="upload files or directories (the bulk loader)", add_help=False)
    ask = sub.add_parser("ask", help="ask a question and print the ranked passages", parents=[common])
    ask.add_argument("question")
    ask.add_argument("--top-k", type=int)
    ask.add_argument("--collection")
    ask.add_argument("--no-rerank", action="store_true")
    ask.add_argument("--timeout", type=float, default=300.0)
    jobs = sub.add_parser("jobs", help="show a job, `list` this key's jobs, or `watch` one", parents=[common])
    jobs.add_argument("job_id", help="a job id, `list`, or `watch` followed by a job id")
    jobs.add_argument("watched", nargs="?", help="the job id after `watch`")
    jobs.add_argument("--wait", action="store_true", help="wait until it ends")
    jobs.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    jobs.add_argument("--kind", choices=("ingest", "ask", "delete"))
    jobs.add_argument("--collection")
    jobs.add_argument("--limit", type=int, default=20, help="jobs to list at most (20)")
    sub.add_parser("collections", help="list collections", parents=[common])
    return parser


def wait_with_progress(client: QuarryClient, job_id: str, timeout: float, show: bool) -> Job:
    """Follow the job (events, or long-poll); a progress bar on stderr while a person is watching."""
    with tqdm(total=None, desc=job_id[:8], unit="doc", disable=not show, file=sys.stderr) as bar:

        def update(job: Job) -> None:
            bar.total = job.progress.get("total") or bar.total
            bar.n = job.progress.get("done", 0)
            bar.set_postfix_str(job.state)

        return client.watch(job_id, timeout=timeout, on_update=update)


def print_answer(job: Job) -> None:
    passages = (job.result or {}).get("passages", [])
    if not passages:
        print("no passages found")
    for rank, passage in enumerate(passages, 1):
        score = passage.get("scores", {}).get("final")
        shown = f"score {score:.4f}" if isinstance(score, float | int) else "no score"
        title = f" — {passage['title']}" if passage.get("title") else ""
        print(f"{rank:>2}. {passage['doc_id']}{title}  ({shown})")
        print(textwrap.indent(textwrap.shorten(passage.get("text", ""), 300), "    "))


def print_job(job: Job) -> None:
    print(f"{job.job_id}  {job.kind}  {job.state}  progress {json.dumps(job.progress)}")
    if job.error:
        print(f"error: {job.error}")


def output(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    """`--json` prints the data for scripts; otherwise the human rendering."""
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        human()


def run_ask(client: QuarryClient, args: argparse.Namespace) -> int:
    rerank = False if args.no_rerank else None
    job_id = client.ask(args.question, top_k=args.top_k, collection=args.collection, rerank=rerank)
    job = wait_with_progress(client, job_id, args.timeout, show=not args.json and sys.stderr.isatty())
    human = print_answer if job.state == "succeeded" else print_job
    output(args.json, dataclasses.asdict(job), lambda: human(job))
    return EXIT_OK if job.state == "succeeded" else EXIT_FAILED


def run_jobs(client: QuarryClient, args: argparse.Namespace) -> int:
    if args.job_id == "watch":
        return run_job_watch(client, args)
    if args.watched:
        print(f"error: unexpected argument {args.watched!r} (only `watch` takes a job id)", file=sys.stderr)
        return EXIT_ERROR
    if args.job_id == "list":
        return run_job_list(client, args)
    show = not args.json and sys.stderr.isatty()
    job = wait_with_progress(client, args.job_id, 3600.0, show) if args.wait else client.job(args.job_id)
    output(args.json, dataclasses.asdict(job), lambda: print_job(job))
    return EXIT_FAILED if job.state == "failed" else EXIT_OK


def run_job_list(client: QuarryClient, args: argparse.Namespace) -> int:
    size = min(max(args.limit, 1), 100)  # the server's largest page
    found = client.jobs(state=args.state, kind=args.kind, collection=args.collection, page_size=size)
    listed = list(itertools.islice(found, max(args.limit, 0)))

    def human() -> None:
        for job in listed:
            print(f"{job.job_id}  {job.kind:<7} {job.state:<10} {job.collection or '-':<24} {job.created_at}")

    output(args.json, {"items": [dataclasses.asdict(job) for job in listed]}, human)
    return EXIT_OK


def run_job_watch(client: QuarryClient, args: argparse.Namespace) -> int:
    """One line per change (`--json`: one JSON object per line), then the job's end decides the exit."""
    if not args.watched:
        print("error: `quarry jobs watch` needs a job id", file=sys.stderr)
        return EXIT_ERROR

    def show(job: Job) -> None:
        if args.json:
            print(json.dumps(dataclasses.asdict(job)), flush=True)
        else:
            print_job(job)
            sys.stdout.flush()

    job = client.watch(args.watched, on_update=show)
    return EXIT_FAILED if job.state == "failed" else EXIT_OK


def run_collections(client: QuarryClient, args: argparse.Namespace) -> int:
    items = client.collections()

    def human() -> None:
        for item in items:
            print(f"{item['name']:<32} {item['documents']:>8} documents {item['chunks']:>9} chunks")

    output(args.json, {"items": items}, human)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "ingest":
        extra = ["--api-key", args.api_key] if args.api_key else []
        # The loader waits unless --no-wait, and calls the URL --api; options given here come last and win.
        rest = ["--api" if arg == "--url" else arg for arg in unknown if arg != "--wait"]
        return bulk_load(["--api", args.url, *extra, *(["--json"] if args.json else []), *rest])
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    client = QuarryClient(args.url, api_key=args.api_key)
    commands = {"ask": run_ask, "jobs": run_jobs, "collections": run_collections}
    try:
        return commands[args.command](client, args)
    except QuarryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except requests.RequestException as exc:
        print(f"error: cannot reach {args.url}: {type(exc).__name__}", file=sys.stderr)
        return EXIT_ERROR
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
