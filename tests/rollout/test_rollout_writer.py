"""Chunked H.264 output: chunks of any length concatenate into one decodable mp4."""

import av
import numpy as np
import pytest

from drivesim.rollout import writer as W


def _frames(n: int, offset: int) -> np.ndarray:
    """Smooth moving gradients, uint8 ``[n, 32, 64, 3]``."""
    y, x = np.mgrid[0:32, 0:64]
    out = [np.stack([(x * 4 + 3 * (offset + i)) % 256, (y * 8) % 256, np.full_like(x, 40 * (offset + i) % 256)], -1)
           for i in range(n)]
    return np.asarray(out, dtype=np.uint8)


def _extradata(path) -> bytes:
    with av.open(str(path)) as c:
        return bytes(c.streams.video[0].codec_context.extradata)


def test_chunks_of_any_length_share_parameter_sets_and_concatenate(tmp_path):
    # a 1-frame chunk (an image-decoder rollout's first segment) must not get an intra-only SPS
    # from gop_size = 1: the concatenated file carries chunk 0's SPS for every chunk
    lengths, paths, frames = [1, 6, 5], [], []
    for i, n in enumerate(lengths):
        chunk = _frames(n, sum(lengths[:i]))
        paths.append(tmp_path / f"chunk_{i}.mp4")
        W.encode_chunk(paths[-1], chunk, fps=2.0)
        frames.append(chunk)
    assert len({_extradata(p) for p in paths}) == 1
    out = tmp_path / "frames.mp4"
    assert W.concat_chunks(paths, out, overwrite=False) == sum(lengths)
    with av.open(str(out)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    expected = np.concatenate(frames)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(float) - expected).mean() < 4.0  # CRF 18: close to the input


def test_concat_refuses_chunks_with_other_parameter_sets(tmp_path, monkeypatch):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    W.encode_chunk(a, _frames(6, 0), fps=2.0)
    monkeypatch.setattr(W, "GOP_SIZE", 1)  # intra-only stream: another SPS
    W.encode_chunk(b, _frames(6, 6), fps=2.0)
    assert _extradata(a) != _extradata(b)
    with pytest.raises(ValueError, match="parameter sets"):
        W.concat_chunks([a, b], tmp_path / "out.mp4", overwrite=False)
    assert not (tmp_path / "out.mp4").exists()


def test_resume_state_of_another_writer_version_is_refused(tmp_path):
    import torch

    from drivesim.rollout import state as S
    from drivesim.utils.io import DriveSimInputError

    st = S.RolloutState(fingerprint="f" * 64, segments_done=1, keys_done=6, frames_written=6, chunks_written=1,
                        context=torch.zeros(1, 2, 4, 2, 2), decode_tail=torch.zeros(1, 0, 4, 2, 2),
                        generator_state=torch.Generator().get_state())
    path = tmp_path / "state.pt"
    S.save_state(path, st)
    assert S.load_state(path, "f" * 64).chunks_written == 1
    old = st.to_dict() | {"version": S.STATE_VERSION - 1}  # written before the constant GOP size
    torch.save(old, path)
    with pytest.raises(DriveSimInputError, match="--overwrite"):
        S.load_state(path, "f" * 64)
