"""`graphspec export RUN -o FOLDER`: a trained model as one folder with the Hugging Face Hub's layout."""

from __future__ import annotations

HELP = ("a run's trained model as one folder (Hugging Face Hub layout): every weight, tokenizer, preprocessing, "
        "labels, model card")
QUICK_EXIT = False


def add_arguments(x) -> None:
    x.add_argument("target", help="a run directory, its checkpoint/, or one of its training checkpoints "
                   "(RUN/checkpoints/step-N)")
    x.add_argument("-o", "--out", required=True, help="the folder to write (must not exist, or be empty)")
    x.add_argument("--no-program", dest="program", action="store_false", help="leave out model.pt2 (the "
                   "torch.export program, which takes seconds to trace; load_model and predict do not need it)")


def command(args) -> int:
    from graphspec.runtime.export import export_model

    out = export_model(args.target, args.out, args.program)
    print(f"exported to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0
