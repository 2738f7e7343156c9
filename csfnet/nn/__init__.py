"""CSF-Net layers and the builder that assembles them from YAML configs."""

from csfnet.nn.modules import Channels, CReToNeXt, CSwitch, DFuse, RepResBlock

__all__ = ("CReToNeXt", "CSwitch", "Channels", "DFuse", "RepResBlock")
