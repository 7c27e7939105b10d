"""Memory layout of the image backbone on CPU: contiguous (NCHW) vs channels-last (NHWC), the
layout every backbone now runs in (pipeline_lib.image.backbones: Preprocess.forward, load_backbone).

    .venv/bin/python benchmarks/channels_last.py [--repeats 5] [--name mobilenet_v2] [--blocks 15]

The default backbone (MobileNetV2, first 15 blocks, 112 px): ms per image of a forward pass
(batch 64: featurize, evaluate, predict) and of a fine-tuning step (batch 32, every block
trainable, BatchNorm frozen: forward, backward, AdamW), median and spread over repeats, both
layouts in the same process; and the largest difference between their outputs. Run it alone.
"""

from __future__ import annotations

import statistics
import time

from _common import backbone_parser  # also sets sys.path and the process environment


def main() -> None:
    ap = backbone_parser(__doc__.splitlines()[0])
    args = ap.parse_args()

    import torch

    from pipeline_lib.image.backbones import load_backbone
    from pipeline_lib.runtime import configure_threads

    configure_threads(0)
    torch.manual_seed(0)
    backbone = load_backbone(args.name, resolution=args.resolution, blocks=args.blocks)
    nets = {"channels-last (default)": backbone.model}
    contiguous = load_backbone(args.name, resolution=args.resolution, blocks=args.blocks).model
    nets["contiguous"] = contiguous.to(memory_format=torch.contiguous_format)
    images = torch.rand(64, 3, args.resolution, args.resolution)
    inputs = {"channels-last (default)": backbone.preprocess(images),
              "contiguous": backbone.preprocess(images).contiguous()}

    def forward_ms(name: str) -> float:
        with torch.inference_mode():
            nets[name](inputs[name])
            started = time.perf_counter()
            nets[name](inputs[name])
            return (time.perf_counter() - started) * 1000 / len(images)

    def step_ms(name: str) -> float:
        net = nets[name]
        for p in net.parameters():
            p.requires_grad_(True)
        head = torch.nn.Linear(backbone.feature_dim, 10)
        opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=1e-4)
        x, y = inputs[name][:32], torch.randint(0, 10, (32,))
        times = []
        for _ in range(3):  # the first step allocates
            started = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(net(x)), y).backward()
            opt.step()
            times.append(time.perf_counter() - started)
        for p in net.parameters():
            p.requires_grad_(False)
        return min(times[1:]) * 1000 / len(x)

    with torch.inference_mode():
        diff = (nets["contiguous"](inputs["contiguous"]) - backbone.model(inputs["channels-last (default)"])).abs().max()
    results = {name: {"forward": [], "step": []} for name in nets}
    for _ in range(args.repeats):
        for name in nets:  # interleaved: both layouts see the same machine state
            results[name]["forward"].append(forward_ms(name))
            results[name]["step"].append(step_ms(name))
    print(f"{args.name}, {args.blocks} blocks, {args.resolution} px, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats (median, min-max ms per image)")
    for name, r in results.items():
        f, s = r["forward"], r["step"]
        print(f"  {name:24s} forward {statistics.median(f):5.2f} ({min(f):.2f}-{max(f):.2f})   "
              f"fine-tuning step {statistics.median(s):5.2f} ({min(s):.2f}-{max(s):.2f})")
    ref, new = results["contiguous"], results["channels-last (default)"]
    print(f"  speed-up: forward {statistics.median(ref['forward']) / statistics.median(new['forward']):.2f}x, "
          f"fine-tuning step {statistics.median(ref['step']) / statistics.median(new['step']):.2f}x; "
          f"largest feature difference {float(diff):.2e}")


if __name__ == "__main__":
    main()
