"""nn stage."""

from wsi_ai.nn.abmil import GatedABMIL as GatedABMIL
from wsi_ai.nn.mil import MILOutput as MILOutput
from wsi_ai.nn.vit_mil import ViTMIL as ViTMIL
