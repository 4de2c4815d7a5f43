"""Stage-2 VAD: Silero VAD v6 as an ONNX Runtime model.

The model file ships in the PyPI package `silero-vad` (6.2.3). Importing that
package imports torch, so we only locate its data directory with
`importlib.util.find_spec` and load `data/silero_vad.onnx` with onnxruntime.

Model I/O (read from the model and its reference wrapper `OnnxWrapper` in
`silero_vad/utils_vad.py`): inputs `input[B, T]` float32, `state[2, B, 128]`
float32, `sr` int64 scalar; outputs `output[B, 1]` (speech probability) and
`stateN` (the next state). At 16 kHz a call takes a 512-sample window PLUS the
last 64 samples of the previous window as context (T = 576; zeros before the
first window), and the state is carried from call to call.

One `SileroVad` holds the InferenceSession (one intra-op thread: 150-166 us per
window, two threads gain nothing); each audio stream opens its own
`SileroStream` with its own state and context. `probability` is synchronous, to
run on an executor thread (onnxruntime releases the GIL during `run`); a stream
must not be used from two threads at once, different streams may.
"""

from __future__ import annotations

import abc
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from antiphon.errors import InvalidArgument, ModelMissing, Unavailable

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 512  # 32 ms at 16 kHz
CONTEXT_SAMPLES = 64
WINDOW_MS = WINDOW_SAMPLES * 1000 // SAMPLE_RATE
STATE_SIZE = 128
MODEL_PACKAGE = "silero-vad"
MODEL_VERSION = "6.2.3"
MODEL_FILE = "silero_vad.onnx"
INSTALL_HINT = f"pip install --no-deps {MODEL_PACKAGE}=={MODEL_VERSION}"

Window = npt.NDArray[np.float32]


def silero_model_path() -> Path:
    """The ONNX file inside the installed `silero-vad` package, without importing it."""
    try:
        spec = importlib.util.find_spec("silero_vad")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "data" / MODEL_FILE
        if path.is_file():
            return path
    if not locations:
        raise ModelMissing(f"the Silero VAD model is missing: the package is not installed; run `{INSTALL_HINT}`")
    raise ModelMissing(f"the Silero VAD model is missing: no data/{MODEL_FILE} in {locations[0]}; run `{INSTALL_HINT}`")


class VadStream(abc.ABC):
    """Speech probability of consecutive windows of one audio stream."""

    @abc.abstractmethod
    def probability(self, window: Window) -> float:
        """Probability that this window (WINDOW_SAMPLES float32 samples in [-1, 1]) is speech."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the stream's history (state and context)."""


class SileroStream(VadStream):
    """One stream's recurrent state and 64-sample context over a shared session."""

    __slots__ = ("_buffer", "_model", "_state")

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self._buffer = np.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), dtype=np.float32)
        self._state = np.zeros((2, 1, STATE_SIZE), dtype=np.float32)

    def reset(self) -> None:
        self._buffer.fill(0.0)
        self._state = np.zeros((2, 1, STATE_SIZE), dtype=np.float32)

    def probability(self, window: Window) -> float:
        if window.shape != (WINDOW_SAMPLES,):
            raise InvalidArgument(f"window: expected {WINDOW_SAMPLES} samples, got shape {window.shape}")
        buffer = self._buffer
        buffer[0, :CONTEXT_SAMPLES] = buffer[0, WINDOW_SAMPLES:]  # context: the previous window's tail
        buffer[0, CONTEXT_SAMPLES:] = window
        probability, self._state = self._model.run(buffer, self._state)
        return probability

    def skip(self, window: Window) -> None:
        """A window the stage-1 gate rejected: not run, but its tail is the next window's context."""
        self._buffer[0, WINDOW_SAMPLES:] = window[WINDOW_SAMPLES - CONTEXT_SAMPLES :]

    def probabilities(self, audio: Window) -> list[float]:
        """One probability per whole window of `audio` (a trailing partial window is ignored)."""
        return [
            self.probability(audio[i : i + WINDOW_SAMPLES])
            for i in range(0, len(audio) - WINDOW_SAMPLES + 1, WINDOW_SAMPLES)
        ]


class SileroVad(VadStream):
    """The shared model. Also usable directly as a single stream (`probability`,
    `reset`); `open_stream()` gives each further stream its own state."""

    def __init__(self, path: Path | None = None, *, threads: int = 1) -> None:
        import onnxruntime as ort  # native import kept out of module import
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        if not 1 <= threads <= 64:
            raise ValueError(f"threads: must be 1..64, got {threads}")
        self._path = path or silero_model_path()
        if not self._path.is_file():
            raise ModelMissing(f"the Silero VAD model is missing: {self._path}; run `{INSTALL_HINT}`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session: Any = ort.InferenceSession(str(self._path), options, providers=["CPUExecutionProvider"])
        self._model_errors: tuple[type[Exception], ...] = (
            ort_state.Fail,
            ort_state.RuntimeException,
            ort_state.InvalidArgument,
            ort_state.EPFail,
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._default = SileroStream(self)

    @property
    def path(self) -> Path:
        return self._path

    def open_stream(self) -> SileroStream:
        return SileroStream(self)

    def probability(self, window: Window) -> float:
        return self._default.probability(window)

    def reset(self) -> None:
        self._default.reset()

    def run(
        self, batch: npt.NDArray[np.float32], state: npt.NDArray[np.float32]
    ) -> tuple[float, npt.NDArray[np.float32]]:
        """One model call: `batch` is (1, 576) context+window, `state` (2, 1, 128)."""
        try:
            output, new_state = self._session.run(None, {"input": batch, "state": state, "sr": self._sr})
        except self._model_errors as exc:
            raise Unavailable(f"the Silero VAD failed: {exc}") from None
        return float(output[0, 0]), new_state
