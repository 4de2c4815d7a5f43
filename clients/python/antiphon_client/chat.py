"""`antiphon chat`: an interactive or one-shot text conversation that prints tokens as they arrive."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from antiphon.v1 import events_pb2 as pb
from antiphon_client.client import AntiphonClient

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1:50051", help="server address (host:port)")
    parser.add_argument("-m", "--message", help="send one message, print the answer and exit")
    parser.add_argument("--session", default="", help="session id to continue (default: a new session)")
    parser.add_argument("--profile", default="", help="agent profile (default: the server's default)")
    parser.add_argument("--max-tokens", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stats", action="store_true", help="print usage and latency after each answer")


def _options(args: argparse.Namespace) -> pb.GenerationOptions:
    options = pb.GenerationOptions(max_tokens=args.max_tokens, temperature=args.temperature)
    if args.seed is not None:
        options.seed = args.seed
    return options


def _print_event(event: pb.ServerEvent, stats: bool) -> None:
    kind = event.WhichOneof("event")
    if kind == "agent_text":
        sys.stdout.write(event.agent_text.delta)
        sys.stdout.flush()
    elif kind == "error":
        print(f"\n[error {_CODE_NAMES.get(event.error.code, 'UNKNOWN')}] {event.error.message}", file=sys.stderr)
    elif kind == "tool_call":
        where = "client" if event.tool_call.runs_on == pb.ToolCall.RUNS_ON_CLIENT else "server"
        print(f"[tool {event.tool_call.name} ({where}) {event.tool_call.arguments_json}]", file=sys.stderr)
    elif kind == "tool_result":
        result = event.tool_result
        print(f"[tool result {'ok' if result.ok else 'error'}: {result.output_json or result.error}]", file=sys.stderr)
    elif kind == "turn_end":
        print()
        if stats:
            end = event.turn_end
            print(
                f"[{pb.TurnEnd.Reason.Name(end.reason)}"
                f" tokens in={end.usage.input_tokens} out={end.usage.output_tokens}"
                f" first_token={end.latency.first_token_ms:.0f}ms total={end.latency.total_ms:.0f}ms]",
                file=sys.stderr,
            )


async def run(args: argparse.Namespace) -> int:
    async with AntiphonClient(args.address) as client:
        try:
            await client.wait_ready(5.0)
        except TimeoutError:
            print(f"cannot reach an Antiphon server at {args.address}", file=sys.stderr)
            return 2
        if args.message:
            async for event in client.send(
                args.message, session_id=args.session, agent_profile=args.profile, generation=_options(args)
            ):
                _print_event(event, args.stats)
            return 0
        conv = await client.conversation(session_id=args.session, agent_profile=args.profile, generation=_options(args))
        print(f"session {conv.session_id} (Ctrl-D to quit)", file=sys.stderr)
        events = conv.events()
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, _prompt)
            if line is None:
                await conv.end()
                break
            if not line.strip():
                continue
            await conv.say(line)
            async for event in events:
                _print_event(event, args.stats)
                if event.WhichOneof("event") == "turn_end":
                    break
        return 0


def _prompt() -> str | None:
    try:
        return input("> ")
    except EOFError:
        return None


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except grpc.aio.AioRpcError as exc:
        print(f"[{exc.code().name}] {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
