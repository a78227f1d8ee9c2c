"""The labelled images ``mmcli eval`` scores: a folder per class (ImageFolder) or a ``--truth`` CSV, and the
``--labels-file`` that maps their class names to the labels the model scores.

Everything here is checked before any model loads, so a mistake in the data is one usage error at once.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from mmcli.commands.classify import COMMENT, read_list_file
from mmcli.errors import UsageError


@dataclass
class Dataset:
    """The images to score (in order), the truth of each, and the candidate labels (truths included)."""

    inputs: list[str]
    truth: dict[str, str]
    labels: list[str]


def load(data: str | None, truth_csv: Path | None, labels_file: Path | None) -> Dataset:
    if data is not None and truth_csv is not None:
        raise UsageError("give either DATA (a folder per class) or --truth FILE.csv, not both")
    if data is None and truth_csv is None:
        raise UsageError("nothing to evaluate: give DATA (a folder per class) or --truth FILE.csv")
    if truth_csv is not None:
        pairs, where = read_truth_csv(truth_csv), f"--truth {truth_csv}"
    else:
        assert data is not None
        pairs, where = image_folder(data), data
    names = list(dict.fromkeys(name for _, name in pairs))
    if labels_file is None:
        mapping, labels = {name: name for name in names}, sorted(names)
    else:
        mapping, labels = read_mapping(labels_file)
        mapping |= {name: name for name in names if name not in mapping and name in labels}
        missing = [name for name in names if name not in mapping]
        if missing:
            raise UsageError(
                f"--labels-file {labels_file} does not list {missing[0]!r} (a class of {where})"
                + (f" nor {len(missing) - 1} more" if len(missing) > 1 else "")
            )
    truth = {path: mapping[name] for path, name in pairs}
    return Dataset([path for path, _ in pairs], truth, labels)


def read_mapping(path: Path) -> tuple[dict[str, str], list[str]]:
    """``--labels-file``: ({class name: label}, the candidate labels in file order). A line is either
    ``name: label`` (a folder or CSV label, then the text the model scores; the first colon splits) or a bare
    ``label``, which a class of that very name takes. Every line's label is a candidate, so one that no class
    takes is a distractor the model may still choose."""
    mapping: dict[str, str] = {}
    labels: list[str] = []
    for line in read_list_file(path, "--labels-file", "labels", COMMENT):
        name, colon, label = (part.strip() for part in line.partition(":"))
        if not colon:
            label = name
        elif not name or not label:
            raise UsageError(f"--labels-file {path}: {line!r} needs text on both sides of the colon")
        elif name in mapping:
            raise UsageError(f"--labels-file {path}: {name!r} is mapped twice")
        else:
            mapping[name] = label
        if label not in labels:
            labels.append(label)
    return mapping, labels


def image_folder(data: str) -> list[tuple[str, str]]:
    """(image, class) pairs of DATA/<class>/...: class folders in sorted order, each walked recursively as
    INPUT directories are (images only, hidden entries skipped). Images at the top of DATA have no class
    and are left out, as in torchvision's ImageFolder."""
    from mmcli.errors import InputError
    from mmcli.sources.inputs import walk

    if not os.path.exists(data):
        raise UsageError(f"DATA {data}: no such directory")
    if not os.path.isdir(data):
        raise UsageError(
            f"DATA {data} is not a directory (a folder per class); for a list use --truth FILE.csv"
        )
    try:
        classes = sorted(
            entry.name
            for entry in os.scandir(data)
            if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=True)
        )
        pairs = [(path, name) for name in classes for path in walk(os.path.join(data, name))]
    except (OSError, InputError) as exc:
        raise UsageError(f"DATA {data}: {getattr(exc, 'strerror', None) or exc}") from None
    if not pairs:
        raise UsageError(f"DATA {data} holds no images in class folders (DATA/<label>/image.jpg)")
    return pairs


def read_truth_csv(path: Path) -> list[tuple[str, str]]:
    """(image, class) pairs of a CSV with ``path`` and ``label`` columns (UTF-8, a header row). A relative
    path is relative to the CSV's folder; a URL is kept as it is."""
    from mmcli.sources.inputs import is_url

    option = f"--truth {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{option}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{option} is not UTF-8 text; save it as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [cell.strip().lower() for cell in next(reader, [])]
    if "path" not in header or "label" not in header:
        found = ", ".join(h for h in header if h) or "none"
        raise UsageError(f"{option} needs the columns path,label (its header names: {found})")
    at_path, at_label = header.index("path"), header.index("label")
    base = path.parent
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        cells = row + [""] * (len(header) - len(row))
        name, label = cells[at_path].strip(), cells[at_label].strip()
        if not name or not label:
            raise UsageError(f"{option} line {line}: a row needs both a path and a label")
        if not is_url(name) and not os.path.isabs(name) and base != Path("."):
            name = os.path.join(base, name)
        if name in seen:
            raise UsageError(f"{option} line {line}: {name} is listed already (line {seen[name]})")
        seen[name] = line
        pairs.append((name, label))
    if not pairs:
        raise UsageError(f"{option} lists no images")
    return pairs
