"""Images as users have them: 16-bit, CMYK, palette, EXIF-rotated, animated, truncated, empty, too large. One
decoder (`runtime.data.images`) serves training, evaluation and predict, so each reads them alike."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from graphspec.runtime.data import images
from graphspec.runtime.data.images import FileImage, _decode, to_rgb
from graphspec.runtime.data.records import BadData


def encoded(image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_sixteen_bit_values_are_scaled_not_clipped():
    grey = Image.fromarray(np.array([[0, 257 * 100, 40000, 65535]], dtype=np.uint16))
    assert grey.mode.startswith("I")
    pixels, _ = _decode(encoded(grey), "grey.png")
    assert pixels.shape == (1, 4, 3) and list(pixels[0, :, 0]) == [0, 100, 156, 255]


@pytest.mark.parametrize("image, fmt", [(Image.new("CMYK", (5, 5), (0, 255, 255, 0)), "JPEG"),
                                        (Image.new("P", (5, 5)), "PNG"), (Image.new("RGBA", (5, 5), (255, 0, 0, 9)), "PNG"),
                                        (Image.new("LA", (5, 5), (76, 200)), "PNG")])
def test_cmyk_palette_and_alpha_images_decode_to_their_rgb(image, fmt):
    if image.mode == "P":
        image.putpalette([255, 0, 0] * 256)
    pixels, size = _decode(encoded(image, fmt), "image")
    assert size == (5, 5) and pixels.dtype == np.uint8 and pixels.shape == (5, 5, 3)
    assert np.allclose(pixels[0, 0], (255, 0, 0), atol=3) or image.mode == "LA" and pixels[0, 0, 0] == 76


def test_exif_orientation_is_applied_in_training_and_in_predict(tmp_path):
    """A 6 x 4 photo stored sideways (orientation 6: turn 90 degrees clockwise) reads as 4 wide, 6 high, from
    bytes, from a file (training, evaluation and predict's files) and as a PIL image handed to predict."""
    photo = Image.new("RGB", (6, 4), (0, 0, 0))
    photo.putpixel((0, 0), (255, 255, 255))
    exif = photo.getexif()
    exif[0x0112] = 6
    data = encoded(photo, "PNG", exif=exif.tobytes())
    (tmp_path / "sideways.png").write_bytes(data)
    for pixels, size in (_decode(data, "bytes"), FileImage(str(tmp_path / "sideways.png"), "file").load()):
        assert pixels.shape == (6, 4, 3) and size == (4, 6)
        assert pixels[0, -1].min() > 200  # the top-left pixel is now the top-right one
    assert to_rgb(Image.open(tmp_path / "sideways.png")).shape == (6, 4, 3)


def test_an_animated_image_gives_its_first_frame():
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tuple(_decode(data, "anim.gif")[0][0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("data, said", [(b"", "holds 0 bytes"), (None, "no image (null)"),
                                        (encoded(Image.new("RGB", (64, 64), (9, 9, 9)))[:60], "truncated")])
def test_empty_and_truncated_images_are_bad_data(data, said):
    with pytest.raises(BadData) as info:
        _decode(data, "table.arrow row 3 column 'image'")
    assert info.value.message.startswith("cannot read the image in table.arrow row 3 column 'image'")
    assert said in info.value.message or "cannot identify" in info.value.message or "OSError" in info.value.message


def test_the_pixel_limit_refuses_from_the_header_just_over_it_and_decodes_just_under(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    assert _decode(encoded(Image.new("RGB", (100, 100))), "under")[1] == (100, 100)
    with pytest.raises(BadData, match="declares 101 x 100 pixels \\(over the limit of 10,000\\)"):
        _decode(encoded(Image.new("RGB", (101, 100))), "over")
