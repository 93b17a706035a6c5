"""YAML read under a budget: the nodes a document expands to (every alias followed) and their
depth, counted on the composed node graph (each distinct node once) before any object is built.
A billion-laughs alias bomb is refused in milliseconds instead of being built (and then printed
in an error message). task_files.py applies the same budget to task YAMLs."""

from __future__ import annotations

import yaml

MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_BYTES = 1 << 20
MAX_CHARS = 16 << 20  # characters of every scalar, each alias counted again


class YamlTooLarge(ValueError):
    """The document exceeds the budget; the message says which part."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def check_budget(root: yaml.Node, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH,
                 max_chars: int = MAX_CHARS) -> None:
    done: dict[int, tuple[int, int, int]] = {}  # id(node) -> (expanded nodes, depth, characters)
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key, kids = id(node), _children(node)
        if finished:
            open_.discard(key)
            size = 1 + sum(done[id(k)][0] for k in kids)
            depth = 1 + max((done[id(k)][1] for k in kids), default=0)
            chars = len(node.value) if isinstance(node, yaml.ScalarNode) else sum(done[id(k)][2] for k in kids)
            if chars > max_chars:
                raise YamlTooLarge(f"more than {max_chars} characters once its aliases are expanded")
            if size > max_nodes:
                raise YamlTooLarge(f"more than {max_nodes} YAML nodes once its aliases are expanded (an alias bomb?)")
            if depth > max_depth:
                raise YamlTooLarge(f"nested more than {max_depth} levels deep")
            done[key] = (size, depth, chars)
        elif key not in done:
            if key in open_:
                raise YamlTooLarge("a recursive YAML alias")
            open_.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in done)


def safe_load(text: str | bytes):
    """``yaml.safe_load`` within the budget (YamlTooLarge beyond it; yaml.YAMLError if invalid)."""
    if len(text) > MAX_BYTES:
        raise YamlTooLarge(f"larger than {MAX_BYTES} bytes")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_budget(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
