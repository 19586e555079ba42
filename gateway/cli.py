"""`gatehouse`: the command-line client of the REST API.

Works from an author's or analyst's own machine. The server URL and API token come from
--server/--token, the environment (GATEHOUSE_URL, GATEHOUSE_TOKEN) or a config file
(~/.config/gatehouse/config.ini, section [gatehouse], keys url and token).
`workflow validate` runs locally and needs no server.

A token that is a JWT (a Keycloak access token) is sent as `Authorization: Bearer`, any other (the
dev login's API tokens) as `Authorization: Token`; --token-type, GATEHOUSE_TOKEN_TYPE or token_type=
in the config file say which when guessing will not do. Without a token, the tokens stored by
`gatehouse login` are used (and refreshed when they expire).

`gatehouse login` signs in with the OAuth 2.0 device authorization grant (RFC 8628): it prints a link
and a code to open in any browser, and keeps the tokens it gets in ~/.config/gatehouse/tokens.json
(mode 0600; GATEHOUSE_TOKEN_FILE elsewhere). The identity provider comes from --issuer/--client-id,
GATEHOUSE_OIDC_ISSUER/GATEHOUSE_OIDC_CLIENT_ID or issuer=/client_id= in the config file; the client
is a public client with the device grant enabled (the server's GATEHOUSE_KEYCLOAK_CLI_CLIENT_ID).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import configparser
import json
import os
import stat
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
DEFAULT_CLI_CLIENT_ID = "gatehouse-cli"
REFRESH_MARGIN_SECONDS = 30
LOGIN_AGAIN = "run `gatehouse login` to sign in again"
TERMINAL_RUN_STATES = {"SUCCEEDED", "FAILED", "REJECTED", "CANCELLED"}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


def _config_path() -> Path:
    return Path(os.environ.get("GATEHOUSE_CONFIG", Path.home() / ".config" / "gatehouse" / "config.ini"))


def _config_section() -> dict:
    parser = configparser.ConfigParser()
    path = _config_path()
    if path.exists():
        parser.read(path)
    return dict(parser["gatehouse"]) if parser.has_section("gatehouse") else {}


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts whose first is a JSON header naming an algorithm: a JWT, not an API token."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and "alg" in header


def _scheme(token: str, wanted: str | None) -> str:
    if wanted:
        scheme = {"bearer": "Bearer", "token": "Token"}.get(wanted.strip().lower())
        if scheme is None:
            raise CliError(f"token type {wanted!r}: bearer or token", EXIT_USAGE)
        return scheme
    return "Bearer" if looks_like_jwt(token) else "Token"


def _config(args) -> tuple[str, str, str]:
    """The server URL, the token and how to send it (Bearer or Token)."""
    section = _config_section()
    url = args.server or os.environ.get("GATEHOUSE_URL") or section.get("url") or "http://127.0.0.1:8000"
    token = args.token or os.environ.get("GATEHOUSE_TOKEN") or section.get("token")
    if token:
        wanted = args.token_type or os.environ.get("GATEHOUSE_TOKEN_TYPE") or section.get("token_type")
        return url.rstrip("/"), token, _scheme(token, wanted)
    stored = TokenStore().load()
    if stored is None:
        raise CliError("no API token: pass --token, set GATEHOUSE_TOKEN, put token= in " + str(_config_path())
                       + ", or run `gatehouse login`", EXIT_USAGE)
    return url.rstrip("/"), TokenStore().fresh_access_token(stored), "Bearer"


# -- `gatehouse login`: OAuth 2.0 device authorization grant, tokens kept in a 0600 file --------------


class TokenStore:
    def __init__(self) -> None:
        default = Path.home() / ".config" / "gatehouse" / "tokens.json"
        self.path = Path(os.environ.get("GATEHOUSE_TOKEN_FILE", default))

    def load(self) -> dict | None:
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CliError(f"{self.path} can be read by others: refusing to use it (chmod 600 it, or run "
                           "`gatehouse login` again)", EXIT_USAGE)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CliError(f"{self.path}: cannot read the stored login ({exc}); {LOGIN_AGAIN}") from None
        if not isinstance(data, dict) or not data.get("access_token"):
            raise CliError(f"{self.path}: no stored login; {LOGIN_AGAIN}")
        return data

    def save(self, data: dict) -> None:
        """Written to a new 0600 file in a 0700 folder, then moved over the old one."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as sink:
                json.dump(data, sink)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)

    def forget(self) -> bool:
        try:
            self.path.unlink()
            return True
        except FileNotFoundError:
            return False

    def fresh_access_token(self, data: dict) -> str:
        """The stored access token, refreshed first when it expires within REFRESH_MARGIN_SECONDS."""
        if time.time() < data.get("expires_at", 0) - REFRESH_MARGIN_SECONDS:
            return data["access_token"]
        if not data.get("refresh_token"):
            raise CliError(f"your login has expired; {LOGIN_AGAIN}")
        answer = _oauth_post(data["token_endpoint"], {"grant_type": "refresh_token", "client_id": data["client_id"],
                                                      "refresh_token": data["refresh_token"]})
        if "access_token" not in answer:
            why = answer.get("error_description") or answer.get("error")
            raise CliError(f"your login has expired or was ended ({why}); {LOGIN_AGAIN}")
        data = {**data, **_token_fields(answer)}
        self.save(data)
        return data["access_token"]


def _oauth_post(url: str, form: dict) -> dict:
    """A form POST to the identity provider; its JSON answer, errors included ({error, error_description})."""
    import requests

    try:
        response = requests.post(url, data=form, timeout=30)
    except requests.RequestException as exc:
        raise CliError(f"cannot reach the identity provider at {url}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise CliError(f"the identity provider answered {response.status_code} at {url}, not with JSON")
    if response.status_code >= 400 and "error" not in body:
        body["error"] = f"http_{response.status_code}"
    return body


def _token_fields(answer: dict) -> dict:
    now = int(time.time())
    fields = {"access_token": answer["access_token"], "expires_at": now + int(answer.get("expires_in", 60))}
    if answer.get("refresh_token"):
        fields["refresh_token"] = answer["refresh_token"]
        if answer.get("refresh_expires_in"):
            fields["refresh_expires_at"] = now + int(answer["refresh_expires_in"])
    return fields


def _claims(token: str) -> dict:
    """A JWT's claims, unverified: for showing who signed in, never for deciding anything."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}


def _discovery(issuer: str) -> dict:
    import requests

    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=30)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as exc:
        raise CliError(f"cannot read the identity provider's configuration at {url}: {exc}") from None


def cmd_login(args, out, err) -> int:
    section = _config_section()
    issuer = args.issuer or os.environ.get("GATEHOUSE_OIDC_ISSUER") or section.get("issuer")
    client_id = (args.client_id or os.environ.get("GATEHOUSE_OIDC_CLIENT_ID") or section.get("client_id")
                 or DEFAULT_CLI_CLIENT_ID)
    if not issuer:
        raise CliError("no identity provider: pass --issuer (e.g. https://id.example.org/realms/gatehouse), set "
                       f"GATEHOUSE_OIDC_ISSUER, or put issuer= in {_config_path()}", EXIT_USAGE)
    meta = _discovery(issuer)
    endpoint = meta.get("device_authorization_endpoint")
    if not endpoint:
        raise CliError(f"{issuer} offers no device login (no device_authorization_endpoint)")
    start = _oauth_post(endpoint, {"client_id": client_id, "scope": "openid profile email"})
    if "device_code" not in start:
        why = start.get("error_description") or start.get("error")
        raise CliError(f"the identity provider refused the login: {why}")
    link = start.get("verification_uri_complete") or start["verification_uri"]
    print(f"To sign in, open {link}\nand check that it shows the code {start['user_code']}.", file=err, flush=True)
    interval = max(int(start.get("interval", 5)), 1)
    deadline = time.monotonic() + int(start.get("expires_in", 600))
    while True:
        time.sleep(interval)
        if time.monotonic() > deadline:
            raise CliError("the login code expired before it was used; run `gatehouse login` again")
        answer = _oauth_post(meta["token_endpoint"], {
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": start["device_code"],
            "client_id": client_id})
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            raise CliError("the login was denied")
        if error == "expired_token":
            raise CliError("the login code expired before it was used; run `gatehouse login` again")
        if error or "access_token" not in answer:
            raise CliError(f"the identity provider refused the login: {answer.get('error_description') or error}")
        break
    store = TokenStore()
    store.save({"issuer": issuer, "client_id": client_id, "token_endpoint": meta["token_endpoint"],
                "end_session_endpoint": meta.get("end_session_endpoint", ""), **_token_fields(answer)})
    who = _claims(answer["access_token"]).get("preferred_username") or "?"
    print(f"logged in as {who}; tokens kept in {store.path}", file=out)
    return EXIT_OK


def cmd_logout(args, out, err) -> int:
    """Ends the identity provider's session of the stored login, and forgets its tokens."""
    store = TokenStore()
    try:
        data = store.load()
    except CliError:
        data = None
    if data and data.get("refresh_token") and data.get("end_session_endpoint"):
        import requests

        try:
            response = requests.post(data["end_session_endpoint"], timeout=30, data={
                "client_id": data["client_id"], "refresh_token": data["refresh_token"]})
            problem = f"answered {response.status_code}" if response.status_code >= 400 else ""
        except requests.RequestException as exc:
            problem = str(exc)
        if problem:
            print(f"gatehouse: could not end the identity provider's session ({problem}); the tokens are "
                  "forgotten here all the same", file=err)
    print("logged out" if store.forget() else "not logged in", file=out)
    return EXIT_OK


def _error_message(response) -> str:
    """The API's {code, message, detail} as a readable message (spec errors one per line)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    message = f"{body.get('message')} [{body.get('code')}]"
    if response.status_code == 401:
        message += ("\n  the server did not accept the credentials: check GATEHOUSE_TOKEN (and GATEHOUSE_TOKEN_TYPE)"
                    f" or {LOGIN_AGAIN}")
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
    def __init__(self, url: str, token: str, scheme: str = "Token"):
        import requests

        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"{scheme} {token}"
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


def _read_input(name: str | None):
    if not name:
        return None
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        return json.loads(text)
    except OSError as exc:
        raise CliError(f"{name}: {exc.strerror}", EXIT_USAGE) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"{name}: not valid JSON: {exc}", EXIT_USAGE) from None


def cmd_gate_document(args, out, err) -> int:
    """What deciding would sign: the exact document (RFC 8785 JSON), its key id and digest."""
    client = Client(*_config(args))
    value = _read_input(args.input)
    params = {"option": args.option}
    if value is not None:
        params["input"] = json.dumps(value)
    shown = client.request("GET", f"/gates/{args.gate_id}/document", params=params)
    print(shown["document"], file=out)
    print(f"key {shown['key_id']}  sha256 {shown['document_sha256']}", file=err)
    return EXIT_OK


def cmd_gate_receipt(args, out, err) -> int:
    client = Client(*_config(args))
    receipt = client.request("GET", f"/gates/{args.gate_id}/receipt")
    text = json.dumps(receipt, indent=2, sort_keys=True)
    if args.out:
        try:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{args.out}: {exc.strerror}", EXIT_USAGE) from None
        print(f"receipt of {args.gate_id} written to {args.out} (check it: gatehouse approval verify {args.out})",
              file=out)
    else:
        print(text, file=out)
    return EXIT_OK


def cmd_gate_decide(args, out, err) -> int:
    client = Client(*_config(args))
    value = _read_input(args.input)
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



# -- `gatehouse approval verify`: an approval receipt, offline (approvals/receipt_verify.py) -----------


def cmd_approval_verify(args, out, err) -> int:
    from approvals import receipt_verify

    try:
        with open(args.receipt, "rb") as fh:
            receipt = json.loads(fh.read())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {args.receipt}: {exc}", EXIT_USAGE) from None
    report = receipt_verify.verify_receipt(receipt)
    print(report.result_line(), file=out if report.ok else err)
    return EXIT_OK if report.ok else EXIT_ERROR


def _add_approval_commands(groups) -> None:
    approval = groups.add_parser("approval", help="signed gate decisions").add_subparsers(dest="command", required=True)
    p = approval.add_parser("verify", help="verify an approval receipt offline (exit 0 valid, 1 not, 2 usage)")
    p.add_argument("receipt", help="the receipt file (JSON)")
    p.set_defaults(func=cmd_approval_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse", description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="Gatehouse URL (default $GATEHOUSE_URL or http://127.0.0.1:8000)")
    parser.add_argument("--token",
                        help="API token or access token (default $GATEHOUSE_TOKEN, then `gatehouse login`'s)")
    parser.add_argument("--token-type", choices=["bearer", "token"], type=str.lower,
                        help="send the token as Bearer or Token (default $GATEHOUSE_TOKEN_TYPE, else a JWT is Bearer)")
    groups = parser.add_subparsers(dest="group", required=True)

    p = groups.add_parser("login", help="sign in with the identity provider (device login); keeps the tokens")
    p.add_argument("--issuer", help="the realm's issuer URL (default $GATEHOUSE_OIDC_ISSUER)")
    p.add_argument("--client-id",
                   help=f"the public client (default $GATEHOUSE_OIDC_CLIENT_ID or {DEFAULT_CLI_CLIENT_ID})")
    p.set_defaults(func=cmd_login)
    p = groups.add_parser("logout", help="end the stored login and forget its tokens")
    p.set_defaults(func=cmd_logout)

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
    p = gate.add_parser("document", help="show what deciding a gate would sign")
    p.add_argument("gate_id")
    p.add_argument("--option", required=True)
    p.add_argument("--input", help="JSON file with the form input ('-' for standard input)")
    p.set_defaults(func=cmd_gate_document)
    p = gate.add_parser("receipt", help="download a decided gate's receipt (verify it with `approval verify`)")
    p.add_argument("gate_id")
    p.add_argument("--out", help="write it to this file (default: standard output)")
    p.set_defaults(func=cmd_gate_receipt)

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
    _add_approval_commands(groups)
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
