"""How well `cli.py extract --template invoice` reads generated invoices: number, date, total.

    python benchmarks/bench_extract.py [--count 100] [--seed 13] [--model tesseract] [--out DIR] [--json]

Generates `--count` invoices (benchmarks/invoices.py: Russian and English, five font families,
four header layouts, varied label wording, date and amount formats, distractors, and up to three
degradations each), runs the real command line over all of them in one call, and prints the share
of documents whose number, ISO date and total are all right, per field, by language, layout and
degradation, every miss, and the wall and CPU seconds a document (the command and its worker
together, model loading included). The same seed gives the same set.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.invoices import Truth, font_families, make_invoice  # noqa: E402

FIELDS = ("number", "date", "total")


def generate(folder: Path, count: int, seed: int) -> dict[str, Truth]:
    rng = random.Random(seed)
    families = font_families()
    truths = {}
    for index in range(count):
        image, truth = make_invoice(rng, families)
        name = f"invoice_{index:03d}_{truth.language}.png"
        image.save(folder / name)
        truths[name] = truth
    (folder / "truth.json").write_text(json.dumps({k: asdict(v) for k, v in truths.items()}, ensure_ascii=False,
                                                  indent=1), encoding="utf-8")
    return truths


def right(field: str, expected, got) -> bool:
    if got is None:
        return False
    if field == "total":
        return isinstance(got, (int, float)) and abs(got - expected) < 0.005
    return got == expected


def run_cli(files: list[Path], model: str) -> tuple[dict[str, dict], float, float]:
    """The documents' results, the wall seconds and the CPU seconds of the command and its worker."""
    command = [sys.executable, str(ROOT / "cli.py"), "extract", *map(str, files), "--template", "invoice",
               "--model", model, "--format", "json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker is the command's child, reaped by it
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode not in (0, 1):
        sys.exit(f"cli.py extract failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return {doc["file"]: doc for doc in json.loads(done.stdout)["documents"]}, seconds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--model", default="tesseract")
    parser.add_argument("--out", help="keep the generated invoices and truth.json here")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as scratch:
        folder = Path(args.out) if args.out else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        truths = generate(folder, args.count, args.seed)
        results, seconds, cpu = run_cli([folder / name for name in truths], args.model)

    per_field = dict.fromkeys(FIELDS, 0)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses = []
    all_right = 0
    for name, truth in truths.items():
        fields = results.get(name, {}).get("fields", {})
        ok = {f: right(f, getattr(truth, f), fields.get(f)) for f in FIELDS}
        for f in FIELDS:
            per_field[f] += ok[f]
        whole = all(ok.values())
        all_right += whole
        keys = [f"language {truth.language}", f"layout {truth.layout}", f"font {truth.font}",
                *(f"degradation {d.split()[0]}" for d in truth.degradations or ["none"])]
        for key in keys:
            groups[key][0] += whole
            groups[key][1] += 1
        for f in FIELDS:
            if not ok[f]:
                misses.append(f"{name} {f}: expected {getattr(truth, f)!r}, got {fields.get(f)!r} "
                              f"[{truth.layout}; {', '.join(truth.degradations) or 'clean'}]")
    count = len(truths)
    figures = {"documents": count, "seed": args.seed, "model": args.model, "all_three_right": all_right / count,
               "fields": {f: per_field[f] / count for f in FIELDS}, "seconds": round(seconds, 1),
               "cpu_seconds": round(cpu, 1), "seconds_per_document": round(seconds / count, 3),
               "cpu_seconds_per_document": round(cpu / count, 3),
               "fonts": sorted(font_families()),
               "groups": {k: {"right": v[0], "of": v[1]} for k, v in sorted(groups.items())}, "misses": misses}
    if args.json:
        print(json.dumps(figures, ensure_ascii=False, indent=2))
        return 0
    print(f"{count} generated invoices (seed {args.seed}), cli.py extract --template invoice --model {args.model}: "
          f"{seconds:.0f} s wall, {cpu:.0f} s CPU ({seconds / count:.2f} s and {cpu / count:.2f} s CPU a document)")
    print(f"number, date and total all right: {all_right}/{count} = {all_right / count:.1%}")
    print("per field: " + ", ".join(f"{f} {per_field[f] / count:.1%}" for f in FIELDS))
    for key, (ok_count, total) in sorted(groups.items()):
        print(f"  {key:<32} {ok_count}/{total}")
    if misses:
        print("misses:")
        for miss in misses:
            print(f"  {miss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
