"""Featurize's throughput on texts against the raw encoder: the embedded drug reviews (435 texts)
through the featurize stage with a cold cache (reading the prepared text files, embedding,
writing the cache and the feature files) vs sentence-transformers' own `encode` on the same
texts in memory, same batch size; median of --repeats, both in the same process. Target
(issue 14): featurize >= 0.9x the raw forward pass. Run it alone.

    .venv/bin/python benchmarks/text_throughput.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import ROOT  # noqa: F401  (sys.path, process environment)

from pipeline_lib.config import parse_params
from pipeline_lib.paths import Paths
from pipeline_lib.stages import run_stage, run_stages
from pipeline_lib.text.drug_reviews import SAMPLE
from pipeline_lib.text.encoder import load_text_encoder
from pipeline_lib.text.files import read_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    featurize, raw = [], []
    with tempfile.TemporaryDirectory(prefix="text-throughput-") as tmp:
        root = Path(tmp)
        params = parse_params({"data": {"source": "manifest", "path": str(SAMPLE), "shots_per_class": None},
                               "finetune": {"enabled": False}})
        paths = Paths.for_root(root)
        run_stages(params, paths, last="augment")
        manifest = json.loads(paths.ingest_report.read_text())["counts"]
        texts = [read_text(p) for p in sorted(paths.texts_dir.glob("*.txt"))]
        encoder = load_text_encoder(params.text.encoder, params.text.max_length)
        encoder.encode(texts[:64], params.featurize.batch_size)  # warm-up
        for r in range(args.repeats):
            cache = root / f"cache{r}"  # cold every time
            cold = parse_params({**params.model_dump(), "featurize": {**params.featurize.model_dump(),
                                                                      "cache_dir": str(cache)}})
            report = run_stage("featurize", cold, paths)
            featurize.append(report["computed"] / report["seconds"])
            started = time.perf_counter()
            encoder.encode(texts, params.featurize.batch_size)
            raw.append(len(texts) / (time.perf_counter() - started))
    f, r = statistics.median(featurize), statistics.median(raw)
    print(f"{len(texts)} texts ({manifest}), batch {params.featurize.batch_size}, {args.repeats} repeats (median):")
    print(f"  featurize stage, cold cache: {f:.1f} texts/s   raw SentenceTransformer.encode: {r:.1f} texts/s   "
          f"ratio {f / r:.2f}x")


if __name__ == "__main__":
    main()
