"""Task streams over real datasets: category choice, order, grouping and cross-dataset chains.

``load_stream("mvtec", "/data/mvtec", order="alphabetical", group="10-1x5")`` reads the
categories, orders them, cuts them into tasks (a task of several categories trains and tests
on the union of their images, and is named ``bottle+cable+...``) and checks every file.
``load_stream("mvtec+visa", ["/data/mvtec", "/data/visa"])`` chains datasets; task names are
then prefixed with their dataset (``mvtec/bottle``) so they stay unique.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from .base import DatasetLayoutError, ImageSet, Sample, Scenario, Task, order_label, resolve_order
from .datasets import BadFiles, DatasetSpec, check_files, get_spec
from .remote import resolve_root

log = logging.getLogger(__name__)

ORDER_KEYWORDS = ("alphabetical", "reverse")
DEFAULT_IMAGE_SIZE = 256  # anomalib's default input size


def parse_group(group: str | int | None, n: int) -> list[int]:
    """Task sizes for `n` ordered categories under a grouping protocol.

    ``None`` gives one category per task. A protocol is parts joined by ``-``: ``A`` is one task
    of A categories, ``AxK`` is K tasks of A. A bare number at the end repeats until the
    categories run out, so ``"14-1"`` on 15 categories is [14, 1], ``"10-5"`` is [10, 5],
    ``"3x5"`` is five tasks of three, ``"10-1x5"`` is [10, 1, 1, 1, 1, 1].
    """
    if group is None or group == "":
        return [1] * n
    text = str(group).strip()
    if not re.fullmatch(r"\d+(x\d+)?(-\d+(x\d+)?)*", text):
        raise ValueError(f"group {group!r}: expected a protocol such as 14-1, 10-5, 3x5 or 10-1x5")
    parts = text.split("-")
    sizes: list[int] = []
    for k, part in enumerate(parts):
        if "x" in part:
            size, count = (int(v) for v in part.split("x"))
            sizes += [size] * count
        elif k == len(parts) - 1 and (k > 0 or len(parts) == 1):
            size = int(part)
            if size <= 0:
                break
            rest = n - sum(sizes)
            sizes += [size] * max(rest // size, 0 if sizes else 1)
        else:
            sizes.append(int(part))
    if any(s <= 0 for s in sizes) or sum(sizes) != n:
        raise ValueError(f"group {group!r} gives tasks of sizes {sizes} ({sum(sizes)} categories), but the stream "
                         f"has {n} categories; choose categories or a protocol whose sizes add up to {n}")
    return sizes


def _split_list(value: str | Path | Sequence[str | Path] | None) -> list:
    """A comma-separated string, a single path, or a sequence, as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Path):
        return [value]
    return list(value)


def _datasets(dataset: str | Sequence[str]) -> list[str]:
    names = [d.strip() for d in dataset.split("+")] if isinstance(dataset, str) else list(dataset)
    if len(set(names)) != len(names):
        raise ValueError(f"dataset {dataset!r} names a dataset twice; a stream visits each dataset once")
    return names


def _task_name(spec: DatasetSpec, category: str, prefix: bool) -> str:
    if not prefix or len(spec.categories) == 1 and category == spec.categories[0] == spec.name:
        return category
    return f"{spec.name}/{category}"


def _full_name(name: str, available: dict[str, tuple[str, str]]) -> str:
    """`name` itself if it is a task name, else the one task whose bare category it is (else unchanged)."""
    if name in available:
        return name
    matches = [full for full, (_, cat) in available.items() if cat == name]
    return matches[0] if len(matches) == 1 else name


def _select(available: dict[str, tuple[str, str]], categories: Sequence[str] | None,
            specs: dict[str, DatasetSpec], roots: dict[str, Path]) -> list[str]:
    """Full task names of the chosen categories; bare names are accepted when unambiguous."""
    if not categories:
        return list(available)
    chosen = []
    for c in categories:
        if c in available:
            chosen.append(c)
            continue
        matches = [full for full, (_, cat) in available.items() if cat == c]
        if len(matches) == 1:
            chosen.append(matches[0])
            continue
        if len(matches) > 1:
            raise ValueError(f"category {c!r} exists in several datasets {matches}; name it with its prefix")
        owner = c.split("/", 1)[0] if "/" in c and c.split("/", 1)[0] in specs else next(iter(specs))
        cat = c.split("/", 1)[1] if "/" in c and c.split("/", 1)[0] in specs else c
        raise specs[owner].error(f"category {cat!r} not found under {roots[owner]} (no folder {roots[owner] / cat}); "
                                 f"available: {', '.join(available)}.")
    return chosen


def _order(names: list[str], available: dict[str, tuple[str, str]], order: str | Sequence[str],
           datasets: list[str]) -> list[str]:
    """Keywords order within each dataset and keep the dataset chain; explicit lists order globally."""
    keyword = isinstance(order, str) and (order in ORDER_KEYWORDS or order.startswith("random:"))
    if not keyword:
        explicit = _split_list(order) if isinstance(order, str) else list(order)
        return resolve_order(names, [_full_name(o, available) for o in explicit])
    out = []
    for d in datasets:
        out += resolve_order([n for n in names if available[n][0] == d], order)
    return out


def load_stream(
    dataset: str | Sequence[str],
    root: str | Path | Sequence[str | Path],
    categories: Sequence[str] | None = None,
    order: str | Sequence[str] = "alphabetical",
    group: str | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    skip_bad: bool = False,
    check: bool = True,
    progress: bool = False,
) -> Scenario:
    """A task stream over one dataset, or several chained with ``+`` (one root per dataset).

    `order` is ``alphabetical`` (the IM-IAD and UCAD protocol), ``reverse``, ``random:SEED``
    (each applied within a dataset, datasets kept in the given order) or an explicit list of
    task names (global). `group` is a protocol like ``"14-1"`` (see :func:`parse_group`).
    With `skip_bad`, unreadable or inconsistent files are skipped with a warning and counted
    in ``scenario.info["skipped_files"]``; otherwise the first one raises
    :class:`DatasetLayoutError`. `check` verifies every file at construction.
    """
    names = _datasets(dataset)
    given = _split_list(root)
    if len(given) != len(names):
        raise ValueError(f"dataset {'+'.join(names)} needs {len(names)} root(s), one per dataset, "
                         f"comma-separated; got {len(given)}: {[str(r) for r in given]}")
    roots_list = [resolve_root(r) for r in given]  # hf://ORG/NAME[@REV]: a dataset repository, via the Hub cache
    specs = {d: get_spec(d) for d in names}
    roots = dict(zip(names, roots_list, strict=True))
    prefix = len(names) > 1
    available: dict[str, tuple[str, str]] = {}  # task name -> (dataset, category)
    for d in names:
        for c in specs[d].discover(roots[d], specs[d]):
            available[_task_name(specs[d], c, prefix)] = (d, c)
    chosen = _select(available, _split_list(categories) if isinstance(categories, str) else categories,
                     specs, roots)
    ordered = _order(chosen, available, order, names)
    bad = BadFiles(skip=skip_bad)
    per_category: dict[str, tuple[list[Sample], list[Sample]]] = {}
    for full in ordered:
        d, c = available[full]
        spec = specs[d]
        train, test = spec.read(roots[d], c, spec, bad)
        if prefix:  # keep categories unique across datasets (replay buffers group by it)
            train = [_renamed(s, full) for s in train]
            test = [_renamed(s, full) for s in test]
        if check:
            train = _checked(train, "train", c, spec, bad, progress)
            test = _checked(test, "test", c, spec, bad, progress)
        if not train or not test:
            raise spec.error(f"category {c!r} under {roots[d]} has no {'train' if not train else 'test'} images.")
        per_category[full] = (train, test)
    tasks = _group(ordered, per_category, parse_group(group, len(ordered)), image_size)
    info = {"order": order_label(order), "group": group, "image_size": image_size,
            "roots": {d: str(r) for d, r in roots.items()}, "skipped_files": len(bad.files)}
    if bad.files:
        info["skipped"] = [f"{p}: {why}" for p, why in bad.files]
        log.warning("skipped %d bad file(s); see config.json 'skipped'", len(bad.files))
    return Scenario(tasks, "+".join(names), roots_list[0], info)


def _checked(samples: list[Sample], split: str, category: str, spec: DatasetSpec, bad: BadFiles,
             progress: bool) -> list[Sample]:
    """The readable `samples` of one split; raises naming the folder when --skip-bad left none."""
    kept = check_files(samples, spec, bad, progress)
    if samples and not kept:
        folders = ", ".join(sorted({str(s.image_path.parent) for s in samples}))
        raise DatasetLayoutError(
            f"every {split} image of category {category!r} in {folders} was skipped as unreadable (--skip-bad), "
            f"so none is left to {'train' if split == 'train' else 'test'} on: replace the files named in the "
            f"warnings above, or leave {category!r} out with --categories")
    return kept


def _renamed(s: Sample, category: str) -> Sample:
    return Sample(s.image_path, s.label, category, s.defect, s.mask_path)


def _group(ordered: list[str], data: dict[str, tuple[list[Sample], list[Sample]]], sizes: list[int],
           image_size: int) -> list[Task]:
    tasks, at = [], 0
    for i, size in enumerate(sizes):
        members = ordered[at : at + size]
        at += size
        train = [s for m in members for s in data[m][0]]
        test = [s for m in members for s in data[m][1]]
        tasks.append(Task(i, "+".join(members), tuple(members), ImageSet(train, image_size), ImageSet(test, image_size)))
    return tasks


def regroup(scenario: Scenario, group: str) -> Scenario:
    """The same stream with consecutive tasks merged by a grouping protocol (see :func:`parse_group`)."""
    sizes = parse_group(group, len(scenario))
    tasks, at = [], 0
    for i, size in enumerate(sizes):
        members = scenario.tasks[at : at + size]
        at += size
        train = ImageSet([s for t in members for s in t.train.samples], members[0].train.image_size)
        test = ImageSet([s for t in members for s in t.test.samples], members[0].test.image_size)
        cats = tuple(c for t in members for c in t.categories)
        tasks.append(Task(i, "+".join(t.name for t in members), cats, train, test))
    return Scenario(tasks, scenario.dataset, scenario.root, {**scenario.info, "group": group})
