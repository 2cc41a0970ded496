"""A pickle machine that can only build data: containers, numbers, strings, and what the allow-list allows.

It reads the binary opcodes of pickle protocols 2-5 (``torch.save`` writes protocol 2). Compared with
``pickle.Unpickler`` (or torch's ``weights_only`` unpickler) it never imports or calls anything by itself:

* a global resolves only through :data:`ldm.checkpoint_allowlist.ALLOWED` to an :class:`Allowed` token;
  calling it (REDUCE) or instantiating it (NEWOBJ) runs our reconstructor for that name, never the real one;
* BUILD (set an object's state) goes through :func:`ldm.checkpoint_allowlist.build`;
* appends and item stores only target plain lists / dicts / sets, with hash-safe keys;
* every object it builds is charged to an :class:`ExpansionBudget`, so the Python objects of a pickle cannot
  take more memory than the allocation bound.

Malformed input raises :class:`CheckpointFault`; a refused global raises :class:`ForbiddenGlobals` listing
every global the pickle names that is not allowed (found by a scan that executes nothing).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import struct
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

from ldm import checkpoint_guard as guard
from ldm.checkpoint_allowlist import ALLOWED, CALLED, NO_VALUE, Allowed, build
from ldm.checkpoint_errors import CheckpointFault, ForbiddenGlobals, shown

#: Bytes charged per object built and per item stored in a container (a generous CPython estimate).
OBJECT_COST = 64
ITEM_COST = 16
MAX_GLOBAL_NAME = 1000
_MARK = object()


def _global_name(module: str, name: str, protocol: int) -> str:
    """``module.name`` with Python 2 names mapped as pickle does for protocols < 3 (``__builtin__.long`` -> int)."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


class RestrictedUnpickler:
    """Reads one pickle from ``data`` at ``start``; :meth:`load` returns the object, :attr:`position` its end.

    ``persistent_load`` resolves persistent ids (torch's storage references); without one they are refused.
    """

    def __init__(
        self,
        data: Any,
        budget: guard.ExpansionBudget,
        persistent_load: Callable[[Any], Any] | None = None,
        start: int = 0,
    ):
        self.data = data
        self.position = start
        self.start = start
        self.budget = budget
        self.persistent_load = persistent_load
        self.protocol = 2
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.ops: dict[int, Callable[[], None]] = {code: getattr(self, f"_op_{op}") for code, op in _OPCODES.items()}

    # ------------------------------------------------------------------------------------------- reading

    def _take(self, count: int) -> Any:
        end = self.position + count
        if count < 0 or end > len(self.data):
            raise CheckpointFault(f"the pickle is truncated (needs {count} bytes at byte {self.position})")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def _uint(self, count: int) -> int:
        return int.from_bytes(self._take(count), "little")

    def _line(self) -> str:
        end = self.data.find(b"\n", self.position, self.position + MAX_GLOBAL_NAME)
        if end < 0:
            raise CheckpointFault("a global name in the pickle is unterminated or too long")
        text = bytes(self.data[self.position : end]).decode("utf-8")
        self.position = end + 1
        return text

    def _push(self, obj: Any, extra: int = 0) -> None:
        self.budget.charge(OBJECT_COST + extra, "the pickle's objects")
        self.stack.append(obj)

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise CheckpointFault("the pickle closes a MARK it never opened")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def load(self) -> Any:
        """Run opcodes until STOP; return the top of the stack."""
        try:
            while True:
                code = self._take(1)[0]
                if code == 0x2E:  # STOP
                    if len(self.stack) != 1 or self.marks:
                        raise CheckpointFault("the pickle ends with a malformed stack")
                    return self.stack.pop()
                handler = self.ops.get(code)
                if handler is None:
                    raise CheckpointFault(f"unsupported pickle opcode {bytes([code])!r} at byte {self.position - 1}")
                handler()
        except ForbiddenGlobals as refusal:
            raise ForbiddenGlobals(self._refused_names(refusal.names)) from None
        except (IndexError, KeyError, struct.error, UnicodeDecodeError, OverflowError) as error:
            raise CheckpointFault(f"malformed pickle near byte {self.position} ({type(error).__name__})") from None

    def _refused_names(self, first: list[str]) -> list[str]:
        names = list(first)
        for name in scan_globals(self.data, self.start):
            if name not in ALLOWED and name not in names:
                names.append(name)
        return names

    # ------------------------------------------------------------------------------------------- opcodes

    def _op_proto(self) -> None:
        self.protocol = self._take(1)[0]
        if self.protocol > 5:
            raise CheckpointFault(f"unknown pickle protocol {self.protocol}")

    def _op_frame(self) -> None:
        self._take(8)

    def _op_mark(self) -> None:
        self.budget.charge(ITEM_COST, "the pickle's objects")
        self.marks.append(len(self.stack))

    def _op_pop(self) -> None:
        if self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()
        else:
            self.stack.pop()

    def _op_pop_mark(self) -> None:
        self._pop_mark()

    def _op_dup(self) -> None:
        self._push(self.stack[-1])

    def _op_none(self) -> None:
        self._push(None)

    def _op_true(self) -> None:
        self._push(True)

    def _op_false(self) -> None:
        self._push(False)

    def _op_binint(self) -> None:
        self._push(int.from_bytes(self._take(4), "little", signed=True))

    def _op_binint1(self) -> None:
        self._push(self._uint(1))

    def _op_binint2(self) -> None:
        self._push(self._uint(2))

    def _op_long1(self) -> None:
        self._push(int.from_bytes(self._take(self._uint(1)), "little", signed=True))

    def _op_long4(self) -> None:
        raw = self._take(self._uint(4))
        self._push(int.from_bytes(raw, "little", signed=True), len(raw))

    def _op_binfloat(self) -> None:
        self._push(struct.unpack(">d", self._take(8))[0])

    def _text(self, size_bytes: int) -> None:
        raw = self._take(self._uint(size_bytes))
        self._push(bytes(raw).decode("utf-8", "surrogatepass"), len(raw))

    def _op_binunicode(self) -> None:
        self._text(4)

    def _op_short_binunicode(self) -> None:
        self._text(1)

    def _op_binunicode8(self) -> None:
        self._text(8)

    def _op_short_binstring(self) -> None:
        self._text(1)

    def _op_binstring(self) -> None:
        self._text(4)

    def _bytes(self, size_bytes: int) -> None:
        raw = bytes(self._take(self._uint(size_bytes)))
        self._push(raw, len(raw))

    def _op_short_binbytes(self) -> None:
        self._bytes(1)

    def _op_binbytes(self) -> None:
        self._bytes(4)

    def _op_binbytes8(self) -> None:
        self._bytes(8)

    def _op_empty_tuple(self) -> None:
        self._push(())

    def _tuple_of_top(self, count: int) -> None:
        items = tuple(self.stack[-count:]) if len(self.stack) >= count else None
        if items is None or (self.marks and self.marks[-1] > len(self.stack) - count):
            raise CheckpointFault("the pickle builds a tuple from a short stack")
        del self.stack[-count:]
        self._push(items, ITEM_COST * count)

    def _op_tuple(self) -> None:
        items = self._pop_mark()
        self._push(tuple(items), ITEM_COST * len(items))

    def _op_tuple1(self) -> None:
        self._tuple_of_top(1)

    def _op_tuple2(self) -> None:
        self._tuple_of_top(2)

    def _op_tuple3(self) -> None:
        self._tuple_of_top(3)

    def _op_empty_list(self) -> None:
        self._push([])

    def _target(self, kinds: tuple[type, ...], what: str) -> Any:
        target = self.stack[-1]
        if type(target) not in kinds:
            raise CheckpointFault(f"the pickle {what} a {shown(type(target).__name__)}")
        return target

    def _op_append(self) -> None:
        item = self.stack.pop()
        self._target((list,), "appends to").append(item)
        self.budget.charge(ITEM_COST, "the pickle's objects")

    def _op_appends(self) -> None:
        items = self._pop_mark()
        self._target((list,), "appends to").extend(items)
        self.budget.charge(ITEM_COST * len(items), "the pickle's objects")

    def _op_empty_dict(self) -> None:
        self._push({})

    def _store(self, pairs: list[Any]) -> None:
        if len(pairs) % 2:
            raise CheckpointFault("the pickle stores a key without a value")
        target = self._target((dict, OrderedDict, defaultdict), "stores items in")
        for key, value in zip(pairs[::2], pairs[1::2]):
            guard.check_key(key, token_type=Allowed)
            target[key] = value
        self.budget.charge(ITEM_COST * len(pairs), "the pickle's objects")

    def _op_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._store([key, value])

    def _op_setitems(self) -> None:
        self._store(self._pop_mark())

    def _op_empty_set(self) -> None:
        self._push(set())

    def _op_additems(self) -> None:
        items = self._pop_mark()
        target = self._target((set,), "adds items to")
        for item in items:
            guard.check_key(item, token_type=Allowed)
            target.add(item)
        self.budget.charge(ITEM_COST * len(items), "the pickle's objects")

    def _op_frozenset(self) -> None:
        items = self._pop_mark()
        for item in items:
            guard.check_key(item, token_type=Allowed)
        self._push(frozenset(items), ITEM_COST * len(items))

    def _remember(self, index: int) -> None:
        self.budget.charge(OBJECT_COST, "the pickle's objects")
        self.memo[index] = self.stack[-1]

    def _recall(self, index: int) -> None:
        self.budget.charge(ITEM_COST, "the pickle's objects")
        self.stack.append(self.memo[index])

    def _op_binput(self) -> None:
        self._remember(self._uint(1))

    def _op_long_binput(self) -> None:
        self._remember(self._uint(4))

    def _op_memoize(self) -> None:
        self._remember(len(self.memo))

    def _op_binget(self) -> None:
        self._recall(self._uint(1))

    def _op_long_binget(self) -> None:
        self._recall(self._uint(4))

    def _resolve(self, module: Any, name: Any) -> None:
        if type(module) is not str or type(name) is not str:
            raise CheckpointFault("the pickle names a global with something other than strings")
        full = _global_name(module, name, self.protocol)
        entry = ALLOWED.get(full)
        if entry is None:
            raise ForbiddenGlobals([shown(full)])
        self._push(entry)

    def _op_global(self) -> None:
        module = self._line()
        self._resolve(module, self._line())

    def _op_stack_global(self) -> None:
        name = self.stack.pop()
        self._resolve(self.stack.pop(), name)

    def _op_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack.pop()
        if not isinstance(func, Allowed) or func.call is None:
            raise ForbiddenGlobals([shown(getattr(func, "name", type(func).__name__)) + CALLED])
        if type(args) is not tuple:
            raise CheckpointFault(f"{func.name} is called with a {shown(type(args).__name__)}, not a tuple")
        self._push_result(func, func.call, args)

    def _instantiate(self, cls: Any, args: Any) -> None:
        if not isinstance(cls, Allowed) or cls.new is None:
            raise ForbiddenGlobals([shown(getattr(cls, "name", type(cls).__name__)) + CALLED])
        if type(args) is not tuple:
            raise CheckpointFault(f"{cls.name} is created from a {shown(type(args).__name__)}, not a tuple")
        self._push_result(cls, cls.new, args)

    def _push_result(self, entry: Allowed, make: Callable[..., Any], args: tuple) -> None:
        """``make(*args)`` with tokens among the arguments replaced by the values they stand for."""
        args = tuple(arg.value if isinstance(arg, Allowed) and arg.value is not NO_VALUE else arg for arg in args)
        try:
            result = make(*args)
        except (TypeError, ValueError, RuntimeError) as error:
            raise CheckpointFault(f"{entry.name} cannot be built from the pickle's arguments: {shown(error)}") from None
        size = len(result) if isinstance(result, (bytes, str, set, frozenset)) else 0
        self._push(result, size)

    def _op_newobj(self) -> None:
        args = self.stack.pop()
        self._instantiate(self.stack.pop(), args)

    def _op_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        if kwargs:
            raise CheckpointFault("the pickle creates an object with keyword arguments")
        self._instantiate(self.stack.pop(), args)

    def _op_build(self) -> None:
        state = self.stack.pop()
        build(self.stack[-1], state)

    def _op_binpersid(self) -> None:
        pid = self.stack.pop()
        if self.persistent_load is None:
            raise CheckpointFault("the pickle refers to external data where none may be")
        self._push(self.persistent_load(pid))


_OPCODES = {
    0x80: "proto", 0x95: "frame", 0x28: "mark", 0x30: "pop", 0x31: "pop_mark", 0x32: "dup", 0x4E: "none",
    0x88: "true", 0x89: "false", 0x4A: "binint", 0x4B: "binint1", 0x4D: "binint2", 0x8A: "long1", 0x8B: "long4",
    0x47: "binfloat", 0x58: "binunicode", 0x8C: "short_binunicode", 0x8D: "binunicode8", 0x55: "short_binstring",
    0x54: "binstring", 0x43: "short_binbytes", 0x42: "binbytes", 0x8E: "binbytes8", 0x29: "empty_tuple",
    0x74: "tuple", 0x85: "tuple1", 0x86: "tuple2", 0x87: "tuple3", 0x5D: "empty_list", 0x61: "append",
    0x65: "appends", 0x7D: "empty_dict", 0x73: "setitem", 0x75: "setitems", 0x8F: "empty_set", 0x90: "additems",
    0x91: "frozenset", 0x71: "binput", 0x72: "long_binput", 0x94: "memoize", 0x68: "binget", 0x6A: "long_binget",
    0x63: "global", 0x93: "stack_global", 0x52: "reduce", 0x81: "newobj", 0x92: "newobj_ex", 0x62: "build",
    0x51: "binpersid",
}


def scan_globals(data: Any, start: int = 0) -> list[str]:
    """Every global a pickle names (GLOBAL, and STACK_GLOBAL with literal or memoized strings), without running
    it; an unreadable pickle gives what was found before the damage."""
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, str] = {}
    memoized = 0
    last_string: str | None = None
    if hasattr(data, "seek"):
        data.seek(start)
        stream = data
    else:
        stream = io.BytesIO(bytes(data[start:]))
    protocol = 2
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            pushed = None
            if opcode.name == "PROTO":
                protocol = arg
            elif opcode.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                found.append(_global_name(module, name, protocol))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(_global_name(strings[-2], strings[-1], protocol))
            elif isinstance(arg, str) and "UNICODE" in opcode.name:
                pushed = arg
            elif opcode.name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = memoized if arg is None else arg
                memoized += 1
                if last_string is not None:
                    memo[index] = last_string
                pushed = last_string
            elif opcode.name in ("BINGET", "LONG_BINGET") and arg in memo:
                pushed = memo[arg]
            if pushed is not None:
                strings.append(pushed)
            last_string = pushed
    except (ValueError, EOFError):
        pass
    return [shown(name) for name in dict.fromkeys(found)]
