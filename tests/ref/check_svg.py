#!/usr/bin/env python3
"""Parses an SVG written by `warp plot` with a real XML parser (a malformed file fails here) and
prints what tests/plot.rs checks, as JSON: the drawn points (kind, centre, tooltip), the legend
entries, the tick labels, the polylines and the text labels.
Run: python3 tests/ref/check_svg.py FILE.svg"""
import json
import sys
import xml.etree.ElementTree as E

NS = "{http://www.w3.org/2000/svg}"
# Text classes and the key each is listed under.
TEXTS = {"xtick": "xticks", "ytick": "yticks", "label": "labels", "eta": "eta"}


def text(el):
    return "".join(el.itertext())


def main(path):
    root = E.parse(path).getroot()
    assert root.tag == NS + "svg", root.tag
    out = {"width": float(root.get("width")), "height": float(root.get("height")),
           "title": text(root.find(NS + "title")), "points": [], "legend": [], "xticks": [],
           "yticks": [], "polylines": [], "labels": [], "eta": []}
    for el in root.iter():
        cls = el.get("class", "").split()
        if not cls:
            continue
        if el.tag == NS + "g" and cls[0] == "point":
            tr = el.get("transform")
            assert tr.startswith("translate(") and tr.endswith(")"), tr
            x, y = (float(v) for v in tr[len("translate("):-1].split())
            out["points"].append({"kind": cls[1], "x": x, "y": y,
                                  "title": text(el.find(NS + "title"))})
        elif cls[0] == "legend-entry":
            out["legend"].append(text(el.find(NS + "text")))
        elif cls[0] in TEXTS:
            out[TEXTS[cls[0]]].append(text(el))
        elif el.tag == NS + "polyline":
            pts = [[float(v) for v in p.split(",")] for p in el.get("points").split()]
            out["polylines"].append({"class": cls[0], "points": pts})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
