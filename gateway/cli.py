"""`gatehouse`: the command-line client of the REST API.

Works from an author's or analyst's own machine. The server URL and API token come from
--server/--token, the environment (GATEHOUSE_URL, GATEHOUSE_TOKEN) or a config file
(~/.config/gatehouse/config.ini, section [gatehouse], keys url and token).
`workflow validate` runs locally and needs no server.
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
TERMINAL_RUN_STATES = {"SUCCEEDED", "FAILED", "REJECTED", "CANCELLED"}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


def _config(args) -> tuple[str, str]:
    path = Path(os.environ.get("GATEHOUSE_CONFIG", Path.home() / ".config" / "gatehouse" / "config.ini"))
    parser = configparser.ConfigParser()
    if path.exists():
        parser.read(path)
    section = parser["gatehouse"] if parser.has_section("gatehouse") else {}
    url = args.server or os.environ.get("GATEHOUSE_URL") or section.get("url") or "http://127.0.0.1:8000"
    token = args.token or os.environ.get("GATEHOUSE_TOKEN") or section.get("token")
    if not token:
        raise CliError("no API token: pass --token, set GATEHOUSE_TOKEN, or put token= in " + str(path), EXIT_USAGE)
    return url.rstrip("/"), token


def _error_message(response) -> str:
    """The API's {code, message, detail} as a readable message (spec errors one per line)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    message = f"{body.get('message')} [{body.get('code')}]"
    detail = body.get("detail")
    if isinstance(detail, list):
        message += "".join(
            f"\n  line {d.get('line', '?')}: task {d.get('task') or '-'}: {d.get('message', d)}"
            if isinstance(d, dict) else f"\n  {d}"
            for d in detail
        )
    elif detail:
        message += f"\n  {json.dumps(detail)}"
    return message


class Client:
    def __init__(self, url: str, token: str):
        import requests

        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"
        self.session.headers["Accept"] = "application/json"

    def send(self, method: str, path: str, *, timeout: float = 60, **kwargs):
        """The raw response of a call; an error status becomes a CliError with the API's code."""
        import requests

        try:
            response = self.session.request(method, self.url + "/api/v1" + path, timeout=timeout, **kwargs)
        except requests.RequestException as exc:
            raise CliError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise CliError(f"error {response.status_code}: {_error_message(response)}")
        return response

    def request(self, method: str, path: str, **kwargs):
        response = self.send(method, path, **kwargs)
        return response.json() if response.content else None


def _print_run(run: dict, out) -> None:
    print(f"run {run['id']}  {run['name']}  {run['state']}" + (f"  ({run['reason']})" if run.get("reason") else ""), file=out)
    for task in run.get("tasks", []):
        line = f"  {task['key']:<28} {task['kind']:<5} {task['state']:<18}"
        if task.get("attempt", 0) > 1:
            line += f" attempt {task['attempt']}"
        if task.get("reason"):
            line += f" {task['reason']}"
        print(line.rstrip(), file=out)


def cmd_workflow_validate(args, out, err) -> int:
    from gateway.spec.cli import validate_command

    return validate_command(args.file, stdout=out, stderr=err)


def cmd_run_submit(args, out, err) -> int:
    client = Client(*_config(args))
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}", EXIT_USAGE) from None
    run = client.request("POST", "/runs", data=data, params={"filename": path.name},
                         headers={"Content-Type": "application/yaml"})
    if args.json:
        print(json.dumps(run, indent=2), file=out)
    else:
        print(run["id"], file=out)
    return EXIT_OK


def cmd_run_status(args, out, err) -> int:
    client = Client(*_config(args))
    last = None
    while True:
        run = client.request("GET", f"/runs/{args.run_id}")
        if args.json:
            print(json.dumps(run, indent=2), file=out)
        elif args.watch:
            snapshot = json.dumps([run["state"]] + [(t["key"], t["state"], t["attempt"]) for t in run["tasks"]])
            if snapshot != last:
                counts = ", ".join(f"{k} {v}" for k, v in sorted(run["counts"].items()))
                print(f"[{time.strftime('%H:%M:%S')}] {counts}", file=out)
                _print_run(run, out)
                last = snapshot
        else:
            _print_run(run, out)
        if not args.watch or run["state"] in TERMINAL_RUN_STATES:
            break
        time.sleep(args.interval)
    return EXIT_OK if run["state"] in {"SUCCEEDED", "RUNNING"} else EXIT_ERROR


def cmd_run_cancel(args, out, err) -> int:
    client = Client(*_config(args))
    run = client.request("POST", f"/runs/{args.run_id}/cancel", json={"reason": args.reason})
    _print_run(run, out)
    return EXIT_OK


def cmd_run_list(args, out, err) -> int:
    client = Client(*_config(args))
    page = client.request("GET", "/runs", params={"limit": args.limit})
    for run in page["results"]:
        print(f"{run['id']}  {run['state']:<10} {run['name']}  {run['created_at']}", file=out)
    return EXIT_OK


def cmd_gate_list(args, out, err) -> int:
    client = Client(*_config(args))
    page = client.request("GET", "/gates", params={"scope": "all" if args.all else "awaiting"})
    if args.json:
        print(json.dumps(page["results"], indent=2), file=out)
        return EXIT_OK
    if not page["results"]:
        print("no gates awaiting your decision" if not args.all else "no gates", file=out)
    for gate in page["results"]:
        options = "/".join(o["name"] for o in gate["options"])
        print(f"{gate['id']}  {gate['state']:<9} {gate['title']}  [{gate['classification']}]  options: {options}"
              f"  approvals {gate['approvals']}/{gate['required_approvals']}", file=out)
    return EXIT_OK


def cmd_gate_decide(args, out, err) -> int:
    client = Client(*_config(args))
    value = None
    if args.input:
        try:
            text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
            value = json.loads(text)
        except OSError as exc:
            raise CliError(f"{args.input}: {exc.strerror}", EXIT_USAGE) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CliError(f"{args.input}: not valid JSON: {exc}", EXIT_USAGE) from None
    decision = client.request("POST", f"/gates/{args.gate_id}/decide",
                              json={"option": args.option, "input": value, "comment": args.comment})
    print(f"decided {args.gate_id}: {decision['option']} ({decision['outcome']})", file=out)
    return EXIT_OK


def _progress(out, done: int, total: int | None, unit: str) -> None:
    if total:
        filled = int(30 * done / total) if total else 0
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,} {unit}", end="", file=out, flush=True)
    else:
        print(f"\r{done:,} {unit}", end="", file=out, flush=True)


def cmd_audit_export(args, out, err) -> int:
    import tarfile

    client = Client(*_config(args))
    target = Path(args.out)
    if target.exists() and any(target.iterdir()):
        raise CliError(f"{target} is not empty", EXIT_USAGE)
    params = {k: v for k, v in {"tenant": args.tenant, "since": args.since, "until": args.until}.items() if v}
    response = client.send("GET", "/audit/export", params=params, stream=True, timeout=3600)
    entries = int(response.headers.get("X-Audit-Entries", "0"))
    print(f"exporting {entries:,} entries (positions {response.headers.get('X-Audit-Range')}, "
          f"checkpoint {response.headers.get('X-Audit-Checkpoint-Size')})", file=err)
    target.mkdir(parents=True, exist_ok=True)
    received = 0

    class Counting:
        def __init__(self, raw):
            self.raw = raw

        def read(self, n=-1):
            nonlocal received
            chunk = self.raw.read(n)
            received += len(chunk)
            _progress(err, received // 1024, None, "KiB received")
            return chunk

    response.raw.decode_content = True
    with tarfile.open(fileobj=Counting(response.raw), mode="r|gz") as tar:
        for member in tar:
            name = Path(member.name)
            if not member.isfile() and not member.isdir() or name.is_absolute() or ".." in name.parts:
                raise CliError(f"refusing unsafe archive member {member.name!r}")
            parts = name.parts[1:]  # drop the archive's top folder
            if not parts:
                continue
            dest = target.joinpath(*parts)
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            with open(dest, "wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
    print(file=err)
    print(f"bundle written to {target}; check it with: gatehouse audit verify {target}", file=out)
    return EXIT_OK


def cmd_audit_verify(args, out, err) -> int:
    from audit import verifier

    argv = [args.directory]
    for key in args.trusted_key or []:
        argv += ["--trusted-key", key]
    if args.trusted_checkpoint:
        argv += ["--trusted-checkpoint", args.trusted_checkpoint]
    return verifier.main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse", description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="Gatehouse URL (default $GATEHOUSE_URL or http://127.0.0.1:8000)")
    parser.add_argument("--token", help="API token (default $GATEHOUSE_TOKEN)")
    groups = parser.add_subparsers(dest="group", required=True)

    workflow = groups.add_parser("workflow", help="workflow files").add_subparsers(dest="command", required=True)
    p = workflow.add_parser("validate", help="check a workflow file locally (exit 0 valid, 2 invalid)")
    p.add_argument("file")
    p.set_defaults(func=cmd_workflow_validate)

    run = groups.add_parser("run", help="runs").add_subparsers(dest="command", required=True)
    p = run.add_parser("submit", help="submit a workflow file; prints the run id")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run_submit)
    p = run.add_parser("status", help="a run's state and its tasks")
    p.add_argument("run_id")
    p.add_argument("--watch", action="store_true", help="follow until the run ends")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run_status)
    p = run.add_parser("cancel", help="cancel a run")
    p.add_argument("run_id")
    p.add_argument("--reason", default="cancelled from the command line")
    p.set_defaults(func=cmd_run_cancel)
    p = run.add_parser("list", help="recent runs")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_run_list)

    gate = groups.add_parser("gate", help="human gates").add_subparsers(dest="command", required=True)
    p = gate.add_parser("list", help="gates awaiting my decision")
    p.add_argument("--all", action="store_true", help="every gate of my tenant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gate_list)
    p = gate.add_parser("decide", help="decide a gate")
    p.add_argument("gate_id")
    p.add_argument("--option", required=True)
    p.add_argument("--input", help="JSON file with the form input ('-' for standard input)")
    p.add_argument("--comment", default="")
    p.set_defaults(func=cmd_gate_decide)

    audit = groups.add_parser("audit", help="the audit log").add_subparsers(dest="command", required=True)
    p = audit.add_parser("export", help="download a signed audit bundle (auditors)")
    p.add_argument("--out", required=True, help="an empty or new directory")
    p.add_argument("--tenant", help="one tenant's log (platform auditors; tenant auditors get their own)")
    p.add_argument("--since", help="ISO 8601 time, e.g. 2026-11-01T00:00:00Z")
    p.add_argument("--until", help="ISO 8601 time")
    p.set_defaults(func=cmd_audit_export)
    p = audit.add_parser("verify", help="verify a bundle offline (exit 0 valid, 1 tampered, 2 usage)")
    p.add_argument("directory")
    p.add_argument("--trusted-key", action="append", help="a verifier key string (or a file holding one) to trust")
    p.add_argument("--trusted-checkpoint", help="a checkpoint saved from an earlier export")
    p.set_defaults(func=cmd_audit_verify)
    return parser


def main(argv: list[str] | None = None, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, out, err)
    except CliError as exc:
        print(f"gatehouse: {exc}", file=err)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
