"""Which of a model's classes a folder's name stands for, one rule wherever labelled folders are read (training's
val/ and test/, ``medclf evaluate``, export's verification and ``medclf benchmark --data``)."""

from __future__ import annotations

import unicodedata


def matching_class(name: str, classes: tuple[str, ...]) -> str | None:
    """The one class ``name`` stands for: itself; the one it differs from only in case or in how its accents are
    written (``normal`` beside a train/ folder of ``NORMAL``: on Windows and macOS even the same folder name;
    :func:`folded`); or the one it is the start of,
    or that is its start, up to a separator (the Kaggle chest CT set's test/ has ``adenocarcinoma`` where its
    train/ has ``adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib``). None: no one, or more than one."""
    if name in classes:
        return name
    for same in (lambda a, b: a == b, _begins_like):
        matches = [known for known in classes if same(folded(known), folded(name))]
        if len(matches) == 1:
            return matches[0]
        if matches:
            return None
    return None


def folded(name: str) -> str:
    """``name`` as two spellings of one class compare: case folded, accents composed (macOS writes ``É`` as E and
    a combining accent, Windows and Linux as one character: the same folder name, different strings)."""
    return unicodedata.normalize("NFC", name).casefold()


def class_on_path(folders: str, classes: tuple[str, ...]) -> str | None:
    """The class the first of ``folders`` (``fold_0/all``, ``lung_image_sets/lung_aca``) that stands for one of
    ``classes`` stands for (:func:`matching_class`), or None: a file is labelled by it wherever its dataset
    files classes under folders of another kind (parts, organs, regions). A class whose own name holds a slash
    (RSNA's "No Lung Opacity / Not Normal", as a run records its labels) is that class whole."""
    if folders in classes:
        return folders
    return next((match for name in folders.split("/") if (match := matching_class(name, classes)) is not None),
                None)


def _begins_like(a: str, b: str) -> bool:
    """One name is the other followed by a separator and more (``large.cell.carcinoma`` and
    ``large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa``)."""
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and len(long) > len(short) and long[len(short)] in "._- "
