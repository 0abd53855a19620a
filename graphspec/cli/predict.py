"""`graphspec predict MODEL --image F --text T`: an exported model's answers, in words or JSON."""

from __future__ import annotations

import json

from .common import add_device, device

HELP = "run an exported model on an image and a text: match probability, or the task head's answer"
QUICK_EXIT = False


def add_arguments(pr) -> None:
    pr.add_argument("model", help="a folder `graphspec export` wrote, or a hub model id")
    pr.add_argument("--image", action="append", default=[], metavar="FILE", help="an image file (repeatable)")
    pr.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text (repeatable); one image "
                    "and several texts, or several images and one text, are paired each with each")
    pr.add_argument("--json", action="store_true", help="print JSON instead of lines")
    add_device(pr)


def command(args) -> int:
    import torch

    from graphspec.runtime.inference import load_model

    model, processor = load_model(args.model, device(args.device))
    images, texts = args.image, args.text
    with torch.no_grad():
        out = model(**processor(images=images or None, text=texts or None))
    rows = max(len(images), len(texts))
    results = [{"image": images[i if len(images) > 1 else 0] if images else None,
                "text": texts[i if len(texts) > 1 else 0] if texts else None, **model.describe(out, i)}
               for i in range(rows)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        said = "; ".join(f"{head} " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in answer.items())
                         for head, answer in r.items() if isinstance(answer, dict))
        print(f"{r['image'] or '-'} | {r['text'] or '-'}: {said}")
    return 0
