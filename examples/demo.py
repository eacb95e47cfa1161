"""The main job in one screen: retrieved passages that contradict the default model's memory,
answered by the plain model and by the same model steered toward the passage.

    bash scripts/demo.sh            (set-up included)
    .venv/bin/python examples/demo.py --model gemma3-270m
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from pasta_rag import PastaModel, emphasize
from pasta_rag.prompts import question_prompt

CASES = [
    ("The Eiffel Tower, the wrought-iron landmark completed in 1889, stands in the centre of Rome.",
     "In which city is the Eiffel Tower?"),
    ("Romeo and Juliet, the tragedy of two young lovers from Verona, was written by Charles Dickens.",
     "Who wrote Romeo and Juliet?"),
    ("The Statue of Liberty, the copper statue given as a gift in 1886, stands in the harbour of Sydney.",
     "In which city is the Statue of Liberty?"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    console = Console()
    started = time.perf_counter()
    model = PastaModel.from_pretrained(args.model)
    console.print(f"Loaded {model.name} in {time.perf_counter() - started:.1f} s; steering "
                  f"{len(model.heads)} heads ({model.heads.metadata.get('method', 'shipped head set')}), "
                  f"alpha={model.alpha}.")
    table = Table(show_lines=True)
    for column in ("retrieved passage and question", "unsteered", "steered (passage emphasized)"):
        table.add_column(column, ratio=1)
    for passage, question in CASES:
        prompt, prompt_format = question_prompt(emphasize(passage), question, bool(model.tokenizer.chat_template))
        unsteered = model.generate(prompt, steer=False, max_new_tokens=args.max_new_tokens).text.strip()
        steered = model.generate(prompt, max_new_tokens=args.max_new_tokens).text.strip()
        table.add_row(f"{passage}\n[bold]{question}[/bold]", unsteered, steered)
    table.title = f"{model.name}, {prompt_format}"
    console.print(table)


if __name__ == "__main__":
    main()
