"""`kdtrain layers SWEEPFILE`: the teachers' and the student's module paths with their output shapes for one batch
of the sweep's data, so that kd.features pairs can be picked without reading model code.

The models are built as the sweep file describes them (untrained: a layer's output shape does not depend on its
weights) and run once on 2 rows of the validation split, a forward hook on every module recording what it
returns. The paths are what kd.features takes (kdtrain.distill.features.root: inside kdtrain's own wrappers).
"""

from __future__ import annotations


def layer_rows(model, x, inner=None) -> list[dict]:
    """(path, type, output shape) of every module of ``inner`` (default: the network inside model's wrappers) as
    model runs on the batch x, in the order they are defined; '-' for a module that did not run, the type name of an
    output that is not a tensor."""
    import torch

    from kdtrain.distill.features import module_paths, root

    inner = inner if inner is not None else root(model)
    shapes: dict[str, str] = {}
    handles = []
    for path in module_paths(inner):

        def hook(module, inputs, out, path=path):
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            shapes.setdefault(
                path,
                "(" + ", ".join(["B", *map(str, first.shape[1:])]) + ")"
                if isinstance(first, torch.Tensor)
                else type(out).__name__,
            )

        handles.append(inner.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return [
        {"path": p, "type": type(inner.get_submodule(p)).__name__, "output": shapes.get(p, "-")}
        for p in module_paths(inner)
    ]


def cmd_layers(args) -> int:
    from kdtrain.config import sweepfile
    from kdtrain.data import datasets
    from kdtrain.distill import models, teachers
    from kdtrain.distill.features import root
    from kdtrain.ship import study_teacher
    from kdtrain.sweep.console import table

    cfg = study_teacher.resolve(sweepfile.load(args.sweep, args.set))
    ds = datasets.load(cfg.data)
    x = ds.x_val[:2].cpu()
    print(
        f"data {cfg.data.name}: input {tuple(ds.input_shape)}; output shapes for a batch of B rows "
        "(untrained models: the shapes do not depend on the weights)"
    )
    for t in cfg.teachers:
        how = teachers.kind(t)
        print(f"\nteacher {t.name} ({t.arch if how in ('train', 'weights') else how + ' file'})")
        if how not in ("train", "weights"):
            print("  no layers to hook: a teacher from a logits, ONNX or TorchScript file gives logits only")
            continue
        tds, view = teachers._domain(t, cfg, ds)
        model = teachers.build(t, tds)
        rows = layer_rows(teachers.TeacherView(model, view, None, 1.0), x, root(model))
        print(table(rows, ["path", "type", "output"]))
    s = cfg.student
    print(f"\nstudent ({s.arch}, width {s.width}" + (f", depth {s.depth})" if s.depth is not None else ")"))
    student = models.from_config(s, ds.input_shape, ds.num_classes)
    print(table(layer_rows(student, x), ["path", "type", "output"]))
    print(
        "\nname a pair in the sweep file, e.g. kd.features: [{teacher_layer: PATH, student_layer: PATH, loss: at}]"
        " (losses: at, hint, sp; see docs/losses.md)"
    )
    return 0
