"""Extract the `v1` schemas of KubeRay's RayCluster and RayJob CRDs into the JSON files beside this script.

    python tests/cluster/kuberay_crds/extract.py KUBERAY_CHECKOUT/ray-operator/config/crd/bases

KubeRay's CRD files are ~2.3 MB together; the test needs only each CRD's `v1` `openAPIV3Schema`. The
`description` fields (prose, kept nowhere else in a check) are dropped; nothing else is changed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


def _without_descriptions(schema):
    if isinstance(schema, dict):
        return {k: _without_descriptions(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [_without_descriptions(v) for v in schema]
    return schema


def main(bases: Path) -> None:
    for kind, name in FILES.items():
        crd = yaml.safe_load((bases / name).read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _without_descriptions(version["schema"]["openAPIV3Schema"])
        (HERE / f"{kind}.v1.json").write_text(json.dumps(schema, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
