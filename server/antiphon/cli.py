"""Command line: `antiphon serve | models | chat | talk | keys | usage`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from antiphon.config import ConfigError, Settings, load_settings
from antiphon.errors import ModelMissing
from antiphon.preflight import StartupError

if TYPE_CHECKING:
    from antiphon.app import App

log = logging.getLogger("antiphon")


def _settings(args: argparse.Namespace) -> Settings:
    environ = dict(os.environ)
    if getattr(args, "host", None):
        environ["ANTIPHON_SERVER_HOST"] = args.host
    if getattr(args, "port", None) is not None:
        environ["ANTIPHON_SERVER_PORT"] = str(args.port)
    if getattr(args, "models_dir", None):
        environ["ANTIPHON_MODELS_DIR"] = args.models_dir
    return load_settings(args.config, environ)


def cmd_serve(args: argparse.Namespace) -> int:
    from antiphon.app import App
    from antiphon.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log.level, settings.log.format)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional speed-up; the asyncio default loop works too
        pass
    asyncio.run(_serve(App(settings)))
    return 0


async def _serve(app: App) -> None:
    try:
        await app.start()
    except (StartupError, ModelMissing) as exc:
        _cannot_start(exc.message)
    except Exception as exc:
        log.exception("start-up failed")
        _cannot_start(f"{type(exc).__name__}: {exc}", code=1)
    await app.serve_until_signalled()


def _cannot_start(message: str, *, code: int = 2) -> NoReturn:
    """Say why on one line and exit now: the failed start closed what it had opened, and the event
    loop's own teardown would wait for any task or thread a library left behind (a pod would sit
    Running instead of restarting)."""
    print(f"antiphon: cannot start: {message}", file=sys.stderr, flush=True)
    os._exit(code)


def cmd_models_prepare(args: argparse.Namespace) -> int:
    from antiphon.inference.prepare_embedder import prepare_embedder
    from antiphon.inference.prepare_llm import prepare_llm

    settings = _settings(args)
    path = prepare_llm(settings.models.path, force=args.force, threads=settings.models.llm_threads, progress=True)
    print(f"llm ready: {path}")
    path = prepare_embedder(settings.models.path, force=args.force, progress=True)
    print(f"embedder ready: {path}")
    if args.triton:
        from antiphon.inference.triton_repository import prepare_triton_repository

        repo = prepare_triton_repository(settings.models.path, Path(args.triton))
        print(f"triton model repository ready: {repo}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from antiphon.inference import prepare_embedder as emb
    from antiphon.inference import prepare_llm as llm

    models = _settings(args).models.path
    rows = [
        ("llm", llm.LLM_MODEL_NAME, llm.is_llm_prepared(models), llm.llm_model_dir(models)),
        ("embed", emb.EMBEDDER_MODEL_NAME, emb.is_embedder_prepared(models), emb.embedder_model_dir(models)),
    ]
    for capability, name, ready, path in rows:
        state = "ready" if ready else "missing (run `antiphon models prepare`)"
        print(f"{capability:6} {name:32} {state:10} {path}")
    return 0 if all(ready for *_, ready, _ in rows) else 1


def cmd_chat(args: argparse.Namespace) -> int:
    from antiphon_client.chat import main

    return main(args)


def cmd_talk(args: argparse.Namespace) -> int:
    from antiphon_client.talk import main

    return main(args)


# --- gateway: `antiphon keys ...`, `antiphon usage` ---
def cmd_keys(args: argparse.Namespace) -> int:
    from antiphon_client.keys import keys_main

    return keys_main(args, _settings(args))


def cmd_usage(args: argparse.Namespace) -> int:
    from antiphon_client.keys import usage_main

    return usage_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antiphon", description="Low-latency gRPC server for voice and text agents")
    parser.add_argument("--config", type=Path, help="TOML settings file (or ANTIPHON_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--models-dir")
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="prepare and list models").add_subparsers(
        dest="models_command", required=True
    )
    prepare = models.add_parser("prepare", help="convert the packaged model weights for the embedded backend")
    prepare.add_argument("--models-dir")
    prepare.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    prepare.add_argument("--triton", metavar="DIR", help="also write a Triton model repository to DIR")
    prepare.set_defaults(func=cmd_models_prepare)
    listing = models.add_parser("list", help="show which models are prepared")
    listing.add_argument("--models-dir")
    listing.set_defaults(func=cmd_models_list)

    from antiphon_client.chat import add_arguments

    chat = sub.add_parser("chat", help="talk to a running server (interactive, or -m for one message)")
    add_arguments(chat)
    chat.set_defaults(func=cmd_chat)

    from antiphon_client.talk import add_arguments as add_talk_arguments

    talk = sub.add_parser("talk", help="speak a WAV file (or the microphone) to a running server; save the answer")
    add_talk_arguments(talk)
    talk.set_defaults(func=cmd_talk)

    from antiphon_client.keys import add_keys_arguments, add_usage_arguments  # gateway

    keys = sub.add_parser("keys", help="create, list and revoke API keys (in the key store)")
    add_keys_arguments(keys)
    keys.set_defaults(func=cmd_keys)
    usage = sub.add_parser("usage", help="a tenant's usage and cost this month (asks a running server)")
    add_usage_arguments(usage)
    usage.set_defaults(func=cmd_usage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"antiphon: invalid setting {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
