"""A QuPath project (0.5-0.7) made from a ``wsi-ai run`` output folder OUT.

``write_project(OUT, PROJECTDIR)`` writes one folder, which appears whole: ``project.qpproj``
(one entry per finished slide, ``OUT/slides/<name>/slide.json``, in name order: its ``file:/``
URI, the server builder QuPath needs (:func:`server_builder`), ids 1..N, a uuid5 of the slide
path as randomized name, so a rerun differs only in the timestamps, and flat string metadata);
``wsi-ai/<name>/*.geojson``, copies of the slide's GeoJSON files (the project stays whole when
OUT moves or is on another machine); ``scripts/import-wsi-ai-geojson.groovy``, which imports
them (Run > Run for project; an object whose id is already there is not added again); and
``classifiers/classes.json``, the classes found, with their colours. A slide file no longer at
its path is kept, with a warning: QuPath's URI check offers to find it when the project opens.
The rules come from ``qupath-project-format.md`` (QuPath's DefaultProject and builders).
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_ai.errors import InvalidInputError
from wsi_ai.outputs import atomic_output

PROJECT_VERSION = "0.5.0"  # any plain version string loads; nothing compares it
OPENSLIDE = "qupath.lib.images.servers.openslide.OpenslideServerBuilder"
BIOFORMATS = "qupath.lib.images.servers.bioformats.BioFormatsServerBuilder"
# Formats OpenSlide's vendor detection takes, for a record that does not say its reader.
OPENSLIDE_SUFFIXES = frozenset({".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu"})
GEOJSON_DIR = "wsi-ai"
GEOJSON_KEY = "wsi-ai.geojson"
SCRIPT_NAME = "import-wsi-ai-geojson"
MENU_PATH = (
    "File > Project... > Open project, then Automate > Project scripts... > "
    f"{SCRIPT_NAME} and, in the Script editor, Run > Run for project"
)

_REPAIR = "QuPath asks where it went on opening (File > Project... > Check project URIs)"
SCRIPT = """\
// wsi-ai export-qupath: imports the current image's GeoJSON files, copied into this project
// under wsi-ai/<image name>/ (the entry's metadata wsi-ai.geojson). For every image: Automate >
// Project scripts... > import-wsi-ai-geojson, then in the Script editor Run > Run for project.
// A rerun adds nothing twice: an object whose id is already in the image (with its edits and
// child objects) is kept and the new copy dropped. Other objects are left alone.
import java.util.Collections
import java.util.IdentityHashMap

def entry = getProjectEntry()
if (entry == null) {
    println 'wsi-ai: no project image; open the project and use Run > Run for project'
    return
}
def where = getProjectEntryMetadataValue('wsi-ai.geojson') ?: 'wsi-ai/' + entry.getImageName()
def folder = new File(buildFilePath(PROJECT_BASE_DIR, where))
def files = (folder.listFiles() ?: []).findAll {
    def name = it.getName().toLowerCase()
    it.isFile() && (name.endsWith('.geojson') || name.endsWith('.geojson.gz'))
}.sort { it.getName() }
if (files.isEmpty()) {
    println "wsi-ai: no GeoJSON file for ${entry.getImageName()} in ${folder}"
    return
}
def mpp = getProjectEntryMetadataValue('wsi-ai.slide_mpp')  // --slide-mpp given to the run
if (mpp != null && !getCurrentServer().getPixelCalibration().hasPixelSizeMicrons()) {
    setPixelSizeMicrons(mpp as double, mpp as double)
    println "wsi-ai: ${entry.getImageName()}: pixel size set to ${mpp} um, as the run assumed"
}
def hierarchy = getCurrentHierarchy()
for (file in files) {
    def before = Collections.newSetFromMap(new IdentityHashMap())
    before.addAll(hierarchy.getFlattenedObjectList(null))
    def known = before.collect { it.getID() } as Set
    importObjectsFromFile(file.getAbsolutePath())
    def added = hierarchy.getFlattenedObjectList(null).findAll { !before.contains(it) }
    def again = added.findAll { known.contains(it.getID()) }
    if (!again.isEmpty())
        removeObjects(again, true)
    println "wsi-ai: ${entry.getImageName()}: ${file.getName()}: " +
        "${added.size() - again.size()} object(s) added, ${again.size()} already there"
}
fireHierarchyUpdate()
"""


@dataclass
class Entry:
    """One project image: a finished slide of OUT."""

    name: str
    path: Path
    builder: dict[str, Any]
    geojson: list[Path]
    metadata: dict[str, str]
    missing: bool = False

    def summary(self, entry_id: int) -> dict[str, Any]:
        files = [f"{GEOJSON_DIR}/{self.name}/{p.name}" for p in self.geojson]
        more = {"geojson": files, "missing": self.missing}
        return {"entryID": entry_id, "imageName": self.name, **self.builder, **more}


@dataclass
class ProjectReport:
    project: Path
    entries: list[Entry]
    classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def geojson_files(self) -> int:
        return sum(len(e.geojson) for e in self.entries)

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": str(self.project),
            "slides": len(self.entries),
            "geojson_files": self.geojson_files,
            "script": f"scripts/{SCRIPT_NAME}.groovy",
            "classes": self.classes,
            "warnings": self.warnings,
            "entries": [e.summary(i) for i, e in enumerate(self.entries, start=1)],
            "open_with": MENU_PATH,
        }


def file_uri(path: Path) -> str:
    """``file:/…`` (QuPath's own spelling), every unsafe character percent-encoded."""
    uri = path.resolve().as_uri()
    return "file:/" + uri[len("file:///") :] if uri.startswith("file:///") else uri


def server_builder(slide: dict[str, Any], uri: str) -> dict[str, Any]:
    """The ``serverBuilder`` of a slide record: OpenSlide for what OpenSlide read, else
    Bio-Formats on its first series (what tiffslide reads).

    ``--no-crop``: QuPath's OpenSlide server otherwise crops to ``openslide.bounds-*`` (MRXS,
    some SCN/NDPI), which would shift our level-0 coordinates. DICOM goes to Bio-Formats, as
    QuPath's OpenSlide reads it only from 0.7 on."""
    if slide.get("backend") is None:
        openslide = Path(str(slide.get("path", ""))).suffix.lower() in OPENSLIDE_SUFFIXES
    else:
        openslide = slide["backend"] == "openslide" and slide.get("vendor") != "dicom"
    provider, args = (OPENSLIDE, ["--no-crop"]) if openslide else (BIOFORMATS, ["--series", "0"])
    return {"builderType": "uri", "providerClassName": provider, "uri": uri, "args": args}


def _read_json(path: Path) -> Any:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _labels(out: Path) -> dict[str, str]:
    try:
        with (out / "summary.csv").open(newline="", encoding="utf-8") as f:
            return {r["slide"]: r["label"] for r in csv.DictReader(f) if r.get("label")}
    except (OSError, KeyError, csv.Error):
        return {}


def _metadata(name: str, record: dict[str, Any], label: str | None) -> dict[str, str]:
    """Flat string metadata (QuPath 0.5 fails a project on a nested value)."""
    slide, pred = record["slide"], record.get("prediction") or {}
    values = {
        GEOJSON_KEY: f"{GEOJSON_DIR}/{name}",
        "wsi-ai.pipeline": record.get("pipeline"),
        "wsi-ai.finished": record.get("finished"),
        "wsi-ai.mpp": slide.get("mpp"),
        "wsi-ai.slide_mpp": (record.get("identity") or {}).get("slide_mpp"),
        "wsi-ai.vendor": slide.get("vendor"),
        "wsi-ai.backend": slide.get("backend"),
        "wsi-ai.patches": record.get("patches"),
        "wsi-ai.tissue_fraction": record.get("tissue_fraction"),
        "wsi-ai.regions": record.get("regions"),
        "wsi-ai.class": pred.get("class"),
        "wsi-ai.confidence": pred.get("confidence"),
        "wsi-ai.label": label,
    }
    return {k: str(v) for k, v in values.items() if v is not None and not isinstance(v, dict)}


def find_entries(out: Path) -> tuple[list[Entry], list[str]]:
    """The finished slides of the run folder ``out`` and warnings; refuse anything else."""
    slides = out / "slides"
    if not out.is_dir():
        raise InvalidInputError(
            "no such folder (or not a folder); pass the -o folder of a `wsi-ai run`", out
        )
    if not slides.is_dir() or not any((out / n).is_file() for n in ("run.json", "summary.csv")):
        raise InvalidInputError(
            "not a `wsi-ai run` output folder (no slides/ and run.json); pass the folder "
            "given to `wsi-ai run -o`",
            out,
        )
    labels, warnings, entries = _labels(out), [], []
    for folder in sorted(p for p in slides.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "slide.json").is_file():
            continue
        try:
            record = _read_json(folder / "slide.json")
            path = Path(record["slide"]["path"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.append(f"{folder}: unreadable slide.json ({err}); left out")
            continue
        geo = (".geojson", ".geojson.gz")
        files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(geo) and p.is_file())
        entry = Entry(
            folder.name,
            path.resolve(),
            server_builder(record["slide"], file_uri(path)),
            files,
            _metadata(folder.name, record, labels.get(folder.name)),
            missing=not path.is_file(),
        )
        if entry.missing:
            warnings.append(f"{folder.name}: slide file not found at {path}; kept: {_REPAIR}")
        entries.append(entry)
    if not entries:
        raise InvalidInputError(
            "no finished slide (no slides/<name>/slide.json); see errors.json and summary.csv",
            out,
        )
    return entries, warnings


def _packed(color: Any) -> int | None:
    """A GeoJSON classification colour as QuPath's signed packed ARGB int."""
    if isinstance(color, list) and len(color) >= 3 and all(isinstance(c, int) for c in color):
        color = (color[0] & 255) << 16 | (color[1] & 255) << 8 | (color[2] & 255)
    return (0xFF << 24 | color & 0xFFFFFF) - (1 << 32) if isinstance(color, int) else None


def _classes(features: Any, found: dict[str, int | None]) -> None:
    for feature in features if isinstance(features, list) else []:
        props = feature.get("properties") if isinstance(feature, dict) else None
        if not isinstance(props, dict):
            continue
        c = props.get("classification")
        if isinstance(c, str) and c.strip():
            found.setdefault(c, None)
        elif isinstance(c, dict):
            names = c.get("names") or ([c["name"]] if c.get("name") else [])
            if names and all(isinstance(n, str) for n in names):
                name = ": ".join(names)
                if found.get(name) is None:
                    found[name] = _packed(c.get("color"))
        _classes(props.get("childObjects") or props.get("children"), found)


def class_list(files: list[Path], warnings: list[str]) -> dict[str, int | None]:
    """Class name -> colour of every classification in ``files`` (first colour wins)."""
    found: dict[str, int | None] = {}
    for path in files:
        try:
            data = _read_json(path)
        except (OSError, ValueError) as err:
            warnings.append(f"{path}: not readable JSON ({err}); QuPath will not import it")
            continue
        _classes(data.get("features") if isinstance(data, dict) else data, found)
    return found


def write_project(out: Path, project: Path, overwrite: bool = False) -> ProjectReport:
    """Write the QuPath project folder ``project`` for the run folder ``out``."""
    out, project = Path(out).absolute(), Path(project).absolute()
    if project.resolve() == out.resolve() or project.resolve() in out.resolve().parents:
        raise InvalidInputError("the project folder cannot be OUT or a folder above it", project)
    entries, warnings = find_entries(out)
    classes = class_list([p for e in entries for p in e.geojson], warnings)
    now = int(time.time() * 1000)
    images = [
        {"serverBuilder": e.builder, "entryID": i}
        | {"randomizedName": str(uuid.uuid5(uuid.NAMESPACE_URL, str(e.path))), "imageName": e.name}
        | {"metadata": e.metadata, "tags": []}
        for i, e in enumerate(entries, start=1)
    ]
    qpproj = {"version": PROJECT_VERSION, "createTimestamp": now, "modifyTimestamp": now}
    qpproj |= {"uri": file_uri(project / "project.qpproj"), "lastID": len(entries)}
    qpproj["images"] = images
    with atomic_output(project, overwrite=overwrite) as tmp:
        tmp.mkdir()
        (tmp / "project.qpproj").write_text(json.dumps(qpproj, indent=2) + "\n", "utf-8")
        (tmp / "scripts").mkdir()
        (tmp / "scripts" / f"{SCRIPT_NAME}.groovy").write_text(SCRIPT, "utf-8")
        for e in entries:
            (tmp / GEOJSON_DIR / e.name).mkdir(parents=True)
            for src in e.geojson:
                shutil.copyfile(src, tmp / GEOJSON_DIR / e.name / src.name)
        if classes:
            listed = [{"name": n} | ({} if c is None else {"color": c}) for n, c in classes.items()]
            (tmp / "classifiers").mkdir()
            text = json.dumps({"pathClasses": listed}, indent=2) + "\n"
            (tmp / "classifiers" / "classes.json").write_text(text, "utf-8")
    return ProjectReport(project, entries, list(classes), warnings)
