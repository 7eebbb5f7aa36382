"""Reads TensorBoard event files back (TFRecord framing, CRC-checked)."""

import glob
import os
import struct

from tensorboardX import record_writer
from tensorboardX.proto import event_pb2


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] of every event file in `logdir`, file order."""
  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (length,) = struct.unpack("<Q", header)
      (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
      assert crc == record_writer.masked_crc32c(header), path
      body = data[pos + 12:pos + 12 + length]
      (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
      assert crc == record_writer.masked_crc32c(body), path
      pos += 16 + length
      event = event_pb2.Event.FromString(body)
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out
