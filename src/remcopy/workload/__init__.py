"""The dependent-write workload and the consistency checker (docs/consistency.md)."""

from remcopy.workload.checker import check_image, judge, read_image
from remcopy.workload.image import Image, ImageReader, parse_shadow_map
from remcopy.workload.layout import Layout, PlannedWrite, Volume, parse_sizes, plan_chain
from remcopy.workload.log import LoggedWrite, LogWriter, WorkloadLog, WorkloadLogError, read_log
from remcopy.workload.record import Record, RecordKind, Slot, SlotState, build_record, decode_slot
from remcopy.workload.report import ChainReport, CheckReport, Reason, Violation
from remcopy.workload.workload import ChainFailure, Workload, WorkloadStats, run_workload

__all__ = [
    "ChainFailure",
    "ChainReport",
    "CheckReport",
    "Image",
    "ImageReader",
    "Layout",
    "LogWriter",
    "LoggedWrite",
    "PlannedWrite",
    "Reason",
    "Record",
    "RecordKind",
    "Slot",
    "SlotState",
    "Violation",
    "Volume",
    "Workload",
    "WorkloadLog",
    "WorkloadLogError",
    "WorkloadStats",
    "build_record",
    "check_image",
    "decode_slot",
    "judge",
    "parse_shadow_map",
    "parse_sizes",
    "plan_chain",
    "read_image",
    "read_log",
    "run_workload",
]
