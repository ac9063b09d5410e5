"""Generated test inputs: every kind of file people upload, good and bad (no downloads)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.helpers import encode, xray_like

BASE = xray_like(300, 260)
SECRET_NAME, SECRET_ID = "Doe^Jane", "PATIENT-SECRET-4711"


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored sideways with EXIF Orientation 6: upright after transposition."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(np.rot90(BASE, k=1).copy()), "JPEG", quality=95, exif=exif)


def bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny PNG whose header claims w x h pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.fromarray(BASE), Image.fromarray(255 - BASE)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:])


def multipage_tiff() -> bytes:
    return _save(Image.fromarray(BASE), "TIFF", save_all=True, append_images=[Image.fromarray(255 - BASE)])


def large_jpeg(side: int = 8000) -> bytes:
    small = Image.fromarray(xray_like(400, 400, seed=5))
    return _save(small.resize((side, side), Image.BILINEAR), "JPEG", quality=80)


def photo(name: str) -> bytes:
    from skimage import data

    return encode(getattr(data, name)(), "PNG")


def dicom(pixels: np.ndarray | None = BASE, photometric: str = "MONOCHROME2", bits: int = 8, slope=None,
          intercept=None, window=None, frames: int = 1, syntax=None, raw: bytes | None = None,
          age: str | None = None, spacing=None, imager_spacing=None) -> bytes:
    """A DICOM file built with pydicom, carrying fake patient identifiers; ``spacing`` and ``imager_spacing`` set
    ``PixelSpacing`` and ``ImagerPixelSpacing`` (mm, row then column)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = SECRET_NAME, SECRET_ID, "20200101"
    ds.Modality, ds.ViewPosition = "DX", "AP"
    if age is not None:
        ds.PatientAge = age
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if pixels is not None:
        arr = np.asarray(pixels)
        ds.Rows, ds.Columns = arr.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated = 16 if bits > 8 else 8
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        dtype = np.uint16 if bits > 8 else np.uint8
        if raw is not None:
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([raw])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = arr.astype(dtype).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_16bit_rescaled() -> bytes:
    # stored = (HU + 1024) / 2; window centre 40, width 400 over HU
    hu = BASE.astype(np.float64) * 4 - 400  # -400 .. 620
    stored = np.round((hu + 1024) / 2).astype(np.uint16)
    return dicom(stored, bits=12, slope=2, intercept=-1024, window=(40, 400))


def expected_16bit_rescaled() -> np.ndarray:
    hu = np.round((BASE.astype(np.float64) * 4 - 400 + 1024) / 2) * 2 - 1024
    return np.round(np.clip((hu - 39.5) / 399 + 0.5, 0, 1) * 255).astype(np.uint8)


def dicom_jpeg2000_garbage() -> bytes:
    from pydicom.uid import JPEG2000Lossless

    return dicom(BASE, syntax=JPEG2000Lossless, raw=b"\xff\x4f\xff\x51" + b"\x00" * 200)


# name -> (file name to upload as, bytes factory, expected: "ok" | "ood" | regex of the error message)
CASES = {
    "empty": ("empty.png", lambda: b"", "empty"),
    "plain-text": ("notes.txt.png", lambda: b"Findings: none.\n" * 20, "not an image"),
    "html": ("page.png", lambda: b"<!DOCTYPE html><html><body><h1>X-ray</h1></body></html>", "not an image"),
    "pdf": ("report.png", lambda: b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<<>>\n%%EOF", "not an image"),
    "truncated-jpeg": ("cut.jpg", lambda: encode(BASE, "JPEG")[:700], "damaged or truncated"),
    "corrupt-png": ("broken.png", lambda: encode(BASE, "PNG")[:80] + b"\x00" * 300, "damaged|not an image"),
    "bomb-png": ("bomb.png", bomb_png, "megapixels"),
    "1x1": ("dot.png", lambda: encode(np.zeros((1, 1), np.uint8), "PNG"), "only 1 x 1"),
    "16x16": ("icon.png", lambda: encode(xray_like(16, 16), "PNG"), "only 16 x 16"),
    "4000x100": ("strip.png", lambda: encode(xray_like(100, 4000), "PNG"), "elongated"),
    "16bit-png": ("deep.png", lambda: encode(BASE.astype(np.uint16) * 257, "PNG"), "ok"),
    "rgba-png": ("alpha.png", lambda: encode(np.dstack([np.repeat(BASE[..., None], 3, -1),
                                                        np.full(BASE.shape, 255, np.uint8)]), "PNG"), "ok"),
    "palette-png": ("palette.png", lambda: _save(Image.fromarray(BASE).convert("P"), "PNG"), "ok"),
    "cmyk-jpeg": ("print.jpg", lambda: _save(Image.fromarray(BASE).convert("CMYK"), "JPEG"), "ok"),
    "animated-gif": ("moving.gif", animated_gif, "animated"),
    "multipage-tiff": ("pages.tiff", multipage_tiff, "ok"),
    "exif-rotated-jpeg": ("rotated.jpg", exif_rotated_jpeg, "ok"),
    "jpeg-named-png": ("really_a_jpeg.png", lambda: encode(BASE, "JPEG"), "ok"),
    "8000x8000": ("huge.jpg", large_jpeg, "ok"),
    "dicom-no-pixels": ("header.dcm", lambda: dicom(None), "no image"),
    "dicom-monochrome1": ("inverted.dcm", lambda: dicom(255 - BASE, photometric="MONOCHROME1"), "ok"),
    "dicom-16bit-rescale": ("ct16.dcm", dicom_16bit_rescaled, "ok"),
    "dicom-multiframe": ("frames.dcm", lambda: dicom(np.stack([BASE, 255 - BASE]), frames=2), "ok"),
    "dicom-undecodable": ("j2k.dcm", dicom_jpeg2000_garbage, "compression|damaged"),
    "photo-chelsea": ("cat.png", lambda: photo("chelsea"), "ood"),
    "photo-astronaut": ("astronaut.png", lambda: photo("astronaut"), "ood"),
    "photo-coffee": ("coffee.png", lambda: photo("coffee"), "ood"),
}
