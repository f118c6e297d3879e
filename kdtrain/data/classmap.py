"""Class mappings between label spaces: a teacher's classes -> the student's, a dataset's labels -> a task's.

A teacher has its own label space and the student its own. ``teachers[].classes`` says how the teacher's classes
make the student's, in one of two forms:

- a list with one entry per student class, in the student's order: a teacher class (``[3, 5, 7]``: student class 0
  is teacher class 3, ...: a subset; the soft target is the teacher's softmax at T renormalised over the subset) or
  a list of them (``[[0, 2, 4], [1, 3, 5]]``: a coarser task).
- a mapping ``{student class: [teacher classes]}`` (``{even: [0, 2, 4, 6, 8], odd: [1, 3, 5, 7, 9]}``): a coarser
  task. The soft target is the teacher's softmax at T summed within each group, at every temperature.

Both are "groups": one list of teacher classes per student class (a subset is groups of one). A class is named by
its index (a number) or by its name (text: classes named by numbers, such as folders 0..10, are quoted, '2'); every
student class appears exactly once, and a teacher class in at most one group. A mapping keyed by student class
indices is stored as the list form (canonical): a study keeps its config as JSON, whose keys are text, and
``{2: [...]}`` read back as ``{"2": [...]}`` would name the class called 2, which is not class 2 where the names sort
as text (0, 1, 10, 2, ...); the list keeps one meaning in every process. ``data.classes`` takes the same forms for a
dataset's own labels (kdtrain.data): a mapping relabels every row (a label left out is an error; its keys are the
new class names), a list keeps the rows of those classes only.

Pure Python: parsing and checks here, the tempered sum of probabilities in kdtrain.distill.losses.map_logits.
"""

from __future__ import annotations

from typing import Any

from kdtrain.errors import DataError


def canonical(spec: Any) -> Any:
    """teachers[].classes in the one form that means the same after a JSON round trip: a mapping keyed by the
    student class indices 0..n-1 becomes the list of its groups in index order; anything else is kept as is (and
    syntax_problems says what is wrong with a mapping whose number keys are not 0..n-1, or mixed with names)."""
    if isinstance(spec, dict) and spec and all(type(k) is int for k in spec) and sorted(spec) == list(range(len(spec))):
        return [spec[i] for i in range(len(spec))]
    return spec


def syntax_problems(spec: Any, where: str, groups: bool = False) -> list[str]:
    """What is wrong with a mapping's form alone (no class counts known yet): the config-time check. groups:
    teachers[].classes (its list may hold lists, a group per student class; its mapping is keyed by names, a
    mapping keyed by indices having become a list: canonical); else data.classes."""
    if spec is None:
        return []
    if isinstance(spec, list):
        return _list_problems(spec, where, groups)
    if not isinstance(spec, dict) or not spec:
        return [f"{where}: a list of class indices or a mapping {{student class: [classes]}}, got {spec!r}"]
    problems, seen, owner = [], {}, {}
    for key, value in spec.items():
        if type(key) not in (int, str) or (type(key) is int and key < 0):
            problems.append(f"{where}: a student class is an index (>= 0) or a name, got {key!r}")
            continue
        norm = str(key)
        if norm in seen:
            problems.append(f"{where}: student class {key!r} is named twice (as {seen[norm]!r} and {key!r})")
        seen[norm] = key
        members = value if isinstance(value, list) else [value]
        if not members or not all(type(i) in (int, str) and (type(i) is not int or i >= 0) for i in members):
            problems.append(f"{where}.{key}: a class index (>= 0) or a list of them, got {value!r}")
            continue
        for i in members:
            if i in owner and owner[i] != key:
                problems.append(f"{where}: class {i!r} is in two groups ({owner[i]!r} and {key!r})")
            owner[i] = key
    numbers = sorted(k for k in spec if type(k) is int and k >= 0)
    if groups and numbers and not problems:
        problems.append(
            f"{where}: name every student class by its index or every one by its name, not both (numbers "
            f"{', '.join(map(str, numbers[:5]))}; quote a class named by a number: '2')"
            if len(numbers) < len(spec)
            else f"{where}: student classes by index are 0, 1, ... each once; "
            f"{', '.join(str(i) for i in range(numbers[-1]) if i not in numbers)} missing (map every student class)"
        )
    return problems


def _list_problems(spec: list, where: str, groups: bool) -> list[str]:
    """A list's problems: class indices (data.classes); or one teacher class or list of them per student class."""
    member = lambda i: type(i) is str or (type(i) is int and i >= 0)  # noqa: E731
    ok = (
        spec and all(type(i) is int and i >= 0 for i in spec)
        if not groups
        else spec and all(member(e) or (isinstance(e, list) and e and all(map(member, e))) for e in spec)
    )
    if not ok:
        return [
            f"{where}: a list of class indices (integers >= 0), one per student class, got {spec!r}"
            if not groups
            else f"{where}: a list with one teacher class (an index or a name) or a list of them per student "
            f"class, got {spec!r}"
        ]
    flat = [i for e in spec for i in (e if isinstance(e, list) else [e])]
    twice = sorted({i for i in flat if flat.count(i) > 1}, key=str)
    return [f"{where}: class {twice[0]!r} is listed twice (each student class needs its own)"] if twice else []


def _index(name_or_index: Any, names: list[str], what: str, where: str) -> int:
    if type(name_or_index) is str and name_or_index not in names and name_or_index.isdigit():
        name_or_index = int(name_or_index)  # a mapping's int keys come back as text from JSON (a study's config)
    if type(name_or_index) is int:
        if name_or_index >= len(names):
            owner = what.split()[0]
            raise DataError(
                f"{where}: {what} {name_or_index} does not exist (the {owner} has {len(names)} classes, "
                f"0..{len(names) - 1})"
            )
        return name_or_index
    if str(name_or_index) in names:
        return names.index(str(name_or_index))
    raise DataError(f"{where}: no {what} named {name_or_index!r} (known: {', '.join(names[:20])})")


def groups(
    spec: Any, student_names: list[str], source_names: list[str], where: str, source: str = "teacher"
) -> list[list[int]]:
    """A checked mapping -> one list of source (teacher) class indices per student class, in the student's order.
    Raises DataError naming a class index the source does not have, a student class named twice or missing."""
    if isinstance(spec, list):
        if len(spec) != len(student_names):
            raise DataError(
                f"{where}: {len(spec)} {source} classes listed for {len(student_names)} student classes "
                "(one per student class, in the student's order)"
            )
        return [
            [_index(i, source_names, f"{source} class", where) for i in (e if isinstance(e, list) else [e])]
            for e in spec
        ]
    out: dict[int, list[int]] = {}
    for key, value in spec.items():
        s = _index(key, student_names, "student class", where)
        if s in out:
            raise DataError(f"{where}: student class {student_names[s]!r} is named twice")
        out[s] = [
            _index(i, source_names, f"{source} class", where) for i in (value if isinstance(value, list) else [value])
        ]
    missing = [student_names[i] for i in range(len(student_names)) if i not in out]
    if missing:
        raise DataError(
            f"{where}: student class(es) {', '.join(map(repr, missing[:10]))} have no {source} classes "
            "(map every student class)"
        )
    return [out[i] for i in range(len(student_names))]


def relabel(spec: Any, names: list[str], where: str = "data.classes") -> tuple[list[int | None], list[str]]:
    """data.classes on a dataset with these class names -> (new label of each old label or None to drop the row,
    the new class names). A mapping must cover every label; a list keeps the listed classes, in its order."""
    if isinstance(spec, list):
        keep = [_index(i, names, "dataset class", where) for i in spec]
        new = [None] * len(names)
        for j, old in enumerate(keep):
            new[old] = j
        return new, [names[i] for i in keep]
    new: list[int | None] = [None] * len(names)
    for j, value in enumerate(spec.values()):
        for old in value if isinstance(value, list) else [value]:
            new[_index(old, names, "dataset class", where)] = j
    unmapped = [names[i] for i, v in enumerate(new) if v is None]
    if unmapped:
        raise DataError(
            f"{where}: label(s) {', '.join(map(repr, unmapped[:10]))} of the dataset are not mapped to "
            "any class; add them to a group (or list the classes to keep: data.classes: [3, 5])"
        )
    return new, [str(k) for k in spec]
