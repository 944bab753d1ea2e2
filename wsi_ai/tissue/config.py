"""What the tissue stage is asked to do: a small frozen config (DESIGN.md: one per stage)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from wsi_ai.errors import ParameterError


@dataclass(frozen=True)
class TissueConfig:
    """Whether to find the tissue, and at which resolution the mask is computed.

    ``enabled=False`` (``--no-tissue``) keeps every patch of a grid; ``target_mpp`` is the
    mask's µm/px (``wsi-ai tissue --target-mpp``).
    """

    enabled: bool = True
    target_mpp: float = 8.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ParameterError(f"tissue enabled must be true or false, got {self.enabled!r}")
        if (
            isinstance(self.target_mpp, bool)
            or not isinstance(self.target_mpp, Real)
            or not math.isfinite(self.target_mpp)
            or self.target_mpp <= 0
        ):
            raise ParameterError(
                f"tissue target_mpp must be a positive finite number of µm/px, "
                f"got {self.target_mpp!r}"
            )
