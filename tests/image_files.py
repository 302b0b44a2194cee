"""Image files made for tests: a grey ramp, a minimal DICOM file holding given pixels, and one recompressed by
GDCM as a PACS stores it. pydicom and GDCM are imported when called, so a module importing this one skips as it
chooses."""

from __future__ import annotations

import io

import numpy as np
import pytest

RAMP = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))  # 32x64, dark left → bright right


def dicom_bytes(pixels: np.ndarray, **tags) -> bytes:
    """A minimal valid DICOM file (Secondary Capture, explicit little endian) holding ``pixels``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    colour = pixels.ndim == 3 and pixels.shape[-1] == 3
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def gdcm_transcoded(data: bytes, syntax: str, tmp_path) -> bytes:
    """``data`` recompressed by GDCM (a real encoder, as a PACS would store it) into transfer syntax ``syntax``."""
    gdcm = pytest.importorskip("gdcm", reason="GDCM (medclf[dicom]) is not installed")
    source, target = tmp_path / f"{syntax}.in.dcm", tmp_path / f"{syntax}.dcm"
    source.write_bytes(data)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return target.read_bytes()
