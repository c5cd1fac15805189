"""The offline render path: decoding, mel windows, compositing, idle motion and the MP4."""

from __future__ import annotations

import sys
import tracemalloc
import types
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from models.audio import SAMPLE_RATE, MelWindower, WindowConfig, log_mel_padded, windows
from models.avatar import Avatar, read_avatar, write_avatar
from models.compositor import Compositor
from models.idle import IdleMotion
from models.media import AudioDecodeError, decode_audio
from streamer.engine import OnnxBackend, make_backend
from streamer.render import RenderError, generate_frames, render, render_samples
from tests.conftest import BOX, make_stand_in_avatar, stand_in_assets


@pytest.fixture(scope="module")
def avatar(tmp_path_factory: pytest.TempPathFactory) -> Avatar:
    return read_avatar(make_stand_in_avatar(tmp_path_factory.mktemp("avatar") / "standin"))


@pytest.fixture(scope="module")
def backend(avatar: Avatar) -> OnnxBackend:
    made = make_backend("auto", avatar)
    assert isinstance(made, OnnxBackend) and (made.name, made.device) == ("onnx", "cpu")
    return made


class MeanBackend:
    """Numpy stand-in for speed: the mouth is the masked crop brightened by the audio energy."""

    name, device = "fake", "cpu"

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        energy = np.clip((mel.mean(axis=(1, 2)) + 5.0) / 5.0, 0, 1)[:, None, None, None]
        return np.clip(reference * 0.5 + energy * 0.5, 0, 1).astype(np.float32)


def write_audio(path: Path, x: np.ndarray, rate: int, codec: str, channels: int = 1) -> Path:
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        assert isinstance(stream, av.AudioStream)
        stream.layout = layout
        planes = np.repeat(x.astype(np.float32)[None], channels, axis=0)
        # PyAV converts to the encoder's own sample format.
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def burst(seconds: float, rate: int, start: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) * (t >= start)).astype(np.float32)


# --- mel windows ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 639, 640, 641, 16_000 + 123])
def test_streaming_windows_equal_offline_windows(n: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 0.1).astype(np.float32)
    cfg = WindowConfig()
    expected = windows(log_mel_padded(x), -(-n // 640), cfg)
    windower = MelWindower(cfg)
    got, start = [], 0
    while start < n:
        size = int(rng.integers(1, 3000))
        got.append(windower.push(x[start : start + size]))
        start += size
    got.append(windower.flush())
    np.testing.assert_array_equal(np.concatenate(got), expected)


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "suffix", "rate", "channels"),
    [
        ("pcm_s16le", "wav", 48_000, 2),
        ("libmp3lame", "mp3", 44_100, 1),
        ("flac", "flac", 22_050, 1),
    ],
)
def test_decode_any_format_to_16k_mono(
    tmp_path: Path, codec: str, suffix: str, rate: int, channels: int
) -> None:
    x = burst(1.0, rate, 0.0, freq=500.0)
    path = write_audio(tmp_path / f"a.{suffix}", x, rate, codec, channels)
    chunks = list(decode_audio(path, chunk=4000))
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert all(len(c) == 4000 for c in chunks[:-1])
    y = np.concatenate(chunks)
    assert abs(len(y) - SAMPLE_RATE) <= (1200 if suffix == "mp3" else 32)  # mp3: codec padding
    spectrum = np.abs(np.fft.rfft(y[2000:14000]))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / 12000 - 500.0) < 5


def test_decode_errors_are_clear(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.touch()
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(np.random.default_rng(0).bytes(30_000))
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    image = tmp_path / "still.png"
    image.write_bytes((Path(__file__).parent / "test_avatar.py").read_bytes()[:0])
    import cv2

    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    cases = {
        tmp_path / "missing.wav": "does not exist",
        empty: "is empty",
        noise: "not a readable audio file|corrupt|no decodable",
        text: "not a readable audio file",
        image: "no audio stream",
        tmp_path: "directory",
    }
    for path, message in cases.items():
        with pytest.raises(AudioDecodeError, match=message):
            list(decode_audio(path))


def test_metadata_that_is_not_utf8_is_no_error(tmp_path: Path) -> None:
    """A WAV whose INFO title holds invalid UTF-8 (found by the upload fuzzer: a 500) decodes:
    the tag is read with replacement characters, the audio is untouched."""
    import io
    import struct
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(SAMPLE_RATE)
        out.writeframes((np.sin(np.arange(SAMPLE_RATE) * 0.1) * 10000).astype("<i2").tobytes())
    data = bytearray(buf.getvalue())
    title = b"caf\xdd\xff name\x00"
    tag = b"INAM" + struct.pack("<I", len(title)) + title
    data += b"LIST" + struct.pack("<I", 4 + len(tag)) + b"INFO" + tag
    struct.pack_into("<I", data, 4, len(data) - 8)  # the RIFF size, with the LIST chunk
    path = tmp_path / "tagged.wav"
    path.write_bytes(bytes(data))
    assert sum(len(chunk) for chunk in decode_audio(path)) == SAMPLE_RATE


# --- compositor and idle motion ---------------------------------------------------------------


def test_paste_is_seamless(avatar: Avatar) -> None:
    compositor = Compositor(avatar, idle=False)
    base = avatar.frames[0]
    reference, masked = compositor.inputs(0)
    assert reference.shape == masked.shape == (3, 160, 160)
    assert masked[:, 80, 80].max() == 0.0 and masked[:, 2, 2].max() > 0  # the hole is masked
    x0, y0, x1, y1 = BOX
    crop = np.transpose(base[y0:y1, x0:x1], (2, 0, 1)).astype(np.float32) / 255.0
    np.testing.assert_array_equal(compositor.compose(0, crop), base)  # the base comes back
    frame = compositor.compose(0, np.ones((3, 160, 160), np.float32))
    outside = np.ones(base.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(frame[outside], base[outside])
    # The crop border (mask 0) matches the surroundings: no seam.
    np.testing.assert_array_equal(frame[y0, x0:x1], base[y0, x0:x1])
    assert (frame[y0 + 80, x0 + 80] == 255).all()
    # Inside, the change is gradual: no step between neighbours larger than the mask's slope.
    row = frame[y0 + 80, x0:x1].astype(int)
    assert np.abs(np.diff(row, axis=0)).max() < 40


def test_boxes_of_other_sizes_are_resized(tmp_path: Path) -> None:
    assets = stand_in_assets()
    model = make_stand_in_avatar(tmp_path / "tmp") / "generator.onnx"
    path = write_avatar(
        tmp_path / "big",
        name="big",
        kind="video",
        frames=assets["frames"][:2],
        boxes=np.array([[150, 280, 350, 480], [152, 282, 352, 482]]),
        mask=assets["mask"],
        reference=assets["reference"],
        model=model,
    )
    big = read_avatar(path)
    compositor = Compositor(big)
    assert [compositor.base_index(k) for k in range(4)] == [0, 1, 0, 1]
    _, masked = compositor.inputs(1)
    assert masked.shape == (3, 160, 160)
    frame = compositor.compose(1, np.zeros((3, 160, 160), np.float32))
    assert frame.shape == (512, 512, 3) and frame[382, 252].max() == 0


def test_idle_motion_blinks_every_few_seconds_and_moves_slightly() -> None:
    idle = IdleMotion((1, 2, 3), seed=3)
    poses = [idle.pose(k) for k in range(25 * 600)]
    bases = np.array([p.base for p in poses])
    starts = np.flatnonzero((bases[1:] == 1) & (bases[:-1] == 0)) + 1
    gaps = np.diff(starts) / 25.0
    assert gaps.min() >= 1.0 and gaps.max() <= 7.5 and 3.0 <= gaps.mean() <= 5.0
    assert list(bases[starts[0] : starts[0] + 7]) == [1, 2, 3, 3, 2, 1, 0]
    assert max(abs(p.dx) for p in poses) < 2.5 and max(abs(p.rotation_deg) for p in poses) < 1
    assert IdleMotion((1, 2, 3), seed=3).pose(12_345) == poses[12_345]  # pure function of k


# --- frames and MP4 ---------------------------------------------------------------------------


def chunked(x: np.ndarray, size: int = 3000) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


@pytest.mark.parametrize("n", [1, 640, 641, 8000])
def test_one_frame_per_40_ms(avatar: Avatar, n: int) -> None:
    frames = list(generate_frames(avatar, MeanBackend(), chunked(np.zeros(n, np.float32))))
    assert len(frames) == -(-n // 640)
    assert frames[0].shape == (512, 512, 3) and frames[0].dtype == np.uint8


def test_mouth_follows_audio_in_time(avatar: Avatar, backend: OnnxBackend) -> None:
    x = burst(2.0, SAMPLE_RATE, start=1.0)  # speech-like energy from frame 25 on
    frames = list(generate_frames(avatar, backend, chunked(x), idle=False))
    x0, y0, x1, y1 = BOX
    level = np.array([f[y0 + 60 : y1 - 60, x0 + 60 : x1 - 60].mean() for f in frames])
    assert np.ptp(level[:22]) < 0.5  # silent: still
    assert np.ptp(level[30:44]) < 0.5 and abs(level[40] - level[10]) > 5
    # The window sees 60 ms ahead: frames 23.. start to change, not earlier.
    assert abs(level[22] - level[10]) < 0.5 and abs(level[24] - level[10]) > 0.5


def read_mp4(path: Path) -> dict[str, object]:
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.duration is not None and audio.duration is not None
        assert audio.start_time is not None
        assert video.time_base is not None and audio.time_base is not None
        info: dict[str, object] = {
            "codecs": (video.codec_context.name, audio.codec_context.name),
            "rate": video.average_rate,
            "video_start": video.start_time,
            "audio_start": float(audio.start_time * audio.time_base),
            "video_s": float(video.duration * video.time_base),
            "audio_s": float(audio.duration * audio.time_base),
            "pix_fmt": video.codec_context.pix_fmt,
        }
    with av.open(str(path)) as container:
        info["frames"] = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        pcm = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        info["pcm"] = np.concatenate(pcm)
    return info


def test_render_mp4_is_aligned(tmp_path: Path, avatar: Avatar, backend: OnnxBackend) -> None:
    source = write_audio(tmp_path / "in.mp3", burst(2.03, 44_100, start=1.0), 44_100, "libmp3lame")
    n = sum(len(c) for c in decode_audio(source))
    result = render(tmp_path / "out.mp4", avatar, backend, audio=source)
    assert result.frames == -(-n // 640) and result.samples == n
    info = read_mp4(result.path)
    assert info["codecs"] == ("h264", "aac") and info["pix_fmt"] == "yuv420p"
    assert info["rate"] == 25 and info["video_start"] == 0 and info["audio_start"] == 0
    frames = info["frames"]
    assert isinstance(frames, list) and len(frames) == result.frames
    assert abs(float(info["video_s"]) - float(info["audio_s"])) <= 0.04  # type: ignore[arg-type]
    pcm = info["pcm"]
    assert isinstance(pcm, np.ndarray)
    onset = int(np.argmax(np.abs(pcm) > 0.2))  # the burst starts at 1.0 s in the source
    assert abs(onset - SAMPLE_RATE) <= 160, onset  # AAC priming is hidden by the edit list
    assert not list(tmp_path.glob(".*partial*"))


def test_silence_gives_an_idle_video(tmp_path: Path, avatar: Avatar, backend: OnnxBackend) -> None:
    source = write_audio(tmp_path / "quiet.wav", np.zeros(6 * 16_000), 16_000, "pcm_s16le")
    result = render(tmp_path / "idle.mp4", avatar, backend, audio=source)
    assert result.frames == 150
    frames = read_mp4(result.path)["frames"]
    assert isinstance(frames, list) and len(frames) == 150
    eyes = np.array([f[190:210, 180:220].mean() for f in frames])
    assert eyes.max() - eyes.min() > 30  # at least one blink in 6 s
    assert np.abs(frames[0].astype(int) - frames[60].astype(int)).mean() > 0.5  # breathing


def test_text_is_streamed_through_tts(
    tmp_path: Path, avatar: Avatar, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []

    class FakeTTS:
        def stream(self, text: str) -> Iterator[np.ndarray]:
            said.append(text)
            for _ in range(3):
                yield burst(0.3, SAMPLE_RATE, 0.0)

    module = types.ModuleType("streamer.tts")
    module.TextToSpeech = FakeTTS  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "streamer.tts", module)
    result = render(tmp_path / "t.mp4", avatar, MeanBackend(), text="Hello there.")
    assert said == ["Hello there."] and result.frames == -(-3 * 4800 // 640)
    with pytest.raises(RenderError, match="empty"):
        render(tmp_path / "t.mp4", avatar, MeanBackend(), text="  ")


def test_failed_render_leaves_no_file(tmp_path: Path, avatar: Avatar) -> None:
    def broken() -> Iterator[np.ndarray]:
        yield np.zeros(16_000, np.float32)
        raise AudioDecodeError("corrupt in the middle")

    with pytest.raises(AudioDecodeError):
        render_samples(broken(), tmp_path / "x.mp4", avatar, MeanBackend())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RenderError, match="no samples"):
        render_samples(iter([]), tmp_path / "x.mp4", avatar, MeanBackend())


def test_memory_stays_bounded_on_long_audio(avatar: Avatar) -> None:
    """One minute of audio streamed frame by frame: the peak must not grow with the length
    (all frames held would be 1500 x 786 kB = 1.2 GB; all samples 3.8 MB)."""
    seconds = 60

    def audio() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(0)
        for _ in range(seconds * 2):
            yield (rng.standard_normal(8000) * 0.05).astype(np.float32)

    tracemalloc.start()
    try:
        count = sum(1 for _ in generate_frames(avatar, MeanBackend(), audio()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == seconds * 25
    assert peak < 24 * 2**20, peak
