"""simclr_xb.data.pixels.to_rgb_uint8: every Pillow mode converted by its stated rule, or refused
with a message naming the file; and the folder reader uses it (16-bit PNGs do not saturate)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from simclr_xb.data.common import DataError
from simclr_xb.data.folder import decode_image, load_folder
from simclr_xb.data.pixels import to_rgb_uint8

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def conv(img):
    out = to_rgb_uint8(img, "T/x.png")
    assert out.dtype == np.uint8 and out.shape == (img.size[1], img.size[0], 3) and out.flags.c_contiguous
    return out


def test_rgb_and_grey_8bit():
    np.testing.assert_array_equal(conv(Image.fromarray(RGB)), RGB)
    g = RGB[..., 0]
    np.testing.assert_array_equal(conv(Image.fromarray(g, "L")), np.repeat(g[..., None], 3, -1))
    x = Image.fromarray(RGB).convert("RGBX")
    np.testing.assert_array_equal(conv(x), RGB)


def test_bilevel():
    bits = RNG.integers(0, 2, (5, 7)).astype(bool)
    out = conv(Image.fromarray(bits))  # mode "1"
    np.testing.assert_array_equal(out[..., 0], np.where(bits, 255, 0))
    assert (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("mode,dtype", [("I;16", "<u2"), ("I;16B", ">u2"), ("I;16L", "<u2")])
def test_16bit_grey_scaled_not_saturated(mode, dtype):
    v = np.array([[0, 128, 129, 257, 32768, 65535, 1000]], dtype=dtype)
    img = Image.frombytes(mode, (v.shape[1], 1), v.tobytes())
    out = conv(img)[0, :, 0]
    np.testing.assert_array_equal(out, [0, 0, 1, 1, 128, 255, 4])  # round(v * 255 / 65535)
    exact = np.rint(v.astype(np.float64) * 255 / 65535)
    np.testing.assert_array_equal(out, exact[0])


def test_mode_I_16bit_range_scaled_and_out_of_range_refused():
    v = np.array([[0, 300, 65535]], dtype=np.int32)
    np.testing.assert_array_equal(conv(Image.fromarray(v, "I"))[0, :, 0], [0, 1, 255])
    with pytest.raises(DataError, match=r"T/x.png is 32-bit integer grey \(mode I\) with values in \[-1, 5\]"):
        to_rgb_uint8(Image.fromarray(np.array([[-1, 5]], dtype=np.int32), "I"), "T/x.png")
    with pytest.raises(DataError, match=r"T/x.png .*\[0, 70000\]"):
        to_rgb_uint8(Image.fromarray(np.array([[0, 70000]], dtype=np.int32), "I"), "T/x.png")


def test_16bit_png_file_does_not_saturate(tmp_path):
    """A real 16-bit PNG file (mid-grey 0x8000 and a ramp): before, convert("RGB") clipped every
    value > 255 to 255 (the whole image white)."""
    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(ramp).save(p)  # uint16 -> mode I;16 -> 16-bit PNG
    with Image.open(p) as im:
        assert im.mode in ("I", "I;16")
        out = to_rgb_uint8(im, str(p))
    np.testing.assert_array_equal(out[..., 1], (ramp.astype(np.int64) + 128) // 257)
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) == 256
    # and through the folder reader's decoder (no resize at the image's own size)
    np.testing.assert_array_equal(decode_image(p, 16)[..., 0], (ramp.astype(np.int64) + 128) // 257)


def test_float_grey():
    f = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    np.testing.assert_array_equal(conv(Image.fromarray(f, "F"))[0, :, 0], [0, 128, 255, 64])
    with pytest.raises(DataError, match=r"image T/x.png is float grey \(mode F\) with values in \[0, 2\]"):
        to_rgb_uint8(Image.fromarray(np.array([[0.0, 2.0]], dtype=np.float32), "F"), "T/x.png")
    with pytest.raises(DataError, match="T/x.png is float grey .* NaN or Inf"):
        to_rgb_uint8(Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32), "F"), "T/x.png")


def test_alpha_composited_on_black():
    rgba = np.concatenate([RGB, RNG.integers(0, 256, (5, 7, 1), dtype=np.uint8)], -1)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    out = conv(Image.fromarray(rgba, "RGBA"))
    want = np.rint(RGB.astype(np.float64) * rgba[..., 3:] / 255)
    np.testing.assert_array_equal(out, want)
    assert (out[0, 0] == 0).all() and (out[0, 1] == RGB[0, 1]).all()
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    np.testing.assert_array_equal(conv(la)[..., 2], np.rint(RGB[..., 0] * (rgba[..., 3] / 255)))


def test_premultiplied_modes_used_as_is():
    rgba = Image.fromarray(np.concatenate([RGB, np.full((5, 7, 1), 128, np.uint8)], -1), "RGBA")
    pre = rgba.convert("RGBa")
    np.testing.assert_array_equal(conv(pre), np.asarray(pre)[..., :3])
    assert np.abs(conv(pre).astype(int) - conv(rgba).astype(int)).max() <= 1


def test_palette_opaque_and_transparent():
    p = Image.fromarray(RGB).quantize(16)
    assert p.mode == "P"
    np.testing.assert_array_equal(conv(p), np.asarray(p.convert("RGB")))
    t = p.copy()
    idx = np.asarray(t)
    t.info["transparency"] = int(idx[0, 0])
    out = conv(t)
    hidden = idx == idx[0, 0]
    assert (out[hidden] == 0).all()
    np.testing.assert_array_equal(out[~hidden], np.asarray(p.convert("RGB"))[~hidden])
    pa = p.convert("PA")
    np.testing.assert_array_equal(conv(pa), np.asarray(p.convert("RGB")))  # alpha 255 everywhere


def test_palette_transparent_png_file(tmp_path):
    p = Image.fromarray(RGB).quantize(8)
    idx = np.asarray(p)
    path = tmp_path / "t.png"
    p.save(path, transparency=int(idx[0, 0]))
    with Image.open(path) as im:
        assert im.mode == "P" and "transparency" in im.info
        out = to_rgb_uint8(im, str(path))
    assert (out[idx == idx[0, 0]] == 0).all()


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "HSV"])
def test_colour_spaces_through_pillow(mode):
    img = Image.fromarray(RGB).convert(mode)
    out = conv(img)
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))
    assert np.abs(out.astype(int) - RGB.astype(int)).max() <= (255 if mode == "CMYK" else 8)


def test_cmyk_pure_colours():
    c = Image.new("CMYK", (2, 1))
    c.putpixel((0, 0), (0, 0, 0, 0))  # white
    c.putpixel((1, 0), (255, 0, 0, 0))  # cyan
    np.testing.assert_array_equal(conv(c)[0], [[255, 255, 255], [0, 255, 255]])


def test_unconvertible_mode_refused_naming_the_file():
    lab = Image.new("LAB", (3, 3))
    try:
        out = to_rgb_uint8(lab, "T/lab.tif")  # Pillow may convert LAB itself
        assert out.shape == (3, 3, 3)
    except DataError as e:
        assert "T/lab.tif" in str(e) and "LAB" in str(e) and "\n" not in str(e)


def test_folder_reader_refuses_with_the_file_name(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(RGB).save(tmp_path / "a" / "ok.png")
    f = Image.fromarray(np.array([[0.0, 3.0]], dtype=np.float32), "F")
    f.save(tmp_path / "a" / "f.tiff")
    (tmp_path / "a" / "f.tiff").rename(tmp_path / "a" / "f.webp")  # extension the reader lists
    # a .tiff renamed is still opened by content; it is refused naming the file
    with pytest.raises(DataError, match=r"f\.webp is float grey"):
        load_folder(tmp_path, image_size=4)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = load_folder(tmp_path, image_size=4, skip_bad_images=True)
    assert len(ds) == 1


def test_empty_image_refused():
    img = Image.new("RGB", (0, 0))
    with pytest.raises(DataError, match=r"image T/x.png is empty \(0x0"):
        to_rgb_uint8(img, "T/x.png")


def test_conversion_refused_beyond_the_memory_budget(monkeypatch):
    img = Image.new("RGBA", (100, 100))
    monkeypatch.setenv("SIMCLR_XB_MAX_BYTES", str(16 * 100 * 100 - 1))
    with pytest.raises(DataError, match=r"image T/big.png \(100x100 pixels, mode RGBA\) would need"):
        to_rgb_uint8(img, "T/big.png")
    monkeypatch.setenv("SIMCLR_XB_MAX_BYTES", str(16 * 100 * 100))
    assert to_rgb_uint8(img, "T/big.png").shape == (100, 100, 3)
