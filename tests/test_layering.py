"""The package reads as the pipeline: a lower layer never imports a higher one, and no module imports itself back.

Layers, lowest first (a module may import its own layer and any layer below)::

    medvl (the root: __version__), config, errors
    data         files, manifests, cards, transforms
    text         reports: sections, sentences, labeler, report metrics (reads data's manifests)
    models       towers, tokenizer, CLIP, the Encoder interface, pretrained adapters
    objectives   losses
    train        the training loop, checkpoints, distributed helpers
    evaluate, generate, segment, merge   the "use" half of the model, one level: they use each other.
                 evaluate.vqa decodes with generate.decoding and generate.baselines reuses
                 evaluate's frozen features and probe; evaluate.segment scores segment's masks and
                 segment.prompt builds its text-prompted masks from evaluate.grounding's maps (and
                 picks thresholds with evaluate.segment_metrics); merge.py interpolates checkpoints
                 and scores them on the way (evaluate.robustness). Splitting them into two levels
                 would need those helpers moved first.
    bench        suites of evaluation jobs, reports
    serve        index, web service
    cli          argument parsing only

Every import counts, including the ones inside functions (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` blocks are ignored for the circle check (they never run). A package
this test does not know yet (new work in progress) is reported as a warning, not a failure: add
it to :data:`LAYERS` when it lands.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medvl"

LAYERS: dict[str, int] = {
    "medvl": 0, "config": 0, "errors": 0,
    "data": 1,
    "text": 2,
    "models": 3,
    "objectives": 4,
    "train": 5,
    "evaluate": 7, "generate": 7, "segment": 7, "merge": 7,
    "bench": 8,
    "serve": 9,
    "cli": 10,
}

# (importer, imported) pairs allowed to go up a layer, each with its reason. Keep this short: move the helper
# down instead (issue 13 did so for trim_padding and uses_prompt_pairs). Each entry is a debt, not a design.
_LLAVA_DEBT = ("new in issue 13 (LLaVA-style adapter): the model decodes with generate.decoding's model-agnostic "
               "decode()/DecodeConfig and batches images with generate.reports; to fix, move decoding.py into "
               "models/ (generate re-exports it) or llava.py into generate/")
ALLOWED_UPWARD: dict[tuple[str, str], str] = {  # (importer module, imported module or package)
    ("medvl.models.llava", "medvl.generate"): _LLAVA_DEBT,
}

# Module import circles still present, each with its reason. Issue 13 broke bench.runner <-> tasks/report,
# models.encoder <-> models.pretrained and objectives.describe -> train.trainer.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}  # (none left: data.check <-> data.leakage went with file_hash -> io)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path, *, type_checking: bool) -> set[str]:
    """medvl modules imported by ``name`` (resolved to submodules where ``from pkg import submodule``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in (node.body if type_checking else []) + node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m == "medvl" or m.startswith("medvl.")}


def _layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medvl"


def _allowed(name: str, target: str) -> bool:
    return any(name == src and (target == dst or target.startswith(dst + ".")) for src, dst in ALLOWED_UPWARD)


def test_no_lower_layer_imports_a_higher_one() -> None:
    bad, unknown = [], set()
    for name, path in MODULES.items():
        src_layer = _layer_of(name)
        for target in _imports(name, path, type_checking=True):
            dst_layer = _layer_of(target)
            if src_layer not in LAYERS or dst_layer not in LAYERS:
                unknown |= {x for x in (src_layer, dst_layer) if x not in LAYERS}
                continue
            if LAYERS[dst_layer] > LAYERS[src_layer] and not _allowed(name, target):
                bad.append(f"{name} ({src_layer}) imports {target} ({dst_layer})")
    if unknown:
        warnings.warn(f"test_layering: package(s) not placed in LAYERS yet: {', '.join(sorted(unknown))}",
                      stacklevel=1)
    assert not bad, "lower layer imports a higher one:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


def _graph() -> dict[str, set[str]]:
    return {n: {t for t in _imports(n, p, type_checking=False) if t in MODULES and t != n}
            for n, p in MODULES.items()}


def test_no_import_circles() -> None:
    """Runtime import circles (function-level imports included): each is a helper living in the wrong module."""
    found = _cycles(_graph())
    new = [sorted(c) for c in found if c not in ALLOWED_CYCLES]
    assert not new, f"import circle(s): {new}"


def test_the_checker_sees_what_it_must() -> None:
    """The checker itself: lazy imports count, TYPE_CHECKING ones do not form circles, a planted circle is found."""
    graph = _graph()
    assert "medvl.models.tokenizer" in graph["medvl.objectives.describe"]
    assert "medvl.bench.tasks.registry" in graph["medvl.bench.tasks.zeroshot"]
    assert "medvl.evaluate.zeroshot" in graph["medvl.bench.tasks.zeroshot"]  # imported inside run()
    assert "medvl.bench.jobs" not in graph["medvl.bench.tasks.registry"]  # TYPE_CHECKING only
    assert "medvl.bench.jobs" in _imports("medvl.bench.tasks.registry", MODULES["medvl.bench.tasks.registry"],
                                          type_checking=True)
    planted = {**graph, "medvl.errors": {*graph["medvl.errors"], "medvl.config"},
               "medvl.config": {*graph["medvl.config"], "medvl.errors"}}
    assert frozenset({"medvl.errors", "medvl.config"}) in _cycles(planted)
    assert all(_layer_of(m) in LAYERS for m in ("medvl.data.io", "medvl.cli.app", "medvl.merge", "medvl"))
