"""Audio sensor process: a microphone through PortAudio, or a WAV/OGG/FLAC file in real time.

Audio goes out mono at 16 kHz (mixed down and resampled when the source differs) in chunks of
``--chunk-ms`` (default 20 ms), each stamped with the capture time of its first sample.
"""

from __future__ import annotations

import argparse
import queue
import time
from math import gcd
from pathlib import Path

import numpy as np

from fusion_node.errors import SensorError
from fusion_node.vocabulary import WIRE_AUDIO_RATE_HZ as RATE_HZ
from fusion_node.wire import AudioChunk

from .publisher import (
    SensorPublisher,
    add_security_arguments,
    add_shm_arguments,
    install_stop_handler,
    security_options,
    shm_options,
    sleep_until,
)
from .samples import DEFAULT_AUDIO

__all__ = ["load_audio_file", "to_mono_16k", "add_arguments", "run", "RATE_HZ"]


def to_mono_16k(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """Mix down to mono and resample to 16 kHz with a polyphase filter; float32 out."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate_hz != RATE_HZ:
        # Imported only when needed: scipy.signal takes seconds to import on a busy machine, and a
        # file already at the wire rate (the demo's) should start playing without that wait.
        from scipy.signal import resample_poly

        g = gcd(int(rate_hz), RATE_HZ)
        x = resample_poly(x, RATE_HZ // g, int(rate_hz) // g).astype(np.float32)
    return np.clip(x, -1.0, 1.0)


def load_audio_file(path: str | Path, sensor_id: str = "audio") -> np.ndarray:
    """Read a WAV/OGG/FLAC file as mono 16 kHz float32; SensorError names a missing or corrupt file."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise SensorError(f"audio {sensor_id}: no such audio file {str(path)!r}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError on corrupt data
        raise SensorError(f"audio {sensor_id}: cannot decode {str(path)!r}: {exc}") from None
    if data.size == 0:
        raise SensorError(f"audio {sensor_id}: {str(path)!r} holds no samples")
    return to_mono_16k(data, rate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default=str(DEFAULT_AUDIO),
                   help="WAV/OGG/FLAC file, or mic / mic:DEVICE for a PortAudio input "
                        "(default: bundled speech recording)")
    p.add_argument("--sensor-id", default="mic0", help="sensor_id to publish under (default: mic0)")
    p.add_argument("--endpoint", required=True, help="ZeroMQ endpoint to bind")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="chunk length in ms (default 20)")
    p.add_argument("--loop", action="store_true", help="file: start again at its end")
    p.add_argument("--max-chunks", type=int, default=None, help="stop after this many chunks")
    p.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a subscriber before the first chunk")
    add_shm_arguments(p)
    add_security_arguments(p)


def _chunk_len(chunk_ms: float) -> int:
    n = int(round(chunk_ms * RATE_HZ / 1000))
    if not 1 <= n <= RATE_HZ:
        raise SensorError(f"--chunk-ms must be between 0.0625 and 1000, got {chunk_ms}")
    return n


def _play_file(args, pub: SensorPublisher, stop, samples: np.ndarray) -> None:
    n = _chunk_len(args.chunk_ms)
    t0 = time.monotonic_ns()
    i = 0
    while not stop():
        for start in range(0, len(samples), n):
            if stop() or (args.max_chunks is not None and i >= args.max_chunks):
                return
            chunk = samples[start:start + n]
            t_first = t0 + int(i * n * 1e9 / RATE_HZ)
            # A chunk can only be published once its last sample would have been captured.
            sleep_until(t_first + int(len(chunk) * 1e9 / RATE_HZ), stop)
            pub.publish(AudioChunk(args.sensor_id, 0, t_first, 0, chunk, RATE_HZ))
            i += 1
        if not args.loop:
            return


def _record_mic(args, pub: SensorPublisher, stop, _samples: None = None) -> None:
    try:
        import sounddevice as sd
    except OSError as exc:  # raised when the PortAudio library itself is missing
        raise SensorError(f"audio {args.sensor_id}: PortAudio is not available ({exc}); install it "
                          f"(Debian: apt-get install libportaudio2) or play a file with --source") from None
    device = args.source.split(":", 1)[1] if ":" in args.source else None
    device = int(device) if device is not None and device.isdigit() else device
    n = _chunk_len(args.chunk_ms)
    chunks: queue.Queue = queue.Queue(maxsize=256)
    status_errors = []

    def callback(indata, frames, t, status):  # noqa: ARG001 - PortAudio callback signature
        if status:
            status_errors.append(str(status))
        # Map the ADC time of the first sample from PortAudio's stream clock onto monotonic.
        t_first = time.monotonic_ns() - int((t.currentTime - t.inputBufferAdcTime) * 1e9)
        try:
            chunks.put_nowait((t_first, indata[:, 0].copy()))
        except queue.Full:
            status_errors.append("chunk queue full")

    try:
        stream = sd.InputStream(samplerate=RATE_HZ, blocksize=n, channels=1, dtype="float32",
                                device=device, callback=callback)
    except Exception as exc:
        raise SensorError(f"audio {args.sensor_id}: cannot open microphone {args.source!r}: {exc}") from None
    sent = 0
    with stream:
        while not stop() and (args.max_chunks is None or sent < args.max_chunks):
            try:
                t_first, data = chunks.get(timeout=1.0)
            except queue.Empty:
                raise SensorError(f"audio {args.sensor_id}: microphone delivered nothing for 1 s") from None
            pub.publish(AudioChunk(args.sensor_id, 0, t_first, 0, data, RATE_HZ))
            sent += 1


def run(args: argparse.Namespace) -> int:
    secure = security_options(args)  # a bad key or allow-list fails before the source opens
    stop = install_stop_handler()
    samples = None
    if args.source == "mic" or args.source.startswith("mic:"):
        play = _record_mic
    else:
        samples = load_audio_file(args.source, args.sensor_id)  # fail before binding on a bad file
        play = _play_file
    pub = SensorPublisher("audio", args.endpoint, args.sensor_id, **shm_options(args), **secure)
    try:
        if args.wait_subscriber > 0:
            pub.wait_for_subscriber(args.wait_subscriber)
        play(args, pub, stop, samples)
        pub.end(stopped=stop())
    finally:
        pub.close()
    return 0
