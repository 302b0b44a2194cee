"""Verification and the float-layer search judge on different held-out images while there are enough."""

from __future__ import annotations

from medclf.export.held_out import held_out_split


def test_verification_and_the_search_get_different_held_out_images_while_there_are_enough():
    verified, searched, _ = held_out_split(1376, 1024, searching=True)  # the blood-cell runs' validation
    assert len(verified) == 1024 and len(searched) == 352 and not set(verified) & set(searched)
    verified, searched, _ = held_out_split(5000, 1024, searching=True)
    assert len(verified) == 1024 and len(searched) == 1024 and not set(verified) & set(searched)
    verified, searched, _ = held_out_split(745, 1024, searching=True)  # the chest preset's
    assert (len(verified), len(searched)) == (489, 256) and not set(verified) & set(searched)
    verified, searched, said = held_out_split(300, 1024, searching=True)
    assert len(verified) == 300 and searched is verified and "verification images" in said
    verified, searched, _ = held_out_split(1376, 1024, searching=False)
    assert len(verified) == 1024 and searched is None
