"""Mixed precision on the CPU: fp32 against bf16 autocast (runtime.precision) for the default
backbone, where runtime.precision: auto must choose.

    .venv/bin/python benchmarks/precision.py [--repeats 5] [--name mobilenet_v2] [--blocks 15]

ms per image of a forward pass (batch 64: featurize, evaluate, predict) and of a fine-tuning step
(batch 32, every block trainable: forward, backward, AdamW) in fp32 and under bf16 autocast, median
over repeats, both in the same process; and how far bf16's vectors are from fp32's (cosine) and how
often a head's argmax on them changes. Whether this CPU has native bf16 (avx512_bf16, amx_bf16)
is printed from /proc/cpuinfo. Run it alone.
"""

from __future__ import annotations

import copy
import statistics
import time

from _common import backbone_parser  # also sets sys.path and the process environment


def main() -> None:
    ap = backbone_parser(__doc__.splitlines()[0])
    ap.add_argument("--accuracy-seeds", type=int, default=3, help="full Fashion-MNIST draws for the accuracy check")
    args = ap.parse_args()

    import torch

    from pipeline_lib.image.backbones import load_backbone
    from pipeline_lib.runtime import autocast, configure_threads

    configure_threads(0)
    torch.manual_seed(0)
    flags = open("/proc/cpuinfo").read().split()
    print(f"CPU: avx512_bf16 {'avx512_bf16' in flags}, amx_bf16 {'amx_bf16' in flags}, threads {torch.get_num_threads()}")
    backbone = load_backbone(args.name, resolution=args.resolution, blocks=args.blocks)
    net = backbone.model
    with torch.no_grad():
        images = backbone.preprocess(torch.rand(64, 3, args.resolution, args.resolution)).clone()
    head = torch.nn.Linear(backbone.feature_dim, 10)

    def forward_ms(precision: str) -> float:
        with torch.inference_mode(), autocast("cpu", precision):
            net(images)
            started = time.perf_counter()
            net(images)
            return (time.perf_counter() - started) * 1000 / len(images)

    trained = copy.deepcopy(net)  # the steps change its weights: the forward and accuracy checks keep the pretrained ones

    def step_ms(precision: str) -> float:
        net = trained.train()
        optimizer = torch.optim.AdamW(list(net.parameters()) + list(head.parameters()), lr=1e-4)
        x, y = images[:32], torch.randint(0, 10, (32,))
        times = []
        for _ in range(2):
            started = time.perf_counter()
            with autocast("cpu", precision):
                loss = torch.nn.functional.cross_entropy(head(net(x)).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        return times[-1] * 1000 / len(x)

    results = {p: {"forward": [], "step": []} for p in ("fp32", "bf16")}
    for _ in range(args.repeats):
        for p in results:
            results[p]["forward"].append(forward_ms(p))
            results[p]["step"].append(step_ms(p))
    with torch.inference_mode():
        fp32 = net(images).float()
        with autocast("cpu", "bf16"):
            bf16 = net(images).float()
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16)
    with torch.no_grad():
        flips = (head(fp32.clone()).argmax(1) != head(bf16.clone()).argmax(1)).float().mean()
    print(f"{args.name}, {args.blocks} blocks, {args.resolution} px, median of {args.repeats}:")
    for kind in ("forward", "step"):
        a, b = statistics.median(results["fp32"][kind]), statistics.median(results["bf16"][kind])
        print(f"  {kind:8s} fp32 {a:6.2f} ms/img   bf16 autocast {b:6.2f} ms/img   bf16/fp32 {b / a:4.2f}x")
    print(f"  bf16 vectors vs fp32: cosine min {cosine.min():.4f} mean {cosine.mean():.4f}; "
          f"a random head's argmax changes on {flips:.1%} of 64 images")
    if args.accuracy_seeds:
        accuracy(backbone, args.accuracy_seeds)


def accuracy(backbone, seeds: int, shots: int = 20) -> None:
    """Test macro-F1 of a logistic-regression head (C = 10) on fp32 and on bf16 vectors of the same
    images: full Fashion-MNIST draws, k = 20 labelled images per class, 2,000 test images."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from pipeline_lib.image.fashion_mnist import build_sample
    from pipeline_lib.runtime import autocast

    def vectors(x: np.ndarray, precision: str) -> np.ndarray:
        out = []
        with torch.inference_mode(), autocast("cpu", precision):
            for i in range(0, len(x), 64):
                batch = torch.from_numpy(x[i:i + 64]).float().div(255).unsqueeze(1).repeat(1, 3, 1, 1)
                out.append(backbone.model(backbone.preprocess(batch)).float().numpy())
        return np.concatenate(out)

    scores = {"fp32": [], "bf16": []}
    for seed in range(seeds):
        data = build_sample(shots, 200, seed=1000 + seed)
        for precision in scores:
            head = LogisticRegression(C=10.0, max_iter=2000).fit(vectors(data["x_pool"], precision), data["y_pool"])
            predicted = head.predict(vectors(data["x_test"], precision))
            scores[precision].append(f1_score(data["y_test"], predicted, average="macro"))
    for precision, values in scores.items():
        print(f"  head test macro-F1, {precision}: " + " ".join(f"{v:.4f}" for v in values)
              + f" (mean {np.mean(values):.4f})")
    print("  bf16 - fp32 per seed: " + " ".join(f"{(b - a) * 100:+.2f}" for a, b in zip(scores["fp32"], scores["bf16"]))
          + " points")


if __name__ == "__main__":
    main()
