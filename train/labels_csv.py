"""Labels from a spreadsheet, for datasets whose images sit in one folder beside a CSV of their findings.

Hospitals export images from PACS with a list of findings beside them, and many public sets ship that way:
HAM10000 (``image_id``, ``dx``, and ``lesion_id`` naming the lesion each photo shows), APTOS (``id_code``,
``diagnosis``), ISIC 2019 (``image`` and one 0/1 column per class). ``--labels FILE.csv`` reads such a file:
which column names the image, which holds the label, and which names the patient are found by their headers
(``--labels FILE.csv:IMAGE,LABEL`` says it where they are named otherwise). An image is found by its file name
with or without extension, wherever it sits under the data folder; one the file does not list is left out,
counted in one warning. A column saying which split a row belongs to (``split``, ``set``: train / validation /
test) is followed — as is Google AutoML Vision's headerless ``SET,IMAGE,LABEL``, in which MedMNIST's own
``save`` lists its images (``TRAIN,train0_3.png,3``) — so a published benchmark is trained and scored on its
published splits.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from medclf.runtime.inputs import IMAGE_EXTENSIONS, is_image_file, list_images

from .layout import find_split, is_annotation_folder, is_part_name, numbered_parts, split_key
from .medmnist import known_classes

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "image_id", "imageid", "image_name", "image_index", "filename", "file_name", "file",
                 "path", "id_code", "id", "img", "name")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "diagnosis", "dx", "benign_malignant", "target",
                 "category", "finding", "findings", "finding_labels", "level", "grade", "y")  # level: EyePACS' grade
MULTI_LABEL = "|"  # NIH ChestX-ray14's "Effusion|Mass": several findings in one image
# Images of one patient or one lesion are held out together (the split's groups), as --group-pattern does.
GROUP_COLUMNS = ("patient_id", "patientid", "patient", "subject_id", "subject", "lesion_id", "study_id")
ONE_HOT = {"0", "1", "0.0", "1.0"}
SPLIT_COLUMNS = ("split", "set", "subset", "partition", "fold_set", "data_split")
# A row's split as sheets spell it (AutoML Vision: TRAIN, VALIDATION, TEST, UNASSIGNED) → train / val / test.
SPLIT_VALUES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "validate": "val", "dev": "val", "test": "test", "testing": "test", "holdout": "test"}
UNSPLIT_VALUES = {"", "unassigned"}  # rows a sheet leaves to training's split (AutoML Vision's UNASSIGNED)
AUTOML_SETS = {"TRAIN", "VALIDATION", "TEST", "UNASSIGNED"}
LISTED_SHARE = 0.9  # of a dataset's images a sheet found beside them must label to be taken as their labels
AUGMENTED_COPY = re.compile(r"\.aug\d+$")  # what medclf augment adds to a copy's name (augment._copy_name)


class LabelsError(ValueError):
    """The labels file cannot say what each image is; the message names the file and why."""


class SplitsError(LabelsError):
    """The labels file splits its images in a way medclf cannot follow: training on its rows would risk its test
    images."""


@dataclass(frozen=True)
class CsvLabels:
    """Each listed image's label (and group, where the file names patients), by file name."""

    source: Path
    labels: dict[str, str]  # casefolded file name, and its stem where it has an image extension → label
    groups: dict[str, str] | None = None
    splits: dict[str, str] | None = None  # the same keys → "train", "val" or "test", where the sheet says
    rows: tuple[tuple[str, tuple[str, ...]], ...] = ()  # each labelled row's image as listed, and its keys

    def not_found(self, paths: Iterable[str]) -> list[str]:
        """The labelled rows none of ``paths`` answers to: images the sheet lists that are not there."""
        matched = {self._key(Path(path)) for path in paths}
        return [image for image, keys in self.rows if matched.isdisjoint(keys)]

    @property
    def kind(self) -> str:
        return f"classes in {self.source.name}"

    def _key(self, path: Path) -> str | None:
        """The image's own entry, or its source's for a copy ``medclf augment`` wrote (``x.aug3.jpg``, and
        ``x.webp.aug3.png`` where the source's format is not written): a copy shows its source's finding, and
        is held out with its source's patient. Where the sheet lists paths (``patient01/view1.jpg``), the entry
        of the most folders the image's own path ends in comes first."""
        source = AUGMENTED_COPY.sub("", path.stem)
        names = [name.casefold() for name in (path.name, path.stem, source, PurePosixPath(source).stem)]
        folders = [part.casefold() for part in path.parent.parts if part not in (path.anchor, "")]
        for depth in range(min(self._deepest, len(folders)), -1, -1):  # depth 0: the name alone
            prefix = "".join(f"{folder}/" for folder in folders[len(folders) - depth:])
            if key := next((prefix + name for name in names if prefix + name in self.labels), None):
                return key
        return None

    @functools.cached_property
    def _deepest(self) -> int:
        """The most folders a listed path has."""
        return max((key.count("/") for key in self.labels), default=0)

    def label(self, path: Path) -> str | None:
        key = self._key(path)
        return self.labels[key] if key is not None else None

    def group(self, path: Path) -> str | None:
        key = self._key(path)
        return self.groups.get(key) if self.groups is not None and key is not None else None

    def split(self, path: Path) -> str | None:
        """The split the sheet puts the image in (``train``, ``val``, ``test``), or None where it says none."""
        key = self._key(path)
        return self.splits.get(key) if self.splits is not None and key is not None else None

    def unlabelled(self, root: Path, names: list[str]) -> None:
        """Images the file does not list are left out, said once (an images folder often holds more)."""
        log.warning("%s: %d image(s) not listed in %s, left out (e.g. %s)", root, len(names), self.source, names[0])


def read_labels_csv(spec: str) -> CsvLabels:
    """``FILE.csv`` or ``FILE.csv:IMAGE_COLUMN,LABEL_COLUMN`` → the labels it gives."""
    file, columns = _split_spec(spec)
    try:
        text = _sheet_text(file)
        first, _, rest = text.partition("\n")
        if (hint := re.fullmatch(r"sep=(.)\r?", first)) is not None:  # Excel's delimiter line, before the header
            text, dialect = rest, _with_delimiter(hint.group(1))
        else:
            dialect = _dialect(text[:64 * 1024])
        table = list(csv.reader(io.StringIO(text, newline=""), dialect=dialect))
    except (OSError, csv.Error) as exc:
        raise LabelsError(f"{file}: cannot be read as CSV ({exc})") from exc
    if table and len(table[0]) >= 3 and table[0][0].strip().upper() in AUTOML_SETS:  # no header: SET,IMAGE,LABEL...
        table.insert(0, ["set", "image"] + (["label"] if len(table[0]) == 3 else [f"label{k}" for k in
                                                                                  range(len(table[0]) - 2)]))
        if len(table[1]) > 3:
            raise LabelsError(f"{file}: rows give {len(table[1]) - 2} labels each (e.g. {','.join(table[1][2:])}); "
                              "medclf learns one label per image")
    rows = [dict(zip(table[0], row + [""] * (len(table[0]) - len(row)))) for row in table[1:] if any(row)]
    if not rows:
        raise LabelsError(f"{file}: no rows under its header")
    headers = list(rows[0])
    image, label = columns or (_column(headers, IMAGE_COLUMNS) or headers[0], _label_column(file, headers, rows))
    for name in (image, label):
        if name is not None and name not in headers:
            raise LabelsError(f"{file}: no column {name!r} (columns: {', '.join(headers)})")
    values = [row[image] for row in rows]
    if label is not None:
        found = [row[label] for row in rows]
    elif (hot := _one_hot(rows, [h for h in headers if h != image])) is not None:
        found = hot
    elif len(headers) == 2:
        found = [row[headers[1] if image == headers[0] else headers[0]] for row in rows]
    else:
        raise LabelsError(f"{file}: which column is the label? Columns: {', '.join(headers)}; say it as "
                          f"--labels {file}:{image},COLUMN")
    several = [value for value in found if MULTI_LABEL in (value or "")]
    if several:
        raise LabelsError(f"{file}: {len(several)} rows name several findings (e.g. {several[0]}); medclf learns one "
                          "label per image: keep the rows with one finding, or one finding per row")
    group, split, keys = _column(headers, GROUP_COLUMNS), _split_column(rows, headers), _row_keys(values)
    return _medmnist_named(CsvLabels(
        file, _keyed(file, keys, found),
        _keyed(file, keys, [row[group] for row in rows], False) if group is not None else None,
        _keyed(file, keys, _splits(file, split, rows), False) if split is not None else None,
        tuple((str(path), tuple(row_keys)) for (path, row_keys), value in zip(keys, found) if (value or "").strip())))


def _split_of(value: str | None) -> str | None:
    """A row's split as ``train``/``val``/``test`` (spelt as folders are: ``TRAIN``, ``validation_set``,
    ``test-data``), ``""`` where the sheet leaves it to training's split, None for a value that is no split."""
    key = split_key(value or "")
    return "" if key in UNSPLIT_VALUES else SPLIT_VALUES.get(key)


def _split_column(rows: list[dict[str, str]], headers: list[str]) -> str | None:
    """The column naming each row's split, where its values are splits (``TRAIN``, ``validation``, ``test``...);
    rows it names none (AutoML's ``UNASSIGNED``, a blank) are training's to split."""
    column = _column(headers, SPLIT_COLUMNS)
    if column is None or not any(_split_of(row[column]) for row in rows):
        return None
    return column


def _splits(file: Path, column: str, rows: list[dict[str, str]]) -> list[str]:
    """Each row's split; a value that is none (``holdout2``) is refused rather than trained on: a sheet's own
    test rows taken for training images would be scored as unseen."""
    found = [_split_of(row[column]) for row in rows]
    if unknown := sorted({row[column] for row, split in zip(rows, found) if split is None}):
        raise SplitsError(f"{file}: column {column} names splits, but also {', '.join(map(repr, unknown[:3]))}, "
                          "which medclf does not read as one: say train, val or test (blank: training's to split)")
    return found


def sheet_beside(folder: Path) -> CsvLabels | None:
    """The labels file a dataset ships beside its images where no folder says a class: named as ``folder``,
    beside it, where ``folder`` holds its images loose (MedMNIST's ``save`` writes ``bloodmnist/`` and
    ``bloodmnist.csv``); else a sheet that labels nearly all of them, where they are in numbered parts of one
    folder (HAM10000's ``HAM10000_images_part_1/``, ``_part_2/`` beside ``HAM10000_metadata.csv``) or lie loose
    in ``folder``, its training split or its one folder (APTOS' ``train_images/`` beside ``train.csv``, EyePACS'
    ``train/`` beside ``trainLabels.csv``, ISIC 2019's ``ISIC_2019_Training_Input/`` beside its ground truth).
    Read as ``--labels`` would, said once; None where there is none such."""
    if not folder.is_dir():
        return None
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    folders = [entry for entry in entries if entry.is_dir() and not is_annotation_folder(entry.name)]  # not masks/
    sheet = folder.parent / f"{folder.name}.csv"
    if sheet.is_file() and not folders and any(is_image_file(entry) for entry in entries):
        log.warning("%s: its images lie loose beside %s: labels read from that (as --labels %s)", folder,
                    sheet.name, sheet)
        return read_labels_csv(str(sheet))
    if sum(is_part_name(entry.name) for entry in folders) >= 2:  # else no folder is walked for its images
        with_images = {entry: list_images(entry) for entry in folders}
        parts = [entry for entry, found in with_images.items() if found]
        if numbered_parts([part.name for part in parts]):
            return _listing_sheet(folder, [folder], [image for part in parts for image in with_images[part]],
                                  f"its images are in numbered parts ({', '.join(sorted(p.name for p in parts))})")
    where = folder if not folders else find_split(folder, "train") or (folders[0] if len(folders) == 1 else None)
    inside = list(where.iterdir()) if where is not None else []
    loose = [entry for entry in inside if is_image_file(entry)]
    if loose and not any(entry.is_dir() and not entry.name.startswith(".") for entry in inside):
        return _listing_sheet(folder, list(dict.fromkeys([where, folder, folder.parent])), loose,
                              f"the images in {where.name}/ lie loose")
    return None


SHEET_MOST_BYTES = 64 << 20  # sheets larger are pixel tables (HAM10000's hmnist_28_28_RGB.csv), not labels


def _listing_sheet(folder: Path, places: list[Path], images: list[Path], how: str) -> CsvLabels | None:
    """The sheet in ``places`` that labels the most of ``images``, if ``LISTED_SHARE`` of them or more (HAM10000
    ships pixel tables beside its metadata, APTOS a ``sample_submission.csv`` beside ``train.csv``: those label
    none), said once."""
    best, listed = most_listing([sheet for place in places for sheet in sorted(place.glob("*.csv"))], images)
    if best is None or listed < LISTED_SHARE * len(images):
        return None
    log.warning("%s: %s, labelled by %s: reading that (as --labels %s)", folder, how, best.source.name, best.source)
    return best


def most_listing(sheets: list[Path], images: list[Path]) -> tuple[CsvLabels | None, int]:
    """The sheet among ``sheets`` that labels the most of ``images``, and how many (None, 0 where none labels
    any); sheets that cannot be read as labels, or larger than ``SHEET_MOST_BYTES``, are passed over."""
    best, listed = None, 0
    for sheet in sheets:
        try:
            labels = read_labels_csv(str(sheet)) if sheet.stat().st_size <= SHEET_MOST_BYTES else None
        except (LabelsError, OSError):
            continue
        if labels is not None and (count := sum(labels.label(image) is not None for image in images)) > listed:
            best, listed = labels, count
    return best, listed


def _medmnist_named(labels: CsvLabels) -> CsvLabels:
    """MedMNIST's ``save`` labels its images by number (``TRAIN,train0_3.png,3``): a set MedMNIST names
    (``bloodmnist.csv``) gets its classes' names (``3`` → ``immature granulocytes(...)``), as its ``.npz`` does —
    found beside the images or given as ``--labels`` alike (the classes differed: a run could not score data
    labelled the other way)."""
    names = known_classes(labels.source.stem)
    if names is None or not all(label.isdigit() and int(label) < len(names) for label in labels.labels.values()):
        return labels
    return replace(labels, labels={key: names[int(label)] for key, label in labels.labels.items()})


def _sheet_text(file: Path) -> str:
    """The sheet's text as Excel and Windows tools save it: UTF-8 (with or without its mark), UTF-16 with its
    mark ("Unicode Text"), else Windows-1252 ("CSV (Comma delimited)" on a Western Windows), said in one line."""
    data = file.read_bytes()
    if data.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):  # a ZIP (.xlsx, .ods) or OLE2 (.xls) workbook
        raise LabelsError(f"{file}: a spreadsheet workbook, not a CSV file: save the sheet as CSV (File > Save As)")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")  # a line appended as bytes: its own row, garbled, said
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if re.search(rb"[\xc2-\xf4][\x80-\xbf]", data):  # UTF-8 elsewhere: no one encoding reads it right
            line = data[:exc.start].count(b"\n") + 1
            raise LabelsError(f"{file}: line {line} is not UTF-8 where the rest is: save the sheet as UTF-8") \
                from None
        log.warning("%s: not UTF-8; read as Windows-1252, as Excel on Windows saves CSV", file)
        return data.decode("cp1252", errors="replace")


def _with_delimiter(delimiter: str) -> type[csv.Dialect]:
    return type("sheet", (csv.excel,), {"delimiter": delimiter})


def _dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
    """Commas, semicolons (Excel in much of Europe) or tabs, as the file's first lines show; commas if unclear."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        return csv.excel


def _split_spec(spec: str) -> tuple[Path, tuple[str, str] | None]:
    head, _, tail = spec.rpartition(":")
    if head and "," in tail and not Path(spec).exists():
        image, _, label = tail.partition(",")
        return Path(head), (image.strip(), label.strip())
    return Path(spec), None


def _normalised(header: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", header.strip().lower()).strip("_")


def _column(headers: list[str], wanted: tuple[str, ...]) -> str | None:
    """The header that normalises to the earliest of ``wanted``, if any."""
    by_name = {_normalised(header): header for header in reversed(headers)}
    return next((by_name[name] for name in wanted if name in by_name), None)


def _label_column(file: Path, headers: list[str], rows: list[dict[str, str]]) -> str | None:
    """The label column: the earliest of :data:`LABEL_COLUMNS` — passing over one that says "unknown" (or
    nothing) for most rows where a later one does not: ISIC 2020's ``diagnosis`` is "unknown" for four rows in
    five beside its ``benign_malignant``, while the ISIC Archive's export has real diagnoses there. Said."""
    present = [header for name in LABEL_COLUMNS if (header := _column(headers, (name,))) is not None]
    known = [header for header in present if sum((row[header] or "").strip().casefold() in ("", "unknown")
                                                   for row in rows) < len(rows) / 2]
    if present and known and known[0] != present[0]:
        log.warning("%s: its %s column is unknown for most rows: labels read from %s (--labels %s:IMAGE,COLUMN "
                    "names another)", file.name, present[0], known[0], file)
        return known[0]
    return present[0] if present else None


def _one_hot(rows: list[dict[str, str]], columns: list[str]) -> list[str] | None:
    """Each row's one column holding 1 where every other column holds 0 (ISIC's ground truth), else None."""
    if len(columns) < 2 or any((row[c] or "").strip() not in ONE_HOT for row in rows for c in columns):
        return None
    hot = [[c for c in columns if float(row[c]) == 1.0] for row in rows]
    return [names[0] for names in hot] if all(len(names) == 1 for names in hot) else None


def _row_keys(images: Iterable[str]) -> list[tuple[PurePosixPath, list[str]]]:
    """Each row's image (a name, an id, or a path) and the keys it answers to, casefolded: its file name (and
    stem), and where it is a path, each of its endings with one folder or more (``patient01/study1/view1.png``,
    ``study1/view1.png``...) — every ending that names one listed image alone, decided once over all the rows,
    so labels, splits and patients are keyed alike. MURA's and CheXpert's every patient has a ``view1.png``:
    that name alone keys nothing, its patient's folders do, whether DATA is the folder the paths start from or
    the one below it."""
    listed = [_listed(image) for image in images]
    owners: dict[str, set[str]] = {}  # each key, and the listed images it could name (one image however cased:
    for path in listed:  # E0.JPG and e0.jpg on two rows keyed nothing, and the image was left out unsaid)
        for key in _endings(path):
            owners.setdefault(key, set()).add(str(path).casefold())
    return [(path, [key for key in _endings(path) if len(owners[key]) == 1]) for path in listed]


def _keyed(file: Path, keys: list[tuple[PurePosixPath, list[str]]], values: Iterable[str],
           strict: bool = True) -> dict[str, str]:
    """``{key: value}`` for each row with a value, by its keys (:func:`_row_keys`); an image listed twice with
    two labels is refused (``strict``)."""
    keyed: dict[str, str] = {}
    for (path, row_keys), value in zip(keys, values):
        value = (value or "").strip()
        for key in row_keys if value else ():
            if strict and keyed.get(key, value) != value:
                raise LabelsError(f"{file}: {path} is listed as both {keyed[key]} and {value}")
            keyed[key] = value
    return keyed


def _listed(image: str | None) -> PurePosixPath:
    path = PurePosixPath((image or "").strip().replace("\\", "/"))
    return PurePosixPath(*[part for part in path.parts if part not in (path.anchor, ".")]) if path.parts else path


def _endings(path: PurePosixPath) -> list[str]:
    """The keys a listed image answers to: its name (and stem, for a name with an image extension), then its
    path's endings of one folder and more, casefolded."""
    if not path.name:
        return []
    keys = [path.name.casefold()]
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        keys.append(path.stem.casefold())
    parts = path.parts
    keys += ["/".join(parts[len(parts) - 1 - depth:]).casefold() for depth in range(1, len(parts))]
    return keys
