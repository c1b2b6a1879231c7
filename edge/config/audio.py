"""``audio:`` the capture device, its rate and channels, gain, block size, ring buffer, retries."""
from __future__ import annotations

from typing import Optional, Union

from pydantic import Field, ValidationInfo, field_validator

from edge.config.base import Section


class AudioConfig(Section):
    device: Union[int, str, None] = None  # name substring or index; None: the system default input
    sample_rate: Optional[int] = Field(None, ge=8000, le=192000)  # None: ask for the bundle's rate
    channels: int = Field(1, ge=1, le=32)
    channel: Optional[int] = Field(None, ge=0)  # None: mix all channels down
    gain_db: float = Field(0.0, ge=-40, le=60)
    block_s: float = Field(0.5, gt=0, le=10)
    ring_buffer_s: float = Field(30.0, ge=5, le=600)
    retry_initial_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)

    @field_validator("device")
    @classmethod
    def _device_not_blank(cls, v: Union[int, str, None]) -> Union[int, str, None]:
        if isinstance(v, str) and not v.strip():
            raise ValueError("device must be an index, part of a device name, or null for the default input")
        if isinstance(v, int) and v < 0:
            raise ValueError("a device index is 0 or more (python -m edge devices lists them)")
        return v

    @field_validator("channel")
    @classmethod
    def _channel_in_range(cls, v: Optional[int], info: ValidationInfo) -> Optional[int]:
        channels = info.data.get("channels")
        if v is not None and channels is not None and v >= channels:
            raise ValueError(f"channel {v} does not exist with channels: {channels} "
                             f"(numbered from 0: allowed 0..{channels - 1}, or null to mix all down)")
        return v

    @field_validator("retry_max_s")
    @classmethod
    def _retry_order(cls, v: float, info: ValidationInfo) -> float:
        first = info.data.get("retry_initial_s")
        if first is not None and v < first:
            raise ValueError(f"must be at least retry_initial_s ({first})")
        return v

    @field_validator("ring_buffer_s")
    @classmethod
    def _ring_holds_blocks(cls, v: float, info: ValidationInfo) -> float:
        block = info.data.get("block_s")
        if block is not None and v < 2 * block:
            raise ValueError(f"must hold at least two blocks (block_s is {block})")
        return v
