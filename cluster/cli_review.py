"""``officeray review TASK --accept | --reject | --revise --feedback TEXT``: decide the results a task
escalated to a person (it waits in ``waiting_review``; :mod:`officeray.review`) with an approver's
(or an admin's) key, through ``POST /v1/tasks/{id}/review``. The server records the key's id as
``decided_by``; the first decision wins (a second one exits 1 with the server's 409)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cluster.cli_client import add_server_options, connect
from cluster.cli_output import EXIT_OK, UsageError
from officeray.config import Settings
from officeray.review import check_review_request

DECISION_FLAGS = {"accept": "--accept", "reject": "--reject", "revise": "--revise"}
"""The decision each flag stands for."""


def add_review_parser(sub: Any) -> None:
    """The ``review`` command."""
    review = sub.add_parser(
        "review", help="accept, reject or send back (--revise) the results a task escalated to a person"
    )
    review.add_argument("task_id", help="the task's id (it waits in waiting_review)")
    chosen = review.add_mutually_exclusive_group(required=True)
    for decision, flag in DECISION_FLAGS.items():
        chosen.add_argument(flag, dest="decision", action="store_const", const=decision)
    review.add_argument(
        "--feedback",
        default="",
        metavar="TEXT",
        help="why (reject), or what to change (required with --revise)",
    )
    review.add_argument("--json", action="store_true", help="print the stored decision as one JSON object")
    add_server_options(review)


def cmd_review(args: argparse.Namespace, settings: Settings) -> int:
    """Send the decision; a revise without feedback (or any decision the server would refuse as
    invalid) is a usage error (exit 2) before any request."""
    problem = check_review_request(args.decision, args.feedback)
    if problem is not None:
        raise UsageError(problem.replace("a revise decision", "--revise"))
    with connect(args, settings) as client:
        answer = client.decide_review(args.task_id, args.decision, args.feedback)
    if args.json:
        print(json.dumps(answer))
        return EXIT_OK
    said = f": {answer['feedback']}" if answer.get("feedback") else ""
    decision, by = answer.get("decision", args.decision), answer.get("decided_by")
    print(f"task {args.task_id}: review {decision} by {by}{said}")
    return EXIT_OK
