"""`antiphon keys create|list|revoke` and `antiphon usage`.

``keys`` works on the key store itself (the JSON file, or Redis when
context.sessions = "redis"), so the first admin key can be created before any
key exists; a running server sees the change on its next call. ``usage`` asks a
running server (Admin.GetUsage), since usage may live only in that process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc

from antiphon.config import Settings
from antiphon.v1 import admin_pb2, admin_pb2_grpc
from antiphon_client.client import auth_metadata

if TYPE_CHECKING:
    from antiphon.gateway.keys import KeyStore


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="issue an API key (its secret is printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", action="append", required=True, help="a role from auth.role_methods (repeatable)")
    create.add_argument("--label", action="append", default=[], help="an ACL label it may read (default: public)")
    create.add_argument("--subject", default="", help="who uses it (default: key:<id>)")
    create.add_argument("--description", default="")
    listing = sub.add_parser("list", help="list API keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys (default: every tenant)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = sub.add_parser("revoke", help="revoke an API key; it fails from the next call on")
    revoke.add_argument("key_id")


def add_usage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1:50051", help="server address (host:port)")
    parser.add_argument("--tenant", default="", help="default: the caller's tenant")
    parser.add_argument("--period", default="", help="YYYY-MM (default: this month, UTC)")
    parser.add_argument("--api-key", help="or ANTIPHON_API_KEY")
    parser.add_argument("--token", help="a JWT, or ANTIPHON_TOKEN")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _store(settings: Settings) -> KeyStore:
    from antiphon.gateway.keys import FileKeyStore
    from antiphon.gateway.redis_keys import RedisKeyStore

    c = settings.context
    if c.sessions == "redis":
        return RedisKeyStore(c, prefix=c.redis_prefix, cache_ms=0)
    return FileKeyStore(settings.auth.keys_file)


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if us else "-"


async def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from antiphon.errors import AntiphonError
    from antiphon.gateway.keys import new_key
    from antiphon.gateway.rbac import Policy

    store = _store(settings)
    try:
        if args.keys_command == "create":
            known = Policy.from_settings(settings.auth).roles
            unknown = sorted(set(args.role) - known)
            if unknown:
                print(f"antiphon: --role {unknown[0]!r} is not in auth.role_methods/role_actions", file=sys.stderr)
                return 2
            text, record = new_key(args.tenant, args.role, args.label, args.subject, args.description)
            await store.add(record)
            print(f"key id:  {record.key_id}\ntenant:  {record.tenant}\nroles:   {', '.join(sorted(record.roles))}")
            print(f"labels:  {', '.join(sorted(record.labels))}\n\n{text}\n")
            print("Store this key now: it is not shown again (only its SHA-256 digest is kept).", file=sys.stderr)
            return 0
        if args.keys_command == "list":
            keys = [k for k in await store.list(args.tenant) if args.all or not k.revoked]
            print(f"{'KEY ID':16}  {'TENANT':16}  {'ROLES':16}  {'CREATED':20}  {'REVOKED':20}  SUBJECT")
            for k in keys:
                roles = ",".join(sorted(k.roles))
                print(
                    f"{k.key_id:16}  {k.tenant:16}  {roles:16}  {_when(k.created_us):20}  "
                    f"{_when(k.revoked_us):20}  {k.subject}"
                )
            return 0
        revoked = await store.revoke(args.key_id)
        if revoked is None:
            print(f"antiphon: no key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {revoked.key_id} (tenant {revoked.tenant}) at {_when(revoked.revoked_us)}")
        return 0
    except AntiphonError as exc:
        print(f"antiphon: {exc.message}", file=sys.stderr)
        return 2
    finally:
        await store.aclose()


def keys_main(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_keys(args, settings))


async def _usage(args: argparse.Namespace) -> int:
    metadata = auth_metadata(args.api_key, args.token)
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            r = await stub.GetUsage(
                admin_pb2.GetUsageRequest(tenant=args.tenant, period=args.period), metadata=metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            print(f"antiphon: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    rows = [
        ("tenant", r.tenant),
        ("period", r.period),
        ("input_tokens", r.input_tokens),
        ("output_tokens", r.output_tokens),
        ("audio_in_seconds", round(r.audio_in_seconds, 3)),
        ("audio_out_seconds", round(r.audio_out_seconds, 3)),
        ("tool_calls", r.tool_calls),
        ("tool_fuel", r.tool_fuel),
        ("embeddings", r.embeddings),
        ("stored_bytes", r.stored_bytes),
        ("cost", round(r.cost, 6)),
        ("currency", r.currency),
        ("monthly_budget", r.monthly_budget),
        ("budget_exhausted", r.budget_exhausted),
    ]
    if args.json:
        print(json.dumps(dict(rows)))
    else:
        for name, value in rows:
            print(f"{name:18} {value}")
    return 0


def usage_main(args: argparse.Namespace) -> int:
    return asyncio.run(_usage(args))
