"""YAML -> plain data, remembering the line of every key so errors can point at it.

PyYAML's own loader forgets positions and silently keeps the last of two duplicate keys (a
classic source of "my change did nothing"); this one keeps the position of every node and
reports duplicates. A duplicate (or a key that is not a scalar) is a problem of the document,
not a reason to stop reading it: the first occurrence is kept and the caller reports these
problems together with everything else wrong in the file. Only YAML that cannot be parsed
raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlProblem:
    path: Path
    line: int
    message: str


class YamlError(Exception):
    def __init__(self, problems: list[YamlProblem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class YamlDocument:
    data: Any
    lines: dict[Path, int]
    problems: tuple[YamlProblem, ...] = ()  # duplicate or non-scalar keys (first one kept)

    def line_of(self, path: Path) -> int:
        """The line of the deepest node along `path` that exists (1-based; 1 if unknown)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


def load_yaml(text: str) -> YamlDocument:
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            raise YamlError([YamlProblem((), line, f"invalid YAML: {exc.problem}")]) from None
        except yaml.YAMLError as exc:
            raise YamlError([YamlProblem((), 1, f"invalid YAML: {exc}")]) from None
        if root is None:
            return YamlDocument(data=None, lines={(): 1})
        lines: dict[Path, int] = {}
        problems: list[YamlProblem] = []
        data = _build(loader, root, (), lines, problems)
        return YamlDocument(data=data, lines=lines, problems=tuple(problems))
    finally:
        loader.dispose()


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Path,
    lines: dict[Path, int],
    problems: list[YamlProblem],
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(YamlProblem(path, key_line, "mapping keys must be plain scalars"))
                continue
            # A key is a name, as written: YAML 1.1 would read `on:`, `yes:` or `no:` as booleans.
            key = key_node.value
            child = (*path, str(key))
            if key in result:
                problems.append(YamlProblem(child, key_line, f"duplicate key {key!r}"))
                continue
            lines[child] = key_line
            result[key] = _build(loader, value_node, child, lines, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, (*path, index), lines, problems)
            for index, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)
