"""`sola demo`: three zsRE facts edited into the embedded model, asked before and after, one rolled back."""

from __future__ import annotations

import time

from .data import load_zsre
from .editor import Editor

# zsRE eval records (indices into zsre_mend_eval.json) whose answers the base model does not already give and which
# edit cleanly; a question from NQ checks that unrelated answers are untouched.
DEMO_RECORDS = (0, 10, 22)
UNRELATED = "What is the capital of France?"


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def run_demo(data: str | None = None, out=print) -> dict:
    started = time.perf_counter()
    records = load_zsre(data).records
    facts = [records[i] for i in DEMO_RECORDS]
    out("Loading the embedded model (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised; converted once)...")
    editor = Editor.from_pretrained()
    questions = [(f.prompt, f.rephrases[0], f.target) for f in facts]
    ask = lambda prompt: editor.generate(prompt, max_new_tokens=24)  # noqa: E731
    before = {p: ask(p) for q in questions for p in q[:2]}
    before[UNRELATED] = ask(UNRELATED)

    out(f"Editing {len(facts)} facts (prompt format: {editor.format.kind}):")
    from tqdm import tqdm

    edits = []
    for prompt, _, target in questions:
        with tqdm(total=editor.config.max_steps, desc=_short(f"{prompt} -> {target}", 50), unit="step",
                  leave=True) as bar:
            edits.append(editor.edit(prompt, target, progress=lambda step, loss: (bar.update(1),
                                                                                  bar.set_postfix(loss=f"{loss:.3f}"))))
    after = {p: ask(p) for q in questions for p in q[:2]}
    after[UNRELATED] = ask(UNRELATED)

    rolled = edits[0]
    editor.rollback(rolled.id)
    final = {p: ask(p) for q in questions for p in q[:2]}
    final[UNRELATED] = ask(UNRELATED)

    rows = []
    for (prompt, rephrase, target), edit in zip(questions, edits):
        for kind, text in (("edited", prompt), ("paraphrase", rephrase)):
            rows.append((edit.id, kind, text, target, before[text], after[text], final[text]))
    rows.append(("-", "unrelated", UNRELATED, "(unchanged)", before[UNRELATED], after[UNRELATED], final[UNRELATED]))
    header = ("edit", "question", "text", "target", "before", "after edits", f"after rollback of {rolled.id}")
    widths = (4, 10, 44, 16, 22, 22, 22)
    line = lambda cells: " | ".join(_short(str(c), w).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    out("")
    out(line(header))
    out("-+-".join("-" * w for w in widths))
    for row in rows:
        out(line(row))
    checks = {
        "edited prompts answer the target": all(after[q[0]] == q[2] for q in questions),
        "paraphrases answer the target": sum(after[q[1]] == q[2] for q in questions),
        "unrelated answer unchanged": before[UNRELATED] == after[UNRELATED] == final[UNRELATED],
        f"{rolled.id} rolled back to the base answer": final[questions[0][0]] == before[questions[0][0]],
        "other edits still answer": all(final[q[0]] == q[2] for q in questions[1:]),
    }
    out("")
    for name, value in checks.items():
        mark = value if not isinstance(value, bool) else ("yes" if value else "NO")
        out(f"  {name}: {mark}{f' of {len(questions)}' if not isinstance(value, bool) else ''}")
    seconds = time.perf_counter() - started
    made = ", ".join(f"{e.id} {e.seconds:.1f} s ({e.steps} steps)" for e in edits)
    out(f"\nEdits: {made}; demo took {seconds:.0f} s.")
    return {"rows": rows, "checks": checks, "seconds": seconds, "edits": [e.to_dict() for e in edits]}
