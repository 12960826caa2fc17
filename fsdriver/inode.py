"""The kernel's inode numbers, mapped to where each object lives in the backing tree.

We keep, per inode the kernel knows, the set of (parent inode, name) links we have seen, not an
open fd: a directory of a million files must not cost a million descriptors, and a mutation has
to name its object by path anyway (the peer shares our tree, not our inode numbers). The table
stays exact because every change of the tree goes through this filesystem, and each change
updates the table in the same atomic step (no ``await`` between the syscall and the update).

A backing inode number is reused as the FUSE inode number when it is free, so ``ls -i`` through
the mount shows the real numbers; a number still held by the kernel for a deleted object, or an
object on another device, gets a private number instead, so the kernel never confuses two files.
"""

from __future__ import annotations

from collections.abc import Iterator

ROOT_INODE = 1
_PRIVATE_BASE = 1 << 62
_MAX_DEPTH = 4096

Key = tuple[int, int]  # (st_dev, st_ino) of the backing object
Link = tuple[int, bytes]  # (parent inode, name)


class Node:
    __slots__ = ("_more_links", "ino", "key", "link", "lookups", "no_capability_xattr")

    def __init__(self, ino: int, key: Key) -> None:
        self.ino = ino
        self.key = key
        # the oldest link, the one paths are built from, and (hard links only) the others in
        # the order they were seen: a dict per node would cost ~200 bytes a file (D35)
        self.link: Link | None = None
        self._more_links: dict[Link, None] | None = None
        self.lookups = 0
        # The kernel asks for security.capability before every write; remembering that a
        # file has none answers that at once (every change of it passes through us).
        self.no_capability_xattr = False

    @property
    def links(self) -> tuple[Link, ...]:
        """Every known link, oldest first."""
        if self.link is None:
            return ()
        if self._more_links is None:
            return (self.link,)
        return (self.link, *self._more_links)

    def add_link(self, link: Link) -> None:
        """A link seen (again): one seen before keeps its place."""
        if self.link is None:
            self.link = link
        elif link != self.link:
            if self._more_links is None:
                self._more_links = {}
            self._more_links[link] = None

    def remove_link(self, link: Link) -> None:
        if link == self.link:
            if self._more_links:
                self.link = next(iter(self._more_links))
                del self._more_links[self.link]
            else:
                self.link = None
        elif self._more_links is not None:
            self._more_links.pop(link, None)
        if not self._more_links:
            self._more_links = None


class InodeTable:
    def __init__(self, root_key: Key) -> None:
        self.root = Node(ROOT_INODE, root_key)
        self.root.lookups = 1  # the kernel never forgets the root
        self._nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._by_key: dict[Key, Node] = {root_key: self.root}
        self._root_dev = root_key[0]
        self._next_private = _PRIVATE_BASE

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, ino: object) -> bool:
        return ino in self._nodes

    def get(self, ino: int) -> Node:
        return self._nodes[ino]

    def find(self, key: Key) -> Node | None:
        return self._by_key.get(key)

    def nodes(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def learn(self, key: Key, parent: int, name: bytes) -> Node:
        """Record that ``name`` in ``parent`` is ``key``; the caller counts the lookup."""
        node = self._by_key.get(key)
        if node is None:
            if key[0] == self._root_dev:
                key = (self._root_dev, key[1])  # one device number for the whole table
            ino = key[1]
            if key[0] != self._root_dev or ino in self._nodes or ino <= ROOT_INODE:
                ino = self._next_private
                self._next_private += 1
            node = Node(ino, key)
            self._nodes[ino] = node
            self._by_key[key] = node
        node.add_link((parent, name))
        return node

    def discard_if_unreferenced(self, node: Node) -> None:
        if node.lookups <= 0 and node is not self.root:
            self._drop(node)

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or node is self.root:
            return
        node.lookups -= count
        if node.lookups <= 0:
            self._drop(node)

    def _drop(self, node: Node) -> None:
        self._nodes.pop(node.ino, None)
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]

    def _vanish(self, node: Node) -> None:
        """The backing object is gone; its number may be reused by a new file at once."""
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]

    def unlinked(self, parent: int, name: bytes, key: Key, object_gone: bool) -> None:
        node = self._by_key.get(key)
        if node is None:
            return
        node.remove_link((parent, name))
        if object_gone:
            self._vanish(node)

    def renamed(
        self,
        old: Link,
        new: Link,
        moved_key: Key,
        replaced_key: Key | None,
        replaced_gone: bool,
        exchange: bool,
    ) -> None:
        if moved_key == replaced_key and not exchange:
            return  # two names of one inode: rename(2) changes nothing
        moved = self._by_key.get(moved_key)
        replaced = self._by_key.get(replaced_key) if replaced_key is not None else None
        if replaced is not None:
            replaced.remove_link(new)
            if exchange:
                replaced.add_link(old)
            elif replaced_gone:
                self._vanish(replaced)
        if moved is not None:
            moved.remove_link(old)
            moved.add_link(new)

    def path(self, ino: int) -> bytes | None:
        """The object's path relative to the root, or None when no known name reaches it."""
        if ino == ROOT_INODE:
            return b"."
        parts: list[bytes] = []
        node = self._nodes.get(ino)
        for _ in range(_MAX_DEPTH):
            if node is None:
                return None
            if node is self.root:
                parts.reverse()
                return b"/".join(parts)
            link = node.link
            if link is None or link[0] not in self._nodes:  # the oldest name's parent forgot
                link = next((ln for ln in node.links if ln[0] in self._nodes), None)
                if link is None:
                    return None
            parts.append(link[1])
            node = self._nodes[link[0]]
        raise RuntimeError(f"inode table has a cycle or is deeper than {_MAX_DEPTH} at {ino}")

    def child_path(self, parent: int, name: bytes) -> bytes | None:
        base = self.path(parent)
        if base is None:
            return None
        return name if base == b"." else base + b"/" + name
