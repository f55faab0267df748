"""Test media made on the fly with PyAV (compressed formats, video) and numpy (silence, noise)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf


def encode_audio(samples: np.ndarray, path: Path, codec: str, rate: int = 16000, video: bool = False) -> Path:
    """Encode mono float32 ``samples`` into ``path`` (container from the suffix), optionally with a video track."""
    with av.open(str(path), mode="w") as container:
        vstream = None
        if video:
            vstream = container.add_stream("mpeg4", rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        astream = container.add_stream(codec, rate=rate)
        astream.layout = "mono"
        frame_size = astream.codec_context.frame_size or 1024
        fmt = astream.codec_context.format.name if astream.codec_context.format else "fltp"
        pts = 0
        for start in range(0, len(samples), frame_size):
            block = samples[start : start + frame_size].astype(np.float32)
            if len(block) < frame_size:
                block = np.pad(block, (0, frame_size - len(block)))
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
            if fmt != "flt":
                frame = av.AudioResampler(format=fmt, layout="mono", rate=rate).resample(frame)[0]
            pts += frame_size
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)
        if vstream is not None:
            for i in range(int(len(samples) / rate * 10)):
                image = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 255, np.uint8), format="rgb24")
                image.pts = i
                for packet in vstream.encode(image):
                    container.mux(packet)
            for packet in vstream.encode(None):
                container.mux(packet)
    return path


def read_flac(path: str) -> np.ndarray:
    data, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return data
