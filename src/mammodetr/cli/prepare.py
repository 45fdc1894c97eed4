"""``mammodetr prepare``: convert a dataset into a prepared folder (16-bit PNGs + COCO annotations + report).

The preparation flags (``--crop``, ``--flip-to``, ``--max-side``, ``--mask-background``, ...) are the fields of
:class:`~mammodetr.data.preprocess.PrepareOptions`, with its defaults and help texts. Background masking is on for a
new dataset; re-running into an existing one keeps what it recorded unless ``--[no-]mask-background`` is given.
``--id-key``, ``--source-map`` and ``--rekey`` choose how identifiers are pseudonymised (docs/security.md).
"""

from __future__ import annotations

import argparse
import dataclasses

from mammodetr.cli.options import add_dataclass_flags, default_of, given
from mammodetr.data.converters import SOURCES, cbis_ddsm, check_images_found, convert, vindr
from mammodetr.data.counts import format_count_table
from mammodetr.data.id_key import ENV_VAR, load_id_key
from mammodetr.data.prepare import default_options, prepare_dataset
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.outputs import OutputConflictError, check_separate, count_within


def _birads_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated BI-RADS categories like 4,5, got {text!r}"
        ) from None
    if not values or any(v < 0 or v > 6 for v in values):
        raise argparse.ArgumentTypeError(f"BI-RADS categories must be 0-6, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, choices=list(SOURCES), help="input dataset format")
    parser.add_argument("--input", required=True, help="CSV/JSON file or dataset folder (see docs/data.md)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--images-dir", default=None, help="folder the table's image paths are relative to")
    add_dataclass_flags(parser, PrepareOptions)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU cores)")
    birads = default_of(vindr.convert, "positive_birads")
    parser.add_argument("--vindr-positive-birads", type=_birads_list, default=birads,
                        help=f"VinDr: BI-RADS categories counted as malignant (default: {','.join(map(str, birads))})")
    merge = default_of(cbis_ddsm.convert, "merge_duplicate_views")
    parser.add_argument("--cbis-keep-duplicate-views", dest="cbis_merge_views", action="store_false", default=merge,
                        help="CBIS-DDSM: keep the Mass- and Calc- copies of one view as two images, each with only "
                             "its own boxes (to study masses or calcifications alone); by default they are merged "
                             "into one image carrying every box")
    parser.add_argument("--id-key", metavar="FILE", default=None,
                        help=f"secret key of the patient/study pseudonyms and source hashes, kept outside the dataset "
                             f"(created, mode 0600, when missing; default: ${ENV_VAR} if set, else "
                             "$XDG_CONFIG_HOME/mammodetr/id.key, i.e. ~/.config/mammodetr/id.key); "
                             "see docs/security.md")
    parser.add_argument("--source-map", metavar="FILE", default=None,
                        help="private file mapping the dataset's source hashes back to the file paths (default: "
                             "source-maps/ beside the id key; never inside --out)")
    parser.add_argument("--rekey", action="store_true",
                        help="prepare an existing --out made with another id key (or by an older mammodetr that "
                             "stored its salt there) again under this key: every image is renamed and the old names "
                             "removed; without it such a folder is refused")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _check_out(args: argparse.Namespace, conversion) -> None:
    """The prepared folder may not be, lie inside or contain an input, nor hold any of the images the table names
    (their paths are not quoted: they may hold patient identifiers)."""
    check_separate({"--out": args.out}, {"--input": args.input, "--images-dir": args.images_dir})
    n = count_within((r.image_path for r in conversion.records), args.out)
    if n:
        raise OutputConflictError(f"--out {args.out} holds {n} of the {len(conversion.records)} images to prepare: "
                                  f"the prepared images would be written beside them; choose an --out outside the "
                                  f"images")


def run(args: argparse.Namespace) -> int:
    flags = given(args, PrepareOptions)
    options = dataclasses.replace(default_options(args.out), **flags)
    if "mask_background" not in flags and not options.mask_background:
        print(f"background masking: off, as recorded in {args.out} (--mask-background prepares every image again "
              f"with it)")
    extra = {"images_dir": args.images_dir} if args.images_dir else {}
    if args.source == "vindr":
        extra["positive_birads"] = args.vindr_positive_birads
    if args.source == "cbis-ddsm":
        extra["merge_duplicate_views"] = args.cbis_merge_views
    conversion = convert(args.source, args.input, **extra)
    if "layout" in conversion.summary:
        print(conversion.summary["layout"])
    check_images_found(conversion, args.input)
    _check_out(args, conversion)
    key = load_id_key(args.id_key)
    if key.created:
        print(f"created a new id key {key.path} (mode 0600): back it up and keep it private; later runs need it to "
              "give the same patients the same pseudonyms (docs/security.md)")
    report = prepare_dataset(conversion, args.out, options, workers=args.workers, progress=not args.no_progress,
                             id_key=key, source_map=args.source_map, rekey=args.rekey)
    print(_summary_line(report, args.out))
    print(format_count_table(report["counts"]))
    print(f"report: {args.out}/prepare_report.json")
    print(f"source map (private, outside the dataset): {report['source_map']}")
    return 0 if report["images_prepared"] > 0 else 1


def _summary_line(report: dict, out: str) -> str:
    labels = ", ".join(f"{k} {v}" for k, v in report["labels"].items())
    merged = report["conversion"].get("duplicate_views_merged")
    merged_text = f"{merged} duplicate views merged, " if merged is not None else ""
    dropped = report.get("duplicate_rows_dropped")
    dropped_text = f"{dropped} duplicate rows dropped, " if dropped else ""
    return (f"prepared {report['images_prepared']} of {report['images_in_source']} images into {out} "
            f"({labels}; {report['images_with_boxes']} with boxes, {report['boxes']} boxes; {merged_text}"
            f"{dropped_text}{report['images_reused_from_earlier_run']} reused, {report['images_skipped']} skipped, "
            f"{len(report['problems'])} problems; {report['seconds']:.1f} s)")
