"""OmegaConf objects in a checkpoint, read as inert stand-ins that become plain containers.

Lightning checkpoints often carry ``DictConfig``/``ListConfig`` hyper-parameters. Rebuilding the real classes
from a file is unsafe: their pickled state holds ``_parent`` links (a node that is its own parent makes every
flag lookup loop forever) and strings such as ``${oc.env:SECRET}`` that OmegaConf resolves on access. The
unpickler builds these stand-ins instead. They keep only the content (a container's ``_content``, a value
node's ``_val``) and ignore parents, metadata and flags; :mod:`ldm.checkpoint_graph` turns them into plain
``dict`` / ``list`` / raw values. Nothing is ever interpolated: ``"${oc.env:HOME}"`` stays that string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ldm.checkpoint_errors import CheckpointFault, shown


class InertConfig:
    """A stand-in for an OmegaConf object of the file: takes its pickled state, gives back raw content."""

    def __init__(self, source: str):
        self.source = source

    def absorb(self, state: Any) -> None:
        """The pickle's BUILD step: keep what :meth:`raw` needs from the state dict, drop the rest."""
        if type(state) is not dict:
            raise CheckpointFault(f"the state of an {self.source} is a {shown(type(state).__name__)}, not a dict")
        self._keep(state)

    def _keep(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def raw(self) -> Any:
        """The plain content (containers still holding stand-ins; the graph walk converts those)."""
        raise NotImplementedError


class ContainerStandIn(InertConfig):
    """``DictConfig`` (``kind=dict``) or ``ListConfig`` (``kind=list``)."""

    def __init__(self, source: str, kind: type):
        super().__init__(source)
        self.kind = kind
        self.content: Any = None

    def _keep(self, state: dict[str, Any]) -> None:
        self.content = state.get("_content")

    def raw(self) -> Any:
        content = self.content
        if content is None or type(content) is str:  # a None config, "???" or a whole-node interpolation
            return content
        if type(content) is not self.kind:
            raise CheckpointFault(f"an {self.source} holds a {shown(type(content).__name__)} as its content")
        return content


class NodeStandIn(InertConfig):
    """A value node (``AnyNode``, ``StringNode``, ...): its raw ``_val``."""

    def __init__(self, source: str):
        super().__init__(source)
        self.value: Any = None

    def _keep(self, state: dict[str, Any]) -> None:
        self.value = state.get("_val")

    def raw(self) -> Any:
        return self.value


class MetadataStandIn(InertConfig):
    """``ContainerMetadata`` / ``Metadata``: only ever part of a config's dropped state."""

    def _keep(self, state: dict[str, Any]) -> None:
        return None

    def raw(self) -> Any:
        raise CheckpointFault(f"an OmegaConf {self.source} appears outside a config")


def stand_in_factory(source: str, make: Callable[[], InertConfig]) -> Callable[..., InertConfig]:
    """The NEWOBJ reconstructor for OmegaConf class ``source``: no constructor arguments, as OmegaConf pickles."""

    def new(*args: Any) -> InertConfig:
        if args:
            raise CheckpointFault(f"{source} is created with arguments; OmegaConf pickles none")
        return make()

    return new
