"""Score a nuclei model on held-out annotated sets through the engine, and write the table into its card.

    python tools/nuclei_heldout.py MODEL NAME=FOLDER@MPP [NAME=FOLDER@MPP ...] [--json OUT.json] [--card]

Each set is scored as ``dlcore evaluate MODEL FOLDER --mpp MPP`` scores it (reader, tiling, stitching,
label writer; one-to-one matches at IoU >= 0.5, pooled over the set's images).  ``--card`` writes the
table as the section "Held-out evaluation through the engine" of the model's README.md (replacing
an earlier one), so the card shows exactly what this command printed.  The folders come from
``tools/nuclei_eval_sets.py`` and the copies named in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SECTION = "## Held-out evaluation through the engine"


def score_sets(model: str, sets: list[tuple[str, Path, float]]) -> list[dict]:
    """One row per set: its name, images, annotated and found nuclei, F1/precision/recall, APs, seconds."""
    from dlcore.config import load_config
    from dlcore.evaluate import evaluate_instances
    from dlcore.tasks import resolve_task

    task = resolve_task(model, {}, config=load_config())
    rows = []
    for name, folder, mpp in sets:
        started = time.monotonic()
        report = evaluate_instances(task, folder, mpp=mpp)
        pooled = report["pooled"]
        rows.append({"set": name, "folder": str(folder), "mpp": mpp, "images": len(report["images"]),
                     "annotated": pooled["n_true"], "found": pooled["n_pred"], "f1": pooled["f1"],
                     "precision": pooled["precision"], "recall": pooled["recall"], "ap50": pooled["ap"]["0.50"],
                     "mean_ap": pooled["mean_ap"], "matched_iou": pooled["mean_matched_iou"],
                     "seconds": round(time.monotonic() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| set | images | annotated | found | F1@0.5 | precision | recall | AP@0.5 | mean AP@0.5:0.9 | "
             "matched IoU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} (`--mpp {r['mpp']}`) | {r['images']} | {r['annotated']} | {r['found']} | "
                     f"**{r['f1']:.3f}** | {r['precision'] or 0:.3f} | {r['recall'] or 0:.3f} | {r['ap50']:.3f} | "
                     f"{r['mean_ap']:.3f} | {r['matched_iou'] or 0:.3f} |")
    return "\n".join(lines)


def write_card_section(card: Path, body: str) -> None:
    """Replace (or append) the held-out section of ``card`` with ``body``."""
    text = card.read_text()
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        tail = rest[rest.index("\n## "):] if "\n## " in rest else "\n"
        text = head + SECTION + "\n\n" + body.strip() + "\n" + tail
    else:
        text = text.rstrip() + "\n\n" + SECTION + "\n\n" + body.strip() + "\n"
    card.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("sets", nargs="+", help="NAME=FOLDER@MPP")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--card", action="store_true", help="write the table into the model's README.md")
    parser.add_argument("--note", default="", help="text placed above the table in the card")
    args = parser.parse_args(argv)
    sets = []
    for item in args.sets:
        name, rest = item.split("=", 1)
        folder, mpp = rest.rsplit("@", 1)
        sets.append((name, Path(folder), float(mpp)))
    rows = score_sets(args.model, sets)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.card:
        from dlcore.config import load_config
        from dlcore.models.registry import find_model

        command = "python tools/nuclei_heldout.py " + " ".join([args.model, *args.sets])
        body = (args.note + "\n\n" if args.note else "") + table(rows) + f"\n\nCommand: `{command}`\n"
        write_card_section(find_model(args.model, load_config()).path / "README.md", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
