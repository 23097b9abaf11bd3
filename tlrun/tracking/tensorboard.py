"""logger=tensorboard: event files in ``<run>/<logger.tensorboard.dir>`` (default ``<run>/tensorboard/``).

Each run folder is one TensorBoard run, so ``tensorboard --logdir multirun/<date>/<time>`` compares every
job of a sweep: per-epoch scalars named like the ft_history.csv columns (step = epoch), the resolved
config as hparams (the hparams plugin's session start info, written in the same folder: no timestamp
sub-folder), metrics.json's numbers as scalars, its text, and the plots as images.

Each job writes only its session info, never an hparams *experiment* summary: with one experiment per
job the plugin would pick one job's arbitrarily, while without any it builds the experiment from every
session, so a sweep's jobs with different keys (adaptation=dann,mmd) still compare.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from tlrun.errors import ConfigError
from tlrun.paths import check_can_create
from tlrun.tracking import TrackerError
from tlrun.tracking.backends import FAILED, FINISHED, INSTALL_HINT, Backend, RunInfo, last_epoch, text

_EVENTS = "events.out.tfevents.*"


def open_backend(node: DictConfig, info: RunInfo) -> "TensorBoardBackend":
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - raises when tensorboard is missing
        from tensorboard.plugins.hparams import summary_v2  # noqa: F401
    except ImportError as exc:
        raise TrackerError(f"logger=tensorboard needs the tensorboard package ({exc})",
                           f"install it with {INSTALL_HINT}") from None
    folder = info.run_dir / str(node.dir)
    try:
        check_can_create(folder, "logger.tensorboard.dir")
    except ConfigError as exc:
        raise TrackerError(str(exc).split("; choose")[0], "choose another logger.tensorboard.dir") from None
    return TensorBoardBackend(info, folder)


def _hparam(value: Any) -> Any:
    """What the hparams plugin takes (int, float, str, bool); lists and nulls as the config spells them."""
    return value if isinstance(value, (bool, int, float, str)) else text(value)


class TensorBoardBackend(Backend):
    name = "TensorBoard"

    def __init__(self, info: RunInfo, folder: Path) -> None:
        # Event files already there: a resumed run. It continues after the last epoch ft_history.csv holds
        # (events are flushed every epoch), and purge_step hides anything an earlier session wrote past it.
        self.resumed = folder.is_dir() and any(folder.glob(_EVENTS))
        super().__init__(info, last_epoch(info.run_dir) if self.resumed else 0)
        self.folder = folder
        self._writer = None

    @property
    def writer(self):
        """Made on first use: a run that fails before its first epoch leaves no tensorboard/ folder."""
        if self._writer is None:
            from tensorboard.plugins.hparams import summary_v2
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), purge_step=self.logged_through + 1 if self.resumed else None)
            if not self.resumed:
                hparams = {key: _hparam(value) for key, value in self.info.hparams.items() if value is not None}
                self._writer.file_writer.add_summary(summary_v2.hparams_pb(hparams))
        return self._writer

    def write_epochs(self, epochs: list[tuple[int, dict[str, float]]]) -> None:
        for epoch, values in epochs:
            for key, value in values.items():
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()  # on disk each epoch: a killed run's resume knows what TensorBoard holds

    def write_run(self, metrics: dict, numbers: dict[str, float], texts: dict[str, str], files: list[Path]) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, self.logged_through)
        self.writer.add_text("metrics.json", f"```\n{json.dumps(metrics, indent=2)}\n```", self.logged_through)
        for path in files:
            if path.suffix == ".png":
                import numpy as np
                from PIL import Image

                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(f"plots/{path.stem}", pixels, self.logged_through, dataformats="HWC")
        self.writer.flush()

    def finish(self, status: str, error: Optional[BaseException]) -> None:
        if self._writer is None and status != FINISHED:  # nothing was logged: leave no folder behind
            return
        if status in (FINISHED, FAILED):  # an interrupted run's session goes on when it is resumed
            self.writer.file_writer.add_summary(_session_end(status == FINISHED))
        self.writer.close()

    def abandon(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _session_end(success: bool):
    """The hparams plugin's session end summary (its Python API writes one only through TensorFlow)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS if success else api_pb2.STATUS_FAILURE,
                                          end_time_secs=time.time())
    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=info))
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=content,
                                                                tensor=metadata.NULL_TENSOR)])
