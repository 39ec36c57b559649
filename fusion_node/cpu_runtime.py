"""The plain runtime: a bundle's four models as onnxruntime sessions with an explicit provider chain.

:class:`ModelRuntime` implements :class:`fusion_node.runtime.Runtime`. It runs on the CPU, or on
a GPU through onnxruntime's own CUDA/TensorRT providers when asked for one and it works
(``fusion_node.providers`` builds the chain and explains a fallback); the IO-binding GPU runtime
with CUDA graphs is ``fusion_node.gpu_runtime``. The node never imports torch.

``session.run`` is thread-safe and :class:`ModelRuntime` holds no mutable state after
construction, so one runtime can serve several threads (and every rig of a node).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import onnxruntime as ort

from .manifest import REEXPORT_HINT, Manifest, ModelError, ModelSpec
from .providers import (
    CPU,
    describe_choice,
    first_line,
    library_problem,
    resolve_providers,
    session_options,
    short_name,
    wanted_provider,
)
from .runtime import BundleRuntime

__all__ = ["ModelRuntime"]

log = logging.getLogger(__name__)

_ORT_DTYPES = {"float32": "tensor(float)"}


class ModelRuntime(BundleRuntime):
    """Loaded bundle: preprocessing, four onnxruntime sessions, and the encode/fuse calls.

    ``ModelRuntime(manifest, provider="auto", intra_op_threads=1)`` where ``manifest`` is a
    :class:`~fusion_node.manifest.Manifest` or a path to ``manifest.json``. Loading validates the
    manifest, creates the sessions (checking their inputs/outputs against the manifest), and warms
    every session up with ``warmup_runs`` runs on zeros so the first live frame does not pay for
    lazy initialisation (or TensorRT engine building).

    ``provider`` is the execution provider actually in use (e.g. "CPUExecutionProvider"; if the
    sessions disagree, "mixed" and ``session_providers`` has the detail) and ``provider_note``
    says why, e.g. "CUDA requested but unavailable: ...; using CPU". A GPU provider that raises
    (at creation or during warm-up) or silently did not take makes the runtime move down the
    chain; that is logged once per runtime.
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        provider: str = "auto",
        intra_op_threads: int = 1,
        *,
        trt_cache_dir: str | os.PathLike | None = None,
        trt_fp16: bool = True,
        warmup_runs: int = 3,
    ) -> None:
        super().__init__(manifest)
        self.intra_op_threads = intra_op_threads
        session_options(intra_op_threads)  # validates the thread count before any work
        requested = provider.lower() if isinstance(provider, str) else provider
        chain = resolve_providers(requested, trt_cache_dir=trt_cache_dir, trt_fp16=trt_fp16)  # validates
        self.requested_provider: str = requested
        wanted, problems = wanted_provider(requested, [n for n, _ in chain])

        self._sessions: dict[str, ort.InferenceSession] = {}
        self.session_providers: dict[str, str] = {}
        for key, spec in self.manifest.models.items():
            session, used, found = self._load(spec, chain, warmup_runs)
            self._sessions[key] = session
            self.session_providers[key] = used
            problems += [p for p in found if p not in problems]
            # Learn once: a provider that did not take for one model will not for the next, so
            # later sessions start from what worked (no repeated load attempts, and no repeated
            # onnxruntime error output).
            names = [n for n, _ in chain]
            if used in names:
                chain = chain[names.index(used):]

        self._provider, self._provider_note, degraded = describe_choice(
            requested, wanted, self.session_providers, problems)
        log.log(logging.WARNING if degraded else logging.INFO, "model bundle %s: %s", self.manifest.name,
                self._provider_note)

    def __repr__(self) -> str:
        return (f"ModelRuntime({self.manifest.name!r}, provider={self.provider!r}, "
                f"trained={self.manifest.trained}, classes={list(self.classes)})")

    def _run(self, key: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        spec = self.manifest.models[key]
        return self._sessions[key].run([t.name for t in spec.outputs], feed)

    # ------------------------------------------------------------------ loading

    def _load(
        self, spec: ModelSpec, chain: list[tuple[str, dict[str, Any]]], warmup_runs: int
    ) -> tuple[ort.InferenceSession, str, list[str]]:
        """Create, check and warm up one session, walking down the provider chain on failure.

        Returns the session, the provider it actually uses, and why any provider ahead of that
        one in the chain did not take.
        """
        problems: list[str] = []
        remaining = list(chain)
        while True:
            first = remaining[0][0]
            try:
                # enable_fallback=0: onnxruntime's own fallback would swallow the provider error
                # (printing it to stdout) and retry with a list of its choosing; we want the
                # error, to report it, and our own chain.
                session = ort.InferenceSession(str(spec.path), sess_options=session_options(self.intra_op_threads),
                                               providers=remaining, enable_fallback=0)
                self._check_io(spec, session)
                # A provider that loads can still fail on the first run (e.g. TensorRT engine
                # build); warming up here makes that a load-time fallback, not a live error.
                feed = {t.name: np.zeros(t.shape, dtype=t.dtype) for t in spec.inputs}
                for _ in range(max(0, warmup_runs)):
                    session.run(None, feed)
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - any provider failure means: try the next one
                if first == CPU:
                    raise ModelError(f"{self.manifest.path}: model file {spec.file!r}: onnxruntime cannot load or "
                                     f"run it ({first_line(exc)}); {REEXPORT_HINT}") from None
                problems.append(f"{short_name(first)}: {first_line(exc)}")
                remaining = remaining[1:]
                continue
            used = session.get_providers()[0]
            names = [n for n, _ in remaining]
            # Providers listed before the one in use were skipped silently by onnxruntime (it
            # does this when a provider library or the GPU is missing): find out why.
            for skipped in names[: names.index(used)] if used in names else names[:-1]:
                problems.append(f"{short_name(skipped)}: {library_problem(skipped)}")
            return session, used, problems

    def _check_io(self, spec: ModelSpec, session: ort.InferenceSession) -> None:
        for kind, declared, actual in (("inputs", spec.inputs, session.get_inputs()),
                                       ("outputs", spec.outputs, session.get_outputs())):
            got = [(a.name, tuple(a.shape), a.type) for a in actual]
            want = [(t.name, t.shape, _ORT_DTYPES[t.dtype]) for t in declared]
            if got != want:
                raise ModelError(f"{self.manifest.path}: model file {spec.file!r} has {kind} {got}, the manifest "
                                 f"declares {want}; {REEXPORT_HINT}")
