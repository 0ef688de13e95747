"""``dcoord status``: one line (or JSON) per status snapshot of a running job."""

from __future__ import annotations

import json

from dcoord.cli.options import address, positive_float


def cmd_status(args) -> int:
    from dcoord.errors import DcoordError
    from dcoord.runtime.client import watch_status
    from dcoord.runtime.security.options import security_from_args

    if not args.address:
        raise DcoordError("status: give the coordinator's HOST:PORT (or DCOORD_COORDINATOR)")
    security = security_from_args(args, "status")
    for st in watch_status(args.address, watch=args.watch, timeout=args.timeout, security=security):
        if args.json:
            print(json.dumps(st), flush=True)
        else:
            rejected, refused = sum(st["rejected"].values()), sum(st["refused"].values())
            print(f"{st['name']} [{st['job_id']}] {st['state']}: round {st['round'] + 1}/{st['rounds_total']} "
                  f"scheme {st['scheme']} workers {st['workers_alive']}/{st['workers_total']} "
                  f"loss {st['last_loss']:.5f} stragglers {st['stragglers_seen']} "
                  f"late {st['dropped_late_results']} rejected {rejected} refused {refused} "
                  f"elapsed {st['elapsed_s']:.1f}s"
                  + (f" ({st['message']})" if st["message"] else ""), flush=True)
    return 0


def register(sub) -> None:
    from dcoord.runtime.security.options import add_security_options, env

    sp = sub.add_parser("status", help="show a running job's status")
    sp.add_argument("address", type=address, nargs="?", default=env("DCOORD_COORDINATOR"),
                    help="coordinator HOST:PORT [DCOORD_COORDINATOR]")
    add_security_options(sp, "status")
    sp.add_argument("--watch", action="store_true", help="stream one line per round until the job ends")
    sp.add_argument("--json", action="store_true", help="print each snapshot as one line of JSON")
    sp.add_argument("--timeout", type=positive_float, default=5.0,
                    help="seconds to wait for the coordinator to answer [5]")
    sp.set_defaults(func=cmd_status)
