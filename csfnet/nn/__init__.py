"""CSF-Net layers and the builder that assembles them from YAML configs."""

from csfnet.nn.modules import CReToNeXt, CSwitch, DFuse, RepResBlock

__all__ = ("CReToNeXt", "CSwitch", "DFuse", "RepResBlock")
