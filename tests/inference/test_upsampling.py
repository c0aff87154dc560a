"""The chunked upsampler stream: chunks in order, context carried, resumable from its buffers."""

import pytest
import torch

from drivesim.inference.upsampling import StreamingUpsampler, chunk_borders


class RecordingSampler:
    """hi = 10 * frame value (x2 nearest) + chunk index / 100, the context re-imposed."""

    def __init__(self, start_index=0):
        self.calls, self.index = [], start_index

    def __call__(self, low, context, generator):
        self.calls.append((low[0, :, 0, 0, 0].tolist(), None if context is None else context[0, :, 0, 0, 0].tolist()))
        hi = 10.0 * low.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2) + self.index / 100
        if context is not None:
            hi[:, : context.shape[1]] = context
        self.index += 1
        return hi


def frames(n, first=0):
    return torch.stack([torch.full((1, 3, 2, 2), float(i)) for i in range(first, first + n)], dim=1)


@pytest.mark.parametrize("n", [1, 8, 15, 20])
def test_chunks_in_order_with_the_previous_outputs_as_context(n):
    sampler, gen = RecordingSampler(), torch.Generator()
    stream = StreamingUpsampler.empty(sampler, chunk=8, context=2, like=frames(1))
    first = stream.push(frames(n), gen)
    out = torch.cat([p for p in (first, stream.flush(gen)) if p is not None], dim=1)
    assert out.shape == (1, n, 3, 4, 4)
    starts = [0] + chunk_borders(n, 8, 2)
    assert len(sampler.calls) == len(starts)
    for k, ((low, context), start) in enumerate(zip(sampler.calls, starts)):
        given = 0 if k == 0 else 2
        assert low == [float(i) for i in range(start - given, min(start + 8 - given, n))]
        expected = None if k == 0 else [float(out[0, i, 0, 0, 0]) for i in range(start - 2, start)]
        assert context == expected  # the previous chunk's outputs of the same frames
    for i in range(n):  # every frame comes from the first chunk that generated it
        chunk = max(k for k, s in enumerate(starts) if s <= i)
        assert float(out[0, i, 0, 0, 0]) == pytest.approx(10.0 * i + chunk / 100)


def test_resuming_from_the_buffers_continues_like_one_stream():
    gen = torch.Generator()
    whole = StreamingUpsampler.empty(RecordingSampler(), 8, 2, frames(1))
    ref = whole.push(frames(20), gen)
    assert whole.flush(gen) is None  # 8 + 6 + 6 frames: the chunks end with the video
    first = StreamingUpsampler.empty(RecordingSampler(), 8, 2, frames(1))
    head = first.push(frames(17), gen)  # two chunks done, 3 frames pending
    saved = first.buffers()
    assert saved["pending"].shape[1] == 3 and saved["hi_context"].shape[1] == 2
    again = StreamingUpsampler(RecordingSampler(start_index=2), 8, 2, saved["low_context"], saved["hi_context"],
                               saved["pending"])
    tail = [again.push(frames(3, first=17), gen), again.flush(gen)]
    out = torch.cat([head, *[t for t in tail if t is not None]], dim=1)
    assert torch.equal(out, ref)


def test_bad_sampler_output_and_settings():
    with pytest.raises(ValueError, match="upsample returned"):
        StreamingUpsampler.empty(lambda low, ctx, g: low[:, :1], 2, 1, frames(1)).push(frames(3), torch.Generator())
    with pytest.raises(ValueError, match="context"):
        StreamingUpsampler.empty(RecordingSampler(), 4, 4, frames(1))
    assert chunk_borders(20, 8, 2) == [8, 14] and chunk_borders(8, 8, 2) == [] and chunk_borders(9, 4, 0) == [4, 8]
