"""Make the camera frames `ptgstore simulate` pushes: ptgstore/simdata/camera-<n>.jpg.

Run once at development time (needs Pillow, which ptgstore itself does not):
    pip install pillow && python tools/make_sim_frames.py
The frames are a test pattern (colour bars, a grey ramp, a ball that moves from frame
to frame, the frame number) with sensor-like noise, so that they weigh what a headset's
640x360 camera frames weigh (tens of KiB) and decode in any JPEG reader.
"""
import random
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, FRAMES, QUALITY = 640, 360, 4, 80
BARS = [(192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0), (192, 0, 192), (192, 0, 0), (0, 0, 192)]


def frame(n: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(image)
    bar = WIDTH / len(BARS)
    for i, colour in enumerate(BARS):
        draw.rectangle([round(i * bar), 0, round((i + 1) * bar) - 1, HEIGHT * 2 // 3], fill=colour)
    for x in range(WIDTH):
        level = x * 255 // (WIDTH - 1)
        draw.line([x, HEIGHT * 2 // 3, x, HEIGHT - 1], fill=(level, level, level))
    cx = 60 + n * (WIDTH - 120) // max(1, FRAMES - 1)
    draw.ellipse([cx - 40, 140, cx + 40, 220], fill=(255, 255, 255), outline=(0, 0, 0), width=4)
    draw.text((12, HEIGHT - 24), f"ptgstore simulate frame {n}", fill=(255, 0, 0))
    noise = Image.frombytes("L", (WIDTH, HEIGHT), bytes(rng.randrange(0, 256) for _ in range(WIDTH * HEIGHT)))
    return Image.blend(image, Image.merge("RGB", (noise, noise, noise)), 0.1)


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "ptgstore" / "simdata"
    out.mkdir(exist_ok=True)
    rng = random.Random(0)
    for n in range(FRAMES):
        path = out / f"camera-{n}.jpg"
        frame(n, rng).save(path, "JPEG", quality=QUALITY, optimize=False, progressive=False)
        print(path, path.stat().st_size)


if __name__ == "__main__":
    main()
