"""WebAssembly tools: manifests, the wasmtime sandbox, the per-tenant registry.

``ToolRegistry`` is the entry point (see registry.py); ``Sandbox`` compiles and
runs modules (sandbox.py, runtime.py, deadlines.py); ``ToolError`` is how every call fails.
"""

from antiphon.tools.capabilities import HttpPolicy
from antiphon.tools.errors import PermissionDenied, ToolError, ToolErrorKind
from antiphon.tools.manifest import ToolLimits, ToolManifest, load_manifest_file, parse_manifest
from antiphon.tools.registry import ToolInfo, ToolRegistry, ToolsDirError
from antiphon.tools.runtime import CallResult, HostContext
from antiphon.tools.sandbox import CompiledTool, Sandbox
from antiphon.tools.schema import ManifestError

__all__ = [
    "CallResult",
    "CompiledTool",
    "HostContext",
    "HttpPolicy",
    "ManifestError",
    "PermissionDenied",
    "Sandbox",
    "ToolError",
    "ToolErrorKind",
    "ToolInfo",
    "ToolLimits",
    "ToolManifest",
    "ToolRegistry",
    "ToolsDirError",
    "load_manifest_file",
    "parse_manifest",
]
