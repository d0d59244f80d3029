"""Clip decoding with keyframe seeking against decoding from frame 0 (mmzoo/data/video.py: read_video).

Writes one long synthetic clip per codec (a panning noise texture) (``--frames`` frames at 25 fps, a keyframe every ``--gop``), then
times reading ``--clips`` clips of TimeSformer's shape (8 frames every 4) at seeded random starts both
ways, checks the frames are identical, and prints the time per clip and the speed-up.

    python benchmarks/video_seek.py --frames 1500 --gop 50 --size 224 --clips 20
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import av
import torch

from mmzoo.data.video import clip_indices, clip_span, read_video


def write_clip(path: Path, frames: int, gop: int, size: int, codec: str) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = size, size, "yuv420p"
        s.codec_context.gop_size = gop
        # a textured scene panning 2 pixels a frame plus sensor-like noise: every frame costs what a real
        # one does to decode (flat synthetic gradients would decode almost for free)
        g = torch.Generator().manual_seed(0)
        texture = torch.randint(0, 256, (size, size * 4, 3), generator=g, dtype=torch.uint8)
        for i in range(frames):
            x0 = (2 * i) % (size * 3)
            noise = torch.randint(-8, 9, (size, size, 3), generator=g)
            img = (texture[:, x0:x0 + size].int() + noise).clamp(0, 255).to(torch.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img.numpy(), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def frames_decoded(path: Path, indices: list[int], seek: bool) -> int:
    """Frames the decoder produces to reach the last of ``indices``: from frame 0, or from the keyframe the
    seek of :func:`mmzoo.data.video.read_video` lands on (a count that does not depend on the machine's load)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        if not seek:
            return max(indices) + 1
        rate, base, t0 = stream.average_rate, stream.time_base, stream.start_time or 0
        c.seek(t0 + int(min(indices) / (rate * base)), stream=stream, backward=True, any_frame=False)
        n = 0
        for frame in c.decode(stream):
            n += 1
            if round(float((frame.pts - t0) * base * rate)) >= max(indices):
                return n
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1500, help="frames of the long clip (1500 = 60 s at 25 fps)")
    ap.add_argument("--gop", type=int, default=50, help="frames between keyframes")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--num-frames", type=int, default=8)
    ap.add_argument("--sampling-rate", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codecs", nargs="+", default=["mpeg4", "libx264"])
    args = ap.parse_args()
    span = clip_span(args.num_frames, args.sampling_rate)
    rng = random.Random(args.seed)
    starts = [rng.randrange(args.frames - span + 1) for _ in range(args.clips)]
    print(f"{args.frames} frames {args.size}x{args.size}, keyframe every {args.gop}; {args.clips} clips of "
          f"{args.num_frames} frames every {args.sampling_rate} at seeded random starts (seed {args.seed})")
    print(f"{'codec':8s} {'from frame 0 (ms/clip)':>24s} {'seeking (ms/clip)':>18s} {'speed-up':>9s} "
          f"{'frames decoded per clip (from 0 / seeking)':>44s}")
    with tempfile.TemporaryDirectory() as tmp:
        for codec in args.codecs:
            if codec not in av.codecs_available:
                print(f"{codec:8s} not in this PyAV build")
                continue
            path = Path(tmp) / f"long-{codec}.mp4"
            write_clip(path, args.frames, args.gop, args.size, codec)
            times = {}
            outputs = {}
            for seek in (False, True):
                t = time.perf_counter()
                outputs[seek] = [read_video(path, clip_indices(s, args.num_frames, args.sampling_rate), seek=seek)
                                 for s in starts]
                times[seek] = (time.perf_counter() - t) / args.clips
            same = all(torch.equal(a, b) for a, b in zip(outputs[False], outputs[True]))
            decoded = {seek: sum(frames_decoded(path, clip_indices(s, args.num_frames, args.sampling_rate), seek)
                                 for s in starts) / args.clips for seek in (False, True)}
            print(f"{codec:8s} {1e3 * times[False]:24.1f} {1e3 * times[True]:18.1f} "
                  f"{times[False] / times[True]:8.1f}x {decoded[False]:21.0f} / {decoded[True]:.0f}"
                  f"{'' if same else '  FRAMES DIFFER'}")


if __name__ == "__main__":
    main()
