"""Writing pictures: matplotlib figures as PNG, and contact sheets of photos with captions, drawn with Pillow in
matplotlib's font (a matplotlib axes per photo, and its text layout, cost many times the photo)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

HEATMAP_ALPHA = 0.45


def save_png(figure, file: Path, dpi: float) -> None:
    """Render ``figure`` at ``dpi`` and write it as an RGB PNG (the figures are opaque), compressed for speed
    (photos compress poorly whatever the level)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    _write(Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]), file, dpi)


def _write(image, file: Path, dpi: float) -> None:
    """A Pillow RGB image as PNG at zlib level 1 (photos compress poorly whatever the level)."""
    image.save(file, format="png", compress_level=1, dpi=(dpi, dpi))


def overlaid(pixels: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """A heatmap in [0, 1] drawn over uint8 pixels of its size: the jet colour map at opacity HEATMAP_ALPHA."""
    import matplotlib

    colours = matplotlib.colormaps["jet"](heatmap)[..., :3] * 255
    return np.round((1 - HEATMAP_ALPHA) * pixels + HEATMAP_ALPHA * colours).astype(np.uint8)


def contact_sheet(tiles: list[tuple[np.ndarray, str, str]], columns: int, title: str, file: Path, *,
                  picture: float, caption: float, gap: float, header: float, fontsize: float, title_size: float,
                  dpi: float) -> None:
    """Write a PNG of ``tiles`` (uint8 pixels, caption, caption colour) in rows of ``columns``: each picture
    resized to ``picture`` inches square under its caption (``caption`` inches high), ``gap`` inches between
    pictures, below ``title`` in a ``header`` inches high; font sizes in points."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    def font(points):
        return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties()), round(points * dpi / 72))

    rows = max(1, math.ceil(len(tiles) / columns))
    cell = picture + gap
    sheet = Image.new("RGB", (round(columns * cell * dpi), round((header + rows * (caption + picture)) * dpi)), "white")
    draw, side, small = ImageDraw.Draw(sheet), round(picture * dpi), font(fontsize)
    for i, (pixels, text, colour) in enumerate(tiles):
        row, column = divmod(i, columns)
        left, top = round((column * cell + gap / 2) * dpi), round((header + row * (caption + picture) + caption) * dpi)
        sheet.paste(Image.fromarray(pixels).resize((side, side), Image.LANCZOS), (left, top))
        draw.multiline_text((round((column + 0.5) * cell * dpi), top - 3), text, fill=colour, font=small, anchor="md",
                            align="center", spacing=1)
    draw.multiline_text((sheet.width // 2, round(0.1 * dpi)), title, fill="black", font=font(title_size), anchor="ma",
                        align="center", spacing=3)
    _write(sheet, file, dpi)
