"""``medclf-run``: classify images with an exported medclf model. Imports only ``medclf.runtime``.

The argument parser is the standard library's, not typer: a one-image run is dominated by start-up, and typer
(with the pydantic it now validates through) costs 0.11 s of imports, a third of the whole run and the difference
between 17x and 25x the seed-style Keras script. The ``medclf`` command (training, export) keeps typer.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import stat
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn

from .annotations import masks_said
from .atomic import atomic_write, stop_on_term, unwritable
from .backends import BACKENDS, BackendUnavailable, gpu_listed
from .classifier import Classifier, Prediction
from .inputs import STDIN, expand_inputs, listed_inputs
from .modelcard import FAMILIARITY_QUANTILE, ModelCardError, familiarity_site, familiarity_trained_among
from .stream import use_processes
from .tta import VIEWS

PROGRESS_FROM = 32  # inputs; below this the answer comes before a bar would be worth drawing
READER_LEFT = 141  # exit status when stdout's reader went away: what a shell reports for SIGPIPE
INTERRUPTED = 130  # exit status after Ctrl-C: what a shell reports for SIGINT
NOT_REACHED = "not classified: the run was interrupted"  # an interrupted run's --csv rows for the inputs left
UNLIKE_MARK = "UNLIKE TRAINING"  # the table's mark on a row whose image the model says it was not trained for


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="medclf-run", description="Classify INPUTS with a medclf ONNX model; exit "
                                  "status 1 when any input could not be classified, 2 when nothing could start.")
    add = cli.add_argument
    add("inputs", nargs="*", metavar="INPUTS", help="Image files, folders or globs (quote globs); - is an image "
                                                    "piped in.")
    add("--files-from", metavar="LIST", help="Also classify the inputs LIST names, one per line (a worklist from a "
        "PACS or lab system, a find output); - reads the list from standard input.")
    add("--model", type=Path, metavar="FILE", help="A medclf ONNX model; default: the packaged blood-cell model.")
    add("--top-k", type=_positive, default=1, metavar="N", help="How many labels to report per image (default 1).")
    add("--json", dest="as_json", action="store_true", help="One JSON object per input per line.")
    # 32: the 2,487 TEST smears in 5.6-6.5 s on 2 cores vs 6.5-7.6 s at 16 and 5.8-6.6 s at 64; on an H200 the
    # CUDA EP fed by 16 decoding processes ran 6,700 images/s at 32, 7,000 at 64.
    add("--batch-size", type=_positive, default=32, metavar="N", help="Images per inference call (default 32).")
    add("--threads", type=_positive, metavar="N", help="onnxruntime intra-op threads (default: the usable CPUs, a container's CPU quota counted).")
    add("--csv", dest="csv_file", type=Path, metavar="FILE",
        help="Also write every result to this CSV file (atomically, when done).")
    add("--cam", type=Path, metavar="DIR",
        help="Write a heatmap overlay per image here (models exported with medclf export --cam).")
    add("--tta", choices=tuple(VIEWS), help="Average each image's probabilities over its mirror image (flip) or "
        "every mirror and quarter turn (dihedral): for images with no up or left, such as smears; costs an inference "
        "per view. Check it pays on labelled images first: medclf evaluate --tta.")
    add("--backend", default="auto", choices=BACKENDS,
        help="auto (the first of tensorrt, ort-tensorrt, cuda, cpu that starts; says which), or one of them: then "
             "it must start.")
    add("--describe", action="store_true", help="Say what the model file is and exit: its sha256 (to record beside "
        "results), classes and threshold, input, precision, outputs, training scores and export (--json: as JSON).")
    add("--version", action="store_true", help="Say which medclf and which runtime libraries answer, and exit.")
    return cli


def version_line() -> str:
    """'medclf-run 0.1.0 (onnxruntime 1.32.0, OpenCV 5.1.0, numpy 2.4.6, Python 3.11.7)': what an answer
    depends on besides the model file."""
    import platform

    import cv2
    import numpy
    import onnxruntime

    from medclf import __version__

    return (f"medclf-run {__version__} (onnxruntime {onnxruntime.__version__}, OpenCV {cv2.__version__}, numpy "
            f"{numpy.__version__}, Python {platform.python_version()})")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, INPUTS required unless the model is only to be described; ``--version`` answered here."""
    cli = parser()
    args = cli.parse_args(argv)
    if args.version:
        print(version_line())
        cli.exit()
    if not args.inputs and not args.describe and args.files_from is None:
        cli.error("the following arguments are required: INPUTS (or --files-from LIST)")
    if args.files_from == STDIN and STDIN in args.inputs:
        cli.error("standard input can hold the list (--files-from -) or an image (-), not both")
    return args


def described(args: argparse.Namespace) -> int:
    """``--describe``: the model file's identity and card, as lines or ``--json``."""
    from .describe import describe, described_lines  # here: hashlib's OpenSSL is 3-5 ms a one-shot run never needs

    try:
        classifier = Classifier(args.model, threads=1, reuse_optimized=True)
    except (FileNotFoundError, ModelCardError, ValueError) as exc:
        return _refuse(str(exc))
    about = describe(classifier.model_path, classifier.card)
    print(json.dumps(about, ensure_ascii=False) if args.as_json else "\n".join(described_lines(about)))
    return 0


def _backend_for(requested: str, inputs: int) -> tuple[str, str]:
    """The backend to start, and why when it is not the one asked for. ``auto`` with one image is the CPU: a GPU's
    start-up (loading CUDA's libraries, cuDNN's search for the fastest convolutions) took 2.5-3 s on an H200,
    where one image took 0.6 s end to end on its CPU; folders and batches keep auto's GPU-first order."""
    if requested != "auto" or inputs != 1:
        return requested, ""
    return "cpu", ("backend cpu (auto: one image, for which a GPU's start-up costs more than it saves; "
                   "--backend cuda uses it)" if gpu_listed() else "")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """Classify ``args.inputs``, print one result per input, return the exit status."""
    if args.describe:
        return described(args)
    try:
        listed = listed_inputs(args.files_from) if args.files_from is not None else []
    except OSError as exc:
        return _refuse(f"--files-from {args.files_from}: {exc.strerror or exc}")
    masks: list[Path] = []
    paths = list(expand_inputs(args.inputs + listed, masks))
    if not paths:
        return _refuse(f"--files-from {args.files_from}: names no input")
    if masks:
        print(f"{masks_said(masks)}; name one to classify it", file=sys.stderr)
    backend, why = _backend_for(args.backend, len(paths))
    try:
        classifier = Classifier(args.model, threads=args.threads, backend=backend, streaming=len(paths) > 1,
                                reuse_optimized=True, tta=args.tta)
        views = f"probabilities averaged over test-time views: {VIEWS[args.tta]}" if args.tta else ""
        for note in (why or classifier.backend.note, classifier.caveat, _operating_point(classifier), views):
            if note:
                print(note, file=sys.stderr)
        if args.cam is not None:
            classifier.require_cam()  # refused before any work
    except (FileNotFoundError, ModelCardError, BackendUnavailable, ValueError) as exc:
        return _refuse(str(exc))
    for option, destination, folder in (("--csv", args.csv_file, False), ("--cam", args.cam, True)):
        if destination is not None and (problem := unwritable(destination, folder)):
            return _refuse(f"{option} {destination}: {problem}")
    if args.csv_file is not None and (read := _read_by_the_run(args.csv_file, paths, args.files_from, classifier)):
        return _refuse(f"--csv {args.csv_file}: is {read}, which the table would replace")
    top_k = min(args.top_k, len(classifier.labels))
    predictions = _with_progress(classifier.classify(paths, top_k=top_k, batch_size=args.batch_size,
                                                     cam_dir=args.cam,
                                                     processes=use_processes(len(paths)) and STDIN not in paths),
                                 len(paths))
    results: list[Prediction] = []
    calls: Counter[str | None] = Counter()  # None: could not be classified
    unlike: list[str] = []  # the inputs unlike the model's training images
    counted = _counting(predictions, calls, unlike)
    recorded = _recording(counted, results) if args.csv_file is not None else counted
    model = _model_sha256(classifier) if args.as_json or args.csv_file is not None else ""
    answered_by = {"model_sha256": model} | ({"tta": args.tta} if args.tta else {})  # what a result depends on
    try:
        failed, output_error = _printed(recorded, results, answered_by, args, paths, classifier.labels)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (:func:`stop_on_term`): keep what was answered
        if args.csv_file is not None:
            _write_interrupted_csv(args.csv_file, results, paths, model, args.tta or "")
        raise
    # The CSV before anything more is said: a closed stderr (``2>&1 | head``) lost it, every image classified.
    csv_failed = args.csv_file is not None and not _csv_written(args.csv_file, results, model, args.tta or "")
    if len(paths) > 1:
        _say(tally(calls, classifier.labels))
    if unlike:
        _say(unlike_warning(unlike, sum(calls.values()) - calls[None], familiarity_site(classifier.card),
                            familiarity_trained_among(classifier.card)))
    if output_error is not None and not isinstance(output_error, BrokenPipeError):
        raise output_error  # said as the results that could not be written (a full disk under the output)
    return READER_LEFT if output_error is not None else 1 if failed or csv_failed else 0


def _csv_written(path: Path, results: list[Prediction], model: str, tta: str) -> bool:
    """Write the CSV; False, said, where its disk refused it (the table or JSON above still holds it all)."""
    with contextlib.suppress(OSError):
        sys.stdout.flush()  # the table first, where --csv is /dev/stdout
    try:
        write_csv(path, results, model, tta)
    except OSError as exc:  # the disk filled or went away during the run
        _say(f"error: --csv {path}: not written ({exc.strerror or exc})")
        return False
    return True


def _say(line: str) -> None:
    """A line on stderr, where it can still be written: a reader gone from it is no reason to lose the rest."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _write_interrupted_csv(path: Path, results: list[Prediction], paths: list[str], model: str, tta: str) -> None:
    """An interrupted run's CSV: the answers it gave, then every input it did not reach, each with the reason in
    its error cell — so no one reads the file as complete (before, an interrupted run wrote none: hours of a
    worklist's answers lost to a late Ctrl-C or a service stop)."""
    unreached = [Prediction(path, error=NOT_REACHED) for path in paths[len(results):]]
    if _csv_written(path, results + unreached, model, tta):
        _say(f"--csv {path}: {len(results)} answers written; {len(unreached)} inputs not reached, each marked "
             f"'{NOT_REACHED}'")


def _printed(recorded: Iterable[Prediction], results: list[Prediction], answered_by: dict[str, str],
             args: argparse.Namespace, paths: list[str], labels: tuple[str, ...]) -> tuple[int, OSError | None]:
    """Print every result, as JSON lines or the table: how many failed, and why the output could not take them
    all, if it could not (the reader went away, ``| head``; a full disk under ``> results.txt``) — then, with
    ``--csv``, the rest are still classified and recorded for it."""
    try:
        printed = _print_json(recorded, answered_by) if args.as_json else _print_table(recorded, paths, labels)
        return printed, None
    except OSError as exc:  # BrokenPipeError among them
        if args.csv_file is None:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        for _ in recorded:  # the answers not yet printed, each recorded on its way to the CSV
            pass
        return sum(p.failure is not None for p in results), exc


def _read_by_the_run(destination: str, paths: list[str], files_from: str | None,
                     classifier: Classifier) -> str | None:
    """What ``destination`` is to this run where the run reads it — one of its images, its worklist, its
    model — or None: the CSV, written over it, replaced the file the answers came from."""
    try:
        written = os.stat(destination)
    except OSError:  # not there yet (or not to be looked at): no input can be it
        return None
    if not stat.S_ISREG(written.st_mode):
        return None
    named = [("the model", str(classifier.model_path)), ("the worklist (--files-from)", files_from)]
    for what, path in [*named, *(("an input image", path) for path in paths)]:
        try:
            if path is not None and path != STDIN and os.path.samestat(os.stat(path), written):
                return what
        except OSError:
            continue
    return None


def _model_sha256(classifier: Classifier) -> str:
    """The served file's sha256, which every JSON line and CSV row carries: a result kept in a log or a
    spreadsheet names the model behind it (``--describe`` prints the same hash). About 15 ms for the packaged
    11 MB file; the readable table, read by a person at the screen, does without it."""
    from .describe import file_sha256  # hashlib's OpenSSL: a one-shot table run does not load it

    return file_sha256(classifier.model_path)


def _operating_point(classifier: Classifier) -> str | None:
    """Why a binary model may answer its finding at a probability under one half: its threshold, said once."""
    decision = classifier.card.decision
    if decision is None or decision.threshold == 0.5:
        return None
    return (f"{decision.positive_class} is called when its probability is at least {decision.threshold:.3g} "
            f"(the model's threshold: {decision.rule})")


def _refuse(reason: str, status: int = 2) -> int:
    print(f"error: {reason}", file=sys.stderr)
    return status


def _with_progress(predictions: Iterable[Prediction], total: int) -> Iterable[Prediction]:
    """A progress bar on stderr for long runs in a terminal; nothing when stderr is a pipe or a log file."""
    if total <= PROGRESS_FROM or not sys.stderr.isatty():
        return predictions
    return _drawing_progress(predictions, total)


def _drawing_progress(predictions: Iterable[Prediction], total: int) -> Iterator[Prediction]:
    """rich takes over stderr while it draws, so that error lines scroll above the bar, and stdout only where it
    is that terminal too — redirected (``--json > results.jsonl``, ``| jq``), it stays where it was sent."""
    from rich.console import Console  # rich is imported only where it draws: one-shot --json runs start faster
    from rich.progress import Progress

    shared = sys.stdout.isatty()
    with Progress(*Progress.get_default_columns(), console=Console(stderr=True), transient=True,
                  redirect_stdout=shared, redirect_stderr=True) as progress:
        yield from progress.track(predictions, total=total, description="classifying")


def _recording(predictions: Iterable[Prediction], into: list[Prediction]) -> Iterator[Prediction]:
    for prediction in predictions:
        into.append(prediction)
        yield prediction


def _counting(predictions: Iterable[Prediction], calls: Counter, unlike: list[str]) -> Iterator[Prediction]:
    for prediction in predictions:
        calls[prediction.label if prediction.error is None else None] += 1
        if prediction.unlike_training:
            unlike.append(prediction.path)
        yield prediction


def unlike_warning(unlike: list[str], classified: int, site: str | None = None, trained_among: int = 0) -> str:
    """One line for the inputs the model says are unlike its training images, whose calls are guesses: a chest
    film given to a blood-cell model, a grey smear given to a colour one, another stain or exposure. ``site``:
    where a copy's unfamiliarity was set again (``medclf calibrate --familiarity-from-site``); ``trained_among``:
    how many training images set its threshold beside the held-out ones (a run that held out too few)."""
    if len(unlike) == 1:
        which, calls, kind = f"{_printable(unlike[0])} is", "its call is", "it is"
    else:
        which, calls, kind = f"{len(unlike)} of {classified} classified inputs are", "their calls are", "they are"
    held = "held-out images" if not trained_among else \
        f"verification images, {trained_among} of them training images it knows better: more ordinary images " \
        "are flagged than that"
    images = f"the images the model was trained on (farther from them than {FAMILIARITY_QUANTILE:.1%} of its " \
        f"{held}" if site is None else \
        f"the images of {site}, where this copy was set (farther from them than {FAMILIARITY_QUANTILE:.1%} of those"
    return (f"warning: {which} unlike {images}; {UNLIKE_MARK} in the table, unlike_training in JSON): {calls} a "
            f"guess — check {kind} the kind of image the model is for")


def tally(calls: Counter, labels: tuple[str, ...]) -> str:
    """How many inputs got each call, in the model's label order: for a folder of one smear, its differential
    count; for a day's films, how many were called positive. '24 of 25 inputs classified: EOSINOPHIL 6 (25.0%),
    ...; 1 could not be'."""
    classified, failed = sum(calls.values()) - calls[None], calls[None]
    shares = ", ".join(f"{label} {calls[label]}" + (f" ({calls[label] / classified:.1%})" if classified else "")
                       for label in labels)
    return (f"{classified} of {classified + failed} inputs classified: {shares}"
            + (f"; {failed} could not be" if failed else ""))


def write_csv(path: Path, predictions: list[Prediction], model_sha256: str = "", tta: str = "") -> None:
    """One row per input: path, label, probability, top_k as ``label:p;label:p``, unfamiliarity (empty where the
    model does not say), heatmap, error, the sha256 of the model file that answered and the test-time views its
    probabilities were averaged over (empty: none). UTF-8; a file name that is not (bytes from another system's
    encoding) is written back byte for byte, as the disk has it; text a spreadsheet would run is made inert."""
    with atomic_write(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "probability", "top_k", "unfamiliarity", "heatmap", "error",
                         "model_sha256", "tta"])
        for p in predictions:
            top_k = ";".join(f"{label}:{probability:.6f}" for label, probability in p.top_k)
            probability = "" if p.probability is None else f"{p.probability:.6f}"
            unfamiliarity = "" if p.unfamiliarity is None else f"{p.unfamiliarity:.4f}"
            writer.writerow([*map(_inert, (p.path, p.label or "")), probability, _inert(top_k), unfamiliarity,
                             *map(_inert, (p.heatmap or "", p.failure or "")), model_sha256, tta])


def _inert(cell: str) -> str:
    """A text cell a spreadsheet will not run: one starting as a formula does (``=``, ``+``, ``-``, ``@``, a tab
    or carriage return; a file named ``=HYPERLINK(...).jpeg`` ran in Excel) gets a leading ``'``, as OWASP
    advises for CSV files; ``-`` alone, standard input, stays."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") and cell != "-" else cell


def _print_json(predictions: Iterable[Prediction], answered_by: dict[str, str]) -> int:
    """A JSON line per input; each answer also names what gave it (``answered_by``: the model's hash, any
    test-time views), an input that failed only its reason."""
    failed = 0
    for prediction in predictions:
        failed += prediction.failure is not None
        sys.stdout.write(json.dumps(prediction.to_dict() | ({} if prediction.error else answered_by)) + "\n")
        sys.stdout.flush()
    return failed


def _print_table(predictions: Iterable[Prediction], paths: list[str], labels: tuple[str, ...]) -> int:
    """Columns file, label, probability, others on stdout, a row as each answer comes (the widths are known from
    the inputs and the model's labels, so a long run's table streams); a line per failed input on stderr. Plain
    aligned text rather than rich's tables: importing rich costs ~40 ms, an eighth of a one-shot ``medclf-run
    image.jpg`` (its progress bar, drawn on long runs only, still uses it)."""
    widths = (max(len("file"), *map(_width, map(_printable, paths))), max(len("label"), *map(_width, labels)),
              len("probability"))
    failed, header = 0, ("file", "label", "probability", "others")
    for prediction in predictions:
        if prediction.failure is not None:  # not classified, or classified (its row follows) without its overlay
            failed += 1
            print(f"error {_printable(prediction.path)}: {prediction.failure}", file=sys.stderr, flush=True)
        if prediction.error is not None:
            continue
        if header:
            _print_row(header, widths)
            header = ()
        others = ", ".join(f"{label} {p:.3f}" for label, p in prediction.top_k  # a threshold may call the
                           if label != prediction.label)  # less probable class: the others are the rest
        if prediction.unlike_training:
            others = f"{UNLIKE_MARK} ({prediction.unfamiliarity:.3g}) {others}".rstrip()
        _print_row((_printable(prediction.path), prediction.label, f"{prediction.probability:.3f}", others), widths)
    return failed


def _print_row(cells: tuple[str, ...], widths: tuple[int, ...]) -> None:
    padded = (cell + " " * (width - _width(cell)) for cell, width in zip(cells, widths))
    print("  ".join([*padded, cells[3]]).rstrip())


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal: CJK characters (Japanese, Chinese, Korean file and class names) take
    two, combining accents none; ``len`` counted one each and pushed the columns out of line."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _printable(path: str) -> str:
    """A file name on one line: control characters (a newline is legal in a name) shown as "?"."""
    return "".join(c if c.isprintable() else "?" for c in path)


def main(argv: list[str] | None = None) -> None:
    sys.exit(_run_until_the_reader_leaves(argv))


def command() -> NoReturn:
    """The ``medclf-run`` command: :func:`main`, then out without the interpreter's teardown.

    Unloading numpy, OpenCV and onnxruntime at exit took 23-37 ms of a 0.21-0.26 s one-image run (a tenth)
    and does nothing a finished run needs. So once the results are printed and flushed, the process ends at
    once — unless decoding processes were used (``multiprocessing`` loaded): then Python's own exit, which
    reaps them, is kept (such runs are long anyway)."""
    status = _run_until_the_reader_leaves(None)
    if "multiprocessing" in sys.modules:
        sys.exit(status)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        status = READER_LEFT
    os._exit(status)


def _run_until_the_reader_leaves(argv: list[str] | None) -> int:
    """:func:`run`; when whoever reads the output stops reading (``medclf-run DIR --json | head``), the run stops
    quietly with the shell's status for it, not a traceback."""
    signal.signal(signal.SIGTERM, stop_on_term)
    _standard_streams_usable()
    try:
        return run(parse(argv))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's final flush has nowhere to fail
        return READER_LEFT
    except OSError as exc:  # a full disk or a file size limit under the redirected output, the CSV's folder gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _refuse(f"writing the results failed ({exc.strerror or exc})", 1)
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's status for it, as SIGTERM ends (was a traceback)
        print("interrupted: the answers printed above are all there are", file=sys.stderr)
        return INTERRUPTED



def _standard_streams_usable() -> None:
    """A standard stream closed when the run started (``2>&-``, a service started without one), which Python
    leaves None, is written to /dev/null: every print to it ended the run in a traceback, or its status in 1 with
    the answers all printed. (Its number is not reopened: a library loaded since may hold it.) Characters the
    output's encoding lacks (``PYTHONIOENCODING=cp1252``, a Latin-1 locale) are written as escapes: a non-ASCII
    file name in the table ended the run before its CSV was written."""
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode))
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")

if __name__ == "__main__":
    command()
