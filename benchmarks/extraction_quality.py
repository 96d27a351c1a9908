"""Disease-level quality and speed of entity extraction on the IU / OpenI chest X-ray reports.

    python benchmarks/extraction_quality.py --out benchmarks/out/extraction

Reads the 3,955 reports that the ``torchxrayvision`` package ships
(``torchxrayvision/data/NLMCXR_reports.tgz``, Indiana University, CC BY-NC-ND 4.0) from the
installed package; nothing of the collection is copied into this repository or the outputs
(the outputs hold counts and scores only).

Reference labels come from the collection's own manual MeSH tags (``<major>``; the
``<automatic>`` tags are machine-made and not used). MeSH heading -> class (the heading is the
part before the first '/', the qualifiers follow it):

| MeSH heading (qualifier)                                       | class                      |
|----------------------------------------------------------------|----------------------------|
| Pleura/thickening, Thickening/pleura, Pulmonary Fibrosis,      | pleural other              |
| Fibrosis                                                       |                            |
| Consolidation                                                  | consolidation              |
| Nodule, Mass, Lung Neoplasms, Cavitation                       | lung lesion                |
| Opacity, Airspace Disease, Infiltrate, Density, Cicatrix,      | lung opacity               |
| Markings (interstitial), Lung Diseases, Interstitial           |                            |
| Mediastinum (enlarged, prominent, widened)                     | enlarged cardiomediastinum |
| Cardiomegaly, Cardiac Shadow/Heart (enlarged, prominent)       | cardiomegaly               |
| Fractures, Bone                                                | fracture                   |
| Pleural Effusion, Hydropneumothorax                            | pleural effusion           |
| Pneumonia                                                      | pneumonia                  |
| Pulmonary Edema, Pulmonary Congestion, Heart Failure           | edema                      |
| Pulmonary Atelectasis                                          | atelectasis                |
| Pneumothorax, Hydropneumothorax, Hemopneumothorax              | pneumothorax               |
| normal, or only headings outside the 12 classes                | no finding                 |

The mapping follows the published ontology's own term -> class facts (scar -> lung opacity,
fibrosis -> pleural other, heart failure / congestion -> edema); headings outside the 12 classes
(granulomas, emphysema, spine, devices ...) are not labels.

The published recogniser (MedTrim's OBER) is reimplemented below from its published semantics
(``PublishedRecognizer``) and run on the same FINDINGS + IMPRESSION text, as published (no
negation) and with its negation word list switched on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

CLASSES = ["pleural other", "consolidation", "lung lesion", "lung opacity",
           "enlarged cardiomediastinum", "cardiomegaly", "fracture", "pleural effusion",
           "pneumonia", "edema", "atelectasis", "pneumothorax"]

MESH_TO_CLASSES = {
    "consolidation": ["consolidation"],
    "nodule": ["lung lesion"], "mass": ["lung lesion"], "lung neoplasms": ["lung lesion"],
    "cavitation": ["lung lesion"],
    "opacity": ["lung opacity"], "airspace disease": ["lung opacity"],
    "infiltrate": ["lung opacity"], "density": ["lung opacity"], "cicatrix": ["lung opacity"],
    "lung diseases, interstitial": ["lung opacity"],
    "cardiomegaly": ["cardiomegaly"],
    "fractures, bone": ["fracture"],
    "pleural effusion": ["pleural effusion"],
    "pneumonia": ["pneumonia"],
    "pulmonary edema": ["edema"], "pulmonary congestion": ["edema"], "heart failure": ["edema"],
    "pulmonary atelectasis": ["atelectasis"],
    "pneumothorax": ["pneumothorax"], "hydropneumothorax": ["pneumothorax", "pleural effusion"],
    "hemopneumothorax": ["pneumothorax"],
    "pulmonary fibrosis": ["pleural other"], "fibrosis": ["pleural other"],
}
_ENLARGED = {"enlarged", "prominent", "widened"}


def mesh_entities(tags: list[str]) -> dict[str, set[str]]:
    """Class -> MeSH qualifiers (lowercased) of one report's manual tags; no key = no finding."""
    out: dict[str, set[str]] = {}
    for tag in tags:
        parts = [p.strip().lower() for p in tag.split("/")]
        head, quals = parts[0], set(parts[1:])
        classes = list(MESH_TO_CLASSES.get(head, []))
        if head in ("cardiac shadow", "heart") and quals & _ENLARGED:
            classes.append("cardiomegaly")
        elif head == "mediastinum" and quals & _ENLARGED:
            classes.append("enlarged cardiomediastinum")
        elif head == "markings" and "interstitial" in quals:
            classes.append("lung opacity")
        elif (head == "thickening" and "pleura" in quals) or (head == "pleura" and "thickening" in quals):
            classes.append("pleural other")
        for c in classes:
            out.setdefault(c, set()).update(quals)
    return out


def mesh_labels(tags: list[str]) -> set[str]:
    """The 12-class label set of one report from its manual MeSH tags (empty = no finding)."""
    return set(mesh_entities(tags))


def descriptor_scores(records: list[dict], gold: list[dict], kind: str, canon: dict) -> dict:
    """Micro P/R/F1 of (report, class, descriptor) triples over the classes both sides found.

    MeSH qualifiers that name a descriptor (``canon``: surface -> canonical) are the reference;
    qualifiers that are no descriptor (lung, lobe, ...) are ignored. This measures attachment:
    whether the side / size words land on the right disease."""
    tp = fp = fn = 0
    for rec, g in zip(records, gold):
        for c in set(rec) & set(g):
            # a qualifier may be several words ("lower lobe"): each word can name a descriptor
            words = set(g[c]) | {w for q in g[c] for w in q.split()}
            ref = {canon[q] for q in words if q in canon}
            got = {canon.get(x, x) for x in rec[c][kind]} & set(canon.values())
            tp += len(got & ref)
            fp += len(got - ref)
            fn += len(ref - got)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp,
            "fp": fp, "fn": fn}


class PublishedRecognizer:
    """MedTrim's published OBER, reimplemented from ``reference-semantics.md`` and its term
    lists: sentences, then clauses at 'but' / 'with' / ', which'; text after ' without ' or
    ' rather than ' is dropped; a term matches as ' term ' (case-sensitive) on the clause with
    non-letters replaced by spaces and is cut out once matched; every adjective and direction of
    a clause attaches to every disease of the clause. ``negation=True`` applies its
    DELETE_SENTENCE list: a clause with any of those words is deleted (the published pipeline
    leaves it out)."""

    def __init__(self, onto: dict, negation: bool = False):
        self.diseases = list(dict.fromkeys(onto["DISEASE"]))
        self.dmap = onto["DISEASE_MAPPING"]
        self.adjectives = list(dict.fromkeys(onto["ADJECTIVE"]))
        self.amap = onto["ADJECTIVE_MAPPING"]
        self.directions = list(onto["LUNG_DIRECTION"])
        self.negations = list(onto["DELETE_SENTENCE"]) if negation else []

    @staticmethod
    def _clauses(text: str):
        for sent in text.split("."):
            for part in re.split(r"\bbut\b|\bwith\b|, which", sent):
                for cut in (" without ", " rather than "):
                    part = part.split(cut)[0]
                yield " " + re.sub(r"[^A-Za-z]", " ", part) + " "

    @staticmethod
    def _take(clause: str, terms):
        found = []
        for t in terms:
            key = f" {t} "
            if key in clause:
                found.append(t)
                clause = clause.replace(key, " ")
        return found, clause

    def __call__(self, text: str) -> dict:
        record: dict = {}
        for clause in self._clauses(text):
            if self.negations and any(f" {w} " in clause for w in self.negations):
                continue
            adjs, clause = self._take(clause, self.adjectives)
            dirs, clause = self._take(clause, self.directions)
            dis, clause = self._take(clause, self.diseases)
            for d in dis:
                cls = self.dmap.get(d, d)
                if cls not in CLASSES:
                    continue
                e = record.setdefault(cls, {"adjs": set(), "dirs": set()})
                e["adjs"].update(self.amap.get(a, a) for a in adjs)
                e["dirs"].update(dirs)
        return record


def scores(pred: list[set], gold: list[set]) -> dict:
    """Per-class and micro/macro P/R/F1 over the 12 classes, plus the 'no finding' row."""
    rows = {}
    tot = [0, 0, 0]
    for c in CLASSES + ["no finding"]:
        tp = fp = fn = 0
        for p, g in zip(pred, gold):
            pc = (not p) if c == "no finding" else (c in p)
            gc = (not g) if c == "no finding" else (c in g)
            tp += pc and gc
            fp += pc and not gc
            fn += gc and not pc
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        rows[c] = {"support": tp + fn, "precision": prec, "recall": rec, "f1": f1,
                   "tp": tp, "fp": fp, "fn": fn}
        if c != "no finding":
            tot = [tot[0] + tp, tot[1] + fp, tot[2] + fn]
    tp, fp, fn = tot
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    micro = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
    macro_f1 = sum(rows[c]["f1"] for c in CLASSES) / len(CLASSES)
    return {"per_class": rows, "micro": micro, "macro_f1": macro_f1}


def find_iu_archive() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchxrayvision is not installed (make setup installs it); or pass --reports")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "NLMCXR_reports.tgz"
    if not path.exists():
        raise SystemExit(f"{path} not found; pass --reports")
    return path


def markdown(result: dict) -> str:
    names = list(result["systems"])
    lines = ["| class | support | " + " | ".join(f"{n} P / R / F1" for n in names) + " |",
             "|---|---:|" + "---|" * len(names)]
    for c in CLASSES + ["no finding"]:
        sup = result["systems"][names[0]]["per_class"][c]["support"]
        cells = []
        for n in names:
            r = result["systems"][n]["per_class"][c]
            cells.append(f"{r['precision']:.2f} / {r['recall']:.2f} / {r['f1']:.2f}")
        lines.append(f"| {c} | {sup} | " + " | ".join(cells) + " |")
    cells = [f"{s['micro']['precision']:.2f} / {s['micro']['recall']:.2f} / **{s['micro']['f1']:.3f}**"
             for s in result["systems"].values()]
    lines.append("| **micro (12 classes)** | | " + " | ".join(cells) + " |")
    lines.append("| macro F1 (12 classes) | | " + " | ".join(
        f"{s['macro_f1']:.3f}" for s in result["systems"].values()) + " |")
    for kind, label in (("dirs", "directions on found classes"), ("adjs", "adjectives on found classes")):
        lines.append(f"| {label} (P / R / F1) | | " + " | ".join(
            f"{s[kind]['precision']:.2f} / {s[kind]['recall']:.2f} / {s[kind]['f1']:.2f}"
            for s in result["systems"].values()) + " |")
    speed = ["| reports/s | | " + " | ".join(
        f"{result['systems'][n].get('reports_per_s', 0):,.0f}" for n in names) + " |"]
    return "\n".join(lines + speed) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reports", help="IU NLMCXR_reports.tgz (default: torchxrayvision's copy)")
    ap.add_argument("--ontology", default=str(Path(__file__).parent / "data" / "published_ontology.json"),
                    help="published term lists (JSON) for the published recogniser")
    ap.add_argument("--out", default="benchmarks/out/extraction")
    ap.add_argument("--n-process", type=int, default=0, help="workers of the parallel run (0: all cores)")
    ap.add_argument("--limit", type=int, default=0, help="use the first N reports only (smoke test)")
    args = ap.parse_args(argv)

    from medtrim_ext.extraction import EntityExtractor, SectionFilter, read_reports
    from medtrim_ext.utils.io import atomic_write

    reports = read_reports(args.reports or find_iu_archive())
    ids, texts, metas = reports.ids, reports.texts, reports.meta
    if args.limit:
        ids, texts, metas = ids[:args.limit], texts[:args.limit], metas[:args.limit]
    gold_ents = [mesh_entities(m["mesh_major"]) for m in metas]
    gold = [set(g) for g in gold_ents]
    from medtrim_ext.extraction import ExtractionOntology

    onto_ours = ExtractionOntology.default()
    canon = {"dirs": {"left": "left", "right": "right", "bilateral": "bilateral", "each": "bilateral"},
             "adjs": dict(onto_ours.adjective_terms)}
    n = len(texts)
    print(f"{n} reports from {reports.source}; {sum(1 for g in gold if not g)} without a class label")

    systems = {}

    def evaluate(name: str, recs: list[dict], seconds: float, note: str = "") -> None:
        """Disease and descriptor scores of one system's records, with its speed."""
        systems[name] = scores([set(r) for r in recs], gold)
        systems[name]["reports_per_s"] = n / seconds
        for kind in ("dirs", "adjs"):
            systems[name][kind] = descriptor_scores(recs, gold_ents, kind, canon[kind])
        print(f"{name}: micro-F1 {systems[name]['micro']['f1']:.3f}, {n / seconds:,.0f} reports/s{note}")

    serial = {}
    for policy in ("positive", "negative"):
        ex = EntityExtractor(uncertain=policy)
        ex.extract(texts[:50])  # warm-up
        t0 = time.perf_counter()
        serial[policy] = ex.extract(texts)
        evaluate(f"ours (uncertain={policy})", serial[policy], time.perf_counter() - t0, " (1 process)")
    n_process = args.n_process if args.n_process > 0 else (os.cpu_count() or 1)
    ex = EntityExtractor()  # the default policy, "negative"
    par = ex.extract(texts, n_process=n_process, batch_size=128)
    assert par == serial[ex.uncertain], "parallel and serial extraction disagree"
    # throughput on 4 copies of the collection, so that pool start-up is amortized as on a
    # real corpus; the serial run on the same input is the baseline
    many = texts * 4
    t0 = time.perf_counter()
    ex.extract(many)
    dt_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex.extract(many, n_process=n_process, batch_size=128)
    dt_par = time.perf_counter() - t0
    print(f"ours on {len(many)} reports: {len(many) / dt_one:,.0f} reports/s with 1 process, "
          f"{len(many) / dt_par:,.0f} with n_process={n_process} (pool start-up included)")

    onto = json.loads(Path(args.ontology).read_text())
    # the same image sections as ours, without the headers (OBER has no section logic)
    sections = SectionFilter(["findings", "impression"], [], ())
    plain = [" . ".join(t for h, t in sections.sections(x) if h in ("findings", "impression")) for x in texts]
    # as released; with its negation list; and, more generously than its case-sensitive
    # matching allows, with the negation list on lowercased text ("No" is then a negation)
    variants = [("published (as released)", False, False), ("published + negation list", True, False),
                ("published + negation list, lowercased", True, True)]
    for name, neg, lower in variants:
        rec = PublishedRecognizer(onto, negation=neg)
        t0 = time.perf_counter()
        recs = [rec(x.lower() if lower else x) for x in plain]
        evaluate(name, recs, time.perf_counter() - t0)

    result = {
        "reports": n, "source": "IU / OpenI chest X-ray reports (torchxrayvision NLMCXR_reports.tgz)",
        "labels": "manual MeSH <major> tags mapped to the 12 classes (see the script's table)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}",
        "n_process": n_process, "throughput_reports": len(many),
        "serial_reports_per_s": len(many) / dt_one, "parallel_reports_per_s": len(many) / dt_par,
        "systems": systems,
    }
    out = Path(args.out)
    with atomic_write(out / "extraction_quality.json") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with atomic_write(out / "extraction_quality.md") as f:
        f.write(md)
    print(md)
    print(f"wrote {out / 'extraction_quality.json'} and {out / 'extraction_quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
