"""python -m tests.keycloak_standin --host 127.0.0.1 --port PORT"""
import argparse

from werkzeug.serving import make_server

from .server import Standin


def main() -> None:
    parser = argparse.ArgumentParser(description="Keycloak stand-in for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = Standin(f"http://{args.host}:{args.port}")
    make_server(args.host, args.port, app, threaded=True).serve_forever()


if __name__ == "__main__":
    main()
