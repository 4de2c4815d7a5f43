"""Which tools exist, for whom, and the checks around every call.

Two sources of tools:

- **Built-in tools**: the tools directory, read at start-up (``name.toml`` or
  ``name.json`` beside ``name.wasm``). Every tenant sees them; the API cannot
  replace or remove them.
- **Tenant tools**: registered over the API, stored under the storage
  directory (one folder per tenant: ``name.json`` records the manifest and
  points at ``name-<sha>.wasm``), reloaded at start-up. A tenant sees and
  calls only its own and the built-in ones.

Every call checks, in this order: the tool exists for the caller's tenant
(else not_found), the caller holds the manifest's ``required_role`` (else
PERMISSION_DENIED), the arguments are JSON and match the input schema (else
invalid_arguments, before any tool code runs); then the sandbox runs it, and
its output must match the output schema (else invalid_output).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antiphon.errors import AntiphonError, FailedPrecondition, ResourceExhausted, quote
from antiphon.gateway.context import remaining_s
from antiphon.gateway.principal import Principal
from antiphon.tools.capabilities import HttpPolicy
from antiphon.tools.deadlines import CallControl
from antiphon.tools.errors import PermissionDenied, ToolError
from antiphon.tools.manifest import ToolManifest, load_manifest_file, parse_manifest
from antiphon.tools.runtime import CallResult, HostContext
from antiphon.tools.sandbox import CompiledTool, Sandbox
from antiphon.tools.schema import ManifestError, dump_json, parse_json, validate

log = logging.getLogger(__name__)

MAX_ARGUMENTS_BYTES = 1024 * 1024
_SAFE_TENANT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_RECORD_VERSION = 1
_DENY_ALL = HttpPolicy()


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """A tool as ListTools shows it (the MCP tools/list shape, plus where it comes from)."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    builtin: bool

    def to_mcp(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputSchema": dict(self.input_schema)}


@dataclass(frozen=True, slots=True, eq=False)
class _Tool:
    manifest: ToolManifest
    compiled: CompiledTool
    builtin: bool

    @property
    def info(self) -> ToolInfo:
        m = self.manifest
        return ToolInfo(m.name, m.description, m.input_schema, self.builtin)


class ToolsDirError(FailedPrecondition):
    """The tools directory cannot be loaded; the message names the file."""


class ToolRegistry:
    """Built-in and per-tenant tools; register, list, invoke and remove them.

    ``storage_dir`` None keeps registrations in memory only. ``http_policies``
    maps a tenant to what its tools may fetch (absent: nothing).
    ``manage_role`` is the role RegisterTool and RemoveTool require.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        storage_dir: Path | None = None,
        tools_dir: Path | None = None,
        http_policies: Mapping[str, HttpPolicy] | None = None,
        default_http_policy: HttpPolicy | None = None,
        manage_role: str = "admin",
        max_tools_per_tenant: int = 256,
    ) -> None:
        self._sandbox = sandbox
        self._storage_dir = storage_dir
        self._tools_dir = tools_dir
        self._http_policies = dict(http_policies or {})
        self._default_http = default_http_policy or _DENY_ALL  # tenants without a policy of their own
        self._manage_role = manage_role
        self._max_tools_per_tenant = max_tools_per_tenant
        self._builtins: dict[str, _Tool] = {}
        self._tenants: dict[str, dict[str, _Tool]] = {}
        self._lock = asyncio.Lock()

    # -- start-up ------------------------------------------------------------------

    async def start(self) -> None:
        """Load the tools directory and the stored tenant tools (off the event loop)."""
        await asyncio.to_thread(self.load)

    def load(self) -> None:
        """Blocking form of ``start``. A broken tools directory raises ToolsDirError;
        a broken stored tool is logged and skipped (one tenant cannot stop the server)."""
        if self._tools_dir is not None:
            self._builtins = self._load_tools_dir(self._tools_dir)
        if self._storage_dir is not None:
            self._storage_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._tenants = self._load_storage(self._storage_dir)
        log.info(
            "tools: %d built-in, %d registered by %d tenants",
            len(self._builtins),
            sum(len(t) for t in self._tenants.values()),
            len(self._tenants),
        )

    def _load_tools_dir(self, directory: Path) -> dict[str, _Tool]:
        if not directory.exists():
            raise ToolsDirError(f"{directory}: the tools directory does not exist")
        if not directory.is_dir():
            raise ToolsDirError(f"{directory}: not a directory")
        if not os.access(directory, os.R_OK | os.X_OK):  # an unreadable folder would list as empty
            raise ToolsDirError(f"{directory}: the tools directory cannot be read")
        tools: dict[str, _Tool] = {}
        for path in sorted([*directory.glob("*.toml"), *directory.glob("*.json")]):
            try:
                manifest = load_manifest_file(path)
            except ManifestError as exc:
                raise ToolsDirError(exc.message) from None
            if manifest.name in tools:
                raise ToolsDirError(f"{path}: a second manifest for the tool {manifest.name!r}")
            wasm_path = path.with_suffix(".wasm")
            try:
                wasm = wasm_path.read_bytes()
            except OSError as exc:
                hint = " (build the tools: make -C tools)" if not wasm_path.exists() else ""
                raise ToolsDirError(f"{wasm_path}: cannot read the module: {exc.strerror}{hint}") from None
            try:
                tools[manifest.name] = self._compile(manifest, wasm, builtin=True)
            except AntiphonError as exc:
                raise ToolsDirError(f"{wasm_path}: {exc.message}") from None
        return tools

    def _load_storage(self, storage: Path) -> dict[str, dict[str, _Tool]]:
        tenants: dict[str, dict[str, _Tool]] = {}
        for record_path in sorted(storage.glob("*/*.json")):
            try:
                tenant, tool = self._load_record(record_path)
            except (OSError, ValueError, KeyError, TypeError, AntiphonError) as exc:
                log.error("skipping stored tool %s: %s", record_path, exc)
                continue
            tenants.setdefault(tenant, {})[tool.manifest.name] = tool
        for tenant, tools in tenants.items():
            shadowed = sorted(set(tools) & set(self._builtins))
            if shadowed:
                log.warning("tenant %r has tools named like built-in ones, which it shadows: %s", tenant, shadowed)
            self._remove_orphans(self._tenant_dir(tenant), tools)
        return tenants

    def _load_record(self, record_path: Path) -> tuple[str, _Tool]:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        tenant = record["tenant"]
        if not isinstance(tenant, str) or self._tenant_dir(tenant) != record_path.parent:
            raise ValueError("the record's tenant does not match its folder")
        manifest = parse_manifest(record["manifest"])
        module_file = record["module"]
        if module_file != _module_file(manifest.name, record["sha256"]):
            raise ValueError(f"unexpected module file name {module_file!r}")
        wasm = (record_path.parent / module_file).read_bytes()
        if hashlib.sha256(wasm).hexdigest() != record["sha256"]:
            raise ValueError(f"{module_file} does not match the recorded sha256")
        return tenant, self._compile(manifest, wasm, builtin=False)

    @staticmethod
    def _remove_orphans(folder: Path, tools: Mapping[str, _Tool]) -> None:
        referenced = {_module_file(t.manifest.name, t.compiled.sha256) for t in tools.values()}
        for path in folder.glob("*.wasm"):
            if path.name not in referenced:
                path.unlink(missing_ok=True)
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    # -- queries -------------------------------------------------------------------

    def list(self, principal: Principal) -> list[ToolInfo]:
        """The tools ``principal`` may call, by name: its tenant's and the built-in ones."""
        visible = {**self._builtins, **self._tenants.get(principal.tenant, {})}
        return [t.info for _, t in sorted(visible.items()) if _may_call(principal, t.manifest)]

    def manifest(self, principal: Principal, name: str) -> ToolManifest:
        return self._find(principal, name).manifest

    def _find(self, principal: Principal, name: str) -> _Tool:
        tool = self._tenants.get(principal.tenant, {}).get(name) or self._builtins.get(name)
        if tool is None:
            raise ToolError("not_found", f"no tool named {quote(name)}")
        return tool

    # -- calls ---------------------------------------------------------------------

    async def invoke(self, principal: Principal, name: str, arguments_json: str | bytes) -> CallResult:
        """Run a tool once, waiting at most its wall-clock limit (or the RPC's deadline), queueing included.

        Raises ToolError (see errors.py; SandboxBusy when no worker came free in time), or PermissionDenied.
        """
        tool = self._find(principal, name)
        if not _may_call(principal, tool.manifest):
            raise PermissionDenied(f"the tool {quote(name)} requires the role {tool.manifest.required_role!r}")
        if len(arguments_json) > MAX_ARGUMENTS_BYTES:
            raise ToolError("invalid_arguments", f"arguments: at most {MAX_ARGUMENTS_BYTES} bytes of JSON")
        host = HostContext(http=self._http_policies.get(principal.tenant, self._default_http))
        # One budget for waiting for a worker and running: the tool's limit, or the RPC's (or turn's) deadline.
        budget_s = tool.manifest.limits.wall_clock_ms / 1000
        rpc_left_s = remaining_s()
        if rpc_left_s is not None:
            budget_s = min(budget_s, rpc_left_s)
        return await self._sandbox.call(
            lambda control: self._call(tool, arguments_json, host, control), budget_s=budget_s
        )

    def _call(self, tool: _Tool, arguments_json: str | bytes, host: HostContext, control: CallControl) -> CallResult:
        # On a worker thread: schemas with costly patterns must not stall the event loop.
        manifest = tool.manifest
        text = arguments_json if arguments_json.strip() else "{}"
        arguments = parse_json(text, kind="invalid_arguments", where="arguments")
        validate(manifest.input_validator, arguments, kind="invalid_arguments", where="arguments")
        stdin = dump_json(arguments).encode()
        result = self._sandbox.run(tool.compiled, stdin, manifest.limits, host=host, control=control)
        try:
            validate(manifest.output_validator, result.output, kind="invalid_output", where="output")
        except ToolError as exc:
            raise ToolError(exc.kind, exc.message, fuel_used=result.fuel_used, duration_ms=result.duration_ms) from None
        return result

    # -- changes -------------------------------------------------------------------

    async def register(self, principal: Principal, manifest: ToolManifest, wasm: bytes) -> ToolInfo:
        """Add or replace one of the caller's tenant's tools; stored before it becomes visible."""
        self._require_manager(principal)
        if manifest.name in self._builtins:
            raise ManifestError(f"manifest.name: {manifest.name!r} is a built-in tool; choose another name")
        tool = await self._sandbox.submit(lambda _control: self._compile(manifest, wasm, builtin=False))
        async with self._lock:
            tools = self._tenants.get(principal.tenant, {})
            if manifest.name not in tools and len(tools) >= self._max_tools_per_tenant:
                raise ResourceExhausted(
                    f"the tenant already has {len(tools)} tools (at most {self._max_tools_per_tenant})",
                    retryable=False,
                )
            if self._storage_dir is not None:
                previous = tools.get(manifest.name)
                await asyncio.to_thread(self._store, principal.tenant, tool, wasm, previous)
            self._tenants[principal.tenant] = {**tools, manifest.name: tool}
        log.info("tenant %r registered tool %r (%s)", principal.tenant, manifest.name, tool.compiled.sha256[:12])
        return tool.info

    async def remove(self, principal: Principal, name: str) -> None:
        self._require_manager(principal)
        async with self._lock:
            tools = self._tenants.get(principal.tenant, {})
            tool = tools.get(name)
            if tool is None:
                if name in self._builtins:
                    raise PermissionDenied(f"{quote(name)} is a built-in tool: remove it from the tools directory")
                raise ToolError("not_found", f"no tool named {quote(name)}")
            if self._storage_dir is not None:
                await asyncio.to_thread(self._unstore, principal.tenant, tool)
            self._tenants[principal.tenant] = {k: v for k, v in tools.items() if k != name}
        log.info("tenant %r removed tool %r", principal.tenant, name)

    def _require_manager(self, principal: Principal) -> None:
        if self._manage_role not in principal.roles:
            raise PermissionDenied(f"registering and removing tools requires the role {self._manage_role!r}")

    def _compile(self, manifest: ToolManifest, wasm: bytes, *, builtin: bool) -> _Tool:
        compiled = self._sandbox.load(wasm, manifest.capabilities)
        if compiled.min_memory_bytes > manifest.limits.memory_bytes:
            need_mib = -(-compiled.min_memory_bytes // (1024 * 1024))
            raise ManifestError(f"manifest.limits.memory_mib: the module needs at least {need_mib} MiB at start")
        return _Tool(manifest, compiled, builtin)

    # -- storage -------------------------------------------------------------------

    def _tenant_dir(self, tenant: str) -> Path:
        if self._storage_dir is None:
            raise RuntimeError("no storage directory")
        if _SAFE_TENANT.fullmatch(tenant) and tenant not in (".", ".."):
            return self._storage_dir / tenant
        # Any other tenant id (slashes, unicode): a name that cannot collide with the safe ones.
        return self._storage_dir / ("~" + hashlib.sha256(tenant.encode()).hexdigest()[:32])

    def _store(self, tenant: str, tool: _Tool, wasm: bytes, previous: _Tool | None) -> None:
        folder = self._tenant_dir(tenant)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name, sha = tool.manifest.name, tool.compiled.sha256
        module_file = _module_file(name, sha)
        record = {
            "version": _RECORD_VERSION,
            "tenant": tenant,
            "sha256": sha,
            "module": module_file,
            "manifest": tool.manifest.to_dict(),
        }
        # The module first, then the record that points at it: a crash leaves the old tool or the new one.
        if not (folder / module_file).exists():
            _write_atomic(folder / module_file, wasm)
        _write_atomic(folder / f"{name}.json", json.dumps(record, indent=1).encode())
        if previous is not None and _module_file(name, previous.compiled.sha256) != module_file:
            (folder / _module_file(name, previous.compiled.sha256)).unlink(missing_ok=True)

    def _unstore(self, tenant: str, tool: _Tool) -> None:
        folder = self._tenant_dir(tenant)
        (folder / f"{tool.manifest.name}.json").unlink(missing_ok=True)
        (folder / _module_file(tool.manifest.name, tool.compiled.sha256)).unlink(missing_ok=True)


def _may_call(principal: Principal, manifest: ToolManifest) -> bool:
    return not manifest.required_role or manifest.required_role in principal.roles


def _module_file(name: str, sha256: str) -> str:
    return f"{name}-{sha256[:16]}.wasm"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
