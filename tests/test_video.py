"""Frame reading: selective decoding with seeks proven against full decoding, probing, sampling, bad files."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
from media import (
    moving_face_frames,
    write_empty,
    write_frame_folder,
    write_text_as_video,
    write_truncated_copy,
    write_video,
)

from recce.data.video import (
    MediaError,
    list_frame_files,
    media_length,
    packet_table,
    probe,
    read_frames,
    read_image,
    read_media,
    sample_indices,
    seek_plan,
)

N_FRAMES = 40
GOP = 6


@pytest.fixture(scope="module")
def source_frames():
    return moving_face_frames(N_FRAMES, size=(160, 120), face_width=40)[0]


@pytest.fixture(scope="module")
def video(tmp_path_factory, source_frames):
    """H.264 with B-frames (so decode order differs from display order) and a keyframe every 6 frames."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", source_frames, gop=GOP)


@pytest.fixture(scope="module")
def all_decoded(video):
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_stream_has_b_frames_and_regular_keyframes(video):
    table = packet_table(video)
    with av.open(str(video)) as container:
        decode_order = [p.pts for p in container.demux(video=0) if p.size]
    assert decode_order != sorted(decode_order)
    assert table.keyframes == list(range(0, N_FRAMES, GOP))


@pytest.mark.parametrize(
    ("indices", "min_seek_skip"),
    [
        ([0, 3, 17, 18, 30, 39], 8),
        ([1, 13, 25, 37], 0),
        ([39, 5, 5, 22, 0], 0),
        (list(range(N_FRAMES)), 8),
        ([38], 8),
    ],
)
def test_read_frames_equals_decoding_every_frame(video, all_decoded, indices, min_seek_skip):
    got = list(read_frames(video, indices, min_seek_skip=min_seek_skip))
    assert [i for i, _ in got] == sorted(set(indices))
    for index, frame in got:
        assert frame.dtype == np.uint8 and frame.shape == (120, 160, 3)
        assert np.array_equal(frame, all_decoded[index]), f"frame {index} differs from full decoding"


def test_selective_reads_do_seek(video):
    table = packet_table(video)
    assert seek_plan([0, 3, 17, 18, 30, 39], table.keyframes, 8) == {30: 30}
    assert seek_plan([1, 13, 25, 37], table.keyframes, 0) == {13: 12, 25: 24, 37: 36}
    assert seek_plan(list(range(N_FRAMES)), table.keyframes, 0) == {}


def test_frame_index_names_the_source_frame(video, source_frames):
    """Each decoded frame is nearest to the source frame with its index (the face moves every frame)."""
    for index, frame in read_frames(video, [0, 7, 19, 26, 33, 39], min_seek_skip=0):
        errors = [np.abs(frame.astype(int) - s.astype(int)).mean() for s in source_frames]
        assert int(np.argmin(errors)) == index


def test_probe_reads_the_header(video):
    info = probe(video)
    assert (info.frames, info.fps, info.width, info.height) == (N_FRAMES, 25.0, 160, 120)
    assert media_length(video, "video") == N_FRAMES


def test_probe_counts_packets_when_the_container_has_no_count(tmp_path, source_frames):
    path = write_video(tmp_path / "clip.mkv", source_frames[:10], gop=3)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no frame count
    assert probe(path).frames == 10
    decoded = list(read_frames(path, [0, 5, 9], min_seek_skip=0))
    assert [i for i, _ in decoded] == [0, 5, 9]


def test_sample_indices():
    assert sample_indices(10, "uniform", count=4) == [0, 3, 6, 9]
    assert sample_indices(5, "uniform", count=3) == [0, 2, 4]
    assert sample_indices(100, "uniform", count=3) == [0, 50, 99]
    assert sample_indices(3, "uniform", count=32) == [0, 1, 2]
    assert len(sample_indices(300, "uniform", count=32)) == 32
    assert sample_indices(7, "every", every=3) == [0, 3, 6]
    assert sample_indices(4, "all") == [0, 1, 2, 3]
    assert sample_indices(0, "uniform") == []
    with pytest.raises(ValueError, match="sampling mode"):
        sample_indices(4, "random")


def test_frames_past_the_end_raise_after_the_frames_before(video):
    reader = read_frames(video, [2, N_FRAMES + 5])
    assert next(reader)[0] == 2
    with pytest.raises(MediaError, match=rf"clip\.mp4: frame {N_FRAMES + 5} is missing"):
        next(reader)


def test_bad_files_raise_one_clear_error(tmp_path, video):
    cases = {
        write_text_as_video(tmp_path / "text.mp4"): "not a readable video",
        write_empty(tmp_path / "empty.mp4"): "empty file",
        write_truncated_copy(video, tmp_path / "cut.mp4"): "not a readable video",
        tmp_path / "absent.mp4": "file not found",
    }
    for path, reason in cases.items():
        with pytest.raises(MediaError) as caught:
            probe(path)
        assert str(caught.value).startswith(f"{path}: {reason}")
        with pytest.raises(MediaError, match=str(path)):
            list(read_frames(path, [0]))


def test_truncated_faststart_video_fails_while_reading(tmp_path, source_frames):
    """With the header first, a cut file opens and reports its full length; reading it must still fail."""
    whole = write_video(tmp_path / "whole.mp4", source_frames, faststart=True)
    cut = write_truncated_copy(whole, tmp_path / "cut.mp4")
    assert probe(cut).frames == N_FRAMES
    with pytest.raises(MediaError, match="cut.mp4"):
        list(read_frames(cut, sample_indices(N_FRAMES, "uniform", 8)))


def test_frame_folder_in_numeric_order(tmp_path, source_frames):
    names = ["10.png", "2.png", "1.png", "frame_3.png"]
    folder = write_frame_folder(tmp_path / "seq", source_frames[:4], names)
    (folder / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_frame_files(folder)] == ["1.png", "2.png", "10.png", "frame_3.png"]
    frames = dict(read_media(folder, "frames", [0, 2]))
    assert np.array_equal(frames[0], source_frames[2])  # 1.png
    assert np.array_equal(frames[2], source_frames[0])  # 10.png
    assert media_length(folder, "frames") == 4
    with pytest.raises(MediaError, match="frame 9 requested but only 4"):
        list(read_media(folder, "frames", [9]))
    with pytest.raises(MediaError, match="holds no images"):
        list_frame_files(tmp_path)


def test_read_image_is_rgb_and_rejects_garbage(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "red.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert np.array_equal(read_image(tmp_path / "red.png"), rgb)
    assert [i for i, _ in read_media(tmp_path / "red.png", "image", [0])] == [0]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(MediaError, match=r"bad\.png: not a readable image"):
        read_image(tmp_path / "bad.png")
