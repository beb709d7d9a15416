#!/usr/bin/env python3
"""Check the Grafana dashboards given as arguments (run by .ci/run).

Each must be valid JSON with a `DS_PROMETHEUS` data source variable, and every panel other
than a row (including panels inside collapsed rows) must use that data source and have at
least one target with a non-empty PromQL `expr`. Panel ids must be unique.
"""
import json
import sys

DATASOURCE_UID = "${DS_PROMETHEUS}"


def panels_of(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def check(path):
    errors = []
    with open(path, encoding="utf-8") as file:
        dashboard = json.load(file)
    variables = dashboard.get("templating", {}).get("list", [])
    if not any(v.get("name") == "DS_PROMETHEUS" and v.get("type") == "datasource" for v in variables):
        errors.append("no datasource template variable named DS_PROMETHEUS")
    seen = set()
    count = 0
    for panel in panels_of(dashboard):
        title = panel.get("title") or "(untitled)"
        if panel.get("id") in seen:
            errors.append(f"panel {title!r}: duplicate id {panel.get('id')}")
        seen.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        count += 1
        if panel.get("datasource", {}).get("uid") != DATASOURCE_UID:
            errors.append(f"panel {title!r}: datasource is not {DATASOURCE_UID}")
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"panel {title!r}: no targets")
        for target in targets:
            if not str(target.get("expr", "")).strip():
                errors.append(f"panel {title!r}: target {target.get('refId')} has an empty expr")
    if count == 0:
        errors.append("no panels")
    for error in errors:
        print(f"{path}: {error}", file=sys.stderr)
    if not errors:
        print(f"{path}: {count} panels, all with PromQL targets")
    return not errors


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: check-dashboard.py DASHBOARD.json...")
    sys.exit(0 if all([check(path) for path in sys.argv[1:]]) else 1)
