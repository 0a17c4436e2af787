"""OPC UA addresses as written in a config: NodeId and browse-path syntax.

The config validates with these functions and the driver parses with them, so a NodeId the
config accepts is one the driver can use. No asyncua import: the config loads without it.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid

_NODE_ID = re.compile(r"^(?:ns=(\d+);|nsu=([^;]+);)?([isgb])=(.+)$", re.DOTALL)
_PATH_ELEMENT = re.compile(r"/(\{[^}]*\}[^/]*|[^/]*)")
_MAX_NUMERIC = 2**32 - 1  # a numeric identifier is a UInt32 on the wire
_MAX_NS_INDEX = 2**16 - 1  # a namespace index is a UInt16

NodeIdentifier = int | str | uuid.UUID | bytes


def split_node_id(text: str) -> tuple[int | None, str | None, NodeIdentifier]:
    """(namespace index, namespace URI, identifier) of `ns=2;s=X`, `nsu=URI;i=5`, `g=<uuid>`, `b=<base64>`.

    Raises ValueError saying what is wrong and how to write it (without repeating the text).
    """
    m = _NODE_ID.match(text.strip())
    if m is None:
        raise ValueError("not a NodeId; write e.g. 'ns=2;s=Machine.Temp' or 'nsu=urn:x;i=1001'")
    ns, uri, kind, ident = m.groups()
    ns_index = int(ns) if ns is not None else None
    if ns_index is not None and ns_index > _MAX_NS_INDEX:
        raise ValueError(f"namespace index ns={ns_index} is above {_MAX_NS_INDEX}")
    value: NodeIdentifier
    if kind == "i":
        if not ident.isascii() or not ident.isdigit() or int(ident) > _MAX_NUMERIC:
            raise ValueError(
                f"i= takes a whole number from 0 to {_MAX_NUMERIC}; "
                "for a text identifier write s=, e.g. 'ns=2;s=Machine.Temp'"
            )
        value = int(ident)
    elif kind == "g":
        try:
            value = uuid.UUID(ident)
        except ValueError:
            raise ValueError("g= takes a GUID, e.g. 'g=72962b91-fa75-4ae6-8d28-b404dc7daf63'") from None
    elif kind == "b":
        try:
            value = base64.b64decode(ident, validate=True)
        except binascii.Error:
            raise ValueError("b= takes base64 bytes, e.g. 'b=M/RbKBsRVkePCePcx24oRA=='") from None
    else:
        value = ident
    return ns_index, uri, value


def split_browse_path(text: str) -> list[tuple[str, int | None, str | None]]:
    """(browse name, namespace index, namespace URI) of each element of `/2:IMM_1/{http://uri/}Status`.

    An element without a prefix is in namespace 0; raises ValueError for a path not starting
    with '/' or with an empty element ('//', a trailing '/', a prefix without a name).
    """
    if not text.startswith("/"):
        raise ValueError("a browse path starts at Objects with '/', e.g. '/2:IMM_1/2:MachineStatus'")
    elements: list[tuple[str, int | None, str | None]] = []
    pos = 0
    while pos < len(text):
        # every element starts at a '/': the previous one ended at one, or at the end of the text
        match = _PATH_ELEMENT.match(text, pos)
        assert match is not None  # the pattern matches any text starting with '/'
        token, pos = match.group(1), match.end()
        if token.startswith("{"):
            uri, brace, name = token[1:].partition("}")
            if not brace or not uri:
                raise ValueError(
                    f"element {len(elements) + 1} needs a namespace URI closed by '}}', e.g. "
                    "'/{http://opcfoundation.org/UA/DI/}DeviceSet'"
                )
            elements.append((name, None, uri))
        elif re.match(r"^[0-9]+:", token):
            idx, _, name = token.partition(":")
            if int(idx) > _MAX_NS_INDEX:
                raise ValueError(
                    f"element {len(elements) + 1}: namespace index {idx} is above {_MAX_NS_INDEX}"
                )
            elements.append((name, int(idx), None))
        else:
            elements.append((token, 0, None))
        if not elements[-1][0]:
            raise ValueError(
                f"element {len(elements)} of the browse path is empty (a '//', a trailing '/' or a "
                "namespace prefix without a name); write e.g. '/2:IMM_1/2:MachineStatus'"
            )
    return elements
